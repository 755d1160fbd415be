"""The listening socket for a listen address (`PFI_LISTEN_ADDRESS` / `PFI_UI_LISTEN_ADDRESS`, read
by app.parsers.address.parse_listen_address).

`[::]` (the default) is dual stack: one IPv6 socket with IPV6_V6ONLY off, so the webhook and the
probes answer on an IPv6 pod IP and on an IPv4 one (and on 127.0.0.1 and ::1). uvicorn's own binding
would not do that: asyncio's create_server sets IPV6_V6ONLY on every IPv6 socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket

from app.parsers.address import ALL_INTERFACES

log = logging.getLogger(__name__)

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
