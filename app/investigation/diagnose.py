"""Why a process faults, and what to do: one sentence, concrete advice, and the evidence. Pure.

The evidence: what the faults land on (sources), the process's memory cgroup (usage against the
limit that binds: the container's, the pod's, or a host cgroup's; memory.high), and the node.
The node is blamed only on node evidence: little MemAvailable, or node-level reclaim (kswapd or
direct reclaim scanning, allocation stalls; a cgroup reclaiming at its own limit counts in neither)
together with the swap-out it does. Memory PSI rises when one cgroup thrashes against its limit, so it
is shown as context and never decides. Rules, in order (docs/diagnosis.md):

  R1 limit binds        -> container_memory_limit (swap, file, code) or shmem_swap (shmem); for file and
                           code only when the cgroup's file refaults rose over the window (or the kernel
                           does not count them): page cache filling a limit is normal, and first reads
                           at a full limit are cold_file_reads
  R2 node evidence      -> node_memory_pressure (swap, shmem, code); file reads get a note
  R3 limit unreadable   -> the kind's cause, saying the limit could not be read and why, low confidence
  R4 otherwise by kind  -> swap / shmem_swap / code_refaults / cold_file_reads / unknown

Before them, the noise floor (settings.investigation.noise_floor, a tenth of the alert's 500/s): a process under it
gets `quiet` and no cause; a node under it gets the report verdict `quiet` (or no_major_faults), with
what was seen and no advice. A handful of faults never gives a cause with high confidence.
"""

from __future__ import annotations

from app.models import Cause, CgroupMemory, Confidence, NodeStats, ProcessReport, SourceKind, Verdict

NEAR_LIMIT = 0.90  # usage/limit at which the kernel reclaims the group's own memory
NODE_LOW_AVAILABLE = 0.10  # MemAvailable/MemTotal under which the node is short of memory
NODE_RECLAIM_SCAN = 100.0  # pages/s scanned by kswapd + direct reclaim: the node reclaims globally
PSI_MEMORY_STALL = 5.0  # percent (avg10): shown as context only
REFAULT_RISE = 0.05  # file refaults in the cgroup per major fault of the process: the limit evicts what it reads
NOISE_FLOOR = 50.0  # major faults/s: settings.investigation.noise_floor's default (a tenth of the alert's 500/s)
MIN_FAULTS_HIGH = 100  # a process with fewer major faults in the window never gets a cause with high confidence
SMALL_SHARE = 0.10  # the top process makes less of the node's faults than this: the headline is low confidence
ANON_ROOM = 0.25  # anonymous memory at this share of the binding limit or more: shrinking it gives the page cache room


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):,.0f} MiB"


def who(p: ProcessReport) -> str:
    if p.pod and p.pod.name:
        c = f" container {p.pod.container}" if p.pod.container else ""
        return f"pod {p.pod.display()}{c}"
    if p.pod:
        return f"pod {p.pod.display()}"
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
    """A short reason when the node as a whole is short of memory (node evidence only), else None."""
    reasons = []
    if node.mem_total_bytes and node.mem_available_bytes is not None:
        avail = node.mem_available_bytes / node.mem_total_bytes
        if avail < NODE_LOW_AVAILABLE:
            reasons.append(f"only {avail:.0%} of the node's memory is available")
    scan = (node.pgscan_kswapd_per_second or 0.0) + (node.pgscan_direct_per_second or 0.0)
    if scan >= NODE_RECLAIM_SCAN or (node.allocstall_per_second or 0.0) > 0:
        what = f"the kernel reclaims node-wide ({scan:,.0f} pages/s scanned by kswapd and direct reclaim"
        if node.allocstall_per_second:
            what += f", {node.allocstall_per_second:,.0f} allocation stalls/s"
        reasons.append(what + ")")
        # Swap-out by node-level reclaim: memory-limited cgroups reclaiming themselves do not explain it.
        if node.pswpout_per_second > 0:
            reasons.append(f"it swaps out {node.pswpout_per_second:,.0f} pages/s")
    return "; ".join(reasons) or None


