"""The UI's guard: which `Host` names the token-free report pages answer (DNS rebinding), the
security headers on every UI response, and the warning when the UI listens beyond loopback."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from app.config import Settings

log = logging.getLogger(__name__)


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


def install_ui_guard(app: FastAPI, settings: Settings) -> None:
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
