"""The two ASGI apps: the API (webhook, reports, health, metrics) and the UI (report pages).

`create_app` makes the API app; its lifespan builds the ServiceState (app.state.svc). The UI app
made by `create_ui_app(api_app)` reads the same state: both run in one process and one event loop
(see server.serve).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.service.alerts.payload import PayloadError
from app.service.cluster.peers import PeerDirectory
from app.service.fleet import also_on
from app.service.report_store import ReportStore
from app.service.scheduler import Investigator
from app.service.state import ServiceState
from app.service.ui.guard import install_ui_guard
from app.service.web.api import api, public

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
        # One line naming the request; the traceback is logged once, by the server: Starlette
        # raises the exception on after this answer so that the server logs it (it was logged twice).
        # The client gets no internals.
        log.error(
            "unhandled error on %s %s: %s (traceback below)", request.method, request.url.path, type(exc).__name__
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(PayloadError, payload_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


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
        state.outbox.fleet_note = functools.partial(also_on, state)
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
        openapi_url=None,  # served under /api/v1/openapi.json, with the token (app.service.web.api)
    )
    app.state.settings = settings
    app.state.svc = None
    # /api/v1/reports/ is a 404, not a redirect built from what the Host header says
    app.router.redirect_slashes = False
    _install_error_handlers(app)
    app.include_router(public)
    app.include_router(api)
    return app


def create_ui_app(api_app: FastAPI) -> FastAPI:
    """The UI app (report pages), served on the UI address; shares `api_app`'s state."""
    from app.service.ui.routes import ui

    app = FastAPI(title="pagefault-inspector UI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_app = api_app
    app.router.redirect_slashes = False  # a redirect would be built from the Host header
    _install_error_handlers(app)
    install_ui_guard(app, api_app.state.settings.web)
    app.include_router(ui)
    return app
