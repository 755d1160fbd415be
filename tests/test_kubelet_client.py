"""app.collectors.kubelet against REAL TLS stand-ins on 127.0.0.1: a kubelet and an API server.

Certificates are made here with the openssl CLI: a CA, a server certificate for IP 127.0.0.1 signed
by it, and a second, unrelated CA to play "the wrong CA".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.collectors.kubelet import PodDirectory, kubelet_url
from app.config import Settings
from app.models import OwnerRef
from app.parsers.cgroup import parse_cgroup
from tests.deadline import ends_by_deadline
from tests.tls_standin import Certs, StandIn

FIX = Path(__file__).parent / "fixtures" / "kubelet"
PODLIST_1_35 = (FIX / "podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json").read_bytes()
PODLIST_GKE = (FIX / "podlist-gke-docker-all-qos-static-pending.json").read_bytes()
KUBELET_TOKEN = "kubelet-token-0123456789abcdef"
SA_TOKEN = "apiserver-token-fedcba9876543210"
NODE = "datagen-1-35"
GKE_NODE = "gke-cluster-default-pool-4658d5d4-p39c"


def _settings(tmp_path: Path, url: str | None, **kw: object) -> Settings:
    token = tmp_path / "kubelet-token"
    token.write_text(KUBELET_TOKEN + "\n")
    base: dict[str, object] = {
        "node_name": NODE, "kubelet_url": url, "kubelet_token_file": token, "kubelet_timeout_seconds": 3.0,
        "kubelet_cache_seconds": 30.0, "apiserver_fallback": False,
        # Generous: these tests check what is answered; the first call in a worker imports the kubernetes client,
        # which took over 10 s with two busy loops beside the fast tier. The deadline tests set their own.
        "apiserver_timeout_seconds": 60.0,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def sa_dir(tmp_path: Path, certs: Certs) -> Path:
    """A service account folder as the kubelet mounts it (token, ca.crt)."""
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(SA_TOKEN)
    shutil.copy(certs.ca, d / "ca.crt")
    return d


def _sa(sa_dir: Path) -> dict[str, object]:
    """The settings that point at a service account folder (PFI_APISERVER_TOKEN_FILE/CA_FILE)."""
    return {"apiserver_token_file": sa_dir / "token", "apiserver_ca_file": sa_dir / "ca.crt"}


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
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca))
    index, attribution = pods.index()
    assert attribution.source == "kubelet" and attribution.error is None
    assert index is not None and len(index.pods) == 24
    ref = pods.pod_for(APISERVER_CGROUP)
    assert ref is not None
    assert (ref.namespace, ref.name, ref.container, ref.static, ref.resolved_by) == (
        "kube-system", "kube-apiserver-datagen-1-35", "kube-apiserver", True, "kubelet")
    assert ref.container_id == "88e37f75c461dd32860815f6490cabf0edd2e77f835d1b2625142b3d98d52f27"
    hpa = pods.pod_for(parse_cgroup(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3ea3ef66_5f89_43b7_b88b_6ee26f5b18a4.slice/"
        "cri-containerd-77bb57d9a0006a5ac95a6fa541b2f2a646943143fe1d906aaf70a392d9a62b83.scope"))
    assert hpa is not None and hpa.owner is not None and hpa.owner.via is not None
    assert (hpa.namespace, hpa.name, hpa.container, hpa.owner.kind, hpa.owner.name, hpa.owner.via) == (
        "scraper", "e2e-hpa-6cd8d99884-tggnr", "php-apache", "Deployment", "e2e-hpa",
        OwnerRef(kind="ReplicaSet", name="e2e-hpa-6cd8d99884", api_version="apps/v1"))
    assert kubelet.requests == ["/pods"]


def test_cache_hit_within_cache_seconds(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_cache_seconds=30))
    first, _ = pods.index()
    for _ in range(5):
        again, attribution = pods.index()
        pods.pod_for(APISERVER_CGROUP)
        assert again is first and attribution.source == "kubelet"
    assert len(kubelet.requests) == 1
    uncached = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_cache_seconds=0))
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
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.wrong_ca, apiserver_fallback=True,
                         **_sa(sa_dir))
    pods = PodDirectory(settings)
    index, attribution = pods.index()
    assert attribution.source == "apiserver", attribution.error
    assert attribution.error is not None and attribution.error.startswith("kubelet TLS error:")
    assert "unable to get local issuer certificate" in attribution.error or "verify" in attribution.error
    assert KUBELET_TOKEN not in attribution.error and SA_TOKEN not in attribution.error
    assert index is not None and len(index.pods) == 24
    # The API server was asked for this node's pods only.
    (request,) = api.requests
    assert parse_qs(urlsplit(request).query) == {"fieldSelector": [f"spec.nodeName={NODE}"]}
    ref = pods.pod_for(APISERVER_CGROUP)
    assert ref is not None and ref.resolved_by == "apiserver" and ref.name == "kube-apiserver-datagen-1-35"


def test_wrong_ca_without_fallback(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.wrong_ca, apiserver_fallback=True,
                                     apiserver_token_file=tmp_path / "no-token"))
    index, attribution = pods.index()
    assert index is None and attribution.source == "none"
    assert attribution.error is not None and attribution.error.startswith("kubelet TLS error:")
    # Nothing resolves through a list, but the cgroup still gives the pod UID, container and QoS.
    ref = pods.pod_for(APISERVER_CGROUP)
    assert ref is not None and ref.resolved_by == "cgroup" and ref.name is None
    assert (ref.uid, ref.qos_class, ref.runtime) == ("8ac8c3a9ee4d182b8d934f20e971ada7", "Burstable", "containerd")
    # A plain docker container outside Kubernetes is not a pod.
    assert pods.pod_for(parse_cgroup("0::/system.slice/docker-" + "a" * 64 + ".scope")) is None
    assert pods.pod_for(None) is None


def test_system_cas_reject_self_signed(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    _, attribution = PodDirectory(_settings(tmp_path, kubelet.url)).index()
    assert attribution.source == "none" and attribution.error is not None
    assert attribution.error.startswith("kubelet TLS error:")


def test_skip_verify(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_GKE))
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_insecure_skip_tls_verify=True))
    index, attribution = pods.index()
    assert attribution.source == "kubelet" and index is not None, attribution.error
    ref = pods.pod_for(parse_cgroup(
        "10:memory:/kubepods/pod0faa708c-da09-11e9-b8b8-42010af002dd/"
        "6eaa4782de428f5ea639e33a837ed47aa9fa9e6969f8cb23e39ff788a751ce7d"))
    assert ref is not None
    assert (ref.name, ref.container, ref.runtime, ref.qos_class) == ("cassandra-0", "cassandra", "docker", "Guaranteed")


def test_wrong_token_401(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", "the-right-token", PODLIST_1_35))
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca))
    index, attribution = pods.index()
    assert index is None and attribution.source == "none"
    assert attribution.error == "kubelet answered 401 Unauthorized (the token was not accepted)"
    # A missing token file says so.
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_token_file=tmp_path / "none")
    _, attribution = PodDirectory(settings).index()
    assert attribution.error == "kubelet answered 401 Unauthorized (no token was sent)"


def test_timeout(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, hang=True))  # never answers: only the deadline ends it
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_timeout_seconds=0.3)
    (index, attribution), _ = ends_by_deadline(PodDirectory(settings).index, at_least=0.3, what="the kubelet read")
    assert index is None and attribution.error == "kubelet timed out after 0.3s"
    assert kubelet.requests == ["/pods"]


def test_response_size_bounded(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35))
    pods = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca), max_response_bytes=64 * 1024)
    index, attribution = pods.index()
    assert index is None and attribution.error is not None
    assert attribution.error.startswith("kubelet response larger than")


def test_not_a_podlist(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, json.dumps({"kind": "Status", "code": 500}).encode()))
    _, attribution = PodDirectory(_settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca)).index()
    assert attribution.error is not None and attribution.error.startswith("kubelet sent no PodList")


def test_connection_refused(tmp_path: Path, no_apiserver_env: None) -> None:
    _, attribution = PodDirectory(_settings(tmp_path, "https://127.0.0.1:1", kubelet_insecure_skip_tls_verify=True)).index()
    assert attribution.source == "none" and attribution.error is not None
    assert attribution.error.startswith("kubelet unreachable:")


def test_neither_configured(tmp_path: Path, no_apiserver_env: None) -> None:
    pods = PodDirectory(_settings(tmp_path, None, apiserver_fallback=True))
    index, attribution = pods.index()
    assert index is None, "nothing to ask: no pod index, not an empty one"
    assert attribution.model_dump() == {"source": "none", "error": "no kubelet URL configured"}


def test_apiserver_only(  # type: ignore[no-untyped-def]
    tmp_path: Path, serve, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No kubelet URL, in-cluster API server present: it answers, and the reason is kept."""
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_GKE))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    pods = PodDirectory(_settings(tmp_path, None, apiserver_fallback=True, node_name=GKE_NODE, **_sa(sa_dir)))
    index, attribution = pods.index()
    assert attribution.model_dump() == {"source": "apiserver", "error": "no kubelet URL configured"}
    assert index is not None and len(index.pods) == 9
    # The API server rejecting the token is reported after the kubelet's reason.
    (sa_dir / "token").write_text("wrong")
    again = _settings(tmp_path, None, apiserver_fallback=True, node_name=GKE_NODE, **_sa(sa_dir))
    _, attribution = PodDirectory(again).index()
    assert attribution.source == "none"
    assert attribution.error == ("no kubelet URL configured; API server answered 401 Unauthorized "
                                 f"(the token was not accepted) to pods on node {GKE_NODE}: Unauthorized")


