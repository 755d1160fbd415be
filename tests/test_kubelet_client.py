"""app.collectors.kubelet against REAL TLS stand-ins on 127.0.0.1: a kubelet and an API server.

Certificates are made here with the openssl CLI: a CA, a server certificate for IP 127.0.0.1 signed
by it, and a second, unrelated CA to play "the wrong CA".
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.collectors.kubelet import PodResolver
from app.config import Settings
from app.models import OwnerRef
from app.parsers.cgroup import parse_cgroup
from tests.tls_standin import Certs, StandIn

FIX = Path(__file__).parent / "fixtures" / "kubelet"
PODLIST_1_35 = (FIX / "podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json").read_bytes()
PODLIST_GKE = (FIX / "podlist-gke-docker-all-qos-static-pending.json").read_bytes()
KUBELET_TOKEN = "kubelet-token-0123456789abcdef"
SA_TOKEN = "apiserver-token-fedcba9876543210"
NODE = "datagen-1-35"


def _settings(tmp_path: Path, url: str | None, **kw: object) -> Settings:
    token = tmp_path / "kubelet-token"
    token.write_text(KUBELET_TOKEN + "\n")
    base: dict[str, object] = {
        "node_name": NODE, "kubelet_url": url, "kubelet_token_file": token, "kubelet_timeout_seconds": 3.0,
        "kubelet_cache_seconds": 30.0, "apiserver_fallback": False,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def sa_dir(tmp_path: Path, certs: Certs) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(SA_TOKEN)
    shutil.copy(certs.ca, d / "ca.crt")
    return d


@pytest.fixture
def no_apiserver_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


APISERVER_CGROUP = parse_cgroup(
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8ac8c3a9ee4d182b8d934f20e971ada7.slice/"
    "cri-containerd-88e37f75c461dd32860815f6490cabf0edd2e77f835d1b2625142b3d98d52f27.scope"
)


# --- tests ------------------------------------------------------------------------------------------


def test_verified_tls_with_ca(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca))
    index, attribution = resolver.index()
    assert attribution.source == "kubelet" and attribution.error is None
    assert index is not None and len(index.pods) == 24
    ref = resolver.resolve(APISERVER_CGROUP)
    assert ref is not None
    assert (ref.namespace, ref.name, ref.container, ref.static, ref.resolved_by) == (
        "kube-system", "kube-apiserver-datagen-1-35", "kube-apiserver", True, "kubelet")
    assert ref.container_id == "88e37f75c461dd32860815f6490cabf0edd2e77f835d1b2625142b3d98d52f27"
    hpa = resolver.resolve(parse_cgroup(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3ea3ef66_5f89_43b7_b88b_6ee26f5b18a4.slice/"
        "cri-containerd-77bb57d9a0006a5ac95a6fa541b2f2a646943143fe1d906aaf70a392d9a62b83.scope"))
    assert hpa is not None and (hpa.namespace, hpa.name, hpa.container, hpa.owner) == (
        "scraper", "e2e-hpa-6cd8d99884-tggnr", "php-apache", OwnerRef(kind="ReplicaSet", name="e2e-hpa-6cd8d99884"))
    assert kubelet.requests == ["/pods"]


def test_cache_hit_within_cache_seconds(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_cache_seconds=30))
    first, _ = resolver.index()
    for _ in range(5):
        again, attribution = resolver.index()
        resolver.resolve(APISERVER_CGROUP)
        assert again is first and attribution.source == "kubelet"
    assert len(kubelet.requests) == 1
    uncached = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_cache_seconds=0))
    uncached.index()
    uncached.index()
    assert len(kubelet.requests) == 3


def test_wrong_ca_fails_clearly_and_falls_back(  # type: ignore[no-untyped-def]
    tmp_path: Path, certs: Certs, serve, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_1_35))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.wrong_ca, apiserver_fallback=True)
    resolver = PodResolver(settings, serviceaccount_dir=sa_dir)
    index, attribution = resolver.index()
    assert attribution.source == "apiserver"
    assert attribution.error is not None and attribution.error.startswith("kubelet TLS error:")
    assert "unable to get local issuer certificate" in attribution.error or "verify" in attribution.error
    assert KUBELET_TOKEN not in attribution.error and SA_TOKEN not in attribution.error
    assert index is not None and len(index.pods) == 24
    # The API server was asked for this node's pods only.
    (request,) = api.requests
    assert parse_qs(urlsplit(request).query) == {"fieldSelector": [f"spec.nodeName={NODE}"]}
    ref = resolver.resolve(APISERVER_CGROUP)
    assert ref is not None and ref.resolved_by == "apiserver" and ref.name == "kube-apiserver-datagen-1-35"


def test_wrong_ca_without_fallback(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.wrong_ca, apiserver_fallback=True))
    index, attribution = resolver.index()
    assert index is None and attribution.source == "none"
    assert attribution.error is not None and attribution.error.startswith("kubelet TLS error:")
    # Nothing resolves through a list, but the cgroup still gives the pod UID, container and QoS.
    ref = resolver.resolve(APISERVER_CGROUP)
    assert ref is not None and ref.resolved_by == "cgroup" and ref.name is None
    assert (ref.uid, ref.qos_class, ref.runtime) == ("8ac8c3a9ee4d182b8d934f20e971ada7", "Burstable", "containerd")
    # A plain docker container outside Kubernetes is not a pod.
    assert resolver.resolve(parse_cgroup("0::/system.slice/docker-" + "a" * 64 + ".scope")) is None
    assert resolver.resolve(None) is None


def test_system_cas_reject_self_signed(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    _, attribution = PodResolver(_settings(tmp_path, kubelet.url)).index()
    assert attribution.source == "none" and attribution.error is not None
    assert attribution.error.startswith("kubelet TLS error:")


def test_skip_verify(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_GKE))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_insecure_skip_tls_verify=True))
    index, attribution = resolver.index()
    assert attribution.source == "kubelet" and index is not None
    ref = resolver.resolve(parse_cgroup(
        "10:memory:/kubepods/pod0faa708c-da09-11e9-b8b8-42010af002dd/"
        "6eaa4782de428f5ea639e33a837ed47aa9fa9e6969f8cb23e39ff788a751ce7d"))
    assert ref is not None
    assert (ref.name, ref.container, ref.runtime, ref.qos_class) == ("cassandra-0", "cassandra", "docker", "Guaranteed")


def test_wrong_token_401(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", "the-right-token", PODLIST_1_35))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca))
    index, attribution = resolver.index()
    assert index is None and attribution.source == "none"
    assert attribution.error == "kubelet answered 401 Unauthorized (the token was not accepted)"
    # A missing token file says so.
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_token_file=tmp_path / "none")
    _, attribution = PodResolver(settings).index()
    assert attribution.error == "kubelet answered 401 Unauthorized (no token was sent)"


def test_timeout(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, delay=2.0))
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_timeout_seconds=0.3)
    t = time.monotonic()
    index, attribution = PodResolver(settings).index()
    assert time.monotonic() - t < 1.5
    assert index is None and attribution.error == "kubelet timed out after 0.3s"


def test_response_size_bounded(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    resolver = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca), max_response_bytes=64 * 1024)
    index, attribution = resolver.index()
    assert index is None and attribution.error is not None
    assert attribution.error.startswith("kubelet response larger than")


def test_not_a_podlist(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, json.dumps({"kind": "Status", "code": 500}).encode()))
    _, attribution = PodResolver(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca)).index()
    assert attribution.error is not None and attribution.error.startswith("kubelet sent no PodList")


def test_connection_refused(tmp_path: Path, no_apiserver_env: None) -> None:
    _, attribution = PodResolver(_settings(tmp_path, "https://127.0.0.1:1", kubelet_insecure_skip_tls_verify=True)).index()
    assert attribution.source == "none" and attribution.error is not None
    assert attribution.error.startswith("kubelet unreachable:")


def test_neither_configured(tmp_path: Path, no_apiserver_env: None) -> None:
    resolver = PodResolver(_settings(tmp_path, None, apiserver_fallback=True))
    assert resolver.index() == (None, resolver.index()[1])
    assert resolver.index()[1].model_dump() == {"source": "none", "error": "no kubelet URL configured"}


def test_apiserver_only(  # type: ignore[no-untyped-def]
    tmp_path: Path, serve, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kubelet URL, in-cluster API server present: it answers, and the reason is kept."""
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_GKE))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    resolver = PodResolver(_settings(tmp_path, None, apiserver_fallback=True), serviceaccount_dir=sa_dir)
    index, attribution = resolver.index()
    assert attribution.model_dump() == {"source": "apiserver", "error": "no kubelet URL configured"}
    assert index is not None and len(index.pods) == 9
    # The API server rejecting the token is reported after the kubelet's reason.
    (sa_dir / "token").write_text("wrong")
    resolver.invalidate()
    _, attribution = resolver.index()
    assert attribution.source == "none"
    assert attribution.error == ("no kubelet URL configured; API server answered 401 Unauthorized "
                                 "(the token was not accepted)")