def node_context(node: NodeStats) -> list[str]:
    """What the node looked like, for the evidence list (PSI is context, never a cause)."""
    out = []
    if node.mem_total_bytes and node.mem_available_bytes is not None:
        out.append(f"node MemAvailable {node.mem_available_bytes / node.mem_total_bytes:.0%} of "
                   f"{mib(node.mem_total_bytes)}")
    if node.pgscan_kswapd_per_second is not None or node.pgscan_direct_per_second is not None:
        out.append(f"node reclaim: kswapd {node.pgscan_kswapd_per_second or 0:,.0f}, direct "
                   f"{node.pgscan_direct_per_second or 0:,.0f} pages/s scanned; swap-out "
                   f"{node.pswpout_per_second:,.0f} pages/s")
    if node.psi_memory and node.psi_memory.some_avg10 >= PSI_MEMORY_STALL:
        out.append(f"memory PSI some {node.psi_memory.some_avg10:.0f}% (context only: one cgroup at its "
                   "limit raises it too)")
    return out


def near_limit(mem: CgroupMemory | None) -> bool:
    return bool(mem and mem.usage_ratio is not None and mem.usage_ratio >= NEAR_LIMIT)


def high_binds(mem: CgroupMemory | None) -> bool:
    """memory.high (v2) below the limit, and usage at it: the kernel throttles and reclaims there."""
    if mem is None or mem.high_bytes is None:
        return False
    # Compare the usage of the level that has the memory.high (the pod's, say), not the container's own.
    usage = mem.high_usage_bytes if mem.high_usage_bytes is not None else mem.current_bytes
    if usage is None:
        return False
    if mem.max_bytes is not None and mem.high_bytes >= mem.max_bytes:
        return False
    return usage >= NEAR_LIMIT * mem.high_bytes


def limit_subject(p: ProcessReport, mem: CgroupMemory) -> tuple[str, str, str]:
    """(what binds, as a clause; advice naming the knob to raise; the other way out, as advice), true to
    the subject: container, pod, host cgroup. The raise line is a line of its own so a reason appended to
    it ("so code and hot data stay cached") reads with the raise, and the recommendation (issue 16) can
    put its number in it (app.investigation.advise)."""
    high = high_binds(mem)
    if high:
        size, where = mib(mem.high_bytes), mem.high_path or mem.path
    else:
        size, where = mib(mem.max_bytes), mem.limit_path or mem.path
    own = where == mem.path
    pct = f"{mem.usage_ratio:.0%} of " if mem.usage_ratio is not None and not high else ""
    knob = "memory.high" if high else "memory limit"
    if p.pod is not None:
        if own:
            return (f"the container runs at {pct}its {size} {knob}",
                    f"raise the container's {knob} above its working set (now {mib(mem.current_bytes)})", "")
        return (f"the pod runs at {pct}its {size} pod-level {knob} (the container has none of its own)",
                f"raise the pod's {knob} (set on {where}; the sum of its containers' limits)",
                "or give the container a limit of its own")
    cg = f"its memory cgroup {mem.path}" if own else f"the memory cgroup {where} above its cgroup {mem.path}"
    file = ("memory.high" if high else "memory.max") if mem.version == 2 else "memory.limit_in_bytes"
    return (f"{cg} runs at {pct}its {size} {'memory.high' if high else 'limit'}",
            f"raise {file} of cgroup {where} above the working set (now {mib(mem.current_bytes)})",
            "or move the process out of that cgroup")


def anon_room(mem: CgroupMemory) -> str | None:
    """The advice to shrink the group's anonymous memory so its page cache has room, only when anonymous
    memory holds a real share of the limit (ANON_ROOM): with 1 MiB of it under a 64 MiB limit shrinking it
    frees nothing. None when it does not (or memory.stat did not say)."""
    limit = mem.high_bytes if high_binds(mem) else mem.max_bytes
    if mem.anon_bytes is None or not limit or mem.anon_bytes < ANON_ROOM * limit:
        return None
    return (f"or reduce its anonymous memory ({mib(mem.anon_bytes)} of the {mib(limit)} limit) so the page cache "
            "has room")


def stop_swapping(mem: CgroupMemory, where: str, pod: bool) -> str:
    """The advice to stop a group swapping, in the knobs of its cgroup version: memory.swap.max is v2 only;
    v1 has memory.memsw.limit_in_bytes (memory + swap; equal to memory.limit_in_bytes: no swap) and
    memory.swappiness. A pod's groups are the kubelet's: the Kubernetes setting comes first."""
    if mem.version == 2:
        knob = f"memory.swap.max=0 on cgroup {where}"
    else:
        knob = (f"memory.memsw.limit_in_bytes equal to memory.limit_in_bytes, or memory.swappiness=0, on cgroup "
                f"{where} (cgroup v1)")
    if pod:
        return f"or stop it from swapping (Kubernetes swapBehavior NoSwap; by hand: {knob})"
    return f"or stop it from swapping ({knob})"