# --- bad configuration is a finding, not a crash (issue 8.5) ---------------------------------------


def test_ipv6_kubelet_reached_through_node_ip(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    """No PFI_KUBELET_URL: the app builds https://[::1]:<port> from PFI_NODE_IP=::1 (bracketed)."""
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, host="::1"))
    settings = _settings(tmp_path, None, kubelet_ca_file=certs.ca, node_ip="::1", kubelet_port=kubelet.port)
    assert kubelet_url(settings) == f"https://[::1]:{kubelet.port}"
    pods = PodDirectory(settings)
    ref = pods.pod_for(APISERVER_CGROUP)
    assert ref is not None and (ref.namespace, ref.name, ref.resolved_by) == (
        "kube-system", "kube-apiserver-datagen-1-35", "kubelet")
    assert pods.index()[1].model_dump() == {"source": "kubelet", "error": None}
    assert kubelet.requests == ["/pods"]
    # The default port, and a list of node IPs (dual stack: the first is used).
    assert kubelet_url(Settings(node_ip="fd00::5, 10.0.3.7", kubelet_url=None)) == "https://[fd00::5]:10250"
    assert kubelet_url(Settings(node_ip="10.0.3.7", kubelet_url=None)) == "https://10.0.3.7:10250"


@pytest.mark.parametrize(("url", "reason"), [
    ("https://fd00::5:10250", "an IPv6 address needs brackets"),
    ("https://[fd00::zz]:10250", "does not appear to be an IPv4 or IPv6 address"),
    ("https://node-a:99999", "out of range"),
    ("https://node-a:port", "could not be cast to integer"),
    ("ftp://node-a:10250", "must start with https://"),
    ("https://", "has no host"),
    ("kubelet:10250", "must start with https://"),
])
def test_bad_kubelet_url_is_an_attribution_error(tmp_path: Path, url: str, reason: str, no_apiserver_env: None) -> None:
    index, attribution = PodDirectory(_settings(tmp_path, url)).index()
    assert index is None and attribution.source == "none"
    assert attribution.error is not None and attribution.error.startswith("kubelet URL") and reason in attribution.error


