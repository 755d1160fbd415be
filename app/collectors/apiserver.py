"""The one API-server client: the official `kubernetes` package, imported on first use only.

Which API server, and how to reach it, is decided here and nowhere else (`ApiServerConfig`):
1. `PFI_APISERVER_URL`: that URL, with `PFI_APISERVER_TOKEN_FILE` (when it exists) and
   `PFI_APISERVER_CA_FILE` (default: the service account's `ca.crt`, next to the token file, when
   it exists, else the system's CAs);
2. `PFI_KUBECONFIG`: a kubeconfig file (its current context), through `kubernetes.config`;
3. in a pod (`KUBERNETES_SERVICE_HOST`): the in-cluster config of `kubernetes.config`, with the
   token and CA files above (the token is re-read as it rotates);
4. else there is no API server (`from_settings` returns None).

Calls: pods of a node (`spec.nodeName` field selector, the node name checked as DNS-1123 first and
the answer's `nodeName` checked after), pods of a namespace by label selector, nodes, and
events.k8s.io/v1 Events. Every call has an overall deadline of `PFI_APISERVER_TIMEOUT_SECONDS`
(connect + TLS + headers + body) and fails with `ApiServerError` carrying a short reason. The
deadline's timer can only shut sockets that exist, so each call also carries that many seconds as
urllib3's connect and read timeouts (`_request_timeout`): a server whose accept queue is full (SYNs
dropped) ends the call at the deadline too. Host-name resolution (getaddrinfo) is not bounded by
either: it is bounded by the resolver's own timeout and attempts (resolv.conf).

A token is never sent over plain http (`http://` URL or kubeconfig server with credentials): the
call fails with a reason instead. A kubeconfig with `insecure-skip-tls-verify` is logged once. Answers are
read as raw JSON (no model classes: a PodList of a busy node deserialises 20x faster that way).
The client is synchronous; the service calls it through `app.service.cluster.kube` in worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from app.config import ApiServerSettings

__all__ = [
    "ApiServer",
    "ApiServerConfig",
    "ApiServerError",
    "is_node_name",
    "service_account_namespace",
]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_warned_insecure: set[str] = set()  # kubeconfigs already logged for insecure-skip-tls-verify
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_STATUS_HINTS = {
    401: "the token was not accepted",
    403: "RBAC: the service account lacks this permission",
}


class ApiServerError(Exception):
    """A short reason, safe to show (never the token)."""


def is_node_name(name: str) -> bool:
    """A Node's name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253."""
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def service_account_dir(apiserver: ApiServerSettings) -> Path:
    """The mounted service account's folder: where PFI_APISERVER_TOKEN_FILE is (its default is the
    one place that names /var/run/secrets/kubernetes.io/serviceaccount)."""
    return apiserver.apiserver_token_file.parent


def service_account_namespace(apiserver: ApiServerSettings) -> str | None:
    try:
        return (service_account_dir(apiserver) / "namespace").read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class ApiServerConfig:
    source: str  # "PFI_APISERVER_URL", "kubeconfig", "in-cluster"
    url: str | None  # None with a kubeconfig (it names the server)
    token_file: Path | None
    ca_file: Path | None
    kubeconfig: Path | None
    timeout: float

    @classmethod
    def from_settings(
        cls, apiserver: ApiServerSettings, environ: Mapping[str, str] = os.environ
    ) -> ApiServerConfig | None:
        """How to reach the API server, or None when there is none (no URL, kubeconfig or pod env).
        The CA defaults to the service account's ca.crt, next to the token file, when it exists."""
        sa_dir = service_account_dir(apiserver)
        token = apiserver.apiserver_token_file if apiserver.apiserver_token_file.exists() else None
        ca = apiserver.apiserver_ca_file
        if ca is None and (sa_dir / "ca.crt").exists():
            ca = sa_dir / "ca.crt"
        timeout = apiserver.apiserver_timeout_seconds
        if apiserver.apiserver_url:
            return cls("PFI_APISERVER_URL", apiserver.apiserver_url.strip(), token, ca, None, timeout)
        kubeconfig = apiserver.kubeconfig
        if kubeconfig is not None:
            return cls("kubeconfig", None, None, None, kubeconfig, timeout)
        host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        if not host:
            return None
        port = environ.get("KUBERNETES_SERVICE_PORT", "443").strip() or "443"
        url = host_url(host, int(port)) if port.isdigit() else f"https://{host}:{port}"
        return cls("in-cluster", url, token, ca, None, timeout)


