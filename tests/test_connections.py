"""Connection limits (issue 23 item 4): `serve` closes a connection that has not sent a complete
request in time and caps open connections per listener. The real process, real sockets; what is
asserted are counts (connections held, the server's descriptors), not wall-clock tightness."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service_support import TOKEN, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serving(tmp_path: Path, **env_kw: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    api, ui = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{api}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{ui}",
        PFI_DATA_DIR=str(tmp_path / "data"),
        PFI_WEBHOOK_TOKEN_FILE=str(token_file),
        PFI_RECORDER_INTERVAL_SECONDS="0",
        PFI_NODE_NAME="node-a",
        PYTHONPATH=str(ROOT),
        **env_kw,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "from app.service.web.server import serve; serve()"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _healthy(api) or proc.poll() is not None, timeout=30, what="serve up")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        yield proc, api
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_hostile(port: int, idle: int, half_head: int, half_body: int) -> list[socket.socket]:
    """Connections that never finish a request: silent, half a header, half a body."""
    socks = []
    partial = (
        [b""] * idle
        + [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "] * half_head
        + [
            b"POST /api/v1/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"alerts\": ["
        ]
        * half_body
    )
    for data in partial:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if data:
            s.sendall(data)
        s.setblocking(False)
        socks.append(s)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many the server has not closed (no EOF or reset seen; what it wrote is read and dropped)."""
    n = 0
    for s in socks:
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break  # EOF: the server closed it
        except BlockingIOError:
            n += 1
        except OSError:
            pass  # reset: closed
    return n


@pytest.mark.servers
def test_idle_and_half_sent_connections_are_closed_and_capped(tmp_path: Path) -> None:
    cap, timeout = 50, 2.0
    with serving(tmp_path, PFI_MAX_CONNECTIONS=str(cap), PFI_REQUEST_HEAD_TIMEOUT_SECONDS=str(timeout)) as (
        proc,
        port,
    ):
        time.sleep(0.5)
        before = descriptors(proc.pid)
        socks = open_hostile(port, idle=200, half_head=20, half_body=20)
        try:
            time.sleep(0.5)
            held_at_once = still_open(socks)
            fds_at_once = descriptors(proc.pid)
            wait_for(lambda: still_open(socks) == 0, timeout=30, what="every hostile connection closed")
            wait_for(lambda: descriptors(proc.pid) <= before + 2, timeout=10, what="descriptors back")
            after = descriptors(proc.pid)
            assert _healthy(port)  # and the listener still serves
        finally:
            for s in socks:
                s.close()
    # 240 sent nothing usable: at most the cap was held at once, and each held one was closed
    assert held_at_once <= cap, held_at_once
    assert fds_at_once <= before + cap + 2, (before, fds_at_once)
    assert after <= before + 2, (before, after)


@pytest.mark.servers
def test_a_slow_but_complete_request_is_answered(tmp_path: Path) -> None:
    """A head sent in pieces within the timeout is served; the deadline is for the whole head."""
    with serving(tmp_path, PFI_REQUEST_HEAD_TIMEOUT_SECONDS="3") as (_proc, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.5)
        answer = s.recv(4096)
        s.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer


@pytest.mark.servers
def test_a_500_logs_one_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As serve runs uvicorn (log_config=None: its loggers reach ours): our handler's one line names
    the request, the server's record carries the traceback; it was logged twice."""
    import threading

    import uvicorn

    from app.service.web.app import create_app
    from tests.service_support import FakeEngine, listening_socket, make_settings

    app = create_app(make_settings(tmp_path), investigator=FakeEngine(), token=TOKEN)

    async def boom() -> None:
        raise ValueError("a bug")

    app.add_api_route("/boom", boom)
    sock = listening_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    with caplog.at_level(logging.INFO):
        thread.start()
        try:
            wait_for(lambda: server.started, what="uvicorn start")
            resp = httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}/boom", timeout=10)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
    assert resp.status_code == 500 and resp.json() == {"detail": "internal error"}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert any("unhandled error on GET /boom: ValueError" in r.getMessage() for r in caplog.records)
