"""Why a process faults, and what to do: one sentence and concrete advice. Pure.

The evidence: what the faults land on (sources), the container's cgroup memory (usage against its
limit), and the node (swap-in rate, available memory, memory PSI).
"""

from __future__ import annotations

from app.models import Cause, CgroupMemory, Confidence, NodeStats, ProcessReport, SourceKind, Verdict

NEAR_LIMIT = 0.90  # usage/limit at which the kernel reclaims the container's own page cache
NODE_LOW_AVAILABLE = 0.10
PSI_MEMORY_STALL = 5.0  # percent of time some task stalled on memory (avg10)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):,.0f} MiB"


def who(p: ProcessReport) -> str:
    if p.pod and p.pod.name:
        c = f" container {p.pod.container}" if p.pod.container else ""
        return f"pod {p.pod.namespace}/{p.pod.name}{c}"
    if p.pod:
        return f"pod uid {p.pod.uid}"
    return f"host process {p.comm} (pid {p.pid})"


def dominant(p: ProcessReport) -> tuple[SourceKind | None, float, str | None]:
    """The source kind holding most of the process's faults, its share, and its top path."""
    shares: dict[SourceKind, float] = {}
    paths: dict[SourceKind, str | None] = {}
    for s in p.sources:
        shares[s.kind] = shares.get(s.kind, 0.0) + s.share
        if s.kind not in paths:
            paths[s.kind] = s.path
    if not shares:
        return None, 0.0, None
    kind = max(shares, key=lambda k: shares[k])
    return kind, shares[kind], paths.get(kind)


def node_pressure(node: NodeStats) -> str | None:
    """A short reason when the node as a whole is short of memory, else None."""
    reasons = []
    if node.mem_total_bytes and node.mem_available_bytes is not None:
        avail = node.mem_available_bytes / node.mem_total_bytes
        if avail < NODE_LOW_AVAILABLE:
            reasons.append(f"only {avail:.0%} of the node's memory is available")
    if node.psi_memory and node.psi_memory.some_avg10 >= PSI_MEMORY_STALL:
        reasons.append(f"tasks stalled on memory {node.psi_memory.some_avg10:.0f}% of the time")
    if node.pswpout_per_second > 100:
        reasons.append(f"the node swaps out {node.pswpout_per_second:,.0f} pages/s")
    return "; ".join(reasons) or None


def near_limit(mem: CgroupMemory | None) -> bool:
    return bool(mem and mem.usage_ratio is not None and mem.usage_ratio >= NEAR_LIMIT)


