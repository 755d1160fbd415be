"""Redaction (app.parsers.redact): the policy case by case, and on real processes: each argv below is
started for real, its /proc/PID/cmdline (and /proc/PID/comm) read back and redacted, as the engine does
(issue 10, item 6)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.parsers.procfs import parse_cmdline
from app.parsers.redact import redact_argv, redact_comm
from tests.service_support import wait_for

PY_SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


@contextmanager
def running(argv: list[str]) -> Iterator[int]:
    """The process, once the kernel shows its argv (right after fork it is still being exec'd)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _cmdline(proc.pid)[1:] == argv[1:], timeout=10, what=f"{argv[0]} exec'd")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _cmdline(pid: int) -> list[str]:
    return parse_cmdline(Path(f"/proc/{pid}/cmdline").read_bytes())


CASES = [
    # (extra argv after a sleeping python, secret that must go, what must stay, covers)
    (["--password", "-dashpw", "--verbose"], "dashpw", "--password *** --verbose", "value after the flag starts with -"),
    (["--config", "password: yamlpw"], "yamlpw", "--config password: ***", "YAML name: value in one argument"),
    (["password:", "yamlpw"], "yamlpw", "password: ***", "YAML name: value over two arguments"),
    (["--from-literal=password=k8spw", "--from-literal=user=bob"], "k8spw",
     "--from-literal=password=*** --from-literal=user=bob", "kubectl --from-literal=password=x"),
    (["-H", "PRIVATE-TOKEN: gltok", "https://gitlab.example/api/v4/projects"], "gltok",
     "-H PRIVATE-TOKEN: *** https://gitlab.example/api/v4/projects", "GitLab header"),
    (["apikey:plainapikey"], "plainapikey", "apikey:***", "name:value without a space"),
    (["ghp_0123456789abcdefghijKLMNOPQRST", "glpat-abcdefghij0123456789", "xoxb-1234567890-abcdefghijkl"],
     "0123456789", "*** *** ***", "bare GitHub/GitLab/Slack tokens"),
]


@pytest.mark.parametrize(("extra", "secret", "kept", "covers"), CASES, ids=[c[3] for c in CASES])
def test_real_process_argv_is_redacted(extra: list[str], secret: str, kept: str, covers: str) -> None:
    with running([*PY_SLEEP, *extra]) as pid:
        argv = _cmdline(pid)
    assert argv[-len(extra):] == extra  # what the kernel holds is what we started
    line = redact_argv(argv)
    assert secret not in line, line
    assert line.endswith(kept), line


def test_redis_cli_after_semicolon_inside_sh_c() -> None:
    script = "sleep 30; redis-cli -h cache -a rpw2 ping;echo x;redis-cli -a 'rpw3' info"
    with running(["sh", "-c", script]) as pid:
        argv = _cmdline(pid)
    assert argv == ["sh", "-c", script]
    line = redact_argv(argv)
    assert "rpw2" not in line and "rpw3" not in line
    assert line == "sh -c sleep 30; redis-cli -h cache -a *** ping;echo x;redis-cli -a '***' info"


def test_comm_that_looks_like_a_secret_is_redacted(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep binary to copy")
    named = tmp_path / "TOKEN=abc12345"
    shutil.copy(sleep, named)
    with running([str(named), "30"]) as pid:
        comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
        argv = _cmdline(pid)
    assert comm == "TOKEN=abc12345"  # the kernel's name of the process
    assert redact_comm(comm) == "TOKEN=***"
    assert "abc12345" not in redact_argv(argv)
    # Ordinary names stay as they are.
    for name in ("nginx: worker", "kworker/0:1H", "postgres", "python3"):
        assert redact_comm(name) == name


@pytest.fixture(scope="module")
def pauser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program that ignores its arguments and waits: named like a client, it shows that client's argv."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build a program that takes any argv")
    d = tmp_path_factory.mktemp("pauser")
    (d / "p.c").write_text("#include <unistd.h>\nint main(void) { pause(); return 0; }\n")
    subprocess.run([cc, "-o", str(d / "pauser"), str(d / "p.c")], check=True, capture_output=True)
    return d / "pauser"


def _named(pauser: Path, name: str) -> str:
    target = pauser.parent / name
    if not target.exists():
        shutil.copy(pauser, target)
    return str(target)


CLIENT_CASES = [
    # (program, args, secret, expected line after the program path, covers)
    ("mysql", ["-pMyPassw0rd", "db"], "MyPassw0rd", "-p*** db",
     "mysql -p with the password attached: the password goes, the database stays"),
    ("mysql", ["-u", "root", "-pMyPassw0rd", "shop"], "MyPassw0rd", "-u root -p*** shop", "mysql -p after -u"),
    ("redis-cli", ["-aSecret99", "ping"], "Secret99", "-a*** ping", "redis-cli -a with the password attached"),
    ("curl", ["https://user:p@ss@host.example/x"], "ss@", "https://user:***@host.example/x",
     "an @ inside a URL's password"),
    ("curl", ["-d", "{}", "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/abcdefghijklmnopqrstuvwx"],
     "abcdefghijkl", "-d {} https://hooks.slack.com/services/***", "Slack webhook URL"),
    ("rclone", ["--userpass", "u:pw9"], "pw9", "--userpass ***", "--userpass user:password"),
]


@pytest.mark.parametrize(("prog", "args", "secret", "kept", "covers"), CLIENT_CASES, ids=[c[4] for c in CLIENT_CASES])
def test_real_client_argv_is_redacted(pauser: Path, prog: str, args: list[str], secret: str, kept: str,
                                      covers: str) -> None:
    path = _named(pauser, prog)
    with running([path, *args]) as pid:
        argv = _cmdline(pid)
    assert argv == [path, *args]
    line = redact_argv(argv)
    assert secret not in line, line
    assert line == f"{path} {kept}"


def test_sh_c_with_a_secret_variable_keeps_the_program() -> None:
    script = "PGPASSWORD=pgpw7 sleep 30; psql -h db"  # two commands: sh stays (it would exec a lone one)
    with running(["sh", "-c", script]) as pid:
        argv = _cmdline(pid)
    assert argv == ["sh", "-c", script]
    assert redact_argv(argv) == "sh -c PGPASSWORD=*** sleep 30; psql -h db"


# --- the policy, case by case (app.parsers.redact) ------------------------------------------------

SECRET = "hunter2Secret!"

REDACT_CASES = [
    # (argv, expected line, what it covers)
    (["app", f"--password={SECRET}", "--user", "bob"], "app --password=*** --user bob", "--password=x"),
    (["app", "--password", SECRET, "--verbose"], "app --password *** --verbose", "--password x"),
    (["app", "--token", SECRET], "app --token ***", "--token x"),
    (["app", f"--secret={SECRET}"], "app --secret=***", "--secret="),
    (["app", "--api-key", SECRET, f"--client-secret={SECRET}"], "app --api-key *** --client-secret=***",
     "--api-key, --client-secret"),
    (["app", f"-password={SECRET}", "-token", SECRET], "app -password=*** -token ***", "Go single-dash flags"),
    (["app", f"--db_password={SECRET}", f"--authToken={SECRET}"], "app --db_password=*** --authToken=***",
     "underscore and camelCase names"),
    (["app", f"--password={SECRET} with spaces"], "app --password=***", "a value with spaces"),
    (["mysql", "-uroot", f"-p{SECRET}", "shop"], "mysql -uroot -p*** shop", "mysql -p<pw>"),
    (["/usr/bin/mysqldump", "-p", "shop"], "/usr/bin/mysqldump -p shop", "mysql -p alone prompts; db kept"),
    (["sshpass", "-p", SECRET, "ssh", "host"], "sshpass -p *** ssh host", "sshpass -p"),
    (["redis-cli", "-h", "r", "-a", SECRET], "redis-cli -h r -a ***", "redis-cli -a"),
    (["env", f"FOO_KEY={SECRET}", f"MY_TOKEN={SECRET}", f"AWS_SECRET_ACCESS_KEY={SECRET}", "PATH=/bin"],
     "env FOO_KEY=*** MY_TOKEN=*** AWS_SECRET_ACCESS_KEY=*** PATH=/bin", "*_KEY=, *_TOKEN=, *_SECRET*="),
    (["env", f"DB_PASSWORD={SECRET}", f"PGPASSWORD={SECRET}", "PWD=/srv"], "env DB_PASSWORD=*** PGPASSWORD=*** PWD=/srv",
     "*PASSWORD*=; PWD is a directory"),
    (["java", f"-Djavax.net.ssl.keyStorePassword={SECRET}", "-Dfoo=bar", "-jar", "a.jar"],
     "java -Djavax.net.ssl.keyStorePassword=*** -Dfoo=bar -jar a.jar", "Java -D properties"),
    (["git", "clone", f"https://alice:{SECRET}@git.example.com/x.git"],
     "git clone https://alice:***@git.example.com/x.git", "URL user:pass"),
    (["app", f"--db-url=postgres://app:{SECRET}@db:5432/shop"], "app --db-url=postgres://app:***@db:5432/shop",
     "URL credentials inside a flag value"),
    (["git", "push", "https://ghp_0123456789abcdefghijKLMN@github.com/x/y"], "git push https://***@github.com/x/y",
     "token as URL user"),
    (["curl", "-H", f"Authorization: Bearer {SECRET}", "https://api/x"],
     "curl -H Authorization: Bearer *** https://api/x", "Authorization: Bearer"),
    (["curl", "-H", f"X-Api-Key: {SECRET}", "-H", "Accept: json"], "curl -H X-Api-Key: *** -H Accept: json",
     "API key header"),
    (["app", "Authorization:", "Bearer", SECRET], "app Authorization: Bearer ***", "header split over arguments"),
    (["curl", "-u", f"bob:{SECRET}", "https://x"], "curl -u bob:*** https://x", "curl -u user:pass"),
    (["curl", f"https://api/x?user=bob&access_token={SECRET}&page=2"],
     "curl https://api/x?user=bob&access_token=***&page=2", "secret query parameter"),
    (["app", "--config", f'{{"password": "{SECRET}", "user": "x"}}'],
     'app --config {"password": "***", "user": "x"}', "JSON argument"),
    (["sh", "-c", f"mysql --password={SECRET} -p{SECRET} shop && export API_TOKEN={SECRET}"],
     "sh -c mysql --password=*** -p*** shop && export API_TOKEN=***", "secrets inside a shell string"),
    (["sh", "-c", f"app --token {SECRET} --v"], "sh -c app --token *** --v", "--token x inside a shell string"),
    (["sh", "-c", f"curl -H 'Authorization: Bearer {SECRET}' http://u:{SECRET}@h/"],
     "sh -c curl -H 'Authorization: Bearer ***' http://u:***@h/", "quoted header and URL in a shell string"),
    (["app", "--tls-key-file=/etc/tls.key", "--password-file", "/run/pw", "--key", SECRET],
     "app --tls-key-file=/etc/tls.key --password-file /run/pw --key ***", "paths to secrets are kept"),
    (["app", "--password", "--verbose"], "app --password --verbose", "flag without value"),
]


@pytest.mark.parametrize(("argv", "want", "covers"), REDACT_CASES, ids=[c[2] for c in REDACT_CASES])
def test_redact_argv(argv: list[str], want: str, covers: str) -> None:
    got = redact_argv(argv)
    assert got == want
    assert SECRET not in got and "ghp_0123" not in got


def test_redact_argv_keeps_plain_commands() -> None:
    argv = ["/usr/bin/python3", "-m", "http.server", "--bind", "0.0.0.0", "8080", "--directory=/srv"]
    assert redact_argv(argv) == " ".join(argv)
    assert redact_argv(["postgres: checkpointer"]) == "postgres: checkpointer"
    assert redact_argv([]) == ""


def test_redact_argv_truncates_after_redacting() -> None:
    argv = ["app", f"--password={SECRET}", "x" * 5000]
    line = redact_argv(argv, max_len=100)
    assert len(line) == 100 and line.endswith("…")
    assert line.startswith("app --password=*** x")
    assert SECRET not in redact_argv(["app", "--token", SECRET], max_len=12)


def test_redact_argv_control_characters() -> None:
    assert redact_argv(["app", "a\nb"]) == "app a b"
