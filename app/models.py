"""The report document: what one investigation found on one node.

Versioned (`schema_version`); the service, the UI, the sinks and the CLI all read these names, so they
stay stable. Add fields freely; rename or remove only with a new schema version.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = "1.4"  # 1.4: TracerInfo.sample_period; 1.1: Report.history, history_reason; Trigger kind "watch"; 1.3: counts over the tracer's interval (TracerInfo.counts_over, counted_*), ProcessReport.exact, exact_why; zram or disk swap (Source.swap_device, NodeStats.swap_backing*, zram_*)
# 1.2: Verdict.recommendation (the memory limit to set, issue 16); OwnerRef.api_version, resolved, via, note;
#      Cause "quiet" (under the noise floor, issue 17); TracerInfo.counts_past_window


def new_report_id() -> str:
    return uuid.uuid4().hex[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)


class SourceKind(StrEnum):
    FILE = "file"  # a regular file mapping read back from disk (mmap, page cache)
    CODE = "code"  # an executable file mapping: program text refaulting
    SWAP = "swap"  # anonymous memory (anon, [heap], [stack]) swapped back in
    SHMEM = "shmem"  # tmpfs-backed shared memory (/dev/shm, memfd:, SysV) back from swap
    UNKNOWN = "unknown"  # no maps snapshot held the address


class Cause(StrEnum):
    CONTAINER_MEMORY_LIMIT = "container_memory_limit"
    NODE_MEMORY_PRESSURE = "node_memory_pressure"
    SWAP = "swap"
    COLD_FILE_READS = "cold_file_reads"
    CODE_REFAULTS = "code_refaults"
    SHMEM_SWAP = "shmem_swap"
    NO_MAJOR_FAULTS = "no_major_faults"
    QUIET = "quiet"  # major faults under the noise floor (settings.investigation.noise_floor): no finding
    # The recorder's lead-up names a container that faulted before the window and then stopped.
    STOPPED_BEFORE_WINDOW = "stopped_before_window"
    UNKNOWN = "unknown"


class OffsetRange(BaseModel):
    """A hot range of a file, in bytes from the file's start."""

    start: int
    end: int
    faults: int


class Source(BaseModel):
    kind: SourceKind
    path: str | None = None  # as the process sees it (inside its mount namespace)
    device: str | None = None  # "major:minor" from maps
    inode: int | None = None
    faults: int
    share: float = Field(ge=0, le=1, description="share of this process's traced faults")
    hot_ranges: list[OffsetRange] = Field(default_factory=list)
    estimated: bool = False  # True when inferred without fault addresses (procfs backend)
    note: str | None = None
    evidence: list[str] = Field(default_factory=list, description="what an estimate rests on (procfs backend)")
    # swap and shmem sources: the swap their pages came back from, "zram" (compressed in RAM) or "disk", or
    # "zram+disk" when both are active and neither holds 90% of what is swapped (NodeStats.swap_backing_basis)
    swap_device: Literal["zram", "disk", "zram+disk"] | None = None


class OwnerRef(BaseModel):
    """The workload that owns a pod: after owner resolution the TOP-LEVEL one (Deployment, StatefulSet,
    DaemonSet, CronJob), or the pod's own controller (ReplicaSet, Job...) when the chain could not be
    followed (`resolved` False, `note` says why)."""

    kind: str
    name: str
    api_version: str | None = None
    resolved: bool = False  # True: the top of the chain is known (followed, or nothing above it)
    via: OwnerRef | None = None  # the pod's direct controller when it is not `kind/name` (a ReplicaSet)
    note: str | None = None  # how the owner was found, or why the chain stops here


def pod_display(namespace: str | None, name: str | None, uid: str, *, short: bool = False) -> str:
    """How a pod is printed everywhere (terminal, pages, sinks, verdicts): `namespace/name` ('?' for a
    namespace not known); a pod whose name was not found by its uid (`uid <uid>`, or when `short`, the
    first 8 characters and a note, for the pages)."""
    if name:
        return f"{namespace or '?'}/{name}"
    return f"pod {uid[:8]}… (name unresolved)" if short else f"uid {uid}"


