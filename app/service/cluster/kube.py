"""The service's door to the API server: app.collectors.apiserver (the one client, on the official
`kubernetes` package) called from a small thread pool of its own, so a slow API server can neither
block the event loop nor take the default executor's threads (the store and the UI use those).

Each call has the API server's overall deadline (`PFI_APISERVER_TIMEOUT_SECONDS`, enforced in the
worker thread by closing its socket) and, around it, an asyncio bound a little longer for what a
socket deadline cannot end (a DNS lookup). `kubernetes` is imported at the first call, not at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.collectors.apiserver import (
    ApiServer,
    ApiServerConfig,
    ApiServerError,
    event_body,
    service_account_namespace,
)
from app.config import ApiServerSettings

__all__ = ["KubeApi", "KubeError", "event_body", "service_account_namespace"]

log = logging.getLogger(__name__)

KubeError = ApiServerError
T = TypeVar("T")
WORKERS = 4
GRACE_SECONDS = 2.0


class KubeApi:
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.timeout = server.config.timeout
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, apiserver: ApiServerSettings) -> KubeApi | None:
        """None when there is no API server to talk to (not in a cluster, none configured)."""
        config = ApiServerConfig.from_settings(apiserver)
        return cls(ApiServer(config)) if config is not None else None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pfi-apiserver")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, fn, *args), timeout=self.timeout + GRACE_SECONDS
            )
        except TimeoutError:
            raise KubeError(f"API server timed out after {self.timeout:g}s") from None

    async def list_pods(self, namespace: str, label_selector: str) -> dict[str, Any]:
        return await self._run(self.server.list_pods, namespace, label_selector)

    async def list_nodes(self) -> dict[str, Any]:
        return await self._run(self.server.list_nodes)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        return await self._run(self.server.create_event, namespace, event)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.server.close)
