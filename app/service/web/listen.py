"""Listen addresses: `PFI_LISTEN_ADDRESS` / `PFI_UI_LISTEN_ADDRESS` in any common form, and the
listening socket for it.

`[::]` (the default) is dual stack: one IPv6 socket with IPV6_V6ONLY off, so the webhook and the
probes answer on an IPv6 pod IP and on an IPv4 one (and on 127.0.0.1 and ::1). uvicorn's own binding
would not do that: asyncio's create_server sets IPV6_V6ONLY on every IPv6 socket.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket

log = logging.getLogger(__name__)

ALL_INTERFACES = "::"


class ListenAddressError(ValueError):
    """A listen address that cannot be read; the message says which and why."""


def _port(text: str, address: str, default_port: int | None) -> int:
    if text == "":
        if default_port is None:
            raise ListenAddressError(f"listen address {address!r} has no port")
        return default_port
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ListenAddressError(f"listen address {address!r}: port {text!r} is not a number 0-65535")
    return int(text)


def _host(text: str, address: str) -> str:
    if text in ("", "*"):
        return ALL_INTERFACES
    if ":" in text:
        try:
            ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise ListenAddressError(f"listen address {address!r}: {text!r} is not an IPv6 address") from None
        return text
    if any(c.isspace() or c in "/[]" for c in text):
        raise ListenAddressError(f"listen address {address!r}: {text!r} is not a host name or address")
    return text


def parse_listen_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """`[::]:8080`, `[::]`, `::`, `[fd00::1]:8080`, `fd00::1`, `0.0.0.0:8080`, `:8080`, `*:8080`,
    `host:port`, `host` -> (host, port). An empty host (`:8080`) means every interface, dual stack
    (`::`). A bare IPv6 address has no port (its last group would be ambiguous): write `[addr]:port`.
    Raises ListenAddressError with the reason for anything else. Pure: no name resolution."""
    text = address.strip()
    if not text:
        raise ListenAddressError("listen address is empty")
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise ListenAddressError(f"listen address {address!r}: '[' without ']'")
        if rest and not rest.startswith(":"):
            raise ListenAddressError(f"listen address {address!r}: expected ':port' after ']'")
        if ":" not in inner:
            raise ListenAddressError(f"listen address {address!r}: brackets hold an IPv6 address, not {inner!r}")
        return _host(inner, address), _port(rest[1:], address, default_port)
    if text.count(":") > 1:  # a bare IPv6 address
        return _host(text, address), _port("", address, default_port)
    host, sep, port = text.partition(":")
    return _host(host, address), _port(port if sep else "", address, default_port)


def client_host(host: str) -> str:
    """The host part of a URL that reaches a server listening on `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == ALL_INTERFACES:
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def listen_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A bound, listening TCP socket for (host, port) as parse_listen_address returns them.
    `::` is dual stack; when the kernel has no IPv6 at all (ipv6.disable=1) it falls back to
    0.0.0.0 and logs that. Raises OSError (address in use, not an address of this machine...)."""
    if host == ALL_INTERFACES:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise
            log.warning("no IPv6 on this machine (%s): listening on 0.0.0.0:%d instead of [::]", exc, port)
            return listen_socket("0.0.0.0", port, backlog)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _bind(sock, ("::", port), backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _bind(sock, sockaddr, backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, sockaddr: tuple[object, ...], backlog: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(sockaddr)
    sock.listen(backlog)
    sock.setblocking(False)
