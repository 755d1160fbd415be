"""Realistic report documents for the UI tests (and for looking at the pages by hand).

.venv/bin/python -m tests.e2e.sample_reports /tmp/pages   # writes one HTML file per sample
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.service.ui.render import IndexRow

from app.models import (
    CgroupMemory,
    NodeStats,
    OffsetRange,
    OwnerRef,
    PodRef,
    Pressure,
    ProcessReport,
    Recommendation,
    Report,
    SinkResult,
    SkippedBackend,
    Source,
    TracerInfo,
    Trigger,
    Verdict,
)

T0 = datetime(2026, 11, 25, 10, 32, 5, tzinfo=UTC)
MiB = 1024 * 1024


def _wave(n: int, base: float, amp: float, phase: float = 0.0) -> list[int]:
    return [max(0, int(base + amp * math.sin(i / 2.5 + phase) + (i * 37 % 11) * amp / 20)) for i in range(n)]


def _skipped() -> list[SkippedBackend]:
    return [
        SkippedBackend(backend="bpftrace-major", reason="bpftrace not found in PATH"),
        SkippedBackend(
            backend="bpftrace-kprobe", reason="no kprobes: /sys/kernel/tracing/kprobe_events missing"
        ),
        SkippedBackend(
            backend="perf-tracepoint", reason="an exact backend works; this one records minor faults too"
        ),
        SkippedBackend(backend="procfs", reason="an exact backend works"),
    ]


def _alert_trigger(node: str) -> Trigger:
    return Trigger(
        kind="alert",
        alertname="NodeMemoryMajorPagesFaults",
        fingerprint="3f1e2d4c5b6a7980",
        starts_at="2026-11-25T10:31:50Z",
        labels={
            "alertname": "NodeMemoryMajorPagesFaults",
            "instance": "10.0.3.7:9100",
            "job": "node-exporter",
            "severity": "warning",
            "namespace": "monitoring",
            "pod": "node-exporter-x7k2p",
        },
        received_at=T0 - timedelta(seconds=1),
    )


def file_fault_report(n: int = 30) -> Report:
    """A pod re-reading its mmapped index: file faults at ~9,000/s, plus a smaller neighbour."""
    node = "ip-10-0-3-7.eu-west-1.compute.internal"
    top = ProcessReport(
        pid=48213,
        comm="search-indexer",
        cmdline="/usr/bin/search-indexer --index=/data/index.bin --token=<redacted> --threads=4",
        major_faults=9123 * n,
        major_faults_per_second=9123.4,
        series=_wave(n, 9100, 900),
        traced_faults=9100 * n,
        traced_majflt=9123 * n,
        host_process=False,
        pod=PodRef(
            namespace="search",
            name="search-indexer-7d9f8b6c5-q2x8z",
            uid="8a1f2c3d-4b5e-6f70-8192-a3b4c5d6e7f8",
            container="indexer",
            container_id="containerd://4be1c0ffee",
            runtime="containerd",
            qos_class="burstable",
            owner=OwnerRef(kind="Deployment", name="search-indexer"),
            resolved_by="kubelet",
        ),
        cgroup="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a1f2c3d.slice/cri-containerd-4be1.scope",
        paths_in_container=True,
        sources=[
            Source(
                kind="file",
                path="/data/index.bin",
                device="259:1",
                inode=1310722,
                faults=8700 * n,
                share=0.953,
                hot_ranges=[
                    OffsetRange(start=0, end=64 * MiB, faults=4100 * n),
                    OffsetRange(start=64 * MiB, end=128 * MiB, faults=2900 * n),
                    OffsetRange(start=512 * MiB, end=576 * MiB, faults=1200 * n),
                    OffsetRange(start=900 * MiB, end=964 * MiB, faults=500 * n),
                ],
            ),
            Source(kind="code", path="/usr/bin/search-indexer", faults=260 * n, share=0.0285),
            Source(kind="swap", path="[heap]", faults=140 * n, share=0.0154),
            Source(kind="unknown", faults=3 * n, share=0.0003),
        ],
        cgroup_memory=CgroupMemory(
            path="/sys/fs/cgroup/kubepods.slice/…",
            version=2,
            current_bytes=1020 * MiB,
            max_bytes=1024 * MiB,
            usage_ratio=0.996,
            file_bytes=700 * MiB,
            anon_bytes=300 * MiB,
            workingset_refault_file=812345,
            workingset_refault_anon=120,
            pgmajfault=9123 * n,
        ),
        rss_bytes=980 * MiB,
        swap_bytes=0,
        read_bytes_per_second=37 * MiB,
        verdict=Verdict(
            summary="container indexer re-reads /data/index.bin from disk: it runs at 99.6% of its 1 GiB limit",
            cause="container_memory_limit",
            advice=["raise the memory limit of container indexer above the size of its working set"],
            confidence="high",
        ),
    )
    neighbour = ProcessReport(
        pid=1822,
        comm="kubelet",
        cmdline="/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml",
        major_faults=41 * n,
        major_faults_per_second=41.0,
        series=_wave(n, 40, 25, 1.0),
        traced_faults=41 * n,
        host_process=True,
        sources=[Source(kind="code", path="/usr/bin/kubelet", faults=41 * n, share=1.0)],
    )
    cart = ProcessReport(
        pid=50110,
        comm="cart-cache",
        cmdline="java -Xmx48m -jar /app/cart-cache.jar",
        major_faults=12 * n,
        major_faults_per_second=12.0,
        series=_wave(n, 12, 10, 2.0),
        traced_faults=12 * n,
        host_process=False,
        pod=PodRef(
            namespace="shop",
            name="cart-cache-0",
            uid="11111111-2222-3333-4444-555555555555",
            container="cart",
        ),
        sources=[
            Source(kind="code", path="/usr/lib/jvm/java-17/lib/server/libjvm.so", faults=7 * n, share=0.58),
            Source(kind="file", path="/app/cart-cache.jar", faults=5 * n, share=0.42),
        ],
    )
    return Report(
        id="f1e2d3c4b5a69788",
        node=node,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=n + 1.4),
        window_seconds=n,
        trigger=_alert_trigger(node),
        tracer=TracerInfo(
            backend="perf-major",
            exact=True,
            reason="perf record -e major-faults works and gives exact major-fault addresses",
            skipped=_skipped(),
            events=9153 * n,
            output_bytes=41 * MiB,
            duration_seconds=n + 0.2,
        ),
        node_stats=NodeStats(
            pgmajfault=9200 * n,
            pgmajfault_per_second=9190.2,
            pswpin_per_second=0.0,
            pswpout_per_second=0.0,
            workingset_refault_file_per_second=8950.0,
            series=[
                a + b + c + 20 for a, b, c in zip(top.series, neighbour.series, cart.series, strict=True)
            ],
            mem_total_bytes=16 * 1024 * MiB,
            mem_available_bytes=1200 * MiB,
            swap_total_bytes=0,
            swap_free_bytes=0,
            psi_memory=Pressure(some_avg10=23.4, some_avg60=18.0, full_avg10=11.2, full_avg60=8.0),
            psi_io=Pressure(some_avg10=41.0, full_avg10=30.5),
        ),
        processes=[top, neighbour, cart],
        verdict=top.verdict,
        warnings=["paths of containerised processes are as the container sees them"],
        sinks=[
            SinkResult(
                sink="alertmanager", ok=True, attempts=1, detail="200 OK", at=T0 + timedelta(seconds=32)
            ),
            SinkResult(sink="slack", ok=False, attempts=5, detail="connect timeout after 5 retries"),
        ],
    )


def swap_report(n: int = 20) -> Report:
    node = "worker-2"
    p = ProcessReport(
        pid=7311,
        comm="redis-server",
        cmdline="redis-server *:6379",
        major_faults=8000 * n,
        major_faults_per_second=8012.5,
        series=_wave(n, 8000, 1500, 0.5),
        traced_faults=7990 * n,
        host_process=False,
        pod=PodRef(
            namespace="cache", name="redis-0", uid="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", container="redis"
        ),
        sources=[
            Source(kind="swap", path="[heap]", faults=7000 * n, share=0.876),
            Source(kind="swap", path=None, faults=900 * n, share=0.113),
            Source(kind="shmem", path="/dev/shm/redis-shared", faults=90 * n, share=0.011),
        ],
        verdict=Verdict(
            summary="anonymous memory of pod cache/redis-0 is swapped in at 8,000 pages/s: the node is overcommitted",
            cause="swap",
            advice=[
                "give pod cache/redis-0 a memory request that matches its use",
                "move it to a node with free memory",
            ],
            confidence="high",
        ),
    )
    return Report(
        node=node,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=n + 1),
        window_seconds=n,
        trigger=_alert_trigger(node),
        tracer=TracerInfo(backend="bpftrace-major", exact=True, events=7990 * n, duration_seconds=n),
        node_stats=NodeStats(
            pgmajfault_per_second=8100.0,
            pswpin_per_second=7950.0,
            pswpout_per_second=8300.0,
            series=[v + 60 for v in p.series],
            swap_total_bytes=4096 * MiB,
            swap_free_bytes=1024 * MiB,
            psi_memory=Pressure(some_avg10=64.0, full_avg10=40.0),
        ),
        processes=[p],
        verdict=p.verdict,
    )


def host_report(n: int = 10) -> Report:
    p = ProcessReport(
        pid=901,
        comm="postgres",
        cmdline="postgres: checkpointer",
        major_faults=300 * n,
        major_faults_per_second=300.0,
        series=_wave(n, 300, 120),
        host_process=True,
        sources=[
            Source(
                kind="file",
                path="/var/lib/postgresql/15/main/base/16384/2619",
                faults=0,
                share=0.7,
                estimated=True,
                note="from /proc/PID/smaps and /proc/PID/io: no fault addresses",
            ),
            Source(kind="swap", faults=0, share=0.3, estimated=True),
        ],
        verdict=Verdict(
            summary="host process postgres reads its data files cold through mmap",
            cause="cold_file_reads",
            advice=["expected for a scan; or add memory for the page cache"],
            confidence="low",
        ),
    )
    return Report(
        node="db-host-1",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=n),
        window_seconds=n,
        tracer=TracerInfo(
            backend="procfs",
            exact=False,
            reason="nothing exact works here",
            skipped=[
                SkippedBackend(backend="perf-major", reason="perf: permission denied (perf_event_paranoid=3)")
            ],
        ),
        node_stats=NodeStats(pgmajfault_per_second=310.0),
        processes=[p],
        verdict=p.verdict,
        warnings=["procfs backend: sources are estimated from smaps and io, not traced"],
    )


def empty_report() -> Report:
    return Report(
        node="quiet-node",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=30),
        window_seconds=30,
        tracer=TracerInfo(backend="perf-major", exact=True),
        node_stats=NodeStats(series=[0] * 30),
        processes=[],
        verdict=Verdict(
            summary="no major page faults during the 30 s window",
            cause="no_major_faults",
            advice=["the alert may have been a short burst: check the node-exporter graph"],
            confidence="medium",
        ),
    )


HOSTILE = '<script>alert("x")</script>'


def hostile_report() -> Report:
    p = ProcessReport(
        pid=666,
        comm="<b>evil</b>",
        cmdline=f"sh -c '{HOSTILE}' \"&amp;\"",
        major_faults=100,
        major_faults_per_second=10,
        series=[10] * 10,
        host_process=False,
        pod=PodRef(
            namespace="ns<i>", name=f"pod{HOSTILE}", uid="u", container='c"><img src=x onerror=alert(1)>'
        ),
        sources=[Source(kind="file", path=f"/tmp/{HOSTILE}.bin", faults=100, share=1.0)],
    )
    return Report(
        node="node<script>",
        started_at=T0,
        window_seconds=10,
        trigger=Trigger(kind="alert", alertname=HOSTILE, labels={"instance": HOSTILE}),
        tracer=TracerInfo(
            backend="perf-major", exact=True, skipped=[SkippedBackend(backend="x", reason=HOSTILE)]
        ),
        processes=[p],
        verdict=Verdict(summary=f"verdict {HOSTILE}", cause="unknown", advice=[HOSTILE]),
        warnings=[HOSTILE],
        sinks=[SinkResult(sink=HOSTILE, ok=False, detail=HOSTILE)],
    )


def deployment_pod_report(node: str, i: int, minutes_ago: float | None = None) -> Report:
    """file_fault_report as node `node` stored it: pod i of Deployment search/search-indexer (the
    fleet view's one-Deployment-on-many-nodes case), id `seed<i>`, started some minutes ago."""
    from app.models import utcnow

    r = file_fault_report()
    top = r.processes[0]
    assert top.pod is not None
    pod = top.pod.model_copy(
        update={"name": f"search-indexer-7d9f8b6c5-{i:05d}", "uid": f"8a1f2c3d-0000-4000-8000-{i:012d}"}
    )
    started = utcnow() - timedelta(minutes=5 + i if minutes_ago is None else minutes_ago)
    # the limit verdict's recommendation, as app.investigation.recommend words it for a Deployment
    rec = Recommendation(
        subject="container", knob="resources.limits.memory", current_limit_bytes=1 << 30,
        recommended_limit_bytes=1536 << 20, confidence="high", owner=pod.owner,
        basis=["1,310 MiB of distinct file pages of /data/index.bin read back in 30 s, exact (perf-major)"],
        command="kubectl -n search set resources deployment/search-indexer -c indexer --limits=memory=1536Mi",
    )
    verdict = r.verdict.model_copy(update={"recommendation": rec})
    top_verdict = (top.verdict or r.verdict).model_copy(update={"recommendation": rec})
    return r.model_copy(
        update={
            "id": f"seed{i:02d}",
            "node": node,
            "started_at": started,
            "finished_at": started + timedelta(seconds=31),
            "verdict": verdict,
            "processes": [top.model_copy(update={"pod": pod, "verdict": top_verdict}), *r.processes[1:]],
        }
    )


LONG_PATH = ("/var/lib/kubelet/pods/8a1f2c3d-0000-4000-8000-000000000042/volumes/kubernetes.io~empty-dir/segments/"
             "index-000000000000000000000000000000000000000000000000000000000000000000000000001234.seg")
LONG_CGROUP = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a1f2c3d_0000_4000_8000_000000000042"
               ".slice/cri-containerd-1049c9e937cb297fed12045bff1cf9495bd4c2b1df2c3f0cdbf448e7cf752c99.scope")


