"""The routes' dependencies (the service, the part of it the routes that show reports read, the bearer
token), declared once here so that every route of the API and the UI asks for them the same way.
Tests swap them with `app.dependency_overrides` when they need to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.service.auth import bearer_matches
from app.service.root import Browse, Service

WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="pagefault-inspector"'}


def get_state(request: Request) -> Service:
    """The service the API app's lifespan built (app.service.root); the UI app reaches it through
    `api_app`."""
    app = request.app
    source = getattr(app.state, "api_app", app)
    state = getattr(source.state, "svc", None)
    if not isinstance(state, Service):
        raise HTTPException(status_code=503, detail="starting")
    return state


StateDep = Annotated[Service, Depends(get_state)]


def get_browse(state: StateDep) -> Browse:
    """What the routes that show reports read (app.service.root.Browse), not the whole service."""
    return state.browse


BrowseDep = Annotated[Browse, Depends(get_browse)]


def require_token(request: Request, state: StateDep) -> None:
    if not bearer_matches(request.headers.get("authorization"), state.token):
        missing = "authorization" not in request.headers
        raise HTTPException(
            status_code=401,
            detail="missing bearer token" if missing else "wrong bearer token",
            headers=WWW_AUTHENTICATE,
        )


TokenRequired = Depends(require_token)
