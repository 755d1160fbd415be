"""What the running test is marked as needing (root, workloads, servers, browser), and the check the
helpers that start a real workload, tracer, server or browser call. No pytest import: the workload
helpers are also used by bench/, where nothing is active and nothing is checked."""

from __future__ import annotations

from collections.abc import Iterable

NEEDS = ("root", "workloads", "servers", "browser")
_active: set[str] | None = None  # the running test's markers; None outside a pytest test


def set_active(markers: Iterable[str] | None) -> None:
    global _active
    _active = None if markers is None else set(markers)


def require_marker(kind: str, what: str) -> None:
    """Called where a real workload, tracer, server or browser starts: the running test must carry
    the marker `kind`, so that `./test.sh --fast` (-m "not (workloads or servers or browser)")
    never starts one."""
    if kind not in NEEDS:
        raise ValueError(kind)
    if _active is not None and kind not in _active:
        raise AssertionError(
            f"this test starts {what} but is not marked {kind!r}: add @pytest.mark.{kind} (or the module's "
            f"pytestmark), so that ./test.sh --fast leaves it out")
