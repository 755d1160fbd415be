"""The one client that asks Prometheus (issue 28): instant PromQL queries, each answer reused for
`prometheus_cache_seconds` and asked by one caller at a time however many wait for it (a storm's
reports on one node share one query), with a deadline (`prometheus_timeout_seconds`, sent as the
query's own `timeout` too), the answer read up to MAX_ANSWER_BYTES and MAX_SERIES series.

Auth as kube-prometheus-stack's Prometheus allows behind a proxy: a bearer token read from a file at
each query (a projected token rotates), and a CA bundle for an https URL. The token is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx

from app.config import FleetSettings
from app.parsers.prometheus import PromAnswerError, VectorSample, parse_vector

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 32 << 20  # a 1,000-node storm's fleet query is about 2 MB
MAX_SERIES = 100_000
MAX_TOKEN_BYTES = 16 << 10
CACHE_ENTRIES = 256  # distinct queries kept (the fleet's, and one a workload for "also on")


class PrometheusError(Exception):
    """Prometheus did not answer the query (unreachable, timed out, HTTP error, an error answer)."""


@dataclass(frozen=True)
class QueryAnswer:
    samples: list[VectorSample]
    truncated: bool  # more than MAX_SERIES series: the rest were left out


class PrometheusClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        cache_seconds: float,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.token_file = token_file
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self.client = httpx.AsyncClient(transport=transport, verify=verify, follow_redirects=False)
        self.on_request = on_request
        self.requests = 0  # queries sent (not answered from the cache)
        self._cache: dict[str, tuple[float, QueryAnswer | PrometheusError]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(
        cls, fleet: FleetSettings, transport: httpx.AsyncBaseTransport | None, on_request: Callable[[], None] | None
    ) -> PrometheusClient | None:
        if not fleet.prometheus_url:
            return None
        return cls(
            fleet.prometheus_url,
            timeout=fleet.prometheus_timeout_seconds,
            cache_seconds=fleet.prometheus_cache_seconds,
            token_file=fleet.prometheus_token_file,
            ca_file=fleet.prometheus_ca_file,
            transport=transport,
            on_request=on_request,
        )

    def _headers(self) -> dict[str, str]:
        if self.token_file is None:
            return {}
        try:
            with open(self.token_file, "rb") as f:
                token = f.read(MAX_TOKEN_BYTES).decode().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise PrometheusError(f"cannot read the token file {self.token_file}: {type(exc).__name__}") from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _ask(self, promql: str) -> QueryAnswer:
        self.requests += 1
        if self.on_request is not None:
            self.on_request()
        url = f"{self.url}/api/v1/query?" + urlencode({"query": promql, "timeout": f"{self.timeout:g}s"})
        buf = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.stream("GET", url, headers=self._headers(), timeout=self.timeout) as resp:
                    async for chunk in resp.aiter_bytes():
                        buf += chunk
                        if len(buf) > MAX_ANSWER_BYTES:
                            raise PrometheusError(f"answer over {MAX_ANSWER_BYTES} bytes")
                    status = resp.status_code
        except TimeoutError:
            raise PrometheusError(f"no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise PrometheusError(type(exc).__name__) from None
        try:
            samples, truncated = parse_vector(bytes(buf), MAX_SERIES)
        except PromAnswerError as exc:
            raise PrometheusError(f"HTTP {status}: {exc}") from None
        if truncated:
            log.warning("Prometheus answered more than %d series to %s: the rest are left out", MAX_SERIES, promql)
        return QueryAnswer(samples, truncated)

    async def query(self, promql: str) -> QueryAnswer:
        """The instant vector `promql` gives now, from the cache when it is fresh. Raises
        PrometheusError (also a cached one: a dead Prometheus is not asked again at once)."""
        lock = self._locks.setdefault(promql, asyncio.Lock())
        async with lock:
            hit = self._cache.get(promql)
            if hit is None or time.monotonic() - hit[0] >= self.cache_seconds:
                try:
                    answer: QueryAnswer | PrometheusError = await self._ask(promql)
                except PrometheusError as exc:
                    answer = exc
                if len(self._cache) >= CACHE_ENTRIES:
                    oldest = min(self._cache, key=lambda k: self._cache[k][0])
                    self._cache.pop(oldest, None)
                    self._locks.pop(oldest, None)
                hit = self._cache[promql] = (time.monotonic(), answer)
        if isinstance(hit[1], PrometheusError):
            raise PrometheusError(str(hit[1]))
        return hit[1]

    async def aclose(self) -> None:
        await self.client.aclose()
