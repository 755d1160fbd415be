"""app.parsers.cgroup on real /proc/PID/cgroup captures (tests/fixtures/cgroup, sources in SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.parsers.cgroup import CgroupRef, host_view, parse_cgroup, parse_memory_stat

CGROUP = Path(__file__).parent / "fixtures" / "cgroup"

BURSTABLE_ID = "17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a"
RESERVED_ID = "95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8"
GKE_ID = "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376"
DOCKER_ID = "9d5b23edb1ba181e8910389a99906598d69ac9a0ead109ee55730cc416d95f7f"
NS_DOCKER_ID = "ba7b10d15d16e10e3de7a2dcd408a3d971169ae303f46cfad4c5453c6326fee2"
V2_DOCKER_ID = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd"
SOMETHING_ID = "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1"

FILE_CASES = [
    # (file, quirk, expected CgroupRef)
    ("v1-cgroupfs-kubepods-burstable-no-final-newline.txt",
     "v1 cgroupfs burstable; no final newline; bare id: runtime unknown from the path",
     CgroupRef(f"/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/{BURSTABLE_ID}", 1,
               "6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e", "burstable", BURSTABLE_ID, None)),
    ("v1-cgroupfs-kubepods-burstable-plus-unified-line-reserved-slice.txt",
     "hybrid: 0:: line is a service without pod, the v1 memory controller path is used",
     CgroupRef(f"/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/{RESERVED_ID}", 1,
               "8833712d-6e69-4f5c-95f3-aebd020ce2e7", "burstable", RESERVED_ID, None)),
    ("v1-mixed-gke-besteffort-guaranteed-systemd-docker-doubled-kubepods.txt",
     "lines disagree: the memory controller's line (GKE besteffort cgroupfs) decides",
     CgroupRef(f"/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/{GKE_ID}", 1,
               "74c13223-5a00-11e9-b385-42010a80018d", "besteffort", GKE_ID, None)),
    ("v1-kubepods-something-pod-dashes.txt", "unknown QoS segment ('something'): qos None, pod still found",
     CgroupRef(f"/kubepods/something/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/{SOMETHING_ID}", 1,
               "3d274242-8ee0-11e9-a8a6-1e68d864ef1a", None, SOMETHING_ID, None)),
    ("v2-systemd-kubepods-besteffort-docker-scope.txt", "v2 systemd driver: uid underscores -> dashes; docker scope",
     CgroupRef("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb"
               f".slice/docker-{V2_DOCKER_ID}.scope", 2, "8712f785-1a3e-41ec-a00b-e2dcc77431cb", "besteffort",
               V2_DOCKER_ID, "docker")),
    ("v2-cgroupns-relative-dotdot-docker-scope-no-final-newline.txt",
     "read inside a cgroup namespace: path starts with /../; matched from the end; not a pod",
     CgroupRef(f"/../../../../system.slice/docker-{NS_DOCKER_ID}.scope", 2, None, None, NS_DOCKER_ID, "docker")),
    ("v1-cgroupfs-docker-standalone.txt", "plain docker (cgroupfs /docker/<id>): a container, not a pod",
     CgroupRef(f"/docker/{DOCKER_ID}", 1, None, None, DOCKER_ID, "docker")),
    ("v1-host-docker-service.txt", "dockerd itself (docker.service): a host process",
     CgroupRef("/system.slice/docker.service", 1, None, None, None, None)),
    ("v1-host-user-session-with-0-unified-line.txt", "'0::/' first, then v1 controllers: v1 memory path",
     CgroupRef("/user.slice/user-0.slice/session-14.scope", 1, None, None, None, None)),
    ("v1-v2-hybrid-host-ssh-service.txt", "hybrid host service: v1 memory path, version 1",
     CgroupRef("/system.slice/ssh.service", 1, None, None, None, None)),
    ("v1-lines-out-of-order-only-two.txt", "no memory controller line; name=systemd line first",
     CgroupRef("/system.slice/python-app.service", 1, None, None, None, None)),
    ("v2-bottlerocket-podruntime-runtime.txt", "BottleRocket host runtime: v2, no pod",
     CgroupRef("/podruntime/runtime", 2, None, None, None, None)),
    ("v1-cloudfoundry-garden.txt", "Cloud Foundry garden: not Kubernetes; no final newline",
     CgroupRef("/system.slice/garden.service/garden/6f265890-5165-7fab-6b52-18d1", 1, None, None, None, None)),
    ("v1-ecs-fargate-1.4-taskid-dash-suffix.txt", "ECS Fargate task id: not Kubernetes, not a runtime we name",
     CgroupRef("/ecs/8cd79a803caf4d2aa945152e934a5c00/8cd79a803caf4d2aa945152e934a5c00-1053176469", 1, None, None,
               None, None)),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_parse_cgroup_fixture(case: tuple[str, str, CgroupRef]) -> None:
    name, _quirk, want = case
    assert parse_cgroup((CGROUP / name).read_text()) == want


MIXED = {
    int(line.split(":", 1)[0]): line
    for line in (CGROUP / "v1-mixed-gke-besteffort-guaranteed-systemd-docker-doubled-kubepods.txt").read_text().splitlines()
}  # by hierarchy ID: 12 systemd guaranteed docker, 13 cgroupfs guaranteed, 14 doubled kubepods

LINE_CASES = [
    # (line, quirk, pod_uid, qos, container_id, runtime)
    (MIXED[12], "v1 systemd driver, guaranteed (no QoS in kubepods-pod<uid>.slice), docker scope",
     "22949dce-fd8b-11ea-8ede-98f2b32c645c", "guaranteed",
     "b15a5bdedd2e7645c3be271364324321b908314e4c77857bbfd32a041148c07f", "docker"),
    (MIXED[13], "cgroupfs guaranteed: /kubepods/pod<uid>/<id>", "5eadac96-ab58-11ea-b82b-0242ac110009", "guaranteed",
     "7fe41c8a2d1da09420117894f11dd91f6c3a44dfeb7d125dc594bd53468861df", None),
    (MIXED[14], "doubled /kubepods/kubepods/besteffort", "0e886e9a-3879-45f9-b44d-86ef9df03224", "besteffort",
     "244a65edefdffe31685c42317c9054e71dc1193048cf9459e2a4dd35cbc1dba4", None),
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod121157b5_c67d_4c3e_9052_cb27bbb711fb.slice/"
     "cri-containerd-1cd3449e930b8a28c7595240fa32ba20c84f36d059e5fbe63104ad40057992d1.scope",
     "SYNTHETIC (DESIGN.md format): v2 systemd driver containerd burstable",
     "121157b5-c67d-4c3e-9052-cb27bbb711fb", "burstable",
     "1cd3449e930b8a28c7595240fa32ba20c84f36d059e5fbe63104ad40057992d1", "containerd"),
    ("0::/../../kubepods-besteffort-pod121157b5_c67d_4c3e_9052_cb27bbb711fb.slice/"
     "cri-containerd-1cd3449e930b8a28c7595240fa32ba20c84f36d059e5fbe63104ad40057992d1.scope",
     "SYNTHETIC: containerd pod seen from inside a cgroup namespace", "121157b5-c67d-4c3e-9052-cb27bbb711fb",
     "besteffort", "1cd3449e930b8a28c7595240fa32ba20c84f36d059e5fbe63104ad40057992d1", "containerd"),
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod90d81341_92de_11e7_8cf2_507b9d4141fa.slice/"
     "crio-conmon-2227daf62df6694645fee5df53c1f91271546a9560e8600a525690ae252b7f63.scope",
     "SYNTHETIC: CRI-O's conmon monitor scope", "90d81341-92de-11e7-8cf2-507b9d4141fa", "burstable",
     "2227daf62df6694645fee5df53c1f91271546a9560e8600a525690ae252b7f63", "cri-o"),
    ("0::/kubepods/pod84d4ba8d0f3f962285463532428c2615/73011626531ac62b595d64fa4d39f8cccbc362a2927187fc1bbd9c23d95f00ba",
     "SYNTHETIC: static pod, kubelet UID = 32-hex config hash kept as is",
     "84d4ba8d0f3f962285463532428c2615", "guaranteed",
     "73011626531ac62b595d64fa4d39f8cccbc362a2927187fc1bbd9c23d95f00ba", None),
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod121157b5_c67d_4c3e_9052_cb27bbb711fb.slice",
     "SYNTHETIC: the pod's own cgroup (no container)", "121157b5-c67d-4c3e-9052-cb27bbb711fb", "burstable", None,
     None),
]


@pytest.mark.parametrize("case", LINE_CASES, ids=[c[1] for c in LINE_CASES])
def test_parse_cgroup_single_lines(case: tuple) -> None:
    line, _quirk, uid, qos, cid, runtime = case
    ref = parse_cgroup(line)
    assert (ref.pod_uid, ref.qos, ref.container_id, ref.runtime) == (uid, qos, cid, runtime)
    assert ref.path == line.split(":", 2)[2]


SPEC = json.loads((CGROUP / "elastic-apm-container-metadata-discovery-spec.json").read_text())


@pytest.mark.parametrize("name", sorted(SPEC))
def test_parse_cgroup_elastic_spec(name: str) -> None:
    """Real /proc/self/cgroup lines wrapped in Elastic's JSON spec.

    Where Elastic derives more than the cgroup says (the 'cgroup_v2' case takes the id from
    mountinfo; the ECS case is not Kubernetes), we expect what the cgroup line alone gives.
    """
    case = SPEC[name]
    lines = case["files"].get("/proc/self/cgroup")
    ref = parse_cgroup("\n".join(lines))
    assert ref.pod_uid == case["podId"]
    if name in ("cgroup_v2", "cgroup_v1_awsEcs"):
        assert ref.container_id is None
    else:
        assert ref.container_id == case["containerId"]
    runtimes = {"cgroup_v1_underscores": "cri-o", "cgroup_v1_openshift": "docker", "gardener": "containerd"}
    assert ref.runtime == runtimes.get(name)
    if name == "cgroup_v1_openshift":
        assert ref.qos == "guaranteed"
    if name in ("cgroup_v1_underscores", "gardener"):
        assert ref.qos == "burstable"


def test_parse_cgroup_v2_root() -> None:
    """A process in the v2 root (kernel threads, or seen from a cgroup namespace root)."""
    assert parse_cgroup("0::/\n") == CgroupRef("/", 2, None, None, None, None)


@pytest.mark.parametrize("text", ["", "\n", "garbage", "x:memory:/a", "1:memory:relative"])
def test_parse_cgroup_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="cgroup"):
        parse_cgroup(text)


def test_parse_memory_stat_v2() -> None:
    stat = parse_memory_stat((CGROUP / "v2-kubepods-besteffort-docker-memory.stat").read_text())
    assert (stat["anon"], stat["file"], stat["pgfault"], stat["pgmajfault"]) == (44892160, 1044480, 29601375, 0)
    assert stat["workingset_refault_anon"] == 0 and stat["workingset_refault_file"] == 0
    assert len(stat) == 40


def test_parse_memory_stat_v1() -> None:
    """Quirk: v1 has both local and hierarchical total_* keys, and a 2^63-ish 'no limit'."""
    stat = parse_memory_stat((CGROUP / "v1-ssh-service-memory.stat").read_text())
    assert (stat["total_cache"], stat["total_rss"], stat["total_pgmajfault"]) == (7299072, 3637248, 0)
    assert stat["hierarchical_memory_limit"] == 9223372036854771712


# --- paths seen from inside a cgroup namespace, and test groups nested under a parent ----------------

HOST_VIEW_CASES = [
    # (path, quirk, host path)
    ("/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/" + BURSTABLE_ID, "already a host path: unchanged",
     "/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/" + BURSTABLE_ID),
    ("/../../kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/" + GKE_ID,
     "from inside a pod's cgroup namespace: cut at kubepods",
     "/kubepods/besteffort/pod74c13223-5a00-11e9-b385-42010a80018d/" + GKE_ID),
    ("/../../../../system.slice/docker-" + NS_DOCKER_ID + ".scope", "no kubepods: the named segments",
     "/system.slice/docker-" + NS_DOCKER_ID + ".scope"),
]


@pytest.mark.parametrize("path,quirk,host", HOST_VIEW_CASES, ids=[c[1] for c in HOST_VIEW_CASES])
def test_host_view(path: str, quirk: str, host: str) -> None:
    ref = CgroupRef(path, 1, "x", "burstable", "y", None)
    out = host_view(ref)
    assert out.path == host, quirk
    assert (out.pod_uid, out.qos, out.container_id, out.version) == ("x", "burstable", "y", 1)
    if host == path:
        assert out is ref


def test_host_view_of_the_cgroupns_fixture() -> None:
    ref = parse_cgroup((CGROUP / "v2-cgroupns-relative-dotdot-docker-scope-no-final-newline.txt").read_text())
    assert ref.path.startswith("/../") and host_view(ref).path == f"/system.slice/docker-{NS_DOCKER_ID}.scope"


def test_pod_found_from_the_end_of_a_nested_test_path() -> None:
    """Test runs nest kubepods-shaped groups under their own pfi-test-<pid>-<n>/ parent (never at
    the hierarchy's root, where a real kubelet's kubepods could be): the pod is still found."""
    uid = "b5812e37-ce78-41e2-9d8d-d93a88e481d6"
    cid = "bcbcd3972a517ab0ed8df77d0a07d082c529278f206d0f4a29ebbe940996e9e5"
    text = f"12:memory:/pfi-test-28759-5/kubepods/burstable/pod{uid}/{cid}\n0::/user.slice\n"
    ref = parse_cgroup(text)
    assert ref == CgroupRef(f"/pfi-test-28759-5/kubepods/burstable/pod{uid}/{cid}", 1, uid, "burstable", cid, None)
    guaranteed = parse_cgroup(f"12:memory:/pfi-test-1-2/kubepods/pod{uid}/{cid}\n")
    assert (guaranteed.pod_uid, guaranteed.qos) == (uid, "guaranteed")


def test_parse_cgroup_hybrid_pod_on_both_lines_uses_v1_memory() -> None:
    """systemd driver on a cgroup-v1 host: the pod is on the v1 memory line AND mirrored on 0::; the
    unified tree has no controllers, so memory must come from v1 (issue 8 item 4). Lines as this
    machine prints them for a process moved into both trees."""
    group = ("/pfi-test-1-1/kubepods.slice/kubepods-burstable.slice/"
             "kubepods-burstable-pod0a1b2c3d_0000_4000_8000_00000000abcd.slice/cri-containerd-" + "e" * 64 + ".scope")
    text = f"9:name=systemd:/\n8:pids:/\n4:memory:{group}\n1:cpu:/\n0::{group}\n"
    ref = parse_cgroup(text)
    assert (ref.version, ref.path) == (1, group)
    assert (ref.pod_uid, ref.qos, ref.container_id, ref.runtime) == (
        "0a1b2c3d-0000-4000-8000-00000000abcd", "burstable", "e" * 64, "containerd")
