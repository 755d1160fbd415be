"""The UI's guard: which `Host` names the token-free report pages answer (DNS rebinding), the
security headers on every UI response, and the warning when the UI listens beyond loopback."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from app.config import UI_PORT, WebSettings
from app.parsers.address import ALL_INTERFACES, AddressError, parse_listen_address, split_host_port

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
    """`Host` header or address -> the lowercased name, without port or IPv6 brackets ('' when it
    cannot be read)."""
    try:
        return split_host_port(value)[0].lower()
    except AddressError:
        return ""


def _ui_listen_host(web: WebSettings) -> str | None:
    """The UI's listen host (ALL_INTERFACES for `*`, `:port`, `[::]`); None when the address cannot
    be read (serve refuses to start then)."""
    try:
        return parse_listen_address(web.ui_listen_address, UI_PORT)[0].lower()
    except AddressError:
        return None


def allowed_ui_hosts(web: WebSettings) -> frozenset[str]:
    """Loopback names, the UI's own listen address and PFI_PUBLIC_URL's host."""
    names = set(LOOPBACK_NAMES)
    host = _ui_listen_host(web)
    if host and host not in (ALL_INTERFACES, "0.0.0.0"):
        names.add(host)
    if web.public_url:
        public_host = urlsplit(web.public_url).hostname
        if public_host:
            names.add(public_host.lower())
    return frozenset(names)


def ui_exposure_warning(web: WebSettings) -> str | None:
    """A warning when the token-free UI listens beyond loopback; None when it does not."""
    host = _ui_listen_host(web)
    if host is not None and host_allowed(host, LOOPBACK_NAMES):
        return None
    return (
        f"the report UI listens on {web.ui_listen_address.strip()}, beyond loopback, and has no token: anyone who "
        "reaches that address reads every report (command lines, pod names). Keep PFI_UI_LISTEN_ADDRESS on "
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


def install_ui_guard(app: FastAPI, web: WebSettings) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 reaches a port-forwarded UI
    with `Host: evil.example`; only loopback names and the configured ones are answered."""
    allowed = allowed_ui_hosts(web)

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
