"""app.parsers.kubelet on real PodLists (tests/fixtures/kubelet, sources in SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.models import OwnerRef, PodRef
from app.parsers.cgroup import parse_cgroup
from app.parsers.kubelet import PodIndex, parse_podlist, split_container_id

KUBELET = Path(__file__).parent / "fixtures" / "kubelet"


def load(name: str) -> PodIndex:
    return parse_podlist((KUBELET / name).read_bytes())


COUNTS = [
    ("podlist-containerd-init-container-running.json", "containerd, Pending pod with running init container", 5),
    ("podlist-gke-docker-all-qos-static-pending.json", "GKE docker, static kube-proxy Pending without statuses", 9),
    ("podlist-items-null.json", '"items": null while the kubelet starts', 0),
    ("podlist-minikube-1.16-docker-static-pods.json", "k8s 1.16 docker, 4 static pods", 16),
    ("podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json", "k8s 1.35 one-line JSON", 24),
    ("podlist-minikube-docker-failed-and-pending-no-qos.json", "pods without qosClass", 4),
    ("podlist-null-item-and-empty-item.json", "null and {} items skipped", 1),
]


@pytest.mark.parametrize(("name", "quirk", "pods"), COUNTS, ids=[c[0] for c in COUNTS])
def test_parse_podlist_counts(name: str, quirk: str, pods: int) -> None:
    index = load(name)
    assert len(index.pods) == pods


def test_containerd_init_container_and_waiting_container() -> None:
    index = load("podlist-containerd-init-container-running.json")
    init_id = "922a2f3f14d1724d7eeb6cad2b5138bcbd85948c802fead1af2a1e5d79807e4e"
    pod, c = index.by_container_id[init_id]
    assert (pod.namespace, pod.name, c.name, c.init, c.runtime) == ("default", "myapp-pod", "init-myservice", True,
                                                                    "containerd")
    # The main container is still waiting: listed, no id yet.
    main = next(x for x in pod.containers if x.name == "myapp-container")
    assert main.container_id is None and not main.init
    assert pod.owner is None and pod.qos_class == "BestEffort"
    ref = index.lookup("7760601b-65a6-11e9-bc12-02f121c1eeb4", init_id)
    assert ref == PodRef(namespace="default", name="myapp-pod", uid="7760601b-65a6-11e9-bc12-02f121c1eeb4",
                         container="init-myservice", container_id=init_id, runtime="containerd",
                         qos_class="BestEffort")


def test_replicaset_owner_is_the_deployment_by_its_template_hash() -> None:
    """A ReplicaSet named `<deployment>-<pod-template-hash>` (the label on the pod): the Deployment is the
    owner, inferred and said so, with the ReplicaSet kept as `via` (the API server confirms it later)."""
    hpa = load("podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json").by_uid[
        "3ea3ef66-5f89-43b7-b88b-6ee26f5b18a4"]
    assert hpa.owner is not None
    assert (hpa.owner.kind, hpa.owner.name, hpa.owner.resolved) == ("Deployment", "e2e-hpa", False)
    assert hpa.owner.via == OwnerRef(kind="ReplicaSet", name="e2e-hpa-6cd8d99884", api_version="apps/v1",
                                     resolved=False)
    assert "pod-template-hash" in (hpa.owner.note or "")
    # Without the label (an older capture) the ReplicaSet stays, not followed, and says what it needs.
    coredns = load("podlist-containerd-init-container-running.json").by_uid["23476f2c-61e0-11e9-bc12-02f121c1eeb4"]
    assert coredns.owner is not None and (coredns.owner.kind, coredns.owner.resolved) == ("ReplicaSet", False)
    assert "needs the API server" in (coredns.owner.note or "")
    assert coredns.node_name == "ci-pierremargueritte"


def test_gke_static_pod_pending_without_status() -> None:
    index = load("podlist-gke-docker-all-qos-static-pending.json")
    proxy = index.by_uid["9115a326b914550c2126a98e4ce60242"]
    assert proxy.static and proxy.config_hash == "9115a326b914550c2126a98e4ce60242"
    assert proxy.name == "kube-proxy-gke-cluster-default-pool-4658d5d4-p39c"
    assert proxy.qos_class is None and proxy.containers[0].container_id is None
    # Two containers of one pod, by id; StatefulSet owner; Guaranteed.
    pod, c = index.by_container_id["5685115469ca142c6d3579b43711f76586478a613295d0471da895e9efcd5b70"]
    assert (pod.name, c.name, c.runtime) == ("event-exporter-v0.2.4-5c57bb7478-7jppz", "prometheus-to-sd-exporter",
                                             "docker")
    cassandra = index.lookup(None, "6eaa4782de428f5ea639e33a837ed47aa9fa9e6969f8cb23e39ff788a751ce7d")
    assert cassandra is not None
    assert cassandra.owner is not None
    assert (cassandra.name, cassandra.container, cassandra.qos_class, cassandra.owner.kind, cassandra.owner.name,
            cassandra.owner.resolved) == ("cassandra-0", "cassandra", "Guaranteed", "StatefulSet", "cassandra", True)


def test_minikube_1_35_static_pods_by_config_hash() -> None:
    index = load("podlist-minikube-1.35-containerd-2.2-static-pods-all-qos.json")
    static = sorted(p.name for p in index.pods if p.static)
    assert static == ["etcd-datagen-1-35", "kube-apiserver-datagen-1-35", "kube-controller-manager-datagen-1-35",
                      "kube-scheduler-datagen-1-35"]
    # A static pod's cgroup carries the kubelet's UID (the config hash, 32 hex, no dashes).
    cg = parse_cgroup("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8ac8c3a9ee4d182b8d934f20e971ada7"
                      ".slice/cri-containerd-88e37f75c461dd32860815f6490cabf0edd2e77f835d1b2625142b3d98d52f27.scope")
    ref = index.lookup(cg.pod_uid, cg.container_id)
    assert ref is not None
    assert (ref.namespace, ref.name, ref.container, ref.static, ref.runtime) == (
        "kube-system", "kube-apiserver-datagen-1-35", "kube-apiserver", True, "containerd")
    job = index.lookup("0961a396-5fff-45fe-a970-19b2aac96e5d", None)
    assert job is not None and job.owner is not None and (job.owner.kind, job.owner.name) == ("Job", "e2e-failjob") and job.container is None


def test_mirror_pod_uid_differs_from_config_hash() -> None:
    """The API server's mirror pod has its own UID; the cgroup has the hash: both must resolve."""
    data = json.loads((KUBELET / "podlist-minikube-1.16-docker-static-pods.json").read_text())
    etcd = next(p for p in data["items"] if p["metadata"]["name"] == "etcd-minikube")
    etcd["metadata"]["uid"] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # as the API server shows it
    index = parse_podlist(data)
    by_hash = index.lookup("82c0f875ee185f5449064b39929f5431", None)
    by_uid = index.lookup("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", None)
    assert by_hash is not None and by_uid is not None
    assert by_hash.name == by_uid.name == "etcd-minikube" and by_hash.static


