"""Pure parsers for /proc/PID/cgroup and cgroup memory.stat: which pod and container a process is in.

/proc/PID/cgroup, one line per hierarchy:  hierarchy-ID:controller-list:cgroup-path
  v2 (unified):  0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
  v1:            10:memory:/kubepods/burstable/pod<uid>/<id>
  hybrid hosts:  both; the memory controller is then on v1 (the "memory" line), and the 0:: line is "/",
                 a service, or the same group mirrored into a unified tree without controllers.

Path shapes, by cgroup driver and runtime (the id is 64 hex digits):
  systemd driver:  kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<scope>
                   guaranteed:  kubepods.slice/kubepods-pod<uid>.slice/<scope>
                   <scope>: cri-containerd-<id>.scope | crio-<id>.scope | crio-conmon-<id>.scope | docker-<id>.scope
  cgroupfs driver: /kubepods/<qos>/pod<uid>/<id>   guaranteed: /kubepods/pod<uid>/<id>
                   (the bare id does not say which runtime made it; CRI-O writes crio-<id>)
  static pods:     pod<32 hex> (the kubelet's config hash, no dashes)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.parsers.procfs import parse_key_values

__all__ = ["CgroupRef", "host_view", "parse_cgroup", "parse_memory_stat"]


@dataclass(frozen=True, slots=True)
class CgroupRef:
    path: str  # the cgroup whose memory.* files describe the process (see parse_cgroup)
    version: int  # 1 or 2: which hierarchy `path` is in
    pod_uid: str | None  # with dashes (or 32 hex for static pods); None: not in a pod
    qos: str | None  # "guaranteed", "burstable", "besteffort"; None: not a pod or not known
    container_id: str | None  # bare 64-hex id
    runtime: str | None  # "containerd", "cri-o", "docker"; None: not known from the path


_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# systemd driver: kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice (guaranteed)
_SYSTEMD_POD = re.compile(rf"^kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>{_UID})\.slice$")
# cgroupfs driver: pod<uid>
_CGROUPFS_POD = re.compile(rf"^pod(?P<uid>{_UID})$")
_ID = r"[0-9a-f]{64}"
_CONTAINER = (
    (re.compile(rf"^cri-containerd-(?P<id>{_ID})\.scope$"), "containerd"),
    (re.compile(rf"^crio-conmon-(?P<id>{_ID})\.scope$"), "cri-o"),  # CRI-O's monitor process
    (re.compile(rf"^crio-(?P<id>{_ID})(?:\.scope)?$"), "cri-o"),
    (re.compile(rf"^docker-(?P<id>{_ID})\.scope$"), "docker"),
    (re.compile(rf"^(?P<id>{_ID})$"), None),  # cgroupfs driver: the bare id
)
_QOS_SEGMENTS = {"burstable", "besteffort"}


def _container(segment: str) -> tuple[str, str | None] | None:
    for pattern, runtime in _CONTAINER:
        m = pattern.match(segment)
        if m:
            return m["id"], runtime
    return None


def _from_path(path: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(pod_uid, qos, container_id, runtime) from one cgroup path."""
    # Quirk: read from inside a cgroup namespace, other processes' paths are relative to our own
    # group and start with "/../../": only the END of the path is reliable, so search from there.
    segments = [s for s in path.split("/") if s and s != ".."]
    for i in range(len(segments) - 1, -1, -1):
        seg = segments[i]
        m = _SYSTEMD_POD.match(seg)
        if m:
            # Quirk: the systemd driver writes the pod UID with underscores ('-' separates slice
            # levels in systemd unit names); the API uses dashes.
            uid = m["uid"].replace("_", "-")
            # Quirk: guaranteed pods have no QoS level: kubepods-pod<uid>.slice.
            qos = m["qos"] or "guaranteed"
        else:
            m = _CGROUPFS_POD.match(seg)
            if not m:
                continue
            uid = m["uid"].replace("_", "-")
            parent = segments[i - 1] if i > 0 else ""
            # Quirk: guaranteed pods sit right under "kubepods" (/kubepods/pod<uid>); anything else
            # that is not a known QoS level (a sanitised capture, a custom root) is left unknown.
            qos = parent if parent in _QOS_SEGMENTS else ("guaranteed" if parent == "kubepods" else None)
        child = _container(segments[i + 1]) if i + 1 < len(segments) else None
        cid, runtime = child if child else (None, None)
        return uid, qos, cid, runtime
    # Not in a pod: a plain docker container (/docker/<id>, /system.slice/docker-<id>.scope).
    if segments:
        last = _container(segments[-1])
        if last is not None:
            cid, runtime = last
            if runtime is None and len(segments) >= 2 and segments[-2] == "docker":
                runtime = "docker"
            if runtime is not None:
                return None, None, cid, runtime
    return None, None, None, None


def parse_cgroup(text: str) -> CgroupRef:
    """Where a process sits: the cgroup to read memory from, and its pod, QoS, container and runtime."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("/"):
            raise ValueError(f"not a /proc/PID/cgroup line: {line[:120]!r}")
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
            continue
        for c in controllers.split(","):
            v1[c] = path
    if v2 is None and not v1:
        raise ValueError("empty /proc/PID/cgroup")

    mem = v1.get("memory")
    # A controller is bound to one hierarchy at a time: a v1 line listing "memory" means the memory
    # controller is on v1, whatever the 0:: line says. Quirk: on hybrid hosts (v1 controllers plus a
    # 0:: line) that line is "/" or a service (coroot's fixture: v1 says kubepods/..., 0:: says
    # /reserved.slice/containerd.service), or, with the systemd driver, the same pod group mirrored
    # into a unified tree that has no controllers: memory.* files exist only on the v1 side.
    if mem is not None:
        path, version = mem, 1
    elif v2 is not None:
        path, version = v2, 2
    else:
        # v1 without a memory controller line: the most specific path there is.
        named = v1.get("name=systemd")
        others = [p for p in v1.values() if p != "/"]
        path, version = (named if named and named != "/" else (others[0] if others else "/")), 1

    uid, qos, cid, runtime = _from_path(path)
    if uid is None and cid is None:
        # The chosen hierarchy says nothing (e.g. memory at "/"); another line may still name the pod.
        for other in [*([v2] if v2 else []), *v1.values()]:
            found = _from_path(other)
            if found[0] is not None or found[2] is not None:
                uid, qos, cid, runtime = found
                break
    return CgroupRef(path=path, version=version, pod_uid=uid, qos=qos, container_id=cid, runtime=runtime)


def host_view(ref: CgroupRef) -> CgroupRef:
    """`ref` with its path as seen from the host's root cgroup (unchanged when it already is).

    Quirk: read from inside a pod's cgroup namespace, other processes' paths start with "/../": the
    kubepods hierarchy sits at the root of the host's cgroup tree, so the path is cut there. A path
    without "kubepods" keeps its named segments (the ".." ones dropped): the best guess there is.
    """
    path = ref.path
    if "/.." not in path:
        return ref
    idx = path.find("/kubepods")
    path = path[idx:] if idx >= 0 else "/" + "/".join(p for p in path.split("/") if p and p != "..")
    if path == ref.path:
        return ref
    return CgroupRef(path=path, version=ref.version, pod_uid=ref.pod_uid, qos=ref.qos,
                     container_id=ref.container_id, runtime=ref.runtime)


def parse_memory_stat(text: str) -> dict[str, int]:
    """memory.stat (v1 or v2): 'key value' lines. v2 values are bytes or event counts; v1 adds total_* keys."""
    return parse_key_values(text)