def lead_up_report() -> Report:
    """file_fault_report with the flight recorder's lead-up (a service's report): four containers, one
    gone, one a host cgroup with a long systemd path; and a source whose path is one long word."""
    from app.models import History, HistoryCgroup, HistoryPod

    r = file_fault_report()
    n = 15
    since = r.started_at - timedelta(minutes=n)
    top = r.processes[0]
    assert top.pod is not None
    pods = [
        HistoryCgroup(cgroup=LONG_CGROUP, pod=HistoryPod(namespace=top.pod.namespace, name=top.pod.name,
                                                         uid=top.pod.uid, container=top.pod.container),
                      major_faults=4_812_000, series=[v * 60 for v in _wave(n, 5200, 1800)],
                      last_active_at=r.started_at, peak_per_second=7_480.0),
        HistoryCgroup(cgroup="/kubepods/burstable/pod11/c1", pod=HistoryPod(namespace="batch",
                      name="nightly-reindex-29707813-dhlr2", uid="u11", container="reindex"),
                      major_faults=912_000, series=[v * 60 if i < 9 else 0 for i, v in enumerate(_wave(n, 1500, 400, 1))],
                      last_active_at=since + timedelta(minutes=9), peak_per_second=2_010.0, gone=True),
        HistoryCgroup(cgroup=LONG_CGROUP.replace("burstable", "besteffort"), major_faults=64_000,
                      series=[v * 60 for v in _wave(n, 70, 30, 2)], last_active_at=r.started_at - timedelta(minutes=1),
                      peak_per_second=101.0),
    ]
    history = History(interval_seconds=60, since=since, until=r.started_at,
                      node_series=[v * 60 for v in _wave(n, 7000, 2000)], node_major_faults=6_300_000,
                      recorded_since=since, cgroups=pods)
    second = r.processes[1]
    long_source = Source(kind="file", path=LONG_PATH, faults=9_000, share=0.3, inode=77, device="103:1")
    procs = [top, second.model_copy(update={"sources": [long_source, *second.sources]}), *r.processes[2:]]
    # the limit verdict's recommendation, with a command longer than an 800 px card is wide
    rec = deployment_pod_report("worker-1", 1).verdict.recommendation
    assert rec is not None
    rec = rec.model_copy(update={"command": rec.command + " --requests=memory=1536Mi  # " + LONG_PATH})
    return r.model_copy(update={"id": "leadup01", "history": history, "processes": procs,
                                "verdict": r.verdict.model_copy(update={"recommendation": rec})})


