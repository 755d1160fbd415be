"""HTTPS requests to the kubelet and the API server with an OVERALL deadline.

urllib3 (and so the `kubernetes` client on top of it) only has per-operation timeouts: a server that
trickles its answer a byte every few seconds never trips them. Here every socket a request opens
is registered with the caller's `Deadline`; when it expires a timer shuts the sockets down, so the
blocked read returns at once and the request fails with "timed out after N s" (connect, TLS, headers
and body all count). Bad URLs and TLS problems become `FetchError`s with a short reason, never a
crash. No token ever appears in a reason.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Deadline", "FetchError", "check_url", "describe", "host_url", "read_body", "track"]


class FetchError(Exception):
    """A short reason, safe to show (never the token)."""


# --- the overall deadline ---------------------------------------------------------------------------

_local = threading.local()


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown (not SSLSocket's, which drops its SSL object under a reader's
    # feet): the fd is shut, the reading thread's recv returns, the request fails.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Deadline:
    """`with Deadline(5):` every socket opened or reused by this thread's requests inside the block
    is shut down 5 s after the block began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks, self._socks = self._socks, []
        for s in socks:
            _shut(s)

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.expired:
                self._socks.append(sock)
                return
        _shut(sock)

    def __enter__(self) -> Deadline:
        self._previous = getattr(_local, "deadline", None)
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _local.deadline = self._previous


def _watch(sock: socket.socket | None) -> None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _Tracked:
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _watch(getattr(self, "sock", None))  # a kept-alive connection, reused
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def track(pool_manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """Make a PoolManager's connections obey the current thread's Deadline."""
    pool_manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
    return pool_manager


# --- URLs -------------------------------------------------------------------------------------------


def host_url(host: str, port: int, scheme: str = "https") -> str:
    """`https://10.0.3.7:10250`, `https://[fd00::5]:10250` (IPv6 bracketed)."""
    host = host.strip().strip("[]")
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_url(url: str, who: str) -> str:
    """The URL without a trailing slash, or FetchError saying what is wrong with it. An IPv6 address
    without brackets (`https://fd00::5:10250`) is refused, not guessed at: `fd00::5:10250` is also a
    valid IPv6 address, so where the port starts cannot be known."""
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise FetchError(f"{who} URL {text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise FetchError(f"{who} URL {text!r} must start with https://")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not netloc.startswith("[") and netloc.count(":") > 1:
        raise FetchError(
            f"{who} URL {text!r}: an IPv6 address needs brackets, e.g. https://[fd00::5]:10250 "
            "(set PFI_NODE_IP and leave the URL unset to have it built)"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise FetchError(f"{who} URL {text!r}: {exc}") from None
    if not host:
        raise FetchError(f"{who} URL {text!r} has no host")
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise FetchError(f"{who} URL {text!r}: {host!r} in brackets is not an IPv6 address") from None
    if port == 0:
        raise FetchError(f"{who} URL {text!r}: port 0")
    return text.rstrip("/")


# --- errors and bodies ------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)
        e = reason if isinstance(reason, BaseException) else (e.__cause__ or e.__context__)


# What a request fails with when the network, TLS, the peer or the deadline is the cause (urllib3's
# errors, which wrap most; http.client's; socket and TLS errors, which are OSErrors). Anything else
# raised around a request is our own bug and surfaces with its traceback.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def describe(exc: BaseException, who: str, deadline: Deadline) -> str:
    """The reason for a failed request: deadline, TLS, refused, bad URL..."""
    if deadline.expired:
        return f"{who} timed out after {deadline.seconds:g}s"
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"{who} TLS error: {e.verify_message or 'certificate verify failed'}"
        if isinstance(e, ssl.SSLError):
            return f"{who} TLS error: {e.reason or e}"
        if isinstance(e, urllib3.exceptions.NewConnectionError):  # (a subclass of ConnectTimeoutError)
            continue
        if isinstance(e, urllib3.exceptions.TimeoutError | TimeoutError):
            return f"{who} timed out after {deadline.seconds:g}s"
        if isinstance(e, urllib3.exceptions.LocationParseError | urllib3.exceptions.LocationValueError):
            return f"{who} URL unusable: {e}"
        if isinstance(e, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return f"{who} unreachable: cannot resolve the host name"
        if isinstance(e, ConnectionRefusedError):
            return f"{who} unreachable: connection refused"
        if isinstance(e, OSError) and e.strerror:
            return f"{who} unreachable: {e.strerror}"
    return f"{who} unreachable: {type(exc).__name__}"


def read_body(resp: Any, who: str, max_bytes: int) -> bytes:
    """The body of an unread urllib3 response, at most max_bytes."""
    body = bytearray()
    try:
        for chunk in resp.stream(1 << 16, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
                raise FetchError(f"{who} response larger than {size}")
    except BaseException:
        resp.close()
        raise
    resp.release_conn()
    return bytes(body)
