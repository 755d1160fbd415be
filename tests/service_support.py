"""Shared helpers for the service tests (no tests here): a fake engine at our own seam, report
documents built from app.models, fixture payloads, and a loopback HTTP receiver that records; also
the loopback-port and tracer-availability helpers other tests share."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.models import (
    Cause,
    NodeStats,
    PodRef,
    ProcessReport,
    Report,
    Source,
    SourceKind,
    TracerInfo,
    Trigger,
    Verdict,
    utcnow,
)
from app.service.web.app import create_app, create_ui_app
from app.service.web.server import KEEP_ALIVE_SECONDS
from tests.needs import require_marker

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAPTURED = "am-0.25-nodememorymajorpagesfaults-firing-captured-here.json"


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "node_name": "node-a",
        "node_ip": "10.0.3.7",
        "data_dir": tmp_path / "data",
        "investigation_seconds": 30,
        "cooldown_seconds": 600,
        "sink_backoff_seconds": 0.01,
        "apiserver_url": None,
        # The recorder would ask the kubelet (built from node_ip) about every pod-shaped cgroup it
        # finds on this machine; tests of the recorder turn it on themselves.
        "recorder_interval_seconds": 0,
    }
    base.update(kw)
    return Settings(**base)


def make_report(
    node: str, trigger: Trigger | None = None, *, status: str = "complete", seconds: float = 30
) -> Report:
    now = utcnow()
    pod = PodRef(
        namespace="shop",
        name="cart-cache-7d9f",
        uid="0f3c2a1e-0000-4000-8000-000000000001",
        container="cache",
        container_id="abc123",
    )
    proc = ProcessReport(
        pid=4242,
        comm="cart-cache",
        cmdline="/usr/bin/cart-cache --password=<redacted>",
        major_faults=240_000,
        major_faults_per_second=8_000.0,
        series=[8000] * 30,
        host_process=False,
        pod=pod,
        sources=[
            Source(kind=SourceKind.FILE, path="/data/index.bin", faults=216_000, share=0.9),
            Source(kind=SourceKind.CODE, path="/usr/bin/cart-cache", faults=24_000, share=0.1),
        ],
        verdict=Verdict(
            summary="cart-cache re-reads /data/index.bin at its 64 MiB limit",
            cause=Cause.CONTAINER_MEMORY_LIMIT,
        ),
    )
    host = ProcessReport(pid=1, comm="systemd", major_faults=3, major_faults_per_second=0.1)
    return Report(
        node=node,
        status=status,  # type: ignore[arg-type]
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        window_seconds=seconds,
        trigger=trigger or Trigger(),
        tracer=TracerInfo(backend="perf-major", exact=True),
        node_stats=NodeStats(pgmajfault=240_003, pgmajfault_per_second=8000.1),
        processes=[proc, host],
        verdict=Verdict(
            summary="container cache of shop/cart-cache-7d9f re-reads its data from disk at 99% of its 64 MiB limit",
            cause=Cause.CONTAINER_MEMORY_LIMIT,
            advice=["raise the memory limit of shop/cart-cache-7d9f"],
        ),
    )


class FakeEngine:
    """Stands in for app.investigation.engine.investigate (same keywords). `hold=True` keeps it
    'running' until `release` is set or it is cancelled; `window_done` reports progress 1.0 first
    (the window closed, the engine is finishing)."""

    def __init__(self, *, hold: bool = False, fail: bool = False) -> None:
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started = threading.Event()
        self.window_closed = threading.Event()
        self.fail = fail
        self.calls: list[dict[str, Any]] = []
        self.cancelled = 0

    def __call__(
        self,
        settings: Settings,
        *,
        seconds: float | None = None,
        pids: list[int] | None = None,
        top: int | None = None,
        trigger: Trigger | None = None,
        cancel: threading.Event | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> Report:
        self.calls.append({"seconds": seconds, "trigger": trigger})
        cancel = cancel or threading.Event()
        self.started.set()
        if progress:
            progress(0.25, "tracing with perf-major")
        while not self.release.is_set():
            if self.window_closed.is_set() and progress:
                progress(1.0, "resolving addresses")
            if cancel.is_set():
                self.cancelled += 1
                return make_report(settings.node.node_name, trigger, status="cancelled")
            self.release.wait(0.01)
        if self.fail:
            raise RuntimeError("perf exploded")
        if progress:
            progress(1.0, "done")
        return make_report(settings.node.node_name, trigger)


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class LiveServer:
    """A real uvicorn server for `app` on 127.0.0.1 (a free port, or the socket given), in a
    thread with its own event loop, lifespan included."""

    def __init__(self, app: FastAPI, sock: socket.socket | None = None) -> None:
        self.sock = sock or bind_loopback()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        require_marker("servers", "a real uvicorn server")
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), what="uvicorn start")
        if not self.server.started:
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_serve(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """serve() in a fresh Python with this environment, run to its exit (for start-up failures: the
    exit code and what it wrote to stderr)."""
    require_marker("servers", "`serve` in a subprocess")
    return subprocess.run(
        [sys.executable, "-c", "from app.service.web.server import serve; serve()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A loopback port free at this moment, for a server started in a subprocess."""
    s = bind_loopback()
    port = int(s.getsockname()[1])
    s.close()
    return port


