"""Redaction of what a report says about a process: secrets in its command line and name (pure).

A report travels (Slack, webhooks, Events, pages), and a command line may carry a password, a token or a
connection string. The policy: a value is replaced by '***' when its name says it is secret (a flag, a
variable, a property, a header, a JSON key, a query parameter: `_is_secret_name`), when it sits in a URL's
user info, after an auth scheme (Bearer, Basic), after a client's password option (mysql -p, sshpass -p,
redis-cli -a), or when it looks like a known token (ghp_, glpat-, xoxb-) wherever it stands; shell commands
(sh -c "...") are split and each is redacted as a command of its own. Names that say where a secret is
(..._FILE, ..._PATH) are kept. Tests: tests/test_redaction.py.
"""

from __future__ import annotations

import os
import re

__all__ = ["REDACTED", "redact_argv", "redact_comm"]


REDACTED = "***"

# Words that make a flag, variable, property or header name secret. Compared to the name lowercased
# with '-', '_' and '.' removed (substrings) ...
_SECRET_SUBSTRINGS = (
    "passw", "passphrase", "secret", "token", "credential", "apikey", "accesskey", "privatekey",
    "authkey", "sessionkey", "signingkey", "encryptionkey", "masterkey", "licensekey", "cookie",
    "authorization", "bearer", "connectionstring", "dsn", "userpass",
)
# ... and whole words of the name (split at -, _, . and camelCase).
_SECRET_WORDS = {"key", "pass", "pwd", "pw", "auth", "sig", "signature", "jwt", "psk", "otp", "creds"}
# A name whose last word says it holds a location, not the secret itself, is not redacted.
_NOT_SECRET_LAST = {"file", "path", "dir", "directory", "mode", "type", "enabled", "url", "uri", "id", "name", "ref"}
_NOT_SECRET_NAMES = {"PWD", "OLDPWD"}  # shell variables holding directories
_WORD_SPLIT = re.compile(r"[-_.]+|(?<=[a-z0-9])(?=[A-Z])")


def _is_secret_name(name: str) -> bool:
    name = name.lstrip("-")
    if not name or name in _NOT_SECRET_NAMES:
        return False
    words = [w.lower() for w in _WORD_SPLIT.split(name) if w]
    if not words or words[-1] in _NOT_SECRET_LAST:
        return False
    flat = "".join(words)
    return any(s in flat for s in _SECRET_SUBSTRINGS) or any(w in _SECRET_WORDS for w in words)


# scheme://user:password@host  ->  scheme://user:***@host   (also in the middle of a string)
# The password runs to the last @ of the authority: in user:p@ss@host it is p@ss.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/?#\s]*)@")
# scheme://longtoken@host: a token used as the user name (GitHub, GitLab and similar)
_URL_USERTOKEN = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@]{16,})@")
# ?token=...&password=...  in URLs
_QUERY_PARAM = re.compile(r"(?P<pre>[?&;])(?P<name>[^=&\s#?]+)=(?P<val>[^&\s#]*)")
# Authorization: Bearer x / Authorization: x / X-Api-Key: x / Cookie: x
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization|\bx-[a-z0-9-]*(?:key|token|secret|auth)[a-z0-9-]*|\bcookie|\bapi-key)"
    r"(?P<sep>\s*:\s*)(?P<scheme>(?:bearer|basic|digest|token|negotiate|apikey)\s+)?"
    r"(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s'\"]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer(?=\s)|basic(?=\s+[A-Za-z0-9+/=]{8,}))(?P<sp>\s+)(?P<val>[^\s'\"]+)")
# NAME=value, --name=value, -Dname=value, name: value (YAML/JSON-ish) inside a longer string
_ASSIGN = re.compile(
    r"(?P<name>(?<![\w.\-])(?:--?|-D)?[A-Za-z_][\w.\-]*)(?P<sep>=|:=)(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s&]*)"
)
# name: value / name:value (YAML, headers such as PRIVATE-TOKEN: x, apikey:x) inside a string
_COLON = re.compile(
    r"(?P<name>(?<![\w.\-/:])[A-Za-z_][\w.\-]*)(?P<sep>\s*:(?!//)\s*)(?P<val>\"[^\"]*\"?|'[^']*'?|[^\s'\",}]+)"
)
_SCHEMES = {"bearer", "basic", "digest", "token", "negotiate", "apikey"}
# Tokens that are secrets wherever they stand (GitHub, GitLab, Slack, AWS access key ids, Slack webhooks).
_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_\-]{16,}"
    r"|xox[abposre]-[A-Za-z0-9\-]{8,}|AKIA[0-9A-Z]{16}"
    # Slack incoming webhooks: the URL path is the secret (hooks.slack.com/services/T../B../xxx)
    r"|(?<=hooks\.slack\.com/services/)[A-Za-z0-9_/\-]{8,})"
)
# Shell words that end one command and start another; wrappers that run the next word.
_SHELL_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}", "then", "do", "else", "!"}
_SHELL_SPLIT = re.compile(r"(;|&&|\|\||\|)")  # "a;b" is two commands even without a space
_SHELL_WRAPPERS = {"exec", "sudo", "env", "nohup", "time", "command", "nice", "timeout", "xargs"}
_JSON_KEY = re.compile(r"(?P<pre>\"(?P<name>[^\"]{1,64})\"\s*:\s*)(?P<val>\"(?:[^\"\\]|\\.)*\"?)")
_LONG_FLAG = re.compile(r"^--?[A-Za-z][\w.\-]+$")
_ASSIGN_NAME = re.compile(r"(?:-D)?[A-Za-z_][\w.\-]*")
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "api-key"}