def _rate(r: float) -> str:
    return f"{r:,.1f}" if r < 10 else f"{r:,.0f}"


def _faults(n: int) -> str:
    return f"{n:,} major fault{'' if n == 1 else 's'}"


def _seen(p: ProcessReport) -> str:
    """What one process's faults were, in a few words: 'sleep (pid 7): 3 major faults (0.3/s) on /usr/bin/sleep'."""
    kind, share, path = dominant(p)
    on = f" on {path}" if path else f", {share:.0%} {kind.value}" if kind else ""
    name = who(p).removeprefix("host process ")
    return f"{name}: {_faults(p.major_faults)} ({_rate(p.major_faults_per_second)}/s){on}"


def quiet_process(p: ProcessReport, node: NodeStats, noise_floor: float) -> Verdict | None:
    """`quiet` when the process faults under the noise floor: a handful of faults is no finding, whatever
    they landed on (a program starting, a library loaded once). None: it is above the floor."""
    rate = p.major_faults_per_second
    if rate >= noise_floor:
        return None
    node_rate = max(node.pgmajfault_per_second, rate)
    node_said = ("the node is under it too" if node_rate < noise_floor
                 else f"the node's {node_rate:,.0f} major faults/s come from elsewhere")
    return Verdict(
        summary=f"{who(p)} had {_faults(p.major_faults)} ({_rate(rate)}/s) in the window, under the noise "
        f"floor of {noise_floor:,.0f}/s: no finding",
        cause=Cause.QUIET,
        confidence="high",
        evidence=[_seen(p), f"noise floor {noise_floor:,.0f} major faults/s (PFI_NOISE_FLOOR); {node_said}"],
    )


def quiet_node(processes: list[ProcessReport], node: NodeStats, window: float, noise_floor: float) -> Verdict | None:
    """The report's `quiet` verdict when the node faults under the noise floor: what was seen (the node's
    rate, the top processes), and no advice to change memory. None: the node is above the floor."""
    rate = max(node.pgmajfault_per_second, sum(p.major_faults_per_second for p in processes))
    if rate >= noise_floor:
        return None
    faulted = [p for p in processes if p.major_faults > 0]
    if node.pgmajfault <= 0 and not faulted:
        return None  # nothing at all: no_major_faults
    summary = (f"the node is quiet: {_rate(rate)} major faults/s over the {window:.0f} s window, under the noise "
               f"floor of {noise_floor:,.0f}/s")
    if faulted:
        summary += f"; the most: {_seen(faulted[0])}"
    return Verdict(
        summary=summary,
        cause=Cause.QUIET,
        advice=["nothing to do: a few major faults a second are programs starting and files read for the first time",
                "if the alert fired, it has stopped: investigate while it fires (or with the service's watch mode)"],
        confidence="high",
        evidence=[f"node {_faults(node.pgmajfault)} in {window:.0f} s ({_rate(node.pgmajfault_per_second)}/s); "
                  f"noise floor {noise_floor:,.0f}/s (PFI_NOISE_FLOOR)"] + [_seen(p) for p in faulted[:3]],
    )


