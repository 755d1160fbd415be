"""Property: whatever JSON (or bytes) is posted to the webhook, lone UTF-16 surrogates and control
characters included, the answer is < 500 and the service keeps serving; afterwards it still stores
a normal alert's report, is ready, and keeps that report across a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service_support import AUTH, firing, reports, service, wait_for

pytestmark = pytest.mark.servers

# Text as an alert can carry it: valid JSON may hold lone surrogates ("\ud800", not encodable) and
# any control character (NUL, ESC, BEL, CR/LF, U+202E).
nasty_char = st.sampled_from(["\ud800", "\udfff", "\udc80", "\x00", "\x1b", "\x07", "\r", "\n", "\u202e", "\x7f"])
nasty_text = st.lists(st.one_of(nasty_char, st.characters()), max_size=12).map("".join)
any_text = st.one_of(st.text(max_size=20), nasty_text)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
label_value = st.one_of(st.text(max_size=30), nasty_text, json_leaf)
# Aimed at this node so that accepted alerts are investigated and their reports written.
node_label = st.fixed_dictionaries({"alertname": st.just("NodeMemoryMajorPagesFaults"), "node": st.just("node-a")})
labels = st.one_of(
    st.dictionaries(
        st.sampled_from(["alertname", "node", "nodename", "kubernetes_node", "instance", "pod", "x"]) | any_text,
        label_value,
        max_size=6,
    ),
    st.tuples(node_label, st.dictionaries(any_text, nasty_text, max_size=3)).map(lambda t: {**t[1], **t[0]}),
)
alert = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["firing", "resolved", "pending", ""]) | json_leaf,
        "labels": labels | json_value,
        "annotations": json_value,
        "startsAt": st.sampled_from(["2026-11-25T19:22:35.215Z", "0001-01-01T00:00:00Z", "garbage"])
        | json_leaf,
        "fingerprint": st.text(max_size=16) | json_leaf,
    },
)
payload = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["4", "3", 0, "x"]) | json_leaf,
        "status": st.sampled_from(["firing", "resolved"]) | json_leaf,
        "alerts": st.lists(alert, max_size=5) | json_value,
        "groupKey": json_value,
        "groupLabels": json_value,
        "commonLabels": json_value,
        "truncatedAlerts": json_value,
    },
)
interesting_names = st.sampled_from(["NodeMemoryMajorPagesFaults"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prop")


@pytest.fixture(scope="module")
def running(data_dir: Path) -> Iterator[tuple[httpx.Client, ExitStack]]:
    with ExitStack() as stack:
        c, _ = stack.enter_context(service(data_dir, cooldown_seconds=0, max_queue=1000))
        yield c, stack  # closing the stack stops the service (the restart test does)


@pytest.fixture(scope="module")
def client(running: tuple[httpx.Client, ExitStack]) -> httpx.Client:
    return running[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payload | json_value)
def test_any_json_is_answered_below_500(client: httpx.Client, body: Any) -> None:
    resp = client.post("/api/v1/alerts", content=json.dumps(body).encode(), headers=AUTH)
    assert resp.status_code < 500, resp.text
    assert resp.status_code in (202, 400, 413, 422), resp.text
    assert "detail" in resp.json() or "accepted" in resp.json()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_any_bytes_are_answered_below_500(client: httpx.Client, body: bytes) -> None:
    resp = client.post("/api/v1/alerts", content=body, headers=AUTH)
    assert resp.status_code in (202, 400, 413, 422), resp.text


def test_still_serving_afterwards(client: httpx.Client, data_dir: Path) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/reports", headers=AUTH).status_code == 200
    # The poisoned alerts above cost nothing: a normal alert is investigated and its report stored.
    wait_for(lambda: not client.get("/api/v1/investigations", headers=AUTH).json()["investigations"], what="idle")
    answer = client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="after-prop"), headers=AUTH)
    assert answer.status_code == 202, answer.text
    rid = answer.json()["accepted"][0]["id"]
    doc = wait_for(
        lambda: (r := client.get(f"/api/v1/reports/{rid}", headers=AUTH)).status_code == 200 and r.json(),
        what="the normal report",
    )
    assert doc["status"] == "complete"
    assert client.get("/readyz").json() == {"ready": True, "reasons": []}
    stored = {r["id"] for r in reports(client)}
    assert rid in stored
    # The reports of the accepted nasty alerts were stored too, and every one can be read back.
    for other in stored:
        assert client.get(f"/api/v1/reports/{other}", headers=AUTH).status_code == 200


def test_report_kept_across_a_restart(running: tuple[httpx.Client, ExitStack], data_dir: Path) -> None:
    """Also alone (pytest -k restart): its own alert's report, plus whatever the tests above stored."""
    client, stack = running
    answer = client.post("/api/v1/alerts", json=firing({"node": "node-a"}, fingerprint="before-restart"),
                         headers=AUTH)
    assert answer.status_code == 202, answer.text
    rid = answer.json()["accepted"][0]["id"]
    wait_for(lambda: client.get(f"/api/v1/reports/{rid}", headers=AUTH).status_code == 200, what="its report")
    before = {r["id"] for r in reports(client)}
    assert rid in before
    stack.close()  # stop the service (its lifespan closes the store), then start it again
    with service(data_dir, cooldown_seconds=0) as (again, _):
        assert {r["id"] for r in reports(again)} >= before
        assert again.get("/readyz").json()["ready"] is True