def test_trickling_kubelet_ends_at_the_overall_deadline(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    """A byte every 2 s never trips a per-read timeout; the overall deadline ends it."""
    # The PodList a byte every 2 s takes hours: only the overall deadline can end the read.
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, trickle=2.0))
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_timeout_seconds=3.0)
    (index, attribution), _ = ends_by_deadline(PodDirectory(settings).index, at_least=2.9, what="the kubelet read")
    assert index is None and attribution.error == "kubelet timed out after 3s"


def test_silent_kubelet_and_silent_apiserver(tmp_path: Path, certs: Certs, serve, sa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, hang=True))
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, hang=True))
    settings = _settings(tmp_path, kubelet.url, kubelet_ca_file=certs.ca, kubelet_timeout_seconds=1.0,
                         apiserver_fallback=True, apiserver_url=api.url, apiserver_timeout_seconds=1.0, **_sa(sa_dir))
    # The API-server module imports the kubernetes client on first use; on a loaded machine that import
    # alone can spend the 1 s deadline before any request is sent (then api.requests is empty). The
    # deadline is what this test checks, not the import: done before the clock starts.
    import kubernetes.client  # noqa: F401
    (index, attribution), _ = ends_by_deadline(PodDirectory(settings).index, at_least=1.0, what="the pod lookup")
    assert index is None and attribution.error == (
        f"kubelet timed out after 1s; API server timed out after 1s (pods on node {NODE})")
    # Asked once at most, no retry past the deadline. Not "exactly once": the message above already says the
    # fallback was tried, and on a loaded machine the client's TLS set-up can spend the 1 s before the
    # request line reaches the stand-in (seen at load 6).
    assert len(api.requests) <= 1, api.requests


