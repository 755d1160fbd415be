"""The workload that owns a pod, to the top of its chain: ReplicaSet -> Deployment, Job -> CronJob (issue 16).

The pod's ownerReferences (the kubelet's PodList) name its direct controller; what owns that controller is
only in the API server. `OwnerResolver` reads the ReplicaSet or Job (one call each, the API server
module's deadline each, answers cached for CACHE_SECONDS) and puts the top-level owner into PodRef.owner,
keeping the direct controller as `via`. It stops at the first refusal or failure for the rest of the
investigation (a service account without `get` on replicasets/jobs would fail every call alike) and says
what is known in `note`. Also reads the node's allocatable memory, which caps a recommendation.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from app.collectors.apiserver import ApiServer, ApiServerError
from app.models import OwnerRef, PodRef
from app.parsers.kubelet import FOLLOWED

CACHE_SECONDS = 300.0
MAX_CALLS = 8  # per investigation: owners of the top processes only
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_quantity(text: str) -> int | None:
    """A Kubernetes memory quantity ("16279836Ki", "15Gi", "1e9", "128974848") in bytes, or None."""
    text = text.strip()
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            num, mult = text[: -len(suffix)], _UNITS[suffix]
            break
    else:
        num, mult = text, 1
    try:
        return int(float(num) * mult)
    except ValueError:
        return None


def controller_of(obj: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(kind, name, apiVersion) of an object's controller reference, or None."""
    refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if isinstance(r, dict) and r.get("kind")]
    ctrl = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ctrl is None:
        return None
    return str(ctrl["kind"]), str(ctrl.get("name") or ""), (str(ctrl["apiVersion"]) if ctrl.get("apiVersion") else None)


class OwnerResolver:
    """Follows pods' owner chains through the API server; thread-safe, cached across investigations."""

    def __init__(self, api: ApiServer | None) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[float, tuple[str, str, str | None] | None]] = {}
        self._allocatable: tuple[float, int | None, str | None] | None = None
        self._down: str | None = None  # the last resolve() found the API server unreachable: skip the node read

    def _lookup(self, namespace: str, kind: str, name: str) -> tuple[str, str, str | None] | None:
        key = (namespace, kind, name)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
                return hit[1]
        assert self.api is not None
        found = controller_of(self.api.read_controller(namespace, kind, name))  # ApiServerError propagates
        with self._lock:
            self._cache[key] = (time.monotonic(), found)
        return found

    def resolve(self, pods: list[PodRef]) -> None:
        """Replace each pod's owner by the top of its chain where the API server tells (in place)."""
        calls = 0
        failure: str | None = None if self.api is not None else "no API server configured"
        self._down = None
        for pod in pods:
            owner = pod.owner
            if owner is None or pod.namespace is None or owner.resolved:
                continue
            direct = owner.via or owner
            if direct.kind not in FOLLOWED:
                continue
            if failure is None and calls < MAX_CALLS:
                calls += 1
                try:
                    top = self._lookup(pod.namespace, direct.kind, direct.name)
                except ApiServerError as exc:
                    failure = str(exc)
                    if "timed out" in failure or "unreachable" in failure:
                        self._down = failure  # one deadline spent is enough: allocatable() does not wait again
                else:
                    if top is None:  # a bare ReplicaSet or Job: it is the top
                        pod.owner = direct.model_copy(update={"resolved": True, "note": None})
                    else:
                        pod.owner = OwnerRef(kind=top[0], name=top[1], api_version=top[2], resolved=True,
                                             via=direct.model_copy(update={"note": None}),
                                             note=f"followed {direct.kind} {direct.name} through the API server")
                    continue
            why = failure or f"more than {MAX_CALLS} owners to follow in one investigation"
            pod.owner = owner.model_copy(update={"note": f"{owner.note or direct.kind + ' not followed'}; "
                                                          f"the API server could not tell: {why}"})

    def allocatable(self, node: str) -> tuple[int | None, str | None]:
        """(the node's allocatable memory in bytes, None) or (None, why not); cached."""
        with self._lock:
            if self._allocatable is not None and time.monotonic() - self._allocatable[0] < CACHE_SECONDS:
                return self._allocatable[1], self._allocatable[2]
        if self.api is None:
            return None, "no API server configured"
        if self._down is not None:
            return None, self._down
        try:
            doc = self.api.read_node(node)
            value = ((doc.get("status") or {}).get("allocatable") or {}).get("memory")
            got, why = (parse_quantity(str(value)), None) if value else (None, "the Node has no allocatable memory")
        except ApiServerError as exc:
            got, why = None, str(exc)
        with self._lock:
            self._allocatable = (time.monotonic(), got, why)
        return got, why
