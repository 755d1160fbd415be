"""The service's API-server calls (app.service.cluster.kube over app.collectors.apiserver) against a TLS
API-server stand-in on loopback: Kubernetes Events (events.k8s.io/v1), deadlines, bad settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.collectors.apiserver import ApiServerConfig, event_body, service_account_namespace
from app.service.cluster.kube import KubeApi, KubeError
from app.service.delivery.sinks import KubeEventsSink, deliver_with_retry
from tests.deadline import ends_by_deadline
from tests.service_support import make_report, make_settings
from tests.tls_standin import ApiServer, Certs, StandIn

SA_TOKEN = "sa-token-events-0123"


def _settings(tmp_path: Path, url: str, certs: Certs, **kw: Any) -> Any:
    token = tmp_path / "sa-token"
    token.write_text(SA_TOKEN)
    kw.setdefault("apiserver_timeout_seconds", 30.0)  # what is answered, not the deadline (those tests set theirs)
    return make_settings(tmp_path, kubernetes_events=True, apiserver_url=url, apiserver_ca_file=certs.ca,
                         apiserver_token_file=token, **kw)


def test_kube_events_posted_once_each_even_on_retry(tmp_path: Path, certs: Certs, serve: Callable[[StandIn], StandIn]) -> None:
    fake = ApiServer([])
    fake.fail_events["shop"] = 1  # the Pod's event fails once (etcd timeout), the Node's does not
    stand = serve(StandIn("", SA_TOKEN, routes=fake))

    async def go() -> Any:
        api = KubeApi.from_settings(_settings(tmp_path, stand.url, certs).apiserver)
        assert api is not None
        sink = KubeEventsSink(_settings(tmp_path, stand.url, certs), api)
        res = await deliver_with_retry(sink, make_report("node-a"), attempts=3, backoff=0)
        await api.aclose()
        return res

    res = asyncio.run(go())
    assert res.ok and res.attempts == 2, res.detail
    assert stand.requests == [
        "POST /apis/events.k8s.io/v1/namespaces/default/events",
        "POST /apis/events.k8s.io/v1/namespaces/shop/events",
        "POST /apis/events.k8s.io/v1/namespaces/shop/events",
    ]
    node_event, pod_event = fake.events
    assert (node_event["regarding"]["kind"], node_event["regarding"]["name"]) == ("Node", "node-a")
    assert pod_event["regarding"]["kind"] == "Pod" and pod_event["regarding"]["namespace"] == "shop"
    for ev in fake.events:
        assert ev["apiVersion"] == "events.k8s.io/v1" and ev["type"] == "Warning"
        assert ev["reason"] == "MajorPageFaults" and ev["reportingInstance"] == "node-a"
        assert ev["note"].endswith(")") and "(report " in ev["note"]


def test_events_to_a_silent_api_server_end_at_the_deadline(
    tmp_path: Path, certs: Certs, serve: Callable[[StandIn], StandIn]
) -> None:
    stand = serve(StandIn("", SA_TOKEN, routes=ApiServer([]), hang=True))

    async def go() -> str:
        api = KubeApi.from_settings(_settings(tmp_path, stand.url, certs, apiserver_timeout_seconds=1.0).apiserver)
        assert api is not None
        with pytest.raises(KubeError) as err:
            await api.create_event("default", event_body(
                namespace="default", regarding={"kind": "Node", "name": "node-a"}, reason="R", note="n",
                action="A", controller="x.io/c", instance="node-a", event_time="2026-12-02T05:00:00.000000Z"))
        await api.aclose()
        return str(err.value)

    reason, _ = ends_by_deadline(lambda: asyncio.run(go()), at_least=1.0, what="create_event")  # it never answers
    # The request's own deadline names what it asked; KubeApi's outer guard (deadline + grace, when the
    # client's thread has not come back, as on a loaded machine) says the same without it. Either ends it.
    assert reason in ("API server timed out after 1s (an Event in default)", "API server timed out after 1s"), reason


def test_trickling_api_server_ends_at_the_deadline(tmp_path: Path, certs: Certs, serve: Callable[[StandIn], StandIn]) -> None:
    stand = serve(StandIn("", SA_TOKEN, routes=ApiServer([]), trickle=1.0))

    async def go() -> str:
        api = KubeApi.from_settings(_settings(tmp_path, stand.url, certs, apiserver_timeout_seconds=2.0).apiserver)
        assert api is not None
        with pytest.raises(KubeError) as err:
            await api.list_nodes()
        await api.aclose()
        return str(err.value)

    reason, _ = ends_by_deadline(lambda: asyncio.run(go()), at_least=2.0, what="list_nodes")  # a byte a second
    assert reason in ("API server timed out after 2s (nodes)", "API server timed out after 2s"), reason  # as above


@pytest.mark.parametrize(("env", "kw", "expected"), [
    ({}, {}, None),
    ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, {}, ("in-cluster", "https://[fd00::1]:443")),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, {}, ("in-cluster", "https://10.96.0.1:443")),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, {"apiserver_url": "https://api:6443"}, ("PFI_APISERVER_URL", "https://api:6443")),
])
def test_which_api_server(tmp_path: Path, env: dict[str, str], kw: dict[str, Any], expected: Any) -> None:
    settings = make_settings(tmp_path, **{"apiserver_url": None, "apiserver_token_file": tmp_path / "sa/token", **kw})
    config = ApiServerConfig.from_settings(settings.apiserver, environ=env)
    assert (config.source, config.url) == expected if expected else config is None


def test_service_account_folder_is_where_the_token_is(tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    for name, text in (("token", "t"), ("ca.crt", "x"), ("namespace", "pfi-system\n")):
        (sa / name).write_text(text)
    settings = make_settings(tmp_path, apiserver_url=None, apiserver_token_file=sa / "token")
    config = ApiServerConfig.from_settings(settings.apiserver, environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert config is not None and (config.token_file, config.ca_file) == (sa / "token", sa / "ca.crt")
    assert service_account_namespace(settings.apiserver) == "pfi-system"