_MYSQL_LIKE = {"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck", "mysqlpump",
               "mariadb", "mariadb-dump", "mariadb-admin", "mysqlsh"}
# Programs whose short option takes a password: program -> options (value attached or separate).
_SHORT_SECRET_OPTS = {"sshpass": ("-p",), "redis-cli": ("-a",), "keydb-cli": ("-a",), "valkey-cli": ("-a",)}
_CURL_LIKE = {"curl", "wget", "http", "https"}


def _redact_url_and_headers(s: str) -> str:
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", s)
    s = _URL_USERTOKEN.sub(lambda m: f"{m['scheme']}{REDACTED}@", s)
    s = _QUERY_PARAM.sub(
        lambda m: f"{m['pre']}{m['name']}={REDACTED}" if _is_secret_name(m["name"]) and m["val"] else m[0], s
    )
    s = _HEADER.sub(lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{REDACTED}", s)
    s = _BEARER.sub(lambda m: f"{m['scheme']}{m['sp']}{REDACTED}", s)
    return s


def _redact_assign(s: str, depth: int = 0) -> str:
    """NAME=value with a secret name; a value that is itself NAME=value is looked into
    (kubectl's --from-literal=password=x)."""

    def one(m: re.Match[str]) -> str:
        if m["val"] and _is_secret_name(m["name"]):
            return f"{m['name']}{m['sep']}{REDACTED}"
        if depth < 3 and "=" in m["val"]:
            return f"{m['name']}{m['sep']}{_redact_assign(m['val'], depth + 1)}"
        return m[0]

    return _ASSIGN.sub(one, s)


def _redact_colon(m: re.Match[str]) -> str:
    val = m["val"].strip("'\"")
    if not val or not _is_secret_name(m["name"]) or val.lower() in _SCHEMES or val.startswith(REDACTED):
        return m[0]
    return f"{m['name']}{m['sep']}{_mask(m['val'])}"


def _shell_commands(words: list[str]) -> list[tuple[str, list[str]]]:
    """A shell string's words cut into commands at ; && || | & (also `x;`): (program, words)."""
    out: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for w in words:
        if w in _SHELL_SEPARATORS:
            if current:
                out.append(("", current))
            out.append(("", [w]))
            current = []
            continue
        current.append(w)
        if w.endswith((";", "&", "|")) and not w.endswith("\\;"):
            out.append(("", current))
            current = []
    if current:
        out.append(("", current))
    result = []
    for _, cmd in out:
        prog = ""
        for w in cmd:
            bare = w.lstrip("({'\"$")
            if not bare or _ASSIGN_NAME.fullmatch(bare.partition("=")[0]) and "=" in bare:
                continue  # FOO=bar program ...
            if os.path.basename(bare) in _SHELL_WRAPPERS or bare.startswith("-"):
                continue
            prog = bare.rstrip(";&|)'\"")
            break
        result.append((prog, cmd))
    return result


def _redact_string(s: str) -> str:
    """Redact secrets inside one free-form string (a shell command, a JSON blob, a URL)."""
    s = _JSON_KEY.sub(lambda m: f"{m['pre']}\"{REDACTED}\"" if _is_secret_name(m["name"]) else m[0], s)
    s = _redact_assign(s)
    s = _redact_url_and_headers(s)
    s = _COLON.sub(_redact_colon, s)
    if " " in s or "\t" in s:
        # A shell string: "--password hunter2" with a space; mysql's "-phunter2"; each command of
        # "a; redis-cli -a pw" with its own program's rules.
        tokens = [p for t in re.split(r"(\s+)", s) for p in (_SHELL_SPLIT.split(t) if not t.isspace() else [t])]
        words = [t for t in tokens if t and not t.isspace()]
        redacted: list[str] = []
        for prog, cmd in _shell_commands(words):
            redacted.extend(_redact_tokens(cmd, prog or cmd[0], nested=True))
        it = iter(redacted)
        s = "".join(t if (not t or t.isspace()) else next(it) for t in tokens)
    return s


def _mask(arg: str) -> str:
    """'***' keeping the quotes around the value and a shell separator after it (`pw;`)."""
    body = arg.rstrip(";&|)")
    tail = arg[len(body) :]
    core = body.strip("'\"")
    if not core:
        return arg
    start = body.index(core[0])
    return body[:start] + REDACTED + body[start + len(core) :] + tail


def redact_comm(comm: str) -> str:
    """A process name (/proc/PID/comm, 15 characters) that looks like a secret: `TOKEN=abc12345`,
    `apikey:x`, a bare ghp_/glpat-/xox token. Other names are returned unchanged."""
    if not comm:
        return comm
    out = _KNOWN_TOKEN.sub(REDACTED, comm)
    if "=" in out or ":" in out:
        out = _COLON.sub(_redact_colon, _redact_assign(out))
    return out


def _redact_tokens(argv: list[str], prog_arg: str, *, nested: bool = False) -> list[str]:
    """Token rules: a secret option's value in the next argument, program-specific short options."""
    prog = os.path.basename(prog_arg)
    mysql = any(os.path.basename(a) in _MYSQL_LIKE for a in argv[:3])
    curl = prog in _CURL_LIKE
    short_opts = _SHORT_SECRET_OPTS.get(prog, ())
    out: list[str] = []
    secret_next = False  # the next argument is a secret value
    user_next = False  # the next argument is curl's user:password
    prev = ""
    for arg in argv:
        # the argument after sh's -c (-lc, -ec ...) is a command line
        shell_next = prev.startswith("-") and not prev.startswith("--") and prev.endswith("c") and len(prev) <= 4
        prev = arg
        if user_next:
            user_next = False
            if ":" in arg:
                out.append(arg.split(":", 1)[0] + f":{REDACTED}")
                continue
        if secret_next:
            secret_next = False
            low = arg.lower()
            if arg.strip("'\"").startswith(REDACTED):
                out.append(arg)  # already redacted by a pattern
                continue
            if low in ("bearer", "basic", "token"):
                out.append(arg)  # "Authorization:" "Bearer" "x": keep the scheme, redact what follows
                secret_next = True
                continue
            # "--token VALUE": the next argument is the value unless it is another option: one
            # that starts with "--", or a short "-v". "--password -dashpw" is a value.
            if not arg.startswith("-") or short_opts or (not arg.startswith("--") and len(arg) > 2):
                out.append(_mask(arg))
                continue
        # Program-specific short options first: the generic rule below would take "-pMyPassw0rd"
        # (a "pass" name) for a flag and mask the next argument instead.
        if mysql and arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            out.append(f"-p{REDACTED}")  # mysql -phunter2 (a separate "-p db" is the prompt + a database)
            continue
        if short_opts and arg in short_opts:
            out.append(arg)
            secret_next = True
            continue
        if short_opts and any(arg.startswith(o) and len(arg) > len(o) for o in short_opts):
            out.append(f"{arg[:2]}{REDACTED}")  # sshpass -phunter2, redis-cli -apw
            continue
        if not nested and shell_next and any(c.isspace() for c in arg):
            out.append(_redact_string(arg))  # sh -c "PGPASSWORD=x psql ...": a command line, not NAME=value
            continue
        name, eq, value = arg.partition("=")
        if eq and value and _LONG_FLAG.match(name) and _is_secret_name(name):
            out.append(f"{name}={REDACTED}")  # --password=hunter2 (the whole rest, spaces included)
            continue
        if eq and value and _LONG_FLAG.match(name) and not nested:
            out.append(f"{name}={_redact_string(value)}")  # --from-literal=password=x, --header=...
            continue
        if eq and value and _ASSIGN_NAME.fullmatch(name) and _is_secret_name(name.removeprefix("-D")):
            out.append(f"{name}={REDACTED}")  # DB_PASSWORD=hunter2, -Djavax.net.ssl.keyStorePassword=x
            continue
        if _LONG_FLAG.match(arg) and _is_secret_name(arg):
            out.append(arg)
            secret_next = True
            continue
        low = arg.lower()
        colon_name = arg[:-1].lstrip("'\"")
        if low.endswith(":") and (
            low[:-1] in _SECRET_HEADERS
            or (_ASSIGN_NAME.fullmatch(colon_name) is not None and _is_secret_name(colon_name))
        ):
            out.append(arg)  # "Authorization:" "x", "password:" "x" (YAML split over arguments)
            secret_next = True
            continue
        if low in ("bearer", "basic") and not nested:  # in strings the _BEARER pattern did it
            out.append(arg)
            secret_next = True
            continue
        if curl and arg in ("-u", "--user", "-U", "--proxy-user"):
            out.append(arg)
            user_next = True
            continue
        curl_user = arg.startswith(("--user=", "--proxy-user=")) or (arg[:2] in ("-u", "-U") and len(arg) > 2)
        if curl and curl_user and ":" in arg:
            out.append(arg.split(":", 1)[0] + f":{REDACTED}")  # curl -uuser:hunter2
            continue
        out.append(arg if nested else _redact_string(arg))
    return out


def redact_argv(argv: list[str], max_len: int = 1024) -> str:
    """argv as one line with secret values replaced by '***', cut to max_len characters with '…'."""
    if not argv:
        return ""
    line = " ".join(_redact_tokens(list(argv), argv[0]))
    line = _KNOWN_TOKEN.sub(REDACTED, line)  # ghp_..., glpat-..., xoxb-...: secrets wherever they stand
    # Control characters (a newline inside an argument) would break a one-line report.
    line = "".join(c if c.isprintable() else " " for c in line)
    if len(line) > max_len:
        line = line[: max(0, max_len - 1)] + "…"
    return line
