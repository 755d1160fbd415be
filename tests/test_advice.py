"""Advice that fits the evidence (issue 29): each "What to do" line has the condition that makes it apply,
tested both ways, on the memory of real groups captured here (tests/fixtures/proc-captures, SOURCES.md):

- "reduce its anonymous memory so the page cache has room": only when anonymous memory holds a real share
  of the limit (diagnose.ANON_ROOM); the file re-reader of mixed-at-limit has 4 KiB of it under 64 MiB;
- "stop it from swapping": in the knobs of the group's cgroup version (memory.swap.max is v2 only; v1 has
  memory.memsw.limit_in_bytes and memory.swappiness), Kubernetes' swapBehavior first for a pod;
- a line is shown once per report: the top process's advice is the report's, and the page does not
  write it again under "What each process faults on";
- the fleet row of a workload carries its own limit and command, never another workload's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.collectors.cgroupmem import read_cgroup_memory
from app.investigation.diagnose import ANON_ROOM, diagnose_process
from app.models import Cause, CgroupMemory, NodeStats, PodRef, ProcessReport, Source, SourceKind
from app.parsers.cgroup import CgroupRef

CAPTURES = Path(__file__).parent / "fixtures" / "proc-captures"
POD = PodRef(namespace="shop", name="cart-cache-7d9f", uid="u1", container="cache")


def _captured(name: str, group: str) -> CgroupMemory:
    """The v1 memory group of a capture, read by the collector the engine uses (tick2: steady state)."""
    mem = read_cgroup_memory(CAPTURES / name / "tick2" / "cgroupfs", CgroupRef(group, 1, None, None, None, None))
    assert mem is not None and mem.max_bytes == 64 << 20 and mem.usage_ratio and mem.usage_ratio > 0.9
    return mem


@pytest.fixture(scope="module")
def file_group() -> CgroupMemory:
    # mixed-at-limit: a 128 MiB file re-read in a 64 MiB group, its 48 MiB of anonymous memory paged out
    mem = _captured("mixed-at-limit", "/pfi-test-27185-1/job")
    assert mem.anon_bytes is not None and mem.anon_bytes <= 1 << 20  # 4 KiB resident: nothing to reduce
    return mem


@pytest.fixture(scope="module")
def swap_group() -> CgroupMemory:
    # anon-at-limit: 128 MiB of anonymous memory touched in a 64 MiB group, swapping steadily
    return _captured("anon-at-limit", "/pfi-test-swap-3732-1")


def _proc(kind: SourceKind, mem: CgroupMemory, pod: PodRef | None = None, path: str | None = None) -> ProcessReport:
    p = ProcessReport(pid=42, comm="reader", major_faults=50_000, major_faults_per_second=10_000.0,
                      sources=[Source(kind=kind, path=path, faults=50_000, share=1.0)], cgroup_memory=mem, pod=pod)
    p.cgroup_file_refaults = 42_108  # the capture's total_workingset_refault_file rise: the limit evicts
    return p


def _advice(p: ProcessReport) -> list[str]:
    v = diagnose_process(p, NodeStats())
    assert v.cause is Cause.CONTAINER_MEMORY_LIMIT, v.summary
    return v.advice


def test_no_advice_to_shrink_anonymous_memory_the_group_does_not_have(file_group):
    advice = _advice(_proc(SourceKind.FILE, file_group, path="/var/tmp/data.bin"))
    assert not any("anonymous memory" in a for a in advice), advice
    assert advice[0].startswith("raise memory.limit_in_bytes of cgroup /pfi-test-27185-1/job")


def test_advice_to_shrink_anonymous_memory_when_it_holds_the_limit(file_group):
    # the same group with 40 MiB of its 64 MiB anonymous (synthetic: the capture's file_bytes kept)
    mem = file_group.model_copy(update={"anon_bytes": 40 << 20})
    advice = _advice(_proc(SourceKind.FILE, mem, path="/var/tmp/data.bin"))
    assert "or reduce its anonymous memory (40 MiB of the 64 MiB limit) so the page cache has room" in advice
    # the boundary: just under ANON_ROOM of the limit is not enough
    under = file_group.model_copy(update={"anon_bytes": int(ANON_ROOM * (64 << 20)) - 4096})
    assert not any("anonymous" in a for a in _advice(_proc(SourceKind.CODE, under, path="/app/bin")))
    # unknown (a memory.stat without the counter): the line is not given on a guess
    unknown = file_group.model_copy(update={"anon_bytes": None})
    assert not any("anonymous" in a for a in _advice(_proc(SourceKind.FILE, unknown, path="/d")))


def test_v1_swap_advice_names_v1_knobs(swap_group):
    advice = _advice(_proc(SourceKind.SWAP, swap_group))
    stop = [a for a in advice if "stop it from swapping" in a]
    assert stop == ["or stop it from swapping (memory.memsw.limit_in_bytes equal to memory.limit_in_bytes, or "
                    "memory.swappiness=0, on cgroup /pfi-test-swap-3732-1 (cgroup v1))"], advice
    assert not any("memory.swap.max" in a for a in advice)  # a v2 file: not on this group
    assert not any("anonymous memory (" in a for a in advice)  # the file-reader's line, not a swapper's


def test_v2_swap_advice_names_memory_swap_max(swap_group):
    v2 = swap_group.model_copy(update={"version": 2})
    advice = _advice(_proc(SourceKind.SWAP, v2))
    assert "or stop it from swapping (memory.swap.max=0 on cgroup /pfi-test-swap-3732-1)" in advice
    assert not any("memsw" in a or "swappiness" in a for a in advice)


def test_pod_swap_advice_puts_kubernetes_first_and_shmem_names_dev_shm(swap_group):
    advice = _advice(_proc(SourceKind.SWAP, swap_group, POD))
    assert any(a.startswith("or stop it from swapping (Kubernetes swapBehavior NoSwap; by hand: memory.memsw")
               for a in advice), advice
    assert not any("/dev/shm" in a for a in advice)  # anonymous memory, not tmpfs
    shm = diagnose_process(_proc(SourceKind.SHMEM, swap_group, POD, path="/dev/shm/buf"), NodeStats())
    assert shm.cause is Cause.SHMEM_SWAP and any("files left in /dev/shm" in a for a in shm.advice)


def test_a_line_is_shown_once_per_report_page():
    """The top process's verdict is the report's: its advice is "What to do", and not written again under
    "What each process faults on"; another process's own line still is, once."""
    from app.models import Verdict
    from app.service.ui import render_report_page
    from tests.e2e.sample_reports import file_fault_report

    r = file_fault_report()
    top, second = r.processes[0], r.processes[1]
    assert top.verdict is not None and top.verdict.advice == r.verdict.advice  # as build_report makes it
    line = r.verdict.advice[0]
    second.verdict = Verdict(summary="it re-reads /data/other.bin", cause=Cause.CONTAINER_MEMORY_LIMIT,
                             advice=[line, "or give /data/other.bin a container of its own"], confidence="high")
    html = render_report_page(r)
    assert html.count(line) == 1, "the report's advice is written once"
    assert html.count("or give /data/other.bin a container of its own") == 1