def test_lookup_container_first_then_uid_and_normalisation() -> None:
    index = load("podlist-minikube-1.16-docker-static-pods.json")
    cid = "f02888f90651eb88d17616646ec4d8a3a7c97533fdd57f096ae236a48dfb7a53"
    # A stale/wrong pod uid does not win over an exact container id.
    ref = index.lookup("ffffffff-ffff-ffff-ffff-ffffffffffff", cid)
    assert ref is not None and (ref.name, ref.container) == ("e2e-kube-state-metrics-887cff974-4jr26",
                                                             "kube-state-metrics")
    # systemd-driver underscores and upper case are normalised.
    ref = index.lookup("E4CF2A32_153C_40C1_A997_D2F29196DFC3", None)
    assert ref is not None and ref.name == "e2e-kube-state-metrics-887cff974-4jr26"
    assert ref.owner is not None and ref.owner.via is not None
    assert (ref.owner.kind, ref.owner.name) == ("Deployment", "e2e-kube-state-metrics")
    assert ref.owner.via.name == "e2e-kube-state-metrics-887cff974"
    # An unknown container of a known pod (e.g. the sandbox): the pod, no container name.
    ref = index.lookup("e4cf2a32-153c-40c1-a997-d2f29196dfc3", "a" * 64)
    assert ref is not None and ref.container is None and ref.container_id == "a" * 64
    assert index.lookup("00000000-0000-0000-0000-000000000000", None) is None
    assert index.lookup(None, None) is None


def test_pods_without_qos() -> None:
    index = load("podlist-minikube-docker-failed-and-pending-no-qos.json")
    ksm = index.by_uid["f89b6c09-11a3-11e8-a084-080027352a02"]
    assert ksm.qos_class is None and ksm.name == "kube-state-metrics-57f4659995-6n2qq"
    kcm = index.by_uid["38d78cbd438e068d417c11c848b26f09"]
    assert kcm.static and kcm.containers[0].container_id == (
        "4c3ce07424670ccd46561eb1498a2759de4da4a7c2cd460fef147afefe4db150")


def test_null_and_empty_items() -> None:
    index = load("podlist-null-item-and-empty-item.json")
    (pod,) = index.pods
    assert (pod.namespace, pod.name) == ("default", "nginx-99d8b564-4r4vq")


def test_ephemeral_container_synthetic() -> None:
    """SYNTHETIC (v1 Pod schema): an ephemeral debug container with its own id."""
    data = {"kind": "PodList", "apiVersion": "v1", "items": [{
        "metadata": {"name": "web", "namespace": "shop", "uid": "11111111-2222-3333-4444-555555555555"},
        "spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "debugger-x"}]},
        "status": {"containerStatuses": [{"name": "app", "containerID": "cri-o://" + "b" * 64}],
                   "ephemeralContainerStatuses": [{"name": "debugger-x", "containerID": "containerd://" + "c" * 64}]},
    }]}
    index = parse_podlist(data)
    ref = index.lookup(None, "c" * 64)
    assert ref is not None and ref.container == "debugger-x"
    assert index.by_container_id["c" * 64][1].ephemeral
    assert index.lookup(None, "b" * 64).runtime == "cri-o"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "a list"),
        (b'{"kind": "Pod", "metadata": {}}', "a single Pod"),
        (b'{"kind": "Status", "status": "Failure", "code": 403}', "an API error Status"),
        ('{"kind": "PodList", "items": 5}', "items not a list"),
    ],
)
def test_not_a_podlist(data: bytes | str, why: str) -> None:
    with pytest.raises(ValueError, match="PodList"):
        parse_podlist(data)


def test_split_container_id() -> None:
    assert split_container_id("containerd://ABC") == ("abc", "containerd")
    assert split_container_id("docker://abc") == ("abc", "docker")
    assert split_container_id("cri-o://abc") == ("abc", "cri-o")
    assert split_container_id("") == (None, None)
    assert split_container_id(None) == (None, None)
