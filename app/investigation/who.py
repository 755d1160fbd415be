"""Who a process (or a recorded container) is, in words: the one place that says it, for every output.

The parts are always the same: its pod as `namespace/name` (or its UID while the name is not known), its
container, its pod's owner, else a host process by command name and pid; the outputs differ only in how
much room they have:

  who(p)          prose, in verdicts:       "pod shop/web-0 container app", "host process java (pid 42)"
  who_line(p)     one line, in chat/Events: "java [42] in shop/web-0 (app)", "java [42] (host)"
  who_cell(p)     a terminal table cell:    "shop/web-0\napp\nStatefulSet/web", "(host)"
  pod_label(p)    a chart legend's pod:     "shop/web-0" (short UID), None for a host process
  group_who(c)    a recorded group, prose:  "pod shop/web-0 container app", "cgroup /system.slice/x"
  group_cell(c)   a recorded group's cell:  "shop/web-0\napp", "/system.slice/x"
  group_label(c)  a recorded group's line label on a chart: "shop/web-0 · app", "/system.slice/x"
"""

from __future__ import annotations

from app.models import HistoryCgroup, ProcessReport

__all__ = ["group_cell", "group_label", "group_who", "pod_label", "who", "who_cell", "who_line"]


def who(p: ProcessReport) -> str:
    if p.pod and p.pod.name:
        c = f" container {p.pod.container}" if p.pod.container else ""
        return f"pod {p.pod.display()}{c}"
    if p.pod:
        return f"pod {p.pod.display()}"
    return f"host process {p.comm} (pid {p.pid})"


def who_line(p: ProcessReport) -> str:
    pod = p.pod
    where = ""
    if pod is not None and pod.name:
        where = f" in {pod.display()}" + (f" ({pod.container})" if pod.container else "")
    elif p.host_process:
        where = " (host)"
    return f"{p.comm} [{p.pid}]{where}"


def who_cell(p: ProcessReport) -> str:
    if p.pod is None:
        return "(host)"
    owner = f"\n{p.pod.owner.kind}/{p.pod.owner.name}" if p.pod.owner else ""
    return f"{p.pod.display()}\n{p.pod.container or ''}".rstrip() + owner


def pod_label(p: ProcessReport) -> str | None:
    return None if p.pod is None else p.pod.display(short=True)


def group_who(c: HistoryCgroup) -> str:
    if c.pod is not None:
        container = f" container {c.pod.container}" if c.pod.name and c.pod.container else ""
        return f"pod {c.pod.display()}{container}"
    return f"cgroup {c.cgroup}"


def group_cell(c: HistoryCgroup) -> str:
    if c.pod is None:
        return c.cgroup
    return f"{c.pod.display()}\n{c.pod.container or ''}".rstrip()


def group_label(c: HistoryCgroup) -> str:
    if c.pod is None:
        return c.cgroup
    return c.pod.display(short=True) + (f" · {c.pod.container}" if c.pod.container else "")