class PodRef(BaseModel):
    namespace: str | None = None
    name: str | None = None
    uid: str
    container: str | None = None
    container_id: str | None = None
    runtime: str | None = None  # containerd, cri-o, docker
    qos_class: str | None = None
    owner: OwnerRef | None = None
    static: bool = False
    resolved_by: Literal["kubelet", "apiserver", "cgroup"] = "cgroup"

    def display(self, *, short: bool = False) -> str:
        """`namespace/name`, or the uid when the name is not known (see pod_display)."""
        return pod_display(self.namespace, self.name, self.uid, short=short)


class Pressure(BaseModel):
    """One PSI file: share of time (percent) some/all tasks stalled."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    some_avg300: float = 0.0
    some_total_us: int = 0
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total_us: int | None = None


class CgroupMemory(BaseModel):
    path: str
    version: Literal[1, 2]
    current_bytes: int | None = None
    max_bytes: int | None = None  # None: no limit
    high_bytes: int | None = None
    usage_ratio: float | None = None  # current / max
    file_bytes: int | None = None
    anon_bytes: int | None = None
    swap_bytes: int | None = None
    workingset_refault_file: int | None = None
    workingset_refault_anon: int | None = None
    pgmajfault: int | None = None
    pressure: Pressure | None = None
    # Added for issue 9: where the limit comes from, and v2 swap counters.
    limit_path: str | None = None  # the cgroup whose limit max_bytes is (this one, or the pod's above it)
    high_path: str | None = None  # the cgroup whose memory.high high_bytes is (v2)
    high_usage_bytes: int | None = None  # memory.current of high_path (what its memory.high is compared with)
    pswpin: int | None = None  # v2 memory.stat (newer kernels): pages swapped in, cumulative
    pswpout: int | None = None
    zswpin: int | None = None  # v2 memory.stat (with zswap): pages loaded back from zswap; not in pswpin
    # Swap cache charged to the group and in no process's page tables (issue 22): pages of swapped memory read
    # back by swap readahead and not yet touched, or on their way out. The anon LRU lists less mapped anon and shmem.
    swapcache_bytes: int | None = None


Confidence = Literal["high", "medium", "low"]  # how sure a verdict is


class Recommendation(BaseModel):
    """The memory limit that makes the faults stop (issue 16; computed in app/investigation/recommend.py,
    how: docs/diagnosis.md). In every verdict that blames a limit."""

    resource: Literal["memory"] = "memory"
    subject: Literal["container", "pod", "cgroup"]
    knob: str  # "resources.limits.memory", "spec.resources.limits.memory", "memory.max", "memory.limit_in_bytes", "memory.high"
    cgroup: str | None = None  # the cgroup whose limit it is (limit_path)
    current_limit_bytes: int | None = None
    recommended_limit_bytes: int
    at_least: bool = False  # the window did not see the whole working set: distinct pages still growing at its end
    capped: str | None = None  # why it is lower than computed (the node's MemTotal or allocatable)
    basis: list[str] = Field(default_factory=list, description="the evidence lines it rests on")
    confidence: Confidence = "medium"
    command: str | None = None  # what to run, quoted for a POSIX shell
    command_reason: str | None = None  # why there is no command, or what to know before running it
    owner: OwnerRef | None = None  # the workload the command changes


class Verdict(BaseModel):
    summary: str
    cause: Cause
    advice: list[str] = Field(default_factory=list)
    confidence: Confidence = "medium"
    evidence: list[str] = Field(default_factory=list, description="the facts the verdict rests on")
    recommendation: Recommendation | None = None  # set when the verdict blames a memory limit


class ProcessReport(BaseModel):
    pid: int
    comm: str
    cmdline: str = ""  # secrets redacted
    major_faults: int  # majflt delta over the window
    major_faults_per_second: float
    minor_faults: int = 0
    series: list[int] = Field(default_factory=list, description="major faults in each second")
    traced_faults: int = 0  # fault events the tracer attributed to this process
    traced_majflt: int | None = None  # majflt delta over exactly the tracer's window, to compare
    # An exact backend's count checked against majflt over the same interval: True when traced_faults is
    # within 2% of traced_majflt; False with exact_why (late attach, late stop, dropped); None: not checked.
    exact: bool | None = None
    exact_why: str = ""
    started_during_window: bool = False
    exited_during_window: bool = False
    host_process: bool = True
    pod: PodRef | None = None
    cgroup: str | None = None
    paths_in_container: bool = False  # source paths are as the container sees them
    sources: list[Source] = Field(default_factory=list)
    cgroup_memory: CgroupMemory | None = None
    # How much its memory cgroup's workingset_refault_file rose while the process was watched (pages
    # the cgroup's page cache had evicted and read again); None: not measured (see the verdict's evidence).
    cgroup_file_refaults: int | None = None
    # The same for workingset_refault_anon: anonymous and shmem pages read back from swap, swap readahead's
    # included (they come back without a major fault each; issue 22). None: not measured.
    cgroup_anon_refaults: int | None = None
    rss_bytes: int | None = None
    swap_bytes: int | None = None
    read_bytes_per_second: float | None = None
    verdict: Verdict | None = None


class SkippedBackend(BaseModel):
    backend: str
    reason: str
    failed_at_run_time: bool = False  # it was tried in this window and failed (reason holds its error)


class TracerInfo(BaseModel):
    backend: str
    exact: bool  # True: every event is a major fault
    # the tracer stopped late: its counts include faults after the window (still major faults, but the
    # per-process counts and shares cover a longer time than the window)
    counts_past_window: bool = False
    # "tracer": majflt counts, rates and series (the processes' and the node's) are over the tracer's own
    # interval, from its start mark to its stop mark (window_seconds is that interval); "window": over
    # the sampled window (no tracer interval: procfs, or a tracer that never marked both ends).
    counts_over: Literal["tracer", "window"] = "window"
    counted_from_seconds: float | None = None  # the interval's start, seconds after the window opened
    counted_seconds: float | None = None  # its length
    reason: str = ""  # why this backend
    skipped: list[SkippedBackend] = Field(default_factory=list)
    events: int = 0
    dropped: int = 0
    output_bytes: int = 0
    truncated: bool = False
    duration_seconds: float = 0.0
    errors: list[str] = Field(default_factory=list)
    # How the tracer was fitted to what the node lets it lock and allocate (issue 8).
    lost_samples: int = 0  # samples the kernel could not hand over (perf ring buffer full)
    ring_buffer_pages: int | None = None  # perf -m used, pages per CPU
    ring_buffer_pages_wanted: int | None = None  # what it would use without a lock limit
    map_keys: int | None = None  # bpftrace BPFTRACE_MAP_KEYS_MAX used
    map_keys_wanted: int | None = None  # what it would use without a memory limit
    map_full: bool = False  # the page map reached map_keys: some faults' pages were not kept
    notes: list[str] = Field(default_factory=list)  # e.g. "perf ring buffer shrunk from 2048 to 512 pages"
    # 1: every major fault was recorded; N > 1: one in N (perf -c N, a node faulting faster than the tracing
    # settings' exact_max_rate): source counts are estimates, process counts are majflt, limits on the procfs basis
    sample_period: int = 1


class NodeStats(BaseModel):
    pgmajfault: int = 0
    pgmajfault_per_second: float = 0.0
    pswpin_per_second: float = 0.0
    pswpout_per_second: float = 0.0
    workingset_refault_file_per_second: float | None = None
    workingset_refault_anon_per_second: float | None = None
    series: list[int] = Field(default_factory=list, description="node pgmajfault in each second")
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    swap_total_bytes: int | None = None
    swap_free_bytes: int | None = None
    # Which swap the node's swap-ins come from (/proc/swaps): "zram", "disk" or "zram+disk"; None: no swap on.
    swap_backing: Literal["zram", "disk", "zram+disk"] | None = None
    swap_backing_basis: str = ""  # how it was decided (the devices, their priorities, what each holds)
    swap_backing_confidence: Literal["high", "medium"] | None = None
    # zram devices in use as swap (/sys/block/zramN/mm_stat): RAM they take, and what they hold uncompressed
    zram_ram_bytes: int | None = None
    zram_stored_bytes: int | None = None
    psi_memory: Pressure | None = None
    psi_io: Pressure | None = None
    # Node-level (global) reclaim from /proc/vmstat; a cgroup reclaiming at its own limit counts in neither.
    pgscan_kswapd_per_second: float | None = None
    pgscan_direct_per_second: float | None = None
    allocstall_per_second: float | None = None


class Trigger(BaseModel):
    kind: Literal["manual", "alert", "watch"] = "manual"
    alertname: str | None = None
    fingerprint: str | None = None
    starts_at: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    received_at: datetime | None = None
    forwarded_from: str | None = None
    # watch mode (kind "watch"): the node's recorded major faults/s, and since when it stayed above
    # PFI_WATCH_THRESHOLD
    rate: float | None = None
    since: datetime | None = None


class Attribution(BaseModel):
    source: Literal["kubelet", "apiserver", "none"] = "none"
    error: str | None = None


class SinkResult(BaseModel):
    sink: str
    ok: bool
    attempts: int = 0
    detail: str = ""
    at: datetime | None = None


class HistoryPod(BaseModel):
    namespace: str | None = None
    name: str | None = None
    uid: str
    container: str | None = None

    def display(self, *, short: bool = False) -> str:
        """`namespace/name`, or the uid when the name is not known (see pod_display)."""
        return pod_display(self.namespace, self.name, self.uid, short=short)


class HistoryCgroup(BaseModel):
    """One container (or host group) in the recorder's lead-up: its major faults per interval."""

    cgroup: str  # the memory cgroup's path (the last one, for a container that restarted)
    pod: HistoryPod | None = None  # None: a host-level group (a system.slice service, ...)
    major_faults: int  # over the lead-up
    series: list[int] = Field(default_factory=list, description="major faults in each interval from `since`")
    first_active_at: datetime | None = None
    last_active_at: datetime | None = None  # the end of the last interval with major faults
    peak_per_second: float = 0.0
    gone: bool = False  # its cgroup no longer exists (container restarted or pod deleted)