def require_tracers(*names: str, settings: Settings | None = None) -> None:
    """Every named tracer backend must work here: skips when not root or a tool is not installed,
    FAILS with the probe's reason when an installed one does not work (tests/strict.py)."""
    from tests.strict import need_tracer  # not at the top: tests.strict is a pytest plugin

    need_tracer(*names, settings=settings)


@contextmanager
def service(
    tmp_path: Path, engine: FakeEngine | None = None, **kw: Any
) -> Iterator[tuple[httpx.Client, FakeEngine]]:
    """The API app of one node, served for real on loopback; yields a client for it."""
    engine = engine or FakeEngine()
    app_kw = {k: kw.pop(k) for k in ("store", "transport", "peers") if k in kw}
    app = create_app(make_settings(tmp_path, **kw), investigator=engine, token=TOKEN, **app_kw)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as client:
        yield client, engine


def firing(
    node_labels: dict[str, str],
    *,
    fingerprint: str = "fp1",
    starts: str = "2026-11-25T19:22:35.215Z",
    alertname: str = "NodeMemoryMajorPagesFaults",
    status: str = "firing",
) -> dict[str, Any]:
    """A version 4 payload with one alert, shaped like the captured one."""
    body = copy.deepcopy(fixture(CAPTURED))
    alert = body["alerts"][0]
    labels = {"alertname": alertname, "job": "node", "severity": "warning", **node_labels}
    alert.update(labels=labels, fingerprint=fingerprint, startsAt=starts, status=status)
    body["status"] = status
    return body


def reports(client: httpx.Client) -> list[dict[str, Any]]:
    resp = client.get("/api/v1/reports", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["reports"])


class Recorder:
    """A real HTTP server on loopback that records each request; `fail_first` answers 503 to that
    many requests first (a receiver that fails then succeeds)."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.status = status
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                recorder.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body) if body else None,
                    }
                )
                code = recorder.status
                if recorder.fail_first > 0:
                    recorder.fail_first -= 1
                    code = 503
                payload = b'{"kind":"Event"}' if code < 300 else b'{"error":"busy"}'
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def listening_socket() -> socket.socket:
    """A loopback port that is ours from now on: listening at once and without SO_REUSEADDR
    (a port merely bound with SO_REUSEADDR can be handed to another process's bind(0) meanwhile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


class Instance:
    """One inspector as `serve` runs it: the API and the UI app, two uvicorn servers in one event
    loop (the UI reaches peers through the API app's HTTP client, which belongs to that loop)."""

    def __init__(self, api_app: FastAPI, api_sock: socket.socket) -> None:
        self.socks = [api_sock, listening_socket()]
        self.url, self.ui_url = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in self.socks)
        ui_app = create_ui_app(api_app)
        self.servers = [
            uvicorn.Server(
                uvicorn.Config(
                    app, log_level="warning", lifespan=ls, access_log=False, timeout_keep_alive=KEEP_ALIVE_SECONDS
                )
            )
            for app, ls in ((api_app, "on"), (ui_app, "off"))
        ]
        # the coroutine is made when the thread starts (in __enter__), so an Instance that is never entered
        # leaves no un-awaited coroutine behind
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        await asyncio.gather(*(srv.serve(sockets=[s]) for srv, s in zip(self.servers, self.socks, strict=True)))

    def __enter__(self) -> Instance:
        require_marker("servers", "real uvicorn servers (an Instance)")
        self.thread.start()
        wait_for(lambda: all(s.started for s in self.servers) or not self.thread.is_alive(), what="start")
        assert all(s.started for s in self.servers)
        # FastAPI builds a route's parameter models at its first request, and the routers are
        # module-level objects shared by every instance of this process: built concurrently by
        # several instances' threads at once, pydantic warns (an error under our filterwarnings).
        # One process serves one instance in production; here each instance builds them in turn.
        for path in ("/api/v1/workloads?scope=node", "/api/v1/investigations"):
            httpx.get(self.url + path, headers=AUTH, timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        for srv in self.servers:
            srv.should_exit = True
        self.thread.join(timeout=30)
        for s in self.socks:
            s.close()
