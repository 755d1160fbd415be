"""The few API server calls the service makes, over httpx with the service account token.

This is the seam the tests fake (an httpx transport that answers like the API server): peers
(`GET pods`, `GET nodes`) and Kubernetes Events (`POST events`). The token is read at each call:
projected service account tokens rotate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from app.collectors.kubelet import apiserver_base_url
from app.config import Settings

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    pass


class KubeApi:
    def __init__(
        self,
        base_url: str,
        *,
        token_file: Path | None,
        ca_file: Path | None = None,
        timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        verify: bool | str = str(ca_file) if ca_file else True
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, verify=verify, transport=transport
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> KubeApi | None:
        """None when there is no API server to talk to (not in a cluster, none configured)."""
        url = apiserver_base_url(settings)
        if url is None:
            return None
        ca = settings.apiserver_ca_file
        if ca is None and (SA_DIR / "ca.crt").exists():
            ca = SA_DIR / "ca.crt"
        token = settings.apiserver_token_file if settings.apiserver_token_file.exists() else None
        return cls(
            url, token_file=token, ca_file=ca, timeout=settings.apiserver_timeout_seconds, transport=transport
        )

    def _headers(self) -> dict[str, str]:
        if self.token_file is None:
            return {}
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise KubeError(f"cannot read the service account token: {exc}") from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self._client.request(method, path, headers=self._headers(), **kwargs)
        except httpx.HTTPError as exc:
            raise KubeError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise KubeError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()
        except ValueError:
            raise KubeError(f"{method} {path}: the answer is not JSON") from None

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await self._request("GET", path, params=params or {})

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, json=body)

    async def aclose(self) -> None:
        await self._client.aclose()


def service_account_namespace() -> str | None:
    try:
        return (SA_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None
