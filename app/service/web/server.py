"""`pagefault-inspector serve`: the API and the UI, two uvicorn servers in one process and one
event loop, sharing one ServiceState.

- API on `PFI_LISTEN_ADDRESS` (default [::]:8080, dual stack): the webhook, the JSON API, health, metrics.
- UI on `PFI_UI_LISTEN_ADDRESS` (default 127.0.0.1:8081): the report pages, reached through
  `kubectl port-forward`.
SIGTERM/SIGINT: the running investigation is cancelled at once (the engine stops its tracer), both
servers stop taking requests, the cancelled report is written (one stuck in a neighbour, e.g. a
kubelet trickling its answer, is left behind after a few seconds with a report saying so), sink
deliveries still running get a moment (the outbox keeps the rest for the next start), and the process
exits 0. A watchdog ends the process after `PFI_SHUTDOWN_SECONDS` (50) whatever happens, inside
the chart's terminationGracePeriodSeconds (60).

With no settings at all it works on one machine: node name from the hostname, data in
./.pfi-data, and a webhook token generated there (0600) and printed once with a curl line to try.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from app.config import API_PORT, UI_PORT, Settings
from app.models import Report
from app.parsers.address import AddressError, client_host, parse_listen_address
from app.service import logs
from app.service.auth import TokenSource, load_token
from app.service.report_store import ROOT_DATA_DIR, data_dir_problem
from app.service.ui.guard import ui_exposure_warning
from app.service.web.app import create_app, create_ui_app
from app.service.web.connections import guarded_protocol
from app.service.web.listen import listen_socket
from app.tracers import leftovers

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 10
# Idle keep-alive connections are held longer than any client keeps them (httpx: 5 s, Go's
# net/http as in Alertmanager: 90 s), so a client never reuses a connection the server is closing
# at that moment (a RemoteProtocolError on a peer's report list; a failed webhook delivery).
KEEP_ALIVE_SECONDS = 120


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def first_run_message(settings: Settings, source: TokenSource) -> str:
    host, port = parse_listen_address(settings.web.listen_address, API_PORT)
    ui_host, ui_port = parse_listen_address(settings.web.ui_listen_address, UI_PORT)
    sample = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": sorted(settings.web.alertname_set())[0], "node": settings.node.node_name},
                "startsAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
        ],
    }
    return (
        f"\npagefault-inspector: generated a webhook token, saved in {source.path} (mode 0600):\n\n"
        f"    {source.token}\n\n"
        "Try it (starts one investigation of this machine):\n\n"
        f"    curl -sS -X POST -H 'Authorization: Bearer {source.token}' -H 'Content-Type: application/json' \\\n"
        f"      --data '{json.dumps(sample, separators=(',', ':'))}' \\\n"
        f"      http://{client_host(host)}:{port}/api/v1/alerts\n\n"
        f"Reports: http://{client_host(ui_host)}:{ui_port}/\n\n"
    )


def _setup_logging(settings: Settings | None = None) -> None:
    """Once for `serve`: INFO, text or JSON lines (PFI_LOG_FORMAT); see app.service.logs."""
    logs.configure((settings or Settings()).web.log_format)


def _watchdog(seconds: float) -> None:
    """Exit the process `seconds` from now whatever still runs (the chart's grace period would end
    in SIGKILL and lose what the store has not written; here the store's writes are done or in WAL)."""

    def fire() -> None:
        log.error("shutdown took longer than %.0fs: exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve` (two servers share one loop)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn wakes ten times a second to look at should_exit: two idle servers cost ~0.6% of a
        # core (bench row 6). Once a second still refreshes its Date header (on_tick's counter % 10)
        # and notices a shutdown within a second.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            await asyncio.sleep(1.0)


def _listen(settings: Settings) -> list[tuple[str, int, socket.socket]]:
    """Bind both addresses before anything starts; a bad address or a port in use is one clear
    line and exit 1 (the socket already bound is closed)."""
    bound: list[tuple[str, int, socket.socket]] = []
    for name, address, default in (
        ("PFI_LISTEN_ADDRESS", settings.web.listen_address, API_PORT),
        ("PFI_UI_LISTEN_ADDRESS", settings.web.ui_listen_address, UI_PORT),
    ):
        try:
            host, port = parse_listen_address(address, default)
            bound.append((host, port, listen_socket(host, port)))
        except (AddressError, OSError) as exc:
            for _, _, sock in bound:
                sock.close()
            log.error("cannot listen on %s=%s: %s", name, address, exc)
            raise SystemExit(1) from None
    return bound


async def run_servers(
    settings: Settings, api_app: FastAPI, ui_app: FastAPI, bound: list[tuple[str, int, socket.socket]] | None = None
) -> None:
    (host, port, api_sock), (ui_host, ui_port, ui_sock) = bound or _listen(settings)
    common = {"log_config": None, "access_log": False, "timeout_graceful_shutdown": GRACEFUL_SECONDS}
    common["timeout_keep_alive"] = KEEP_ALIVE_SECONDS
    limits = {"max_connections": settings.web.max_connections, "head_timeout": settings.web.request_head_timeout_seconds}
    api_http = guarded_protocol("API listener", **limits)  # type: ignore[arg-type]
    ui_http = guarded_protocol("UI listener", **limits)  # type: ignore[arg-type]
    api = _Server(uvicorn.Config(api_app, host=host, port=port, lifespan="on", http=api_http, **common))  # type: ignore[arg-type]
    ui = _Server(uvicorn.Config(ui_app, host=ui_host, port=ui_port, lifespan="off", http=ui_http, **common))  # type: ignore[arg-type]

    watchdog_started = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal watchdog_started
        log.info("%s: shutting down", sig.name)
        if not watchdog_started:
            watchdog_started = True
            _watchdog(settings.web.shutdown_seconds)
        state = getattr(api_app.state, "svc", None)
        if state is not None and state.scheduler.running is not None:
            state.scheduler.running.cancel.set()  # stop the tracer now, not after the servers
        if api.should_exit and sig == signal.SIGINT:
            api.force_exit = ui.force_exit = True
        api.should_exit = ui.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        api_task = asyncio.create_task(api.serve(sockets=[api_sock]), name="api-server")
        while not api.started and not api_task.done():
            await asyncio.sleep(0.02)
        if api_task.done():  # could not start (address in use...): uvicorn said why
            await api_task
            raise SystemExit(1)
        log.info("API on %s, UI on %s", _url(host, port), _url(ui_host, ui_port))
        ui_task = asyncio.create_task(ui.serve(sockets=[ui_sock]), name="ui-server")
        await asyncio.wait({api_task, ui_task}, return_when=asyncio.FIRST_COMPLETED)
        # One stopped (a signal, or the UI could not bind): stop the other too.
        api.should_exit = ui.should_exit = True
        await asyncio.gather(api_task, ui_task)
        if not ui.started:
            raise SystemExit(1)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _own_data_dir(settings: Settings) -> Settings:
    """The data dir to use, checked: as root without PFI_DATA_DIR the fixed ROOT_DATA_DIR (the
    chart mounts it), not the working directory, which may be anyone's. One that is not ours (see
    data_dir_problem) is one line naming the path and the fix, and exit 1."""
    if os.geteuid() == 0 and "data_dir" not in settings.store.model_fields_set:
        settings = settings.updated(data_dir=ROOT_DATA_DIR)
    problem = data_dir_problem(Path(settings.store.data_dir))
    if problem:
        log.error("%s", problem)
        raise SystemExit(1)
    return settings


def serve(settings: Settings | None = None, *, investigator: Callable[..., Report] | None = None) -> None:
    """Run the service until SIGTERM/SIGINT (blocking). `investigator`: the engine by default."""
    _setup_logging(settings)
    settings = settings or Settings()
    bound = _listen(settings)  # a bad address or a port in use fails before anything else
    settings = _own_data_dir(settings)
    try:
        leftovers.reap()  # tracers and folders of a killed predecessor
    except OSError as exc:  # no usable temporary directory (a full disk): said, and the start goes on
        log.warning("cannot look for a predecessor's tracers: %s", exc)
    try:
        source = load_token(settings)
    except (OSError, RuntimeError) as exc:  # a full disk, an unreadable token file: one line
        log.error("cannot get the webhook token: %s", exc)
        raise SystemExit(1) from None
    if source.generated:
        sys.stderr.write(first_run_message(settings, source))
        sys.stderr.flush()
    else:
        log.info("webhook token from %s", source.path)
    warning = ui_exposure_warning(settings.web)
    if warning:
        log.warning("%s", warning)
    # No token passed: the state watches the file and re-reads it when it changes (rotation).
    api_app = create_app(settings, investigator=investigator)
    ui_app = create_ui_app(api_app)
    asyncio.run(run_servers(settings, api_app, ui_app, bound))
