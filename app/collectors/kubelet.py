"""Which pod a cgroup belongs to: the node's kubelet `GET /pods`, falling back to the API server.

The kubelet is asked over TLS with the service account's bearer token (RBAC `nodes/pods`, or
`nodes/proxy` where fine-grained kubelet authorization is off). When it cannot be reached and
`apiserver_fallback` is on, the in-cluster API server answers `GET /api/v1/pods` with a
`spec.nodeName` field selector. The answer is cached for `kubelet_cache_seconds`.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from app.config import Settings
from app.models import Attribution, PodRef
from app.parsers.cgroup import CgroupRef
from app.parsers.kubelet import PodIndex, parse_podlist

__all__ = ["SERVICEACCOUNT_DIR", "PodResolver"]

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_QOS_NAMES = {"guaranteed": "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}
_STATUS_HINTS = {
    401: "the token was not accepted",
    403: "RBAC: the service account needs get on nodes/pods (or nodes/proxy)",
}


class _FetchError(Exception):
    """A short reason, safe to show (never the token)."""


def _tls_reason(exc: BaseException) -> str | None:
    """The certificate verification message buried in httpx/httpcore's exception chain."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or "certificate verify failed"
        if isinstance(e, ssl.SSLError):
            return e.reason or str(e)
        if "CERTIFICATE_VERIFY_FAILED" in str(e):
            return "certificate verify failed"
        e = e.__cause__ or e.__context__
    return None


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def apiserver_base_url(settings: Settings) -> str | None:
    """The API server: PFI_APISERVER_URL, else the in-cluster service from the environment, else None."""
    if settings.apiserver_url:
        return settings.apiserver_url.rstrip("/")
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 service address
    return f"https://{host}:{port}"


class PodResolver:
    """Pod lookups for one node, with the PodList cached."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.serviceaccount_dir = Path(serviceaccount_dir)
        self.max_response_bytes = max_response_bytes
        self._lock = threading.Lock()
        self._cached: tuple[float, PodIndex | None, Attribution] | None = None

    # --- HTTP ---------------------------------------------------------------------------------

    def _get(self, who: str, url: str, token: str | None, verify: ssl.SSLContext | bool) -> PodIndex:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = self.settings.kubelet_timeout_seconds
        try:
            with httpx.Client(
                transport=self.transport, verify=verify, timeout=timeout, follow_redirects=False
            ) as client, client.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    hint = _STATUS_HINTS.get(resp.status_code)
                    if resp.status_code == 401 and not token:
                        hint = "no token was sent"
                    reason = f"{resp.status_code} {resp.reason_phrase}".strip()
                    raise _FetchError(f"{who} answered {reason}" + (f" ({hint})" if hint else ""))
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise _FetchError(f"{who} response larger than {self.max_response_bytes // (1 << 20)} MiB")
        except httpx.TimeoutException:
            raise _FetchError(f"{who} timed out after {timeout:g}s") from None
        except httpx.TransportError as exc:
            tls = _tls_reason(exc)
            if tls is not None:
                raise _FetchError(f"{who} TLS error: {tls}") from None
            raise _FetchError(f"{who} unreachable: {exc or type(exc).__name__}") from None
        try:
            return parse_podlist(bytes(body))
        except ValueError as exc:
            raise _FetchError(f"{who} sent no PodList: {exc}") from None

    def _from_kubelet(self) -> PodIndex:
        s = self.settings
        assert s.kubelet_url is not None
        verify: ssl.SSLContext | bool
        if s.kubelet_insecure_skip_tls_verify:
            verify = False
        elif s.kubelet_ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(s.kubelet_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise _FetchError(f"kubelet CA file {s.kubelet_ca_file} unusable: {exc.strerror or exc}") from None
        else:
            verify = ssl.create_default_context()  # the system's CAs (cluster-signed serving certs)
        url = s.kubelet_url.rstrip("/") + "/pods"
        return self._get("kubelet", url, _read_token(s.kubelet_token_file), verify)

    def _apiserver_url(self) -> str | None:
        base = apiserver_base_url(self.settings)
        if base is None:
            return None
        selector = quote(f"spec.nodeName={self.settings.node_name}", safe="=")
        return f"{base}/api/v1/pods?fieldSelector={selector}"

    def _from_apiserver(self, url: str) -> PodIndex:
        sa = self.serviceaccount_dir
        ca = sa / "ca.crt"
        try:
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca.exists() else True
        except (OSError, ssl.SSLError) as exc:
            raise _FetchError(f"API server CA file {ca} unusable: {exc}") from None
        return self._get("API server", url, _read_token(sa / "token"), verify)

    # --- the index ---------------------------------------------------------------------------

    def _fetch(self) -> tuple[PodIndex | None, Attribution]:
        kubelet_error: str
        if self.settings.kubelet_url:
            try:
                return self._from_kubelet(), Attribution(source="kubelet")
            except _FetchError as exc:
                kubelet_error = str(exc)
        else:
            kubelet_error = "no kubelet URL configured"
        api = self._apiserver_url() if self.settings.apiserver_fallback else None
        if api is None:
            return None, Attribution(source="none", error=kubelet_error)
        try:
            return self._from_apiserver(api), Attribution(source="apiserver", error=kubelet_error)
        except _FetchError as exc:
            return None, Attribution(source="none", error=f"{kubelet_error}; {exc}")

    def index(self) -> tuple[PodIndex | None, Attribution]:
        """The node's pods and who answered (cached, failures too, for kubelet_cache_seconds)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.settings.kubelet_cache_seconds:
                return self._cached[1], self._cached[2]
            index, attribution = self._fetch()
            self._cached = (time.monotonic(), index, attribution)
            return index, attribution

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def resolve(self, ref: CgroupRef | None) -> PodRef | None:
        """The pod of a cgroup; from the cgroup path alone (resolved_by 'cgroup') when no list names it."""
        if ref is None or (ref.pod_uid is None and ref.container_id is None):
            return None
        index, attribution = self.index()
        if index is not None:
            found = index.lookup(ref.pod_uid, ref.container_id)
            if found is not None:
                update: dict[str, object] = {"resolved_by": attribution.source}
                if found.runtime is None and ref.runtime is not None:
                    update["runtime"] = ref.runtime
                if found.container_id is None and ref.container_id is not None:
                    update["container_id"] = ref.container_id
                return found.model_copy(update=update)
        if ref.pod_uid is None:
            return None  # a container outside Kubernetes (plain docker)
        return PodRef(
            uid=ref.pod_uid,
            container_id=ref.container_id,
            runtime=ref.runtime,
            qos_class=_QOS_NAMES.get(ref.qos or ""),
            resolved_by="cgroup",
        )