def quiet_report() -> Report:
    """A node under the noise floor: the verdict diagnose.quiet_node gives, two processes with a few faults."""
    from app.investigation.diagnose import quiet_node

    procs = [
        ProcessReport(pid=9165, comm="sleep", major_faults=12, major_faults_per_second=1.2, series=[3, 0, 5, 0, 4, 0, 0, 0, 0, 0],
                      sources=[Source(kind="code", path="/usr/bin/sleep", faults=12, share=1.0)]),
        ProcessReport(pid=812, comm="containerd", major_faults=4, major_faults_per_second=0.4, series=[0, 0, 0, 4, 0, 0, 0, 0, 0, 0],
                      sources=[Source(kind="file", path="/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
                                      faults=4, share=1.0)]),
    ]
    node = NodeStats(pgmajfault=31, pgmajfault_per_second=3.1, series=[4, 1, 6, 4, 5, 0, 2, 3, 4, 2])
    verdict = quiet_node(procs, node, 10, 50.0)
    assert verdict is not None
    return Report(id="quiet001", node="worker-quiet", started_at=T0, finished_at=T0 + timedelta(seconds=10),
                  window_seconds=10, tracer=TracerInfo(backend="perf-major", exact=True), node_stats=node,
                  processes=procs, verdict=verdict, trigger=_alert_trigger("worker-quiet"))


