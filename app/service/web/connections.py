"""Connection limits for the two listeners, on uvicorn's own h11 protocol (app.service.web.server).

uvicorn closes an idle keep-alive connection (timeout_keep_alive) but has no timeout for a request
that never completes, and no cap on open connections: 1,000 sockets that never sent a byte, or
sent half a header or half a body, were all held for ever (a descriptor each, no token needed).
Here, per listener:
- a request head, and its body, must be complete within `head_timeout` seconds of the connection
  opening, or of the request's first byte on a kept-alive connection; otherwise the connection is
  closed (a request whose body stops arriving reads as a client disconnect: a 400 logged once);
- at most `max_connections` connections are open at once; one past the cap is answered
  `503 too many connections` and closed at once, before anything of it is read.
An idle kept-alive connection between requests is uvicorn's (timeout_keep_alive).
What is closed or refused is logged as one line a minute at most per listener, with counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 60.0
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n"
)


class _Tally:
    """Closed and refused connections of one listener, logged as counts at most once a minute."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0
        self.refused = 0
        self._logged_at = float("-inf")

    def note(self, *, closed: int = 0, refused: int = 0) -> None:
        self.closed += closed
        self.refused += refused
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning(
                "%s: %d connection(s) closed without a complete request in time, %d refused over the"
                " connection cap, since the start",
                self.name,
                self.closed,
                self.refused,
            )


def guarded_protocol(name: str, *, max_connections: int, head_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request deadline and a connection cap, for one listener
    (`uvicorn.Config(http=...)`; each uvicorn server counts its own connections)."""
    tally = _Tally(name)

    class GuardedH11Protocol(H11Protocol):
        limits = tally
        _refused = False
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.server_state.connections) >= max_connections:
                self._refused = True
                self.transport = transport
                transport.write(REFUSED)
                transport.close()
                tally.note(refused=1)
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._between_requests() and self._deadline is None:
                self._arm()  # a new request on a kept-alive connection: its head is due in time
            super().data_received(data)
            if not self._between_requests() and not self.cycle.more_body:
                self._disarm()  # head and body are in: the app has all of the request

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(head_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._between_requests() or self.cycle.more_body:
                tally.note(closed=1)
                self.transport.close()

    return GuardedH11Protocol


def limits_of(protocol: Any) -> _Tally | None:
    """The tally of a protocol class made by guarded_protocol (tests, metrics)."""
    return getattr(protocol, "limits", None)
