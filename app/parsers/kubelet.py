"""Pure parser for a v1 PodList (kubelet `GET /pods` or the API server): pods by UID and by container id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.models import OwnerRef, PodRef

__all__ = ["ContainerInfo", "PodIndex", "PodInfo", "parse_podlist", "split_container_id"]

CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SOURCE = "kubernetes.io/config.source"
CONFIG_MIRROR = "kubernetes.io/config.mirror"
_RUNTIMES = {"containerd": "containerd", "cri-o": "cri-o", "crio": "cri-o", "docker": "docker"}


@dataclass
class ContainerInfo:
    name: str
    container_id: str | None  # bare hex id, without "containerd://"
    runtime: str | None  # "containerd", "cri-o", "docker" (from the id's scheme)
    init: bool = False
    ephemeral: bool = False


@dataclass
class PodInfo:
    uid: str
    namespace: str
    name: str
    qos_class: str | None  # as the API spells it: "Guaranteed", "Burstable", "BestEffort"
    owner: OwnerRef | None
    static: bool
    config_hash: str | None
    node_name: str | None
    containers: list[ContainerInfo] = field(default_factory=list)


def split_container_id(value: str | None) -> tuple[str | None, str | None]:
    """'containerd://abc' -> ('abc', 'containerd'); '' or None -> (None, None)."""
    if not value:
        return None, None
    scheme, sep, cid = value.partition("://")
    if not sep:
        return value.lower(), None
    return (cid.lower() or None), _RUNTIMES.get(scheme, scheme or None)


def normalise_uid(uid: str) -> str:
    return uid.strip().lower().replace("_", "-")


class PodIndex:
    """The pods of one node, looked up by pod UID (and static pods' config hash) or container id."""

    def __init__(self, pods: list[PodInfo]) -> None:
        self.pods = pods
        self.by_uid: dict[str, PodInfo] = {}
        self.by_container_id: dict[str, tuple[PodInfo, ContainerInfo]] = {}
        for pod in pods:
            self.by_uid[normalise_uid(pod.uid)] = pod
            if pod.config_hash:
                # A static pod's cgroup carries the kubelet's UID, its config hash; the API server's
                # mirror pod has another UID. The kubelet's own /pods gives uid == hash anyway.
                self.by_uid.setdefault(normalise_uid(pod.config_hash), pod)
            for c in pod.containers:
                if c.container_id:
                    self.by_container_id[c.container_id] = (pod, c)

    def __len__(self) -> int:
        return len(self.pods)

    def lookup(self, pod_uid: str | None, container_id: str | None) -> PodRef | None:
        """The pod (and container) of a cgroup: by container id first, then by pod UID."""
        if container_id:
            hit = self.by_container_id.get(container_id.lower())
            if hit is not None:
                pod, c = hit
                return _ref(pod, c, container_id.lower())
        if pod_uid:
            by_uid = self.by_uid.get(normalise_uid(pod_uid))
            if by_uid is not None:
                return _ref(by_uid, None, container_id.lower() if container_id else None)
        return None


def _ref(pod: PodInfo, c: ContainerInfo | None, container_id: str | None) -> PodRef:
    return PodRef(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        container=c.name if c else None,
        container_id=container_id,
        runtime=c.runtime if c else None,
        qos_class=pod.qos_class,
        owner=pod.owner,
        static=pod.static,
    )


TOP_LEVEL = ("Deployment", "StatefulSet", "DaemonSet", "CronJob")  # nothing above them in the usual chains
FOLLOWED = ("ReplicaSet", "Job")  # owned in turn by a Deployment / a CronJob: followed via the API server
TEMPLATE_HASH = "pod-template-hash"


def _owner(metadata: dict[str, Any]) -> OwnerRef | None:
    """The pod's owning workload as far as the PodList tells: its controller reference, and for a
    ReplicaSet whose name is `<deployment>-<pod-template-hash label>`, the Deployment (inferred from the
    name; app.collectors.owners confirms it with the API server when it can)."""
    refs = [r for r in metadata.get("ownerReferences") or [] if isinstance(r, dict) and r.get("kind")]
    ctrl = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ctrl is None:
        return None
    kind, name = str(ctrl["kind"]), str(ctrl.get("name") or "")
    api_version = str(ctrl["apiVersion"]) if ctrl.get("apiVersion") else None
    direct = OwnerRef(kind=kind, name=name, api_version=api_version, resolved=kind not in FOLLOWED)
    labels = metadata.get("labels") or {}
    template_hash = str(labels.get(TEMPLATE_HASH) or "") if isinstance(labels, dict) else ""
    if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
        return OwnerRef(kind="Deployment", name=name[: -len(template_hash) - 1], api_version="apps/v1",
                        via=direct, note="Deployment inferred from the ReplicaSet's name and the pod's "
                        "pod-template-hash label (not confirmed with the API server)")
    if kind in FOLLOWED:
        direct.note = (f"the {kind}'s own owner (a {'Deployment' if kind == 'ReplicaSet' else 'CronJob'}, if any) "
                       "is not in the pod's metadata: it needs the API server")
    return direct


def _containers(spec: dict[str, Any], status: dict[str, Any]) -> list[ContainerInfo]:
    out: list[ContainerInfo] = []
    seen: dict[tuple[str, str], ContainerInfo] = {}
    groups = (
        ("initContainers", "initContainerStatuses", True, False),
        ("containers", "containerStatuses", False, False),
        ("ephemeralContainers", "ephemeralContainerStatuses", False, True),
    )
    for spec_key, status_key, init, ephemeral in groups:
        # Statuses carry the container id; spec names the containers that have none yet (Pending).
        for st in status.get(status_key) or []:
            if not isinstance(st, dict) or not st.get("name"):
                continue
            cid, runtime = split_container_id(st.get("containerID"))
            info = ContainerInfo(name=str(st["name"]), container_id=cid, runtime=runtime, init=init, ephemeral=ephemeral)
            seen[(spec_key, info.name)] = info
            out.append(info)
        for sp in spec.get(spec_key) or []:
            if isinstance(sp, dict) and sp.get("name") and (spec_key, sp["name"]) not in seen:
                info = ContainerInfo(name=str(sp["name"]), container_id=None, runtime=None, init=init, ephemeral=ephemeral)
                seen[(spec_key, info.name)] = info
                out.append(info)
    return out


def _pod(item: dict[str, Any]) -> PodInfo | None:
    md = item.get("metadata") or {}
    uid = md.get("uid")
    if not uid or not md.get("name"):
        return None  # an empty {} item (seen in kubelet output)
    ann = md.get("annotations") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    source = ann.get(CONFIG_SOURCE)
    return PodInfo(
        uid=normalise_uid(str(uid)),
        namespace=str(md.get("namespace") or "default"),
        name=str(md["name"]),
        qos_class=status.get("qosClass") or None,  # absent on some Pending/Failed pods
        owner=_owner(md),
        # Static pods come from a manifest file or URL, not the API server; their mirror pod carries
        # the config.mirror annotation.
        static=bool((source and source != "api") or CONFIG_MIRROR in ann),
        config_hash=ann.get(CONFIG_HASH) or None,
        node_name=spec.get("nodeName") or None,
        containers=_containers(spec, status),
    )


def parse_podlist(data: bytes | str | dict[str, Any]) -> PodIndex:
    """A PodIndex from a v1 PodList (JSON bytes/str or the decoded dict)."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"PodList is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a PodList: a JSON {type(data).__name__}")
    kind = data.get("kind")
    if kind not in (None, "PodList") or "items" not in data:
        raise ValueError(f"not a PodList: kind={kind!r}" + ("" if "items" in data else ", no items"))
    items = data.get("items") or []  # "items": null while the kubelet starts
    if not isinstance(items, list):
        raise ValueError("not a PodList: items is not a list")
    pods = [p for p in (_pod(i) for i in items if isinstance(i, dict)) if p is not None]
    return PodIndex(pods)
