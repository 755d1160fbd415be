"""The suite never sends traffic beyond this machine's loopback.

Settings in the tests carry node IPs like 10.0.3.7 (alerts name nodes by IP), and the app builds the
kubelet URL from the node IP, so a test that forgets to point the kubelet at a stand-in would try to
reach a private address. This guard refuses, in every test process, any TCP/UDP connect to an address
outside 127.0.0.0/8 and ::1 (as a ConnectionRefusedError, so the code under test sees an ordinary
unreachable peer), and records it; the autouse fixture in conftest.py then fails that test, naming
the address. Subprocesses get the same guard through tests/netguard_site/sitecustomize.py.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
attempts: list[str] = []
_lock = threading.Lock()


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # unix sockets, netlink
    host = address[0] if isinstance(address, tuple) and address else address
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name we did not resolve: refuse rather than guess
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _refuse(address: Any) -> None:
    with _lock:
        attempts.append(repr(address))
    raise ConnectionRefusedError(111, f"test network guard: connect to {address!r} refused (loopback only)")


def _connect(self: socket.socket, address: Any) -> None:
    if not _allowed(self, address):
        _refuse(address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if not _allowed(self, address):
        with _lock:
            attempts.append(repr(address))
        return 111
    return _real_connect_ex(self, address)


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]


def take() -> list[str]:
    with _lock:
        out = list(attempts)
        attempts.clear()
    return out