def failed_report() -> Report:
    """What the scheduler stores when an investigation fails (scheduler.failed_report's shape)."""
    error = ("the investigation did not finish within its 90 s deadline (stage: tracing with perf-major; "
             "/usr/bin/perf record -e major-faults -c 1 -d -a --synth=task did not stop after SIGINT)")
    return Report(id="failed01", node="worker-7", status="failed", started_at=T0, finished_at=T0 + timedelta(seconds=95),
                  window_seconds=30, trigger=_alert_trigger("worker-7"),
                  tracer=TracerInfo(backend="none", exact=False, errors=[error]),
                  verdict=Verdict(summary=f"The investigation failed: {error}", cause="unknown", confidence="low"))


def fleet_page_html(reports: list[Report], local_node: str = "") -> str:
    """The fleet page the service renders for these reports (each node's rows merged, sorted by last seen)."""
    from app.investigation.fleet import facts_of, merge, node_rows, sort_rows
    from app.service.fleet.page import FleetPage, fleet_row, render_fleet_page

    per_node: dict[str, list] = {}
    for r in reports:
        if (facts := facts_of(r)) is not None:
            per_node.setdefault(r.node, []).append((r.id, r.started_at, facts))
    rows = sort_rows(merge(row for node, got in per_node.items() for row in node_rows(node, got)))
    page = FleetPage(rows=[fleet_row(w, local_node) for w in rows], total=len(rows), nodes=len(per_node),
                     sort="last_seen", descending=True, offset=0, page_size=100)
    return render_fleet_page(page)