class History(BaseModel):
    """The flight recorder's lead-up to this report: the node's and each container's major faults,
    read every `interval_seconds` from memory cgroups and /proc/vmstat by the service."""

    interval_seconds: float
    since: datetime
    until: datetime
    node_series: list[int] = Field(default_factory=list, description="node pgmajfault in each interval")
    node_major_faults: int = 0
    recorded_since: datetime | None = None  # the recorder's oldest sample (a restart loses the rest)
    cgroups: list[HistoryCgroup] = Field(default_factory=list, description="top containers by major faults")


class Rereader(BaseModel):
    """A memory cgroup re-reading its files through read()/pread() at its limit (issue 22): its page cache is
    evicted and read back (workingset_refault_file rises) without a major fault each, so no process's majflt
    shows it. Beside a culprit the limit costs it reads too; alone it does not explain a major-fault alert."""

    cgroup: str
    pids: list[int] = Field(default_factory=list)
    comms: list[str] = Field(default_factory=list)
    refaults: int  # workingset_refault_file rise over the window (pages)
    refaults_per_second: float
    major_faults: int = 0  # the group's pgmajfault rise over the window
    shares_limit_with: str | None = None  # the culprit's limit it is under (then counted in its recommendation)
    pod: PodRef | None = None  # the pod the group is (from its cgroup path and the kubelet), None: not a pod
    summary: str = ""
    recommendation: Recommendation | None = None


class Report(BaseModel):
    schema_version: str = SCHEMA_VERSION
    id: str = Field(default_factory=new_report_id)
    node: str
    status: Literal["running", "complete", "cancelled", "failed"] = "complete"
    started_at: datetime
    finished_at: datetime | None = None
    window_seconds: float
    trigger: Trigger = Field(default_factory=Trigger)
    joined: list[Trigger] = Field(default_factory=list, description="alerts that joined this investigation")
    tracer: TracerInfo
    node_stats: NodeStats = Field(default_factory=NodeStats)
    processes: list[ProcessReport] = Field(default_factory=list)
    verdict: Verdict
    attribution: Attribution = Field(default_factory=Attribution)
    warnings: list[str] = Field(default_factory=list)
    sinks: list[SinkResult] = Field(default_factory=list)
    history: History | None = None
    history_reason: str | None = None  # why there is no history (the CLI, the recorder off)
    rereaders: list[Rereader] = Field(default_factory=list, description="groups re-reading files by read() at their limit")
