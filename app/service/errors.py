"""The service's one error base class. Each error the service raises on purpose is a `ServiceError`
with the HTTP `status` it is answered with and a one-line `reason`; the web apps map every one to
`{"detail": reason}` with that status (app.service.web.app). Bad input is a 4xx with its reason
(`PayloadError`); what the service depends on failing is a 502 (`PeerError`, `PrometheusError`,
`SinkError`); nothing the service raises on purpose becomes a 500.
"""

from __future__ import annotations

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """An error the service answers: `status` (HTTP) and `reason` (what went wrong, encodable)."""

    status: int = 502

    def __init__(self, reason: str = "", *, status: int | None = None) -> None:
        # The reason may quote what was sent or answered: keep it encodable whatever that was.
        reason = str(reason).encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