def test_fleet_row_of_a_group_that_stopped_never_carries_the_top_process_limit():
    """Seen on the real run of the README's pictures: a cgroup that faulted in the lead-up took the verdict
    (stopped_before_window) while the window's top process, another workload, had a limit verdict; the
    fleet's row for that cgroup showed the other workload's limit and kubectl command."""
    from app.investigation.fleet import facts_of
    from app.models import Verdict
    from tests.e2e.sample_reports import lead_up_report

    r = lead_up_report()
    top = r.processes[0]
    assert top.verdict is not None and r.verdict.recommendation is not None
    top.verdict.recommendation = r.verdict.recommendation  # the top process's own limit verdict
    facts = facts_of(r)
    assert facts is not None and facts.recommendation is not None  # blames the top process: its limit
    assert r.history is not None
    gone = r.history.cgroups[1]  # batch/nightly-reindex, gone before the window
    r.history.cgroups = [gone, *r.history.cgroups[:1]]
    r.verdict = Verdict(summary="pod batch/nightly-reindex-29707813-dhlr2 container reindex made ... then stopped",
                        cause=Cause.STOPPED_BEFORE_WINDOW, confidence="high")
    facts = facts_of(r)
    assert facts is not None and facts.workload.pod == "nightly-reindex-29707813-dhlr2"
    assert facts.recommendation is None, "another workload's limit and command"


def test_terminal_lines_wrap_under_their_own_text():
    """In a narrow terminal an advice line wraps under its text, not under the bullet, and the basis and
    evidence keep their indent: each item stays readable as one."""
    import io

    from rich.console import Console

    from app.render_text import render
    from tests.e2e.sample_reports import lead_up_report

    r = lead_up_report()
    r.verdict.advice = ["raise the container's memory limit to at least 1,536 MiB (the recommendation; usage now "
                        "1,020 MiB) so code and hot data stay cached", "or give the indexer a node of its own"]
    r.verdict.evidence = ["cgroup /kubepods/burstable/pod8a1f/indexer (v2): 1,020 MiB used, limit 1,024 MiB on "
                          "/kubepods/burstable/pod8a1f/indexer"]
    out = io.StringIO()
    render(r, Console(file=out, width=60, color_system=None))
    lines = [line[2:] if line.startswith("│ ") else line for line in out.getvalue().splitlines()]  # the panel
    first = next(i for i, line in enumerate(lines) if line.startswith("• raise the container's"))
    assert lines[first + 1].startswith("  MiB (the recommendation"), lines[first:first + 3]  # under "raise"
    assert lines[first + 3].startswith("• or give the indexer"), lines[first:first + 4]
    why = next(i for i, line in enumerate(lines) if line.rstrip(" │") == "why:")
    assert lines[why + 1].startswith("  cgroup /kubepods/burstable/pod8a1f/indexer (v2)"), lines[why:why + 3]
    assert lines[why + 2].startswith("  ") and lines[why + 2][2] != " ", lines[why:why + 3]  # still indented
