"""The two ASGI apps: the API (webhook, reports, health, metrics) and the UI (report pages).

`create_app` makes the API app; its lifespan builds the ServiceState (app.state.svc). The UI app
made by `create_ui_app(api_app)` reads the same state: both run in one process and one event loop
(see server.serve).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.service.api import api, public
from app.service.fleet import also_on
from app.service.payload import PayloadError
from app.service.peers import PeerDirectory
from app.service.scheduler import Investigator
from app.service.state import ServiceState
from app.service.store import ReportStore

log = logging.getLogger(__name__)


def _install_error_handlers(app: FastAPI) -> None:
    async def payload_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PayloadError)
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        ]
        return JSONResponse({"detail": "; ".join(errors) or "invalid request"}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; the client gets no internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(PayloadError, payload_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


# The UI has no JavaScript, no external assets, no frames: the policy says so, so that an injected
# tag could run nothing even if escaping ever failed. Inline styles are the only allowance.
UI_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def _host_only(value: str) -> str:
    """`Host` header or address -> the lowercased name, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def allowed_ui_hosts(settings: Settings) -> frozenset[str]:
    """Loopback names, the UI's own listen address and PFI_PUBLIC_URL's host."""
    names = set(LOOPBACK_NAMES)
    listen = settings.ui_listen_address.strip()
    host = _host_only(listen.rpartition(":")[0] if not listen.startswith("[") else listen)
    if host and host not in ("0.0.0.0", "::"):
        names.add(host)
    if settings.public_url:
        public_host = urlsplit(settings.public_url).hostname
        if public_host:
            names.add(public_host.lower())
    return frozenset(names)


def ui_exposure_warning(settings: Settings) -> str | None:
    """A warning when the token-free UI listens beyond loopback; None when it does not."""
    listen = settings.ui_listen_address.strip()
    host = _host_only(listen.rpartition(":")[0] if not listen.startswith("[") else listen)
    if host_allowed(host, LOOPBACK_NAMES):
        return None
    return (
        f"the report UI listens on {listen}, beyond loopback, and has no token: anyone who reaches "
        "that address reads every report (command lines, pod names). Keep PFI_UI_LISTEN_ADDRESS on "
        "127.0.0.1 and use kubectl port-forward"
    )


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    if not header:
        return False
    host = _host_only(header)
    if host in allowed or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.2, 0:0:0:0:0:0:0:1
    except ValueError:
        return False


def _install_ui_guard(app: FastAPI, settings: Settings) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 reaches a port-forwarded UI
    with `Host: evil.example`; only loopback names and the configured ones are answered."""
    allowed = allowed_ui_hosts(settings)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host")
        if not host_allowed(host, allowed):
            shown = repr(host)[:100].encode("ascii", "backslashreplace").decode()
            log.warning("UI request refused: Host %s is not a loopback or configured name", shown)
            response: Response = PlainTextResponse(
                f"Host {shown} is not allowed: open the reports through localhost "
                "(kubectl port-forward), or set PFI_PUBLIC_URL to the name you use.\n",
                status_code=421,
            )
        else:
            response = await call_next(request)
        response.headers.update(UI_SECURITY_HEADERS)
        return response


def create_app(
    settings: Settings | None = None,
    *,
    investigator: Investigator | None = None,
    store: ReportStore | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    peers: PeerDirectory | None = None,
    token: str | None = None,
) -> FastAPI:
    """The API app. Seams for tests: `investigator` (the engine), `store`, `transport` (outbound
    HTTP: forwarding, sinks, peers), `peers`, `token`. The API server is reached through
    PFI_APISERVER_URL (tests point it at a TLS stand-in)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await ServiceState.start(
            settings,
            investigator=investigator,
            store=store,
            transport=transport,
            peers=peers,
            token=token,
        )
        state.fleet_note = functools.partial(also_on, state)
        app.state.svc = state
        try:
            yield
        finally:
            await state.stop()
            app.state.svc = None

    app = FastAPI(
        title="pagefault-inspector",
        summary="Alertmanager webhook: which process, in which pod, causes a node's major page faults",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.svc = None
    _install_error_handlers(app)
    app.include_router(public)
    app.include_router(api)
    return app


def create_ui_app(api_app: FastAPI) -> FastAPI:
    """The UI app (report pages), served on the UI address; shares `api_app`'s state."""
    from app.service.ui_routes import ui

    app = FastAPI(title="pagefault-inspector UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_app = api_app
    _install_error_handlers(app)
    _install_ui_guard(app, api_app.state.settings)
    app.include_router(ui)
    return app