def diagnose_process(p: ProcessReport, node: NodeStats, limit_problem: str | None = None,
                     noise_floor: float = NOISE_FLOOR) -> Verdict:
    """The verdict for one process. limit_problem: why its memory cgroup could not be read (None: it
    could, or the process is in the root cgroup where no cgroup limit applies). noise_floor: major
    faults/s under which the process gets `quiet` and no cause (settings.investigation.noise_floor)."""
    rate = p.major_faults_per_second
    if p.major_faults <= 0:
        return Verdict(summary=f"{who(p)} had no major faults in the window", cause=Cause.NO_MAJOR_FAULTS,
                       confidence="high")
    # Q: under the noise floor, before every cause.
    if (quiet := quiet_process(p, node, noise_floor)) is not None:
        return quiet
    kind, share, path = dominant(p)
    mem = p.cgroup_memory
    pressure = node_pressure(node)
    estimated = any(s.estimated for s in p.sources)
    confidence: Confidence = "low" if estimated else ("high" if share >= 0.8 else "medium")
    if confidence == "high" and p.major_faults < MIN_FAULTS_HIGH:
        confidence = "medium"  # a handful of faults is never a sure finding
    evidence = [f"{share:.0%} of the faults are {kind.value if kind else 'unresolved'}"
                + (" (estimated from procfs counters)" if estimated else "")]
    if mem is not None:
        evidence.append(f"cgroup {mem.path} (v{mem.version}): {mib(mem.current_bytes)} used, limit "
                        + (f"{mib(mem.max_bytes)} on {mem.limit_path or mem.path}" if mem.max_bytes else "none")
                        + (f", memory.high {mib(mem.high_bytes)}" if mem.high_bytes is not None else ""))
    elif limit_problem:
        evidence.append(f"memory cgroup {p.cgroup} not readable: {limit_problem}")
    evidence += node_context(node)
    binds = mem is not None and (near_limit(mem) or high_binds(mem))
    swapish = kind in (SourceKind.SWAP, SourceKind.SHMEM)
    what = {SourceKind.SWAP: "anonymous memory", SourceKind.SHMEM: f"shared memory {path or ''}".strip()}.get(
        kind or SourceKind.UNKNOWN, "")

    def verdict(summary: str, cause: Cause, advice: list[str], conf: Confidence | None = None) -> Verdict:
        return Verdict(summary=summary, cause=cause, advice=advice, confidence=conf or confidence, evidence=evidence)

    # R1: the limit binds.
    if binds and mem is not None and kind in (SourceKind.SWAP, SourceKind.SHMEM, SourceKind.FILE, SourceKind.CODE):
        clause, raise_it, other_way = limit_subject(p, mem)
        if swapish:
            return verdict(
                f"{what} of {who(p)} is swapped back in at {rate:,.0f} pages/s because {clause}",
                Cause.CONTAINER_MEMORY_LIMIT if kind is SourceKind.SWAP else Cause.SHMEM_SWAP,
                [raise_it, *([other_way] if other_way else []),
                 "or find what grows its memory (a leak, an unbounded cache"
                 + (", files left in /dev/shm" if kind is SourceKind.SHMEM else "") + ") and bound it",
                 stop_swapping(mem, mem.limit_path or mem.path, p.pod is not None)],
            )
        refaults = p.cgroup_file_refaults
        subject = "its own program code" if kind is SourceKind.CODE else f"{path or 'its files'}"
        if refaults is not None and refaults < max(1.0, REFAULT_RISE * p.major_faults):
            # Reading a large file fills the group to its limit with page cache; that alone evicts
            # nothing the process reads again. No refaults: these are first reads.
            evidence.append(f"{clause}, but its file refaults (workingset_refault_file) rose by only {refaults:,} "
                            f"over the window for {p.major_faults:,} major faults: the limit is full of page "
                            "cache the kernel reclaims, and evicts nothing this process reads again")
            cold = "its program code" if kind is SourceKind.CODE else path or "files"
            return verdict(
                f"cold reads of {cold} through mmap by {who(p)} at {rate:,.0f} pages/s: first reads; {clause}, "
                "but with page cache it reclaims, and nothing it evicted is read again",
                Cause.COLD_FILE_READS,
                ["expected for a one-off scan of a large file, or a process that just started: no action if it stops",
                 "its memory is at the limit with page cache, which is normal; raising the limit helps only if "
                 "the same pages are read again (the cgroup's workingset_refault_file rises)",
                 "for sequential scans, read with read(2) or madvise(MADV_SEQUENTIAL) so read-ahead fetches larger chunks"],
            )
        if refaults is None:
            why = ("this kernel's memory.stat has no workingset_refault_file" if mem.workingset_refault_file is None
                   else "they were not measured over the window (the process was not snapshotted, or it moved)")
            evidence.append(f"whether the page cache evicts what this process reads again is not known: {why}; "
                            "the limit is blamed because usage is at it")
        else:
            evidence.append(f"its cgroup's file refaults (workingset_refault_file) rose by {refaults:,} over the "
                            "window: pages the limit evicted are read again")
        return verdict(
            f"{who(p)} re-reads {subject} from disk at {rate:,.0f} pages/s because {clause}: "
            "the kernel keeps evicting its page cache",
            Cause.CONTAINER_MEMORY_LIMIT,
            [raise_it + " so code and hot data stay cached", *([other_way] if other_way else []),
             *([room] if (room := anon_room(mem)) else [])],
        )

    # R2: the node is short of memory (node evidence only).
    if pressure and (swapish or kind is SourceKind.CODE):
        subject = f"{what} of {who(p)} is swapped in" if swapish else f"{who(p)} re-reads its program code from disk"
        return verdict(
            f"{subject} at {rate:,.0f} pages/s: the node is short of memory ({pressure})",
            Cause.NODE_MEMORY_PRESSURE,
            ["set memory requests to what pods really use so the scheduler stops overpacking this node",
             "move or evict the biggest memory users, or add nodes / use a larger instance type",
             "give latency-sensitive pods the Guaranteed QoS class"],
        )

    # R3: the limit could not be read: say so instead of guessing (and never blame the node for it).
    unknown = ""
    if limit_problem and mem is None:
        unknown = (f"; its memory cgroup {p.cgroup} could not be read ({limit_problem}), so whether its "
                   "memory limit causes this is not known")
        confidence = "low"

    # R4: by kind.
    if swapish:
        return verdict(
            f"{what} of {who(p)} is swapped back in at {rate:,.0f} pages/s: it touches memory that was "
            f"swapped out earlier{unknown}",
            Cause.SWAP if kind is SourceKind.SWAP else Cause.SHMEM_SWAP,
            ["if this continues, the node or the container is short of memory: check memory limits and node usage",
             "a one-off burst after idle time (memory swapped out while unused) needs no action"],
        )
    if kind is SourceKind.CODE:
        return verdict(
            f"{who(p)} reads its program code from disk at {rate:,.0f} pages/s{unknown}",
            Cause.CODE_REFAULTS,
            ["code pages refault when the page cache cannot keep them: check the node's and the container's memory",
             "a process that just started (or was just swapped in) reads its code once: no action if it stops"],
        )
    if kind is SourceKind.FILE:
        summary = f"cold reads of {path or 'files'} through mmap by {who(p)} at {rate:,.0f} pages/s{unknown}"
        if pressure:
            summary += f"; the node is short of memory ({pressure})"
        return verdict(
            summary, Cause.COLD_FILE_READS,
            ["expected for a one-off scan of a large file: no action if it stops",
             "if it repeats, the file does not stay in the page cache: give the node (or the container) more memory for it",
             "for sequential scans, read with read(2) or madvise(MADV_SEQUENTIAL) so read-ahead fetches larger chunks"],
        )
    return verdict(
        f"{who(p)} causes {rate:,.0f} major faults/s; what they read could not be resolved{unknown}",
        Cause.UNKNOWN,
        ["run again with a tracer that records fault addresses (perf or bpftrace) to see the file or swap"],
        "low",
    )


