"""Bench row 9: diagnosis accuracy, the scenario matrix of tests/test_scenarios.py run once.

Same rows and checks (tests/workloads/scenarios.py ROWS, run_row); no kubelet here, so pod rows are
named by their cgroup's pod uid. The row passes when every scenario gets its cause, source and subject.
"""

from __future__ import annotations

from pathlib import Path

from tests.workloads import scenarios

from .common import Results, Row, log, status


def section_diagnosis(res: Results, workdir: Path) -> None:
    log("[9] diagnosis accuracy: the scenario matrix")
    outcomes = []
    skipped = []
    for i, row in enumerate(scenarios.ROWS):
        if why := scenarios.skip_reason(row):  # as the test skips it (a v2 pod row on a v1 host)
            skipped.append(f"{row.name} [{row.tracer}]: {why}")
            log(f"    skipped {skipped[-1]}")
            continue
        try:
            outcomes.append(scenarios.run_row(row, workdir / f"diag-{i}"))
        except Exception as e:  # noqa: BLE001 (a row that cannot run counts as wrong, with its reason)
            out = scenarios.Outcome(row)
            out.problems.append(f"{type(e).__name__}: {e}")
            outcomes.append(out)
    good = sum(o.ok for o in outcomes)
    wrong = [f"{o.row.name} [{o.row.tracer}]: {'; '.join(o.problems)}" for o in outcomes if not o.ok]
    log(scenarios.table(outcomes))
    res.add(Row("9 diagnosis", f"diagnosis accuracy {good}/{len(outcomes)}", good, "rows", len(outcomes), None,
                "N/N", status(good == len(outcomes)),
                ("; ".join(wrong)[:300] + "; " if wrong else "")
                + f"{sum(o.seconds for o in outcomes):.0f} s for {len(outcomes)} rows (3 s windows)"
                + (f"; {len(skipped)} rows cannot run here: " + "; ".join(skipped)[:300] if skipped else "")))
