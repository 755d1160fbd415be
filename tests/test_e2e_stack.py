"""The e2e harness itself, against a recording receiver: the real node-exporter, Prometheus with the
node-mixin rule and Alertmanager deliver NodeMemoryMajorPagesFaults with our labels and bearer token."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.e2e.stack import (
    ALERTNAME,
    NODE_MIXIN_SUMMARY,
    missing_binaries,
    prometheus_stack,
    recording_receiver,
    wait_for,
)
from tests.workloads import file_fault_workload

pytestmark = [pytest.mark.e2e, pytest.mark.servers, pytest.mark.workloads, pytest.mark.timeout(120)]

_missing = missing_binaries() + ([] if shutil.which("gcc") else ["gcc (builds the fault workload)"])
if _missing:
    pytestmark.append(
        pytest.mark.skip(reason=f"not installed: {', '.join(_missing)} (Debian prometheus packages)")
    )


def test_alert_reaches_a_webhook_with_the_node_mixin_labels(tmp_path):
    token = "e2e-" + os.urandom(8).hex()
    with (
        recording_receiver() as rec,
        prometheus_stack(tmp_path / "stack", webhook_url=rec.url, token=token) as stack,
        file_fault_workload(tmp_path / "data.bin", size_mb=32),
    ):
        assert stack.query("node_vmstat_pgmajfault"), "node-exporter exposes pgmajfault"

        def firing_payload():
            for body in rec.bodies():
                for a in body.get("alerts", []) if isinstance(body, dict) else []:
                    if a["labels"].get("alertname") == ALERTNAME and a["status"] == "firing":
                        return body, a
            return None

        body, alert = wait_for(f"{ALERTNAME} at the webhook", firing_payload, 60, 0.5, stack.logs)
        assert body["version"] == "4"
        assert body["status"] == "firing"
        assert alert["labels"]["instance"] == stack.instance
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["job"] == "node"
        assert alert["annotations"]["summary"] == NODE_MIXIN_SUMMARY
        desc = alert["annotations"]["description"]
        assert desc.startswith(
            f"Memory major pages are occurring at very high rate at {stack.instance}, 50 major"
        )
        assert "is currently at" in desc and "Please check that there is enough memory" in desc
        assert alert["fingerprint"] and alert["startsAt"]
        first = rec.received[0]
        assert first.path == "/api/v1/alerts"
        assert first.headers["authorization"] == f"Bearer {token}"
        assert first.headers["content-type"].startswith("application/json")
        # Alertmanager holds it too
        assert any(a["labels"]["alertname"] == ALERTNAME for a in stack.alertmanager_alerts(ALERTNAME))
    for p in stack.procs:
        assert p.popen.returncode is not None, f"{p.name} was not reaped"