def diagnose_process(p: ProcessReport, node: NodeStats) -> Verdict:
    rate = p.major_faults_per_second
    if p.major_faults <= 0:
        return Verdict(summary=f"{who(p)} had no major faults in the window", cause=Cause.NO_MAJOR_FAULTS,
                       confidence="high")
    kind, share, path = dominant(p)
    mem = p.cgroup_memory
    pressure = node_pressure(node)
    estimated = any(s.estimated for s in p.sources)
    confidence: Confidence = "low" if estimated else ("high" if share >= 0.8 else "medium")
    limit_txt = ""
    if near_limit(mem) and mem is not None:
        limit_txt = f"it runs at {mem.usage_ratio:.0%} of its {_mib(mem.max_bytes)} limit"
        if mem.high_bytes is not None and (mem.max_bytes is None or mem.high_bytes < mem.max_bytes):
            limit_txt = f"it runs at its {_mib(mem.high_bytes)} memory.high"

    if kind in (SourceKind.SWAP, SourceKind.SHMEM):
        what = "anonymous memory" if kind is SourceKind.SWAP else f"shared memory {path or ''}".strip()
        if limit_txt:
            return Verdict(
                summary=f"{what} of {who(p)} is swapped back in at {rate:,.0f} pages/s because {limit_txt}",
                cause=Cause.CONTAINER_MEMORY_LIMIT if kind is SourceKind.SWAP else Cause.SHMEM_SWAP,
                advice=[
                    f"raise the container's memory limit above its working set (now {_mib(mem.current_bytes if mem else None)})",
                    "or find what grows its memory (a leak, an unbounded cache) and bound it",
                    "or stop the container from swapping (memory.swap.max=0, or Kubernetes swapBehavior NoSwap)",
                ],
                confidence=confidence,
            )
        if pressure:
            return Verdict(
                summary=f"{what} of {who(p)} is swapped in at {rate:,.0f} pages/s: the node is overcommitted ({pressure})",
                cause=Cause.NODE_MEMORY_PRESSURE,
                advice=[
                    "set memory requests to what pods really use so the scheduler stops overpacking this node",
                    "move or evict the biggest memory users, or add nodes / use a larger instance type",
                    "give latency-sensitive pods the Guaranteed QoS class",
                ],
                confidence=confidence,
            )
        return Verdict(
            summary=f"{what} of {who(p)} is swapped back in at {rate:,.0f} pages/s: it touches memory that was swapped out earlier",
            cause=Cause.SWAP if kind is SourceKind.SWAP else Cause.SHMEM_SWAP,
            advice=[
                "if this continues, the node or the container is short of memory: check memory limits and node usage",
                "a one-off burst after idle time (memory swapped out while unused) needs no action",
            ],
            confidence=confidence,
        )

    if kind is SourceKind.CODE or (kind is SourceKind.FILE and limit_txt):
        subject = "its own code" if kind is SourceKind.CODE else f"{path or 'its files'}"
        if limit_txt:
            return Verdict(
                summary=f"{who(p)} re-reads {subject} from disk because {limit_txt}: the kernel keeps evicting its page cache",
                cause=Cause.CONTAINER_MEMORY_LIMIT,
                advice=[
                    f"raise the memory limit (usage {_mib(mem.current_bytes if mem else None)}, limit {_mib(mem.max_bytes if mem else None)}) so code and hot data stay cached",
                    "or reduce the container's anonymous memory so the page cache has room",
                ],
                confidence=confidence,
            )
        if pressure:
            return Verdict(
                summary=f"{who(p)} re-reads its program code from disk at {rate:,.0f} pages/s: the node is short of memory ({pressure})",
                cause=Cause.NODE_MEMORY_PRESSURE,
                advice=[
                    "program text refaulting means memory pressure: free memory on this node (move pods, fix requests) or add nodes",
                ],
                confidence=confidence,
            )
        return Verdict(
            summary=f"{who(p)} reads its program code from disk at {rate:,.0f} pages/s",
            cause=Cause.CODE_REFAULTS,
            advice=[
                "code pages refault when the page cache cannot keep them: check the node's and the container's memory",
                "a process that just started (or was just swapped in) reads its code once: no action if it stops",
            ],
            confidence=confidence,
        )

    if kind is SourceKind.FILE:
        target = path or "files"
        summary = f"cold reads of {target} through mmap by {who(p)} at {rate:,.0f} pages/s"
        advice = [
            "expected for a one-off scan of a large file: no action if it stops",
            "if it repeats, the file does not stay in the page cache: give the node (or the container) more memory for it",
            "for sequential scans, read with read(2) or madvise(MADV_SEQUENTIAL) so read-ahead fetches larger chunks",
        ]
        if pressure:
            summary += f"; the node is short of memory ({pressure})"
        return Verdict(summary=summary, cause=Cause.COLD_FILE_READS, advice=advice, confidence=confidence)

    return Verdict(
        summary=f"{who(p)} causes {rate:,.0f} major faults/s; what they read could not be resolved",
        cause=Cause.UNKNOWN,
        advice=["run again with a tracer that records fault addresses (perf or bpftrace) to see the file or swap"],
        confidence="low",
    )


def diagnose_report(processes: list[ProcessReport], node: NodeStats, window: float) -> Verdict:
    """The report's headline: the top process's verdict, or what the node alone shows."""
    top = processes[0] if processes else None
    if top is not None and top.verdict is not None:
        v = top.verdict
        summary = v.summary
        if len(processes) > 1 and node.pgmajfault > 0:
            share = top.major_faults / max(node.pgmajfault, 1)
            if share < 0.5:
                summary += f" (the top process causes {min(share, 1):.0%} of the node's major faults)"
        return Verdict(summary=summary, cause=v.cause, advice=v.advice, confidence=v.confidence)
    if node.pgmajfault > 0:
        return Verdict(
            summary=f"the node had {node.pgmajfault_per_second:,.0f} major faults/s but no process's majflt rose: "
            "short-lived processes or kernel threads",
            cause=Cause.UNKNOWN,
            advice=["investigate for longer, or while the alert is firing"],
            confidence="low",
        )
    return Verdict(summary=f"no major page faults on this node in the {window:.0f} s window",
                   cause=Cause.NO_MAJOR_FAULTS, advice=["the alert may have cleared; nothing to do now"],
                   confidence="high")
