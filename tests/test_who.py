"""One way to print a pod: the terminal, the report pages and the sinks' text all say `namespace/name`,
and a pod the kubelet did not name is shown by its uid. Who a process is has one module
(app.investigation.who) that the terminal, the pages, the sinks and the verdicts import."""

from __future__ import annotations

from app.investigation.who import group_cell as _history_who
from app.investigation.who import group_who, who
from app.investigation.who import who_cell as _pod
from app.models import HistoryCgroup, HistoryPod, PodRef, ProcessReport
from app.service.delivery.sinks import _who
from app.service.ui.lead_up_chart import history_label
from app.service.ui.render import _pod_label

UID = "3ea3ef66-5f89-43b7-b88b-6ee26f5b18a4"
NAMED = PodRef(namespace="scraper", name="e2e-statefulset-0", uid=UID, container="compute-pi-digits")
UNNAMED = PodRef(uid=UID, container="compute-pi-digits")


def _proc(pod: PodRef | None) -> ProcessReport:
    return ProcessReport(pid=4242, comm="python3", major_faults=900, major_faults_per_second=30.0,
                         host_process=pod is None, pod=pod)


def test_a_named_pod_reads_the_same_everywhere() -> None:
    p = _proc(NAMED)
    assert _pod(p) == "scraper/e2e-statefulset-0\ncompute-pi-digits"
    assert _pod_label(p) == "scraper/e2e-statefulset-0"
    assert _who(p) == "python3 [4242] in scraper/e2e-statefulset-0 (compute-pi-digits)"
    pod = HistoryPod(namespace="scraper", name="e2e-statefulset-0", uid=UID, container="compute-pi-digits")
    hist = HistoryCgroup(cgroup="/kubepods/x", pod=pod, major_faults=1, series=[1])
    assert history_label(hist) == "scraper/e2e-statefulset-0 · compute-pi-digits"
    assert _history_who(hist) == "scraper/e2e-statefulset-0\ncompute-pi-digits"
    assert who(p) == group_who(hist) == "pod scraper/e2e-statefulset-0 container compute-pi-digits"


def test_a_pod_without_a_name_is_shown_by_its_uid_and_the_host_as_such() -> None:
    p = _proc(UNNAMED)
    assert _pod(p) == f"uid {UID}\ncompute-pi-digits"
    assert _pod_label(p) == "pod 3ea3ef66… (name unresolved)"
    assert _who(p) == "python3 [4242]"
    assert PodRef(name="orphan", uid=UID).display() == "?/orphan"  # namespace not known
    host = _proc(None)
    assert (_pod(host), _pod_label(host), _who(host)) == ("(host)", None, "python3 [4242] (host)")
    assert who(host) == "host process python3 (pid 4242)"
    assert who(p) == "pod uid 3ea3ef66-5f89-43b7-b88b-6ee26f5b18a4"
    assert group_who(HistoryCgroup(cgroup="/system.slice/x", major_faults=1)) == "cgroup /system.slice/x"
