"""The API and UI apps in this process, without a server: their lifespan runs, requests go through
httpx's ASGITransport. For tests of what the routes answer (fast tier: no socket, no thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from app.service.web.app import create_app, create_ui_app
from tests.service_support import AUTH, TOKEN, FakeEngine, make_settings


@dataclass
class Apps:
    api_app: FastAPI
    ui_app: FastAPI
    api: httpx.AsyncClient  # carries the token
    ui: httpx.AsyncClient  # Host 127.0.0.1 (the UI guard)


@asynccontextmanager
async def in_process(tmp_path: Path, **kw: Any) -> AsyncIterator[Apps]:
    """`store`, `transport` (the service's outbound HTTP, e.g. httpx.MockTransport for peers),
    `peers` go to create_app; the rest are settings (tests.service_support.make_settings)."""
    app_kw = {k: kw.pop(k) for k in ("store", "transport", "peers") if k in kw}
    api_app = create_app(make_settings(tmp_path, **kw), investigator=FakeEngine(), token=TOKEN, **app_kw)
    ui_app = create_ui_app(api_app)
    async with (
        api_app.router.lifespan_context(api_app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api_app), base_url="http://127.0.0.1:8080", headers=AUTH
        ) as api,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=ui_app), base_url="http://127.0.0.1:8081") as ui,
    ):
        yield Apps(api_app, ui_app, api, ui)
