"""Which pod a cgroup belongs to: the node's kubelet `GET /pods`, falling back to the API server.

The kubelet is asked over TLS with the service account's bearer token (RBAC `nodes/pods`, or
`nodes/proxy` where fine-grained kubelet authorization is off) at `PFI_KUBELET_URL`, or, when that
is unset, at `https://<PFI_NODE_IP>:<PFI_KUBELET_PORT>` (IPv6 bracketed). When it cannot be reached
and `apiserver_fallback` is on, the API server (app.collectors.apiserver: its URL, CA, token and
timeout settings) lists the pods with a `spec.nodeName` field selector. Every fetch has an overall
deadline; any URL, TLS or network problem ends in `Attribution.error`, never an exception. The
answer is cached for `kubelet_cache_seconds`.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from typing import Protocol

import urllib3

from app.collectors.apiserver import ApiServer, ApiServerConfig, ApiServerError
from app.collectors.fetch import (
    TRANSPORT_ERRORS,
    Deadline,
    FetchError,
    check_url,
    describe,
    host_url,
    read_body,
    track,
)
from app.collectors.owners import OwnerResolver
from app.config import ApiServerSettings, KubeletSettings, NodeSettings
from app.models import Attribution, PodRef
from app.parsers.cgroup import CgroupRef
from app.parsers.kubelet import PodIndex, parse_podlist

__all__ = ["PodDirectory", "kubelet_url"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_QOS_NAMES = {"guaranteed": "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}
_STATUS_HINTS = {
    401: "the token was not accepted",
    403: "RBAC: the service account needs get on nodes/pods (or nodes/proxy)",
}


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class PodLookupSettings(Protocol):
    """What the pod lookups read: the kubelet's group, this node's name and addresses, and the API
    server's group for the fallback. `app.config.Settings` is one."""

    @property
    def kubelet(self) -> KubeletSettings: ...

    @property
    def node(self) -> NodeSettings: ...

    @property
    def apiserver(self) -> ApiServerSettings: ...


def kubelet_url(settings: PodLookupSettings) -> str | None:
    """PFI_KUBELET_URL, else https://<PFI_NODE_IP>:<PFI_KUBELET_PORT> (the first IP; IPv6 in
    brackets), else None."""
    if settings.kubelet.kubelet_url and settings.kubelet.kubelet_url.strip():
        return settings.kubelet.kubelet_url.strip()
    ips = [p.strip() for p in (settings.node.node_ip or "").split(",") if p.strip()]
    return host_url(ips[0], settings.kubelet.kubelet_port) if ips else None


class PodDirectory:
    """Pod lookups for one node, with the PodList cached."""

    def __init__(self, settings: PodLookupSettings, *, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.settings = settings
        self.max_response_bytes = max_response_bytes
        self._lock = threading.Lock()
        self._cached: tuple[float, PodIndex | None, Attribution] | None = None
        config = ApiServerConfig.from_settings(settings.apiserver) if settings.kubelet.apiserver_fallback else None
        self._apiserver = ApiServer(config) if config is not None else None
        self.owners = OwnerResolver(self._apiserver)  # pods' owner chains (issue 16)

    # --- the kubelet ---------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        if s.kubelet.kubelet_insecure_skip_tls_verify:
            # Chosen by the operator (PFI_KUBELET_INSECURE_SKIP_TLS_VERIFY): not a warning per request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if s.kubelet.kubelet_ca_file is not None:
            try:
                return ssl.create_default_context(cafile=str(s.kubelet.kubelet_ca_file))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise FetchError(f"kubelet CA file {s.kubelet.kubelet_ca_file} unusable: {reason}") from None
        return ssl.create_default_context()  # the system's CAs (cluster-signed serving certs)

    def _from_kubelet(self, url: str) -> PodIndex:
        s = self.settings
        who = "kubelet"
        base = check_url(url, who)
        ctx = self._ssl_context()
        token = _read_token(s.kubelet.kubelet_token_file)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = s.kubelet.kubelet_timeout_seconds
        pool = track(urllib3.PoolManager(
            ssl_context=ctx, retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout),
            assert_hostname=False if s.kubelet.kubelet_insecure_skip_tls_verify else None,
        ))
        with Deadline(timeout) as deadline:
            try:
                resp = pool.request("GET", base + "/pods", headers=headers, preload_content=False,
                                    redirect=False)
                if resp.status != 200:
                    resp.close()
                    hint = _STATUS_HINTS.get(resp.status)
                    if resp.status == 401 and not token:
                        hint = "no token was sent"
                    reason = f"{resp.status} {resp.reason or ''}".strip()
                    raise FetchError(f"{who} answered {reason}" + (f" ({hint})" if hint else ""))
                body = read_body(resp, who, self.max_response_bytes)
            except TRANSPORT_ERRORS as exc:  # urllib3, ssl, socket; the deadline shutting the socket
                raise FetchError(describe(exc, who, deadline)) from None
            finally:
                pool.clear()
        try:
            return parse_podlist(body)
        except ValueError as exc:
            raise FetchError(f"{who} sent no PodList: {exc}") from None

    def _from_apiserver(self, api: ApiServer) -> PodIndex:
        try:
            doc = api.pods_on_node(self.settings.node.node_name)
        except ApiServerError as exc:
            raise FetchError(str(exc)) from None
        try:
            return parse_podlist(doc)
        except ValueError as exc:
            raise FetchError(f"API server sent no PodList: {exc}") from None

    # --- the index ---------------------------------------------------------------------------

    def _fetch(self) -> tuple[PodIndex | None, Attribution]:
        kubelet_error: str
        url = kubelet_url(self.settings)
        if url:
            try:
                return self._from_kubelet(url), Attribution(source="kubelet")
            except FetchError as exc:
                kubelet_error = str(exc)
        else:
            kubelet_error = "no kubelet URL configured"
        if self._apiserver is None:
            return None, Attribution(source="none", error=kubelet_error)
        try:
            return self._from_apiserver(self._apiserver), Attribution(source="apiserver", error=kubelet_error)
        except FetchError as exc:
            return None, Attribution(source="none", error=f"{kubelet_error}; {exc}")

    def index(self) -> tuple[PodIndex | None, Attribution]:
        """The node's pods and who answered (cached, failures too, for kubelet_cache_seconds)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.settings.kubelet.kubelet_cache_seconds:
                return self._cached[1], self._cached[2]
            index, attribution = self._fetch()
            self._cached = (time.monotonic(), index, attribution)
            return index, attribution

    def pod_for(self, ref: CgroupRef | None) -> PodRef | None:
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
