"""Backend probes are reused by select() for a while (the service investigates many times), but
`probe` (the CLI) and fresh selections test-run every backend again."""

from __future__ import annotations

from app.config import Settings
from app.tracers import registry


class Counting:
    name = "procfs"
    exact = False
    calls = 0

    def __init__(self, settings: Settings) -> None:
        pass

    def available(self) -> tuple[bool, str]:
        Counting.calls += 1
        return True, "counted"


def test_select_reuses_probes_until_fresh(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._BACKENDS, "procfs", Counting)
    monkeypatch.setattr(registry, "_probe_cache", {})
    # the other backends point at missing binaries: quick, and procfs is chosen
    s = Settings(perf_path=str(tmp_path / "perf"), bpftrace_path=str(tmp_path / "bpftrace"))
    tracer, _, skipped = registry.select(s)
    assert isinstance(tracer, Counting) and Counting.calls == 1
    registry.select(s)
    assert Counting.calls == 1  # cached
    registry.select(s, fresh=True)
    assert Counting.calls == 2
    assert [row for row in registry.probe(s) if row[0] == "procfs"] == [("procfs", True, "counted")]
    assert Counting.calls == 3  # probe is always fresh
    assert {k.backend for k in skipped} == set(registry.ORDER) - {"procfs"}
