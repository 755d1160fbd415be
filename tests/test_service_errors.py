"""The service's one error base class (app.service.errors): each error it raises on purpose is
answered with its own status and reason, on the API app and the UI app alike; bad input stays a 4xx
with its reason, never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.service.alerts.payload import PayloadError
from app.service.cluster.peers import PeerError
from app.service.cluster.prometheus import PrometheusError
from app.service.delivery.sinks import SinkError
from app.service.errors import ServiceError
from app.service.web.app import create_app, create_ui_app
from tests.service_support import make_settings


async def _get(transport: httpx.ASGITransport, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (PayloadError(413, "body larger than 1048576 bytes"), 413, "body larger than 1048576 bytes"),
        (PeerError("node-b (HTTP 503)"), 502, "node-b (HTTP 503)"),
        (PrometheusError("timed out after 5s"), 502, "timed out after 5s"),
        (SinkError("slack: HTTP 404"), 502, "slack: HTTP 404"),
    ],
)
def test_each_service_error_is_answered_with_its_status_and_reason(
    tmp_path: Path, error: ServiceError, status: int, detail: str
) -> None:
    """A peer or Prometheus failing under a route is a 502 that says which, not an `internal error` 500."""
    api_app = create_app(make_settings(tmp_path))
    ui_app = create_ui_app(api_app)
    for app in (api_app, ui_app):

        @app.get("/boom")
        async def boom() -> None:
            raise error

        # no lifespan: the route needs no service; the UI app is asked under a Host it answers
        answer = asyncio.run(_get(httpx.ASGITransport(app=app, raise_app_exceptions=False), "/boom"))
        assert (answer.status_code, answer.json()) == (status, {"detail": detail})


def test_a_reason_that_does_not_encode_is_escaped() -> None:
    """The reason may quote what a client sent: a lone surrogate is kept as an escape, so the answer
    can be written."""
    assert PayloadError(422, "label \udcff").reason == "label \\udcff"
    assert PeerError("x").status == 502 and PayloadError(400, "bad").status == 400