class ApiServer:
    """Synchronous calls with an overall deadline each. Thread-safe; the `kubernetes` client is
    built (and imported) at the first call."""

    def __init__(self, config: ApiServerConfig, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.config = config
        self.max_response_bytes = max_response_bytes
        self._lock = threading.Lock()
        self._client: Any = None

    # --- the client ------------------------------------------------------------------------------

    def _build(self) -> Any:
        import yaml  # type: ignore[import-untyped]  # kubernetes reads kubeconfig with it; no stubs here
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config
        from kubernetes.config.config_exception import ConfigException

        c = self.config
        cfg: Any = k8s.Configuration()
        load_kube_config: Any = k8s_config.load_kube_config
        try:
            if c.kubeconfig is not None:
                load_kube_config(
                    config_file=str(c.kubeconfig), client_configuration=cfg, persist_config=False
                )
            else:
                assert c.url is not None
                cfg.host = check_url(c.url, "API server")
                if c.source == "in-cluster" and c.token_file is not None and c.ca_file is not None:
                    # The package's in-cluster loader: host from the pod's environment, the token
                    # re-read as the kubelet rotates it. Our URL (IPv6 bracketed) is kept.
                    from kubernetes.config import incluster_config

                    loader: Any = incluster_config.InClusterConfigLoader
                    loader(str(c.token_file), str(c.ca_file)).load_and_set(cfg)
                    cfg.host = check_url(c.url, "API server")
                else:
                    cfg.ssl_ca_cert = str(c.ca_file) if c.ca_file is not None else None
                    if c.token_file is not None:
                        token_file = c.token_file

                        def refresh(conf: Any) -> None:
                            try:
                                token = token_file.read_text().strip()
                            except OSError:
                                token = ""
                            conf.api_key = {"BearerToken": f"Bearer {token}"} if token else {}

                        cfg.refresh_api_key_hook = refresh
                        refresh(cfg)
        except FetchError as exc:
            raise ApiServerError(str(exc)) from None
        except (ConfigException, yaml.YAMLError, OSError, ValueError) as exc:  # a bad or unreadable kubeconfig
            raise ApiServerError(f"API server configuration ({c.source}) unusable: {exc}") from None
        cfg.retries = False  # one attempt per call: the deadline is the caller's
        _refuse_cleartext_credentials(cfg, c)
        if c.kubeconfig is not None and cfg.verify_ssl is False and str(c.kubeconfig) not in _warned_insecure:
            _warned_insecure.add(str(c.kubeconfig))
            log.warning("kubeconfig %s sets insecure-skip-tls-verify: the API server's certificate is not "
                        "checked, and the token goes to whoever answers", c.kubeconfig)
        if c.ca_file is not None and not c.ca_file.exists():
            raise ApiServerError(f"API server CA file {c.ca_file} does not exist")
        try:
            api_client = k8s.ApiClient(cfg)
        except (OSError, ValueError) as exc:  # an unreadable CA file, a bad client key (ssl.SSLError is an OSError)
            raise ApiServerError(f"API server TLS settings unusable: {exc}") from None
        track(api_client.rest_client.pool_manager)
        return api_client

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _timeouts(self) -> tuple[float, float]:
        """(connect, read) for urllib3: the deadline's timer cannot shut a socket still connecting."""
        return (self.config.timeout, self.config.timeout)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- one call ----------------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[Any], Any]) -> Any:
        """`call(api_client)` returns an unread urllib3 response; the JSON it carries, or
        ApiServerError. The deadline covers connect, TLS, headers and body."""
        from kubernetes.client.exceptions import ApiException

        api_client = self.client()
        who = "API server"
        with Deadline(self.config.timeout) as deadline:
            try:
                resp = call(api_client)
                body = read_body(resp, who, self.max_response_bytes)
            except ApiException as exc:
                if not exc.status:  # the REST layer's wrapping of urllib3's SSLError and others
                    text = str(exc.reason or "")
                    tls = re.search(r"certificate verify failed: ([^(\n]+)", text)
                    if deadline.expired:
                        raise ApiServerError(f"{who} timed out after {deadline.seconds:g}s ({what})") from None
                    if tls or "SSL" in text:
                        why = tls.group(1).strip() if tls else text.splitlines()[-1][:200]
                        raise ApiServerError(f"{who} TLS error: {why}") from None
                    raise ApiServerError(f"{who} unreachable: {text.splitlines()[0][:200]} ({what})") from None
                hint = _STATUS_HINTS.get(exc.status or 0)
                message = _status_message(exc.body)
                reason = f"{exc.status} {exc.reason or ''}".strip()
                detail = f" ({hint})" if hint else ""
                raise ApiServerError(
                    f"{who} answered {reason}{detail} to {what}" + (f": {message}" if message else "")
                ) from None
            except FetchError as exc:
                raise ApiServerError(str(exc)) from None
            except TRANSPORT_ERRORS as exc:  # urllib3/ssl/socket errors; the deadline's shutdown
                raise ApiServerError(describe(exc, who, deadline) + f" ({what})") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ApiServerError(f"{who} sent no JSON to {what}") from None

    # --- the calls -----------------------------------------------------------------------------

    def pods_on_node(self, node: str) -> dict[str, Any]:
        """The PodList of one node (all namespaces). Pods the answer puts on another node are
        dropped (a proxy or a selector gone wrong must not name another node's pods)."""
        if not is_node_name(node):
            raise ApiServerError(f"node name {node!r} is not a DNS-1123 name: not sent to the API server")

        def call(c: Any) -> Any:
            from kubernetes.client import CoreV1Api

            return CoreV1Api(c).list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False,
                _request_timeout=self._timeouts(),
            )

        body = self._call(f"pods on node {node}", call)
        if not isinstance(body, dict) or not isinstance(body.get("items", []), list | None):
            raise ApiServerError("API server sent no PodList")
        items = body.get("items") or []
        body["items"] = [
            p for p in items if isinstance(p, dict) and ((p.get("spec") or {}).get("nodeName") == node)
        ]
        return body

    def list_pods(self, namespace: str, label_selector: str) -> dict[str, Any]:
        def call(c: Any) -> Any:
            from kubernetes.client import CoreV1Api

            return CoreV1Api(c).list_namespaced_pod(
                namespace, label_selector=label_selector, _preload_content=False,
                _request_timeout=self._timeouts(),
            )

        return dict(self._call(f"pods {label_selector} in {namespace}", call) or {})

    def read_controller(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        """One ReplicaSet (apps/v1) or Job (batch/v1), raw: its metadata.ownerReferences name what owns it
        (issue 16: the workload a recommendation's command changes). RBAC: get on replicasets / jobs."""

        def call(c: Any) -> Any:
            from kubernetes.client import AppsV1Api, BatchV1Api

            if kind == "ReplicaSet":
                return AppsV1Api(c).read_namespaced_replica_set(
                    name, namespace, _preload_content=False, _request_timeout=self._timeouts())
            return BatchV1Api(c).read_namespaced_job(
                name, namespace, _preload_content=False, _request_timeout=self._timeouts())

        if kind not in ("ReplicaSet", "Job"):
            raise ApiServerError(f"{kind} is not followed to its owner")
        return dict(self._call(f"{kind} {namespace}/{name}", call) or {})

    def read_node(self, node: str) -> dict[str, Any]:
        """One Node, raw (its status.allocatable caps a recommended limit). RBAC: get on nodes."""
        if not is_node_name(node):
            raise ApiServerError(f"node name {node!r} is not a DNS-1123 name: not sent to the API server")

        def call(c: Any) -> Any:
            from kubernetes.client import CoreV1Api

            return CoreV1Api(c).read_node(node, _preload_content=False, _request_timeout=self._timeouts())

        return dict(self._call(f"node {node}", call) or {})

    def list_nodes(self) -> dict[str, Any]:
        def call(c: Any) -> Any:
            from kubernetes.client import CoreV1Api

            return CoreV1Api(c).list_node(_preload_content=False, _request_timeout=self._timeouts())

        return dict(self._call("nodes", call) or {})

    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        """POST an events.k8s.io/v1 Event (see `event_body`)."""

        def call(c: Any) -> Any:
            from kubernetes.client import EventsV1Api

            api: Any = EventsV1Api(c)  # a dict body: the client validates it into its model
            return api.create_namespaced_event(
                namespace, event, _preload_content=False, _request_timeout=self._timeouts()
            )

        return dict(self._call(f"an Event in {namespace}", call) or {})


def _refuse_cleartext_credentials(cfg: Any, c: ApiServerConfig) -> None:
    """ApiServerError when credentials (a token, basic auth, a token file) would go over http://."""
    host = str(cfg.host or "")
    if not host.lower().startswith("http://"):
        return
    creds = bool(cfg.api_key) or cfg.refresh_api_key_hook is not None or bool(cfg.username) or (
        c.token_file is not None)
    if creds:
        where = "PFI_APISERVER_URL" if c.source == "PFI_APISERVER_URL" else f"the {c.source} server"
        raise ApiServerError(
            f"API server URL {host} ({where}) is http://: refusing to send the service-account token in "
            "clear text; use https://"
        )


def event_body(
    *,
    namespace: str,
    regarding: dict[str, Any],
    reason: str,
    note: str,
    action: str,
    controller: str,
    instance: str,
    event_time: str,
    type_: str = "Warning",
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event. `event_time` is RFC 3339 with microseconds (MicroTime)."""
    name_prefix = re.sub(r"[^a-z0-9-]", "-", controller.lower().rsplit("/", 1)[-1])[:40] or "event"
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name_prefix}-", "namespace": namespace},
        "eventTime": event_time,
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": type_,
        "regarding": regarding,
        "reportingController": controller,
        "reportingInstance": instance[:128],
    }


def _status_message(body: Any) -> str:
    """The `message` of a metav1.Status body, bounded."""
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        doc = None
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message)[:300] if message else ""
