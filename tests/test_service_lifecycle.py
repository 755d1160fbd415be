"""The real `serve` process: SIGKILL mid-investigation leaves a `failed` report saying so; SIGTERM
while the investigation is stuck on a neighbour that trickles its answer ends well inside the
chart's grace period with the interrupted report stored; logs are INFO by default, one line each,
JSON lines with PFI_LOG_FORMAT=json."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.service_support import bind_loopback, free_port, wait_for

pytestmark = pytest.mark.servers  # `serve` in subprocesses, stopped by signals

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "lifecycle-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODE = "node-life"


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _alert(alertname: str = "NodeMemoryMajorPagesFaults", fingerprint: str = "fp-life") -> dict[str, Any]:
    return {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "node": NODE},
                "fingerprint": fingerprint,
                "startsAt": "2026-12-02T04:00:00Z",
            }
        ],
    }


@contextmanager
def serve_process(tmp_path: Path, argv: list[str], **env_extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    api = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{api}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_DATA_DIR=str(tmp_path / "data"),
        PFI_NODE_NAME=NODE,
        PFI_NODE_IP="10.0.77.1",
        PFI_KUBELET_URL="https://127.0.0.1:1",  # never the made-up node IP
        PFI_WEBHOOK_TOKEN_FILE=str(token_file),
        PFI_TRACER="procfs",
        PYTHONPATH=str(ROOT),
        **env_extra,
    )
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{api}"
    try:
        wait_for(lambda: _ok(f"{base}/healthz") or proc.poll() is not None, timeout=30, what="serve up")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _running(base: str) -> dict[str, Any] | None:
    invs = httpx.get(f"{base}/api/v1/investigations", headers=AUTH, timeout=5).json()["investigations"]
    return next((i for i in invs if i["state"] == "running"), None)


def test_sigkill_mid_investigation_leaves_a_failed_report_after_restart(tmp_path: Path) -> None:
    cli = ["-m", "app.cli", "serve"]
    with serve_process(tmp_path, cli, PFI_INVESTIGATION_SECONDS="30") as (proc, base):
        # A label value with CR/LF is quoted in the log line it reaches: it cannot forge a line.
        forged = _alert("Other\r\n2026-12-02 04:00:00,000 ERROR app.service.auth: forged")
        assert httpx.post(f"{base}/api/v1/alerts", json=forged, headers=AUTH, timeout=5).status_code == 202
        acc = httpx.post(f"{base}/api/v1/alerts", json=_alert(), headers=AUTH, timeout=5).json()["accepted"][0]
        wait_for(lambda: _running(base), what="investigation running")
        # A client that hangs up mid-body: one INFO line, no traceback.
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                f"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"alerts\":".encode()
            )
            time.sleep(0.3)
        time.sleep(0.7)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    # INFO by default for serve (the CLI used to set WARNING first).
    assert f"investigation {acc['id']} of node {NODE} starts" in err
    assert not [line for line in err.splitlines() if line.startswith("2026-12-02 04:00:00,000 ERROR")]
    assert "'Other\\r\\n2026-12-02" in err
    hangups = [line for line in err.splitlines() if "disconnected after" in line]
    assert len(hangups) == 1
    assert re.search(r" INFO app\.service\.web\.api: client 127\.0\.0\.1 disconnected after \d+ of 4000 body", hangups[0])
    assert "Traceback" not in err and "Exception in ASGI" not in err

    with serve_process(tmp_path, cli) as (proc, base):
        doc = httpx.get(f"{base}/api/v1/reports/{acc['id']}", headers=AUTH, timeout=5).json()
        assert doc["status"] == "failed"
        assert "stopped while this investigation ran" in doc["verdict"]["summary"]
        listed = httpx.get(f"{base}/api/v1/reports", headers=AUTH, timeout=5).json()["reports"]
        assert [(r["id"], r["status"]) for r in listed] == [(acc["id"], "failed")]
        assert httpx.get(f"{base}/readyz", timeout=5).json()["ready"] is True
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


class Trickler:
    """A neighbour (a kubelet, say) that answers one byte a second, forever: no read timeout fires."""

    def __init__(self) -> None:
        self.sock = bind_loopback()
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/pods"
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        self.connected.set()
        with conn:
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                while not self.stop.wait(1.0):
                    conn.sendall(b" ")
            except OSError:
                pass

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


STUCK_SCRIPT = """
import sys, httpx
from app.service.web.server import serve

def stuck(settings, *, progress=None, cancel=None, **kw):
    progress(0.95, "resolving pods (kubelet)")
    with httpx.stream("GET", sys.argv[1], timeout=5) as resp:  # 5 s per read: a trickle never trips it
        for _ in resp.iter_bytes():
            pass
    raise RuntimeError("the trickle ended")

serve(investigator=stuck)
"""


def test_sigterm_with_a_trickling_neighbour_ends_within_the_grace_period(tmp_path: Path) -> None:
    chart = yaml.safe_load((ROOT / "charts/pagefault-inspector/values.yaml").read_text())
    grace = float(chart["terminationGracePeriodSeconds"])
    with Trickler() as neighbour:
        argv = ["-c", STUCK_SCRIPT, neighbour.url]
        with serve_process(tmp_path, argv, PFI_LOG_FORMAT="json") as (proc, base):
            acc = httpx.post(f"{base}/api/v1/alerts", json=_alert(), headers=AUTH, timeout=5).json()["accepted"][0]
            assert neighbour.connected.wait(15)
            time.sleep(1.0)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=grace)
            took = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert took < 20, f"shutdown took {took:.1f}s"  # grace period 60 s; the stuck stage is left after 5 s
    # PFI_LOG_FORMAT=json: every line one JSON object.
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(d["level"] == "INFO" and "SIGTERM: shutting down" in d["message"] for d in lines)
    assert any("left behind in stage 'resolving pods (kubelet)'" in d["message"] for d in lines)
    db = sqlite3.connect(tmp_path / "data" / "reports.sqlite3")
    try:
        rows = db.execute("SELECT id, status, summary FROM reports").fetchall()
    finally:
        db.close()
    assert len(rows) == 1
    rid, status, summary = rows[0]
    assert (rid, status) == (acc["id"], "cancelled")
    assert "interrupted (shutdown)" in summary and "resolving pods (kubelet)" in summary