def test_apiserver_wrong_ca_and_missing_ca(tmp_path: Path, certs: Certs, serve, sa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_1_35))
    wrong = _settings(tmp_path, None, apiserver_fallback=True, apiserver_url=api.url,
                      apiserver_token_file=sa_dir / "token", apiserver_ca_file=certs.wrong_ca)
    _, attribution = PodDirectory(wrong).index()
    assert attribution.source == "none" and attribution.error is not None
    assert attribution.error.startswith("no kubelet URL configured; API server TLS error:")
    missing = wrong.updated(apiserver_ca_file=tmp_path / "nope.crt")
    _, attribution = PodDirectory(missing).index()
    assert attribution.error == f"no kubelet URL configured; API server CA file {tmp_path / 'nope.crt'} does not exist"
    garbage = wrong.updated(apiserver_url="https://fd00::1:6443")
    _, attribution = PodDirectory(garbage).index()
    assert attribution.error is not None and "an IPv6 address needs brackets" in attribution.error


def test_apiserver_answer_for_another_node_is_dropped(tmp_path: Path, certs: Certs, serve, sa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A server that ignores the field selector (a proxy gone wrong) sends another node's pods:
    none of them may name a process here."""
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_GKE))
    settings = _settings(tmp_path, None, apiserver_fallback=True, apiserver_url=api.url, **_sa(sa_dir))
    pods = PodDirectory(settings)
    index, attribution = pods.index()
    assert attribution.source == "apiserver" and index is not None and index.pods == []
    ref = pods.pod_for(parse_cgroup(
        "10:memory:/kubepods/pod0faa708c-da09-11e9-b8b8-42010af002dd/"
        "6eaa4782de428f5ea639e33a837ed47aa9fa9e6969f8cb23e39ff788a751ce7d"))
    assert ref is not None and ref.resolved_by == "cgroup" and ref.name is None


def test_node_name_that_is_not_dns1123_is_never_sent(tmp_path: Path, certs: Certs, serve, sa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_1_35))
    settings = _settings(tmp_path, None, apiserver_fallback=True, apiserver_url=api.url,
                         node_name="x,metadata.name!=y", **_sa(sa_dir))
    _, attribution = PodDirectory(settings).index()
    assert attribution.error == ("no kubelet URL configured; node name 'x,metadata.name!=y' is not a "
                                 "DNS-1123 name: not sent to the API server")
    assert api.requests == []


def test_apiserver_through_a_kubeconfig(tmp_path: Path, certs: Certs, serve, no_apiserver_env: None) -> None:  # type: ignore[no-untyped-def]
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_1_35))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": api.url, "certificate-authority": str(certs.ca)}}],
        "users": [{"name": "u", "user": {"token": SA_TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))
    pods = PodDirectory(_settings(tmp_path, None, apiserver_fallback=True, kubeconfig=kubeconfig))
    index, attribution = pods.index()
    assert attribution.source == "apiserver" and index is not None and len(index.pods) == 24
    (request,) = api.requests
    assert parse_qs(urlsplit(request).query) == {"fieldSelector": [f"spec.nodeName={NODE}"]}
    broken = tmp_path / "broken"
    broken.write_text("clusters: [")
    _, attribution = PodDirectory(_settings(tmp_path, None, apiserver_fallback=True, kubeconfig=broken)).index()
    assert attribution.error is not None and "API server configuration (kubeconfig) unusable" in attribution.error


# --- the same through `pagefault-inspector investigate` on a process in a pod's cgroup (root) ------

# A pod of the captured PodList (minikube 1.35): the swapping process's cgroup is named after it.
DEPLOY_UID = "da59f36e-a7a8-46ed-8d9d-36392eb967d4"
DEPLOY_CID = "a33effaac09ebc0bd003f783736428445148029e0a835cf57e592321b75b8c7a"
WINDOW = 2.0


@pytest.fixture
def pod_process(root_required: None) -> Iterator[int]:
    for tool in ("gcc", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot run the swap workload")
    from tests.workloads import swap_workload

    with swap_workload(size_mb=96, limit_mb=48, name=f"kubepods/burstable/pod{DEPLOY_UID}/{DEPLOY_CID}") as proc:
        yield proc.pid


def _investigate(tmp_path: Path, pid: int, **env: str) -> tuple[float, dict[str, Any]]:
    token = tmp_path / "kubelet-token"
    token.write_text(KUBELET_TOKEN)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PFI_", "KUBERNETES_"))}
    base.update(PFI_DATA_DIR=str(tmp_path / "data"), PFI_KUBELET_TOKEN_FILE=str(token), PFI_NODE_NAME=NODE,
                PFI_APISERVER_FALLBACK="false", **env)
    exe = Path(sys.executable).with_name("pagefault-inspector")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    t = time.monotonic()
    out = subprocess.run([*cmd, "investigate", "--seconds", f"{WINDOW:g}", "--tracer", "procfs", "--format", "json"],
                         env=base, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert any(p["pid"] == pid for p in report["processes"]), "the pod's process is not in the report"
    return took, report


def _top(report: dict[str, Any], pid: int) -> dict[str, Any]:
    return next(p for p in report["processes"] if p["pid"] == pid)


@pytest.mark.workloads
def test_investigate_with_an_unbracketed_ipv6_kubelet_url(tmp_path: Path, pod_process: int) -> None:
    """The chart's old `https://$(PFI_NODE_IP):10250` with an IPv6 node IP: a finding, exit 0."""
    _, report = _investigate(tmp_path, pod_process, PFI_KUBELET_URL="https://fd00::5:10250")
    assert report["attribution"]["source"] == "none"
    assert "an IPv6 address needs brackets" in report["attribution"]["error"]
    assert any("an IPv6 address needs brackets" in w for w in report["warnings"])
    pod = _top(report, pod_process)["pod"]
    assert pod["uid"] == DEPLOY_UID and pod["resolved_by"] == "cgroup"  # still named by its cgroup


@pytest.mark.workloads
def test_investigate_reaches_an_ipv6_kubelet_built_from_node_ip(  # type: ignore[no-untyped-def]
    tmp_path: Path, certs: Certs, serve, pod_process: int
) -> None:
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, host="::1"))
    _, report = _investigate(tmp_path, pod_process, PFI_NODE_IP="::1", PFI_KUBELET_PORT=str(kubelet.port),
                             PFI_KUBELET_CA_FILE=str(certs.ca))
    assert report["attribution"] == {"source": "kubelet", "error": None}
    pod = _top(report, pod_process)["pod"]
    assert (pod["namespace"], pod["name"], pod["container"], pod["resolved_by"]) == (
        "scraper", "e2e-deployment-79967c5968-8bnn8", "compute-pi-digits", "kubelet")
    assert kubelet.requests == ["/pods"]


