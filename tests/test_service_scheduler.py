"""Single flight per node: join, dedupe, cooldown, HA duplicates, resolved alerts, queue bound, shutdown."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service_support import AUTH, FakeEngine, firing, reports, service, wait_for

pytestmark = pytest.mark.servers  # every test here runs the service on loopback

NODE = {"instance": "10.0.3.7:9100"}


def post(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/api/v1/alerts", json=body, headers=AUTH)
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def only(answer: dict[str, Any], key: str = "accepted") -> dict[str, Any]:
    items = answer[key]
    assert len(items) == 1, answer
    return dict(items[0])


def running(client: httpx.Client) -> list[dict[str, Any]]:
    return list(client.get("/api/v1/investigations", headers=AUTH).json()["investigations"])


def test_alerts_join_the_running_investigation(tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    with service(tmp_path, engine) as (client, _):
        first = only(post(client, firing(NODE, fingerprint="fp1")))
        assert first["action"] == "queued"
        wait_for(engine.started.is_set, what="engine start")
        inv = wait_for(lambda: running(client), what="running investigation")[0]
        assert (
            inv["state"] == "running"
            and inv["progress"] == 0.25
            and inv["message"] == "tracing with perf-major"
        )

        joined = only(post(client, firing({"node": "node-a"}, fingerprint="fp2")))
        assert joined["action"] == "joined" and joined["id"] == first["id"]
        again = only(post(client, firing(NODE, fingerprint="fp1")))
        assert again["action"] == "duplicate" and again["id"] == first["id"]

        engine.release.set()
        (row,) = wait_for(lambda: reports(client), what="report")
        assert row["id"] == first["id"] and row["alerts"] == 2
        doc = client.get(f"/api/v1/reports/{first['id']}", headers=AUTH).json()
        assert [t["fingerprint"] for t in doc["joined"]] == ["fp2"]  # the document names who joined
    assert len(engine.calls) == 1
    assert engine.calls[0]["trigger"].fingerprint == "fp1"


def test_cooldown_returns_the_existing_report(tmp_path: Path) -> None:
    with service(tmp_path) as (client, engine):
        first = only(post(client, firing(NODE, fingerprint="fp1")))
        wait_for(lambda: reports(client), what="report")
        # Alertmanager's repeat (same fingerprint and startsAt): the report we have.
        repeat = only(post(client, firing(NODE, fingerprint="fp1")))
        assert repeat == {
            **repeat,
            "action": "duplicate",
            "id": first["id"],
            "reason": "reported within the cooldown",
        }
        # The same startsAt written with nanoseconds (another Alertmanager version): same alert.
        nanos = only(post(client, firing(NODE, fingerprint="fp1", starts="2026-11-25T19:22:35.215000000Z")))
        assert nanos["action"] == "duplicate"
        # A new firing of the same series (new startsAt) is a new alert.
        new = only(post(client, firing(NODE, fingerprint="fp1", starts="2026-11-25T21:00:00Z")))
        assert new["action"] == "queued" and new["id"] != first["id"]
        wait_for(lambda: len(reports(client)) == 2, what="second report")
    assert len(engine.calls) == 2


def test_no_cooldown_investigates_again(tmp_path: Path) -> None:
    with service(tmp_path, cooldown_seconds=0) as (client, engine):
        post(client, firing(NODE))
        wait_for(lambda: reports(client), what="report")
        assert only(post(client, firing(NODE)))["action"] == "queued"
        wait_for(lambda: len(reports(client)) == 2, what="second report")


def test_ha_pair_duplicates_start_one_investigation(tmp_path: Path) -> None:
    """Both Alertmanagers of an HA pair post the same notification at the same moment."""
    with service(tmp_path) as (client, engine):
        answers: list[dict[str, Any]] = []
        barrier = threading.Barrier(4)

        def send() -> None:
            with httpx.Client(base_url=client.base_url, timeout=10) as c:
                barrier.wait()
                answers.append(post(c, firing(NODE, fingerprint="ha")))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        actions = sorted(only(a)["action"] for a in answers)
        assert actions.count("queued") == 1 and set(actions) <= {"queued", "duplicate"}
        assert len({only(a)["id"] for a in answers}) == 1
        wait_for(lambda: reports(client), what="report")
    assert len(engine.calls) == 1


def test_resolved_alert_cancels_a_queued_investigation_not_a_running_one(tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    with service(tmp_path, engine) as (client, _):
        first = only(post(client, firing(NODE, fingerprint="fp1")))
        wait_for(engine.started.is_set, what="engine start")
        # The window closed (the engine is resolving): a new alert queues a follow-up.
        engine.window_closed.set()
        wait_for(lambda: running(client)[0]["progress"] == 1.0, what="window closed")
        follow = only(post(client, firing(NODE, fingerprint="fp2")))
        assert follow["action"] == "queued" and follow["id"] != first["id"]
        assert [i["state"] for i in running(client)] == ["running", "queued"]

        gone = only(post(client, firing(NODE, fingerprint="fp2", status="resolved")))
        assert gone["action"] == "cancelled" and gone["id"] == follow["id"]
        assert [i["id"] for i in running(client)] == [first["id"]]
        assert (
            'pfi_investigations_total{backend="none",outcome="cancelled_queued"} 1.0'
            in client.get("/metrics").text
        )

        # Decision: a resolved alert does not stop a running investigation.
        kept = only(post(client, firing(NODE, fingerprint="fp1", status="resolved")))
        assert kept["action"] == "running" and kept["id"] == first["id"]
        # A resolved alert nobody waits for is a clear ignore.
        noop = only(post(client, firing(NODE, fingerprint="zzz", status="resolved")), "ignored")
        assert noop["reason"] == "resolved: no queued investigation for this alert"

        engine.release.set()
        (row,) = wait_for(lambda: reports(client), what="report")
        assert row["id"] == first["id"] and row["status"] == "complete"
        wait_for(lambda: running(client) == [], what="idle")
    assert len(engine.calls) == 1


def test_queue_is_bounded(tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    with service(tmp_path, engine, max_queue=3) as (client, _):
        post(client, firing(NODE, fingerprint="a"))
        wait_for(engine.started.is_set, what="engine start")
        assert only(post(client, firing(NODE, fingerprint="b")))["action"] == "joined"
        assert only(post(client, firing(NODE, fingerprint="c")))["action"] == "joined"
        full = only(post(client, firing(NODE, fingerprint="d")), "ignored")
        assert full["reason"] == "queue full: 3 alerts already wait on node node-a"
        # Duplicates of what waits are still recognised, not refused.
        assert only(post(client, firing(NODE, fingerprint="b")))["action"] == "duplicate"
        engine.release.set()
        wait_for(lambda: reports(client), what="report")
        # Room again once it finished.
        assert only(post(client, firing(NODE, fingerprint="d")))["action"] == "queued"


def test_shutdown_cancels_the_running_investigation_and_stores_it(tmp_path: Path) -> None:
    engine = FakeEngine(hold=True)
    with service(tmp_path, engine) as (client, _):
        acc = only(post(client, firing(NODE)))
        wait_for(engine.started.is_set, what="engine start")
    assert engine.cancelled == 1  # the engine saw `cancel` (its tracer stops with it)
    with service(tmp_path) as (client, _):
        (row,) = reports(client)
        assert row["id"] == acc["id"] and row["status"] == "cancelled"
