"""Measure the house of `app/` under a checkout: folders, files per folder, import circles (strongly
connected groups of modules) and arrows that run back up (an import from a lower layer to a higher
one, by the layers below). Run: `PYTHONPATH=<root> python scripts/house_measure.py <root>`.

The layers are the ones .importlinter declares after issue 19; a checkout from before it is mapped to
them through OLD_TO_NEW (the modules that moved), so before and after are counted against one order.
Every import is counted, also the ones inside functions (grimp sees them) and the ones a contract
ignores."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import grimp

OLD_TO_NEW = {
    "app.service.api": "app.service.web.api",
    "app.service.app": "app.service.web.app",
    "app.service.server": "app.service.web.server",
    "app.service.listen": "app.service.web.listen",
    "app.service.state": "app.service.root",
    "app.service.watch": "app.service.recorder",
    "app.service.store": "app.service.report_store",
    "app.service.intake": "app.service.alerts.intake",
    "app.service.payload": "app.service.alerts.payload",
    "app.service.nodes": "app.service.cluster.nodes",
    "app.service.peers": "app.service.cluster.peers",
    "app.service.kube": "app.service.cluster.kube",
    "app.service.sinks": "app.service.delivery.sinks",
    "app.service.ui_routes": "app.service.ui.routes",
    "app.service.ui.history": "app.service.ui.lead_up_chart",
    "app.service.fleet": "app.service.fleet.view",
    "app.service.ui.fleet_page": "app.service.fleet.page",
    "app.service.ui.fleet_dashboard": "app.service.fleet.dashboard",
    "app.service.ui.chart": "app.service.html.chart",
    "app.collectors.recorder": "app.collectors.flight_recorder",
    "app.investigation.history": "app.investigation.lead_up",
}

# Highest first; a module belongs to the first entry that is it or contains it. Within a layer the
# entries are siblings (an import between two of them is not counted as running up).
LAYERS: list[list[str]] = [
    ["app.cli"],
    ["app.demo"],
    ["app.service.web"],
    ["app.service.ui"],
    ["app.service.deps"],
    ["app.service.root"],
    ["app.service.alerts", "app.service.pipeline", "app.service.fleet"],
    ["app.service.delivery", "app.service.scheduler", "app.service.recorder"],
    ["app.service.cluster", "app.service.report_store", "app.service.html"],
    ["app.service.auth", "app.service.metrics", "app.service.logs", "app.service.errors"],
    ["app.service", "app.render_text"],
    ["app.investigation"],
    ["app.tracers", "app.collectors"],
    ["app.config"],
    ["app.parsers"],
    ["app.models"],
]


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if module == e or module.startswith(e + "."):
                if best is None or len(e) > best[0]:
                    best = (len(e), i)
    return None if best is None else best[1]


def sccs(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def main(root: Path) -> None:
    sys.path.insert(0, str(root))
    graph = grimp.build_graph("app", include_external_packages=False)
    modules = {m for m in graph.modules if m.startswith("app")}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m)} for m in modules}
    files = sorted(p for p in (root / "app").rglob("*.py") if "__pycache__" not in p.parts)
    per_folder = Counter(str(p.parent.relative_to(root)) for p in files)
    print(f"folders (packages) under app/: {len(per_folder)}; .py files: {len(files)}")
    for folder, n in sorted(per_folder.items()):
        lines = sum(len(p.read_text().splitlines()) for p in files if str(p.parent.relative_to(root)) == folder)
        print(f"  {folder:32} {n:3} files {lines:6} lines")
    circles = sccs(modules, edges)
    print(f"import circles (modules importing each other, directly or round a loop): {len(circles)}")
    for c in circles:
        print(f"  {len(c)} modules: {', '.join(c)}")
    up = []
    for m in sorted(modules):
        for i in sorted(edges[m]):
            lm, li = layer_of(OLD_TO_NEW.get(m, m)), layer_of(OLD_TO_NEW.get(i, i))
            if lm is not None and li is not None and li < lm:
                up.append((m, i))
    print(f"arrows that run back up (a lower layer importing a higher one): {len(up)}")
    for m, i in up:
        print(f"  {m} -> {i}")
    private = []
    for m in sorted(modules):
        for i in sorted(edges[m]):
            parent, _, leaf = i.rpartition(".")
            if leaf.startswith("_") and not leaf.startswith("__") and not m.startswith(parent + "."):
                private.append((m, i))
    print(f"private modules imported from outside their package: {len(private)}")
    for m, i in private:
        print(f"  {m} -> {i}")
    unplaced = sorted(m for m in modules if layer_of(OLD_TO_NEW.get(m, m)) is None and m != "app")
    print(f"modules in no layer: {len(unplaced)} {unplaced}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