@pytest.mark.servers
@pytest.mark.workloads
def test_investigate_with_a_trickling_kubelet_ends_in_time(  # type: ignore[no-untyped-def]
    tmp_path: Path, certs: Certs, serve, pod_process: int
) -> None:
    kubelet = serve(StandIn("/pods", KUBELET_TOKEN, PODLIST_1_35, trickle=3.0))
    took, report = _investigate(tmp_path, pod_process, PFI_KUBELET_URL=kubelet.url,
                                PFI_KUBELET_CA_FILE=str(certs.ca))
    assert report["attribution"] == {"source": "none", "error": "kubelet timed out after 5s"}
    # The investigation (its own clock: not the interpreter's start-up) and the whole command.
    ran = datetime.fromisoformat(report["finished_at"]) - datetime.fromisoformat(report["started_at"])
    assert ran.total_seconds() < WINDOW + 10, ran
    assert took < WINDOW + 20, took


# --- the API server's deadline also covers connect; no token over http --------------------------------


def _full_accept_queue() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback listener (backlog 0, never accepting) whose accept queue is filled: the kernel
    drops further SYNs, so a new connect() hangs in SYN retries (minutes)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(8):  # more than the queue takes; the extra ones stay in SYN_SENT
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    time.sleep(0.2)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:  # the queue really is full: a plain connect does not complete
        with pytest.raises(TimeoutError):
            probe.connect(listener.getsockname())
    finally:
        probe.close()
    return listener, fillers


