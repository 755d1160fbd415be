"""Property: whatever JSON (or bytes) is posted to the webhook, the answer is < 500 and the
service keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service_support import AUTH, service

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
label_value = st.one_of(st.text(max_size=30), json_leaf)
labels = st.dictionaries(
    st.sampled_from(["alertname", "node", "nodename", "kubernetes_node", "instance", "pod", "x"])
    | st.text(max_size=8),
    label_value,
    max_size=6,
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
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp: Path = tmp_path_factory.mktemp("prop")
    with service(tmp, cooldown_seconds=0, max_queue=1000) as (c, _):
        yield c


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


def test_still_serving_afterwards(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/reports", headers=AUTH).status_code == 200
