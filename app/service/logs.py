"""Logging for `serve`, configured once: INFO by default, text or JSON lines (`PFI_LOG_FORMAT=json`).

Log lines carry what alerts carry (label values, node names, fingerprints). A CR or LF in one must
not start a line of its own that looks like ours: the text format writes every control character
of a message as a visible escape (`\\n`, `\\x1b`, `\\u202e`); the JSON format is one object a line
by construction. uvicorn's loggers propagate to the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_configured = False


def visible(text: str) -> str:
    """Control and bidi characters as escapes (`\\n`, `\\x00`, `\\u202e`); other text unchanged."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SafeTextFormatter(logging.Formatter):
    """The usual one-line text format; the message cannot break the line (the traceback of an
    exception follows on lines of its own, as usual)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _encodable(visible(record.message))
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _encodable(record.getMessage()),
        }
        if record.exc_info:
            doc["exception"] = _encodable(self.formatException(record.exc_info))
        return json.dumps(doc)  # ASCII: no raw control or bidi character reaches the reader


HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def quiet_http_clients() -> None:
    """httpx logs every request's full URL at INFO (`HTTP Request: POST https://hooks.slack.com/
    services/T…/B…/SECRET`); a Slack webhook URL is a credential. WARNING and above only, also
    under --verbose."""
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None) -> bool:
    """Set up the root logger once (later calls do nothing and return False)."""
    global _configured
    if _configured:
        return False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeTextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    quiet_http_clients()
    _configured = True
    return True