def test_apiserver_deadline_covers_a_connect_that_never_completes(tmp_path: Path, sa_dir: Path) -> None:
    from app.collectors.apiserver import ApiServer, ApiServerConfig, ApiServerError

    listener, fillers = _full_accept_queue()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        api = ApiServer(ApiServerConfig("PFI_APISERVER_URL", url, sa_dir / "token", sa_dir / "ca.crt", None, 2.0))
        outcome: list[BaseException | object] = []

        def run() -> None:
            try:
                outcome.append(api.list_nodes())
            except BaseException as exc:  # noqa: BLE001 - recorded and checked below
                outcome.append(exc)

        ends_by_deadline(run, at_least=2.0, what="list_nodes() in a connect that never completes")
        (exc,) = outcome
        assert isinstance(exc, ApiServerError)
        assert str(exc) in ("API server timed out after 2s (nodes)", "API server timed out after 2s"), str(exc)
        api.close()
    finally:
        listener.close()  # a connect still pending gets its RST now
        for s in fillers:
            s.close()


def test_no_token_over_plain_http(tmp_path: Path, sa_dir: Path, certs: Certs,
                                  caplog: pytest.LogCaptureFixture, no_apiserver_env: None) -> None:
    """PFI_APISERVER_URL=http://... with a service-account token: refused with a reason, nothing sent.
    A kubeconfig with insecure-skip-tls-verify works but is logged, once."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(dict(self.headers))
            body = b'{"kind":"PodList","items":[]}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        settings = _settings(tmp_path, None, apiserver_fallback=True, apiserver_url=url, **_sa(sa_dir))
        index, attribution = PodDirectory(settings).index()
        assert index is None and attribution.error is not None
        assert "is http://: refusing to send the service-account token in clear text" in attribution.error
        assert seen == []
        kubeconfig = tmp_path / "kubeconfig-http"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "c", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": SA_TOKEN}}],
            "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
        }))
        _, attribution = PodDirectory(_settings(tmp_path, None, apiserver_fallback=True, kubeconfig=kubeconfig)).index()
        assert attribution.error is not None and "in clear text" in attribution.error
        assert seen == []
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_kubeconfig_skipping_tls_verify_is_logged_once(tmp_path: Path, certs: Certs, serve,  # type: ignore[no-untyped-def]
                                                       caplog: pytest.LogCaptureFixture, no_apiserver_env: None) -> None:
    api = serve(StandIn("/api/v1/pods", SA_TOKEN, PODLIST_1_35))
    kubeconfig = tmp_path / "kubeconfig-insecure"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "c", "cluster": {"server": api.url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": SA_TOKEN}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
    }))
    caplog.set_level(logging.WARNING, logger="app.collectors.apiserver")
    settings = _settings(tmp_path, None, apiserver_fallback=True, kubeconfig=kubeconfig, kubelet_cache_seconds=0.0)
    for _ in range(2):
        index, attribution = PodDirectory(settings).index()
        assert attribution.source == "apiserver", attribution.error
        assert index is not None and len(index.pods) == 24
    warnings = [r.getMessage() for r in caplog.records if "insecure-skip-tls-verify" in r.getMessage()]
    assert warnings == [f"kubeconfig {kubeconfig} sets insecure-skip-tls-verify: the API server's certificate "
                        "is not checked, and the token goes to whoever answers"]