SAMPLES = {
    "file": file_fault_report,
    "swap": swap_report,
    "host": host_report,
    "empty": empty_report,
    "hostile": hostile_report,
    "leadup": lead_up_report,
    "quiet": quiet_report,
    "failed": failed_report,
}


def index_row(r: Report, url: str) -> IndexRow:
    """The index row the service would list for a report (for pages built from sample reports)."""
    from app.service.ui.render import IndexRow

    top = r.processes[0] if r.processes else None
    return IndexRow(
        id=r.id,
        node=r.node,
        started_at=r.started_at,
        status=r.status,
        verdict=r.verdict.summary,
        top_process=f"{top.comm} ({top.pid})" if top else None,
        top_pod=f"{top.pod.namespace}/{top.pod.name}" if top and top.pod and top.pod.name else None,
        backend=r.tracer.backend,
        url=url,
    )


def main(out: str) -> None:
    from app.service.ui.render import (
        RunningRow,
        render_index_page,
        render_report_page,
        render_running_page,
    )

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, make in SAMPLES.items():
        r = make()
        (d / f"{name}.html").write_text(render_report_page(r))
        rows.append(index_row(r, f"{name}.html"))
    running = [
        RunningRow(
            node="worker-3",
            started_at=T0,
            progress=0.4,
            message="tracing with perf-major, 12 s of 30 s",
            trigger="alert NodeMemoryMajorPagesFaults",
        )
    ]
    (d / "index.html").write_text(
        render_index_page(rows, running=running, unreachable=["worker-9 (10.0.3.9:8080): timeout"])
    )
    (d / "running.html").write_text(render_running_page(running[0]))
    fleet = [deployment_pod_report(f"worker-{i}", i) for i in (1, 2, 4, 6)] + [swap_report(), host_report()]
    (d / "fleet.html").write_text(fleet_page_html(fleet))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pfi-pages")