def diagnose_report(processes: list[ProcessReport], node: NodeStats, window: float,
                    noise_floor: float = NOISE_FLOOR) -> Verdict:
    """The report's headline: the top process's verdict, or what the node alone shows."""
    # Q: the node under the noise floor, before any process's cause.
    if (quiet := quiet_node(processes, node, window, noise_floor)) is not None:
        return quiet
    if processes and (v := processes[0].verdict) is not None and v.cause is Cause.QUIET:
        top = processes[0]
        return Verdict(
            summary=f"the node had {node.pgmajfault_per_second:,.0f} major faults/s, but no process made "
            f"{noise_floor:,.0f}/s or more (the most: {_seen(top)}): the faults are spread over many processes, "
            "short-lived ones, or kernel threads",
            cause=Cause.UNKNOWN,
            advice=["investigate for longer, or with a larger --top, while the alert is firing"],
            confidence="low",
            evidence=[_seen(p) for p in processes[:3]],
        )
    if processes and (v := processes[0].verdict) is not None:
        top = processes[0]
        summary = v.summary
        if len(processes) > 1 and node.pgmajfault > 0:
            share = top.major_faults / max(node.pgmajfault, 1)
            if share < 0.5:
                summary += f" (the top process causes {min(share, 1):.0%} of the node's major faults)"
            if share < SMALL_SHARE:  # a real finding about this process, but not what makes the node fault
                return v.model_copy(update={"summary": summary, "confidence": "low", "evidence": [
                    *v.evidence, f"it causes {share:.0%} of the node's {node.pgmajfault_per_second:,.0f} major "
                    "faults/s: the rest is elsewhere"]})
        return v.model_copy(update={"summary": summary})
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
