"""The Helm chart, rendered by the real Helm engine (helm-python-sdk embeds Helm's Go SDK).

Every rendered object is validated offline with kubernetes-validate against the oldest
Kubernetes the chart supports and the newest schema shipped (strict: unknown fields fail).
The prometheus-operator kinds (AlertmanagerConfig, ServiceMonitor, PrometheusRule) have no
schema there: they are skipped by the validator and checked field by field below.

The webhook token's "generated once, kept across upgrades" relies on `lookup`. Offline
rendering returns nothing from lookup, so the upgrade case renders cluster-aware against a
stand-in API server on loopback that serves the stored Secret: the real engine does the real
lookup.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed"
)
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "pagefault-inspector"
PRESETS = sorted((CHART_DIR / "presets").glob("*.yaml"))
RELEASE = "pagefault-inspector"
NAMESPACE = "pagefault-inspector"
# The chart's kubeVersion floor and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"AlertmanagerConfig", "ServiceMonitor", "PrometheusRule"}

ALL_INTEGRATIONS = {
    "alertmanagerConfig": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"enabled": True},
}

# The RBAC rules, exactly: (apiGroups, resources, verbs).
BASE_RULES = [
    ([""], ["nodes/pods"], ["get"]),
    ([""], ["pods"], ["get", "list"]),
    ([""], ["nodes"], ["get", "list"]),
    (["apps"], ["replicasets"], ["get"]),  # owner chains for a recommendation's command (issue 16)
    (["batch"], ["jobs"], ["get"]),
]
EVENTS_RULE = (["", "events.k8s.io"], ["events"], ["create", "patch"])
NODES_PROXY_RULE = ([""], ["nodes/proxy"], ["get"])


# --- rendering ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    objs = []
    for source, text in rendered.items():
        if source.endswith(".yaml"):
            objs += [o for o in yaml.safe_load_all(text) if o]
    return objs


def render(chart: Any, values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    values = values or {}
    chart.validate_schema(values)
    return _objects(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True, **kw))


def notes(chart: Any, values: dict[str, Any] | None = None) -> str:
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for source, text in rendered.items() if source.endswith("NOTES.txt"))


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "DaemonSet")["spec"]["template"]["spec"]


def env(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(objs)["env"]}


def rules(objs: list[dict[str, Any]]) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in one(objs, "ClusterRole")["rules"]]


def preset_values(path: Path) -> dict[str, Any]:
    return helm.values_from_yaml(path.read_text())


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    **{f"preset-{p.stem}": {"__preset__": str(p)} for p in PRESETS},
    "nodes-proxy": {"rbac": {"nodesProxy": True}},
    "existing-secret": {"webhookToken": {"existingSecret": "my-token"}},
    "integrations": ALL_INTEGRATIONS,
    "integrations-same-namespace": {
        **ALL_INTEGRATIONS,
        "alertmanagerConfig": {"enabled": True, "namespace": NAMESPACE},
    },
    "integrations-existing-secret": {**ALL_INTEGRATIONS, "webhookToken": {"existingSecret": "my-token"}},
    "no-events-no-mounts": {
        "kubernetesEvents": False,
        "hostMounts": {"tracefs": False, "btf": False, "cgroup": False, "debugfs": True},
        "sinks": {
            "alertmanagerUrl": "http://am:9093",
            "slack": {"existingSecret": "slack"},
            "reportWebhookUrl": "http://r",
        },
        "priorityClassName": "",
    },
    "explicit-kubelet-url": {"kubelet": {"url": "https://kubelet-proxy.example:10250"}},
}


def case_values(name: str) -> dict[str, Any]:
    values = CASES[name]
    if "__preset__" in values:
        return preset_values(Path(values["__preset__"]))
    return values


# --- the chart as a whole ----------------------------------------------------------------


def test_presets_exist() -> None:
    assert {p.stem for p in PRESETS} >= {"bottlerocket", "al2023"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_clean(case: str) -> None:
    result = helm.lint(CHART_DIR, case_values(case), strict=True, namespace=NAMESPACE)
    assert result["errors"] == []
    # The only finding allowed is the info-level "icon is recommended".
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_validates(chart: Any, case: str) -> None:
    objs = render(chart, case_values(case))
    assert objs
    skipped = set()
    for obj in objs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.add(obj["kind"])
    # Only the prometheus-operator CRDs may go unvalidated (checked by hand below).
    assert skipped <= CRD_KINDS


def test_schema_refuses_typos_and_bad_values(chart: Any) -> None:
    for bad in (
        {"tolerance": []},  # a typo of a top-level key
        {"config": {"tracer": "ftrace"}},
        {"config": {"investigationSeconds": 0}},
        {"rbac": {"nodesProxy": "yes"}},
        {"dataDir": "relative/path"},
        {"image": {"digest": "latest"}},
    ):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_every_value_is_commented() -> None:
    """Each key of values.yaml has a comment on the line above or beside it, unless it lies
    inside a free-form value (an object the schema does not describe: securityContext,
    resources, affinity, selectors), which its parent's comment covers."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    uncommented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w./-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        stack = [(n, k) for n, k in stack if n < indent]
        node: dict[str, Any] | None = schema
        for _, parent in stack:
            node = (node or {}).get("properties", {}).get(parent)
            if node is None or "properties" not in node:
                node = None
                break
        stack.append((indent, key))
        if node is None:
            continue  # inside a free-form value
        if lines[i - 1].strip().startswith("#") or " #" in line.split(":", 1)[1]:
            continue
        uncommented.append(line.strip())
    assert uncommented == []


# --- the DaemonSet -----------------------------------------------------------------------


def test_default_objects(chart: Any) -> None:
    objs = render(chart)
    assert kinds(objs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostpid_and_tolerations_reach_every_node(chart: Any, case: str) -> None:
    spec = pod_spec(render(chart, case_values(case)))
    assert spec["hostPID"] is True
    # A toleration with operator Exists and neither key nor effect tolerates every taint.
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert (
        spec["serviceAccountName"]
        == one(render(chart, case_values(case)), "ServiceAccount")["metadata"]["name"]
    )


def test_privileged_by_default_with_read_only_root(chart: Any) -> None:
    sc = container(render(chart))["securityContext"]
    assert sc["privileged"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0


def test_al2023_preset_drops_all_and_adds_only_the_tracing_capabilities(chart: Any) -> None:
    sc = container(render(chart, preset_values(CHART_DIR / "presets" / "al2023.yaml")))["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(
        ["PERFMON", "BPF", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE", "IPC_LOCK"]
    )
    assert sc["readOnlyRootFilesystem"] is True
    # Each added capability has its reason beside it in the preset.
    text = (CHART_DIR / "presets" / "al2023.yaml").read_text()
    for cap in sc["capabilities"]["add"]:
        assert re.search(rf"- {cap} +# \S", text), cap


def test_bottlerocket_preset_stays_privileged_without_debugfs(chart: Any) -> None:
    objs = render(chart, preset_values(CHART_DIR / "presets" / "bottlerocket.yaml"))
    assert container(objs)["securityContext"]["privileged"] is True
    paths = {v["hostPath"]["path"] for v in pod_spec(objs)["volumes"] if "hostPath" in v}
    assert "/sys/kernel/debug" not in paths
    assert "/sys/kernel/tracing" in paths


def _mounts(objs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(objs)["volumeMounts"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_host_mounts_read_only_but_the_report_store(chart: Any, case: str) -> None:
    objs = render(chart, case_values(case))
    data_dir = env(objs)["PFI_DATA_DIR"]["value"]
    for path, (mount, volume) in _mounts(objs).items():
        if "hostPath" not in volume:
            continue
        if path == data_dir:
            assert not mount.get("readOnly")
            assert volume["hostPath"] == {"path": data_dir, "type": "DirectoryOrCreate"}
        else:
            assert mount.get("readOnly") is True, path


def test_kernel_interfaces_mounted_where_the_settings_point(chart: Any) -> None:
    objs = render(chart)
    e, mounts = env(objs), _mounts(objs)
    assert mounts[e["PFI_TRACEFS_ROOT"]["value"]][1]["hostPath"]["path"] == "/sys/kernel/tracing"
    assert mounts[e["PFI_CGROUP_ROOT"]["value"]][1]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert mounts["/sys/kernel/btf"][1]["hostPath"]["path"] == "/sys/kernel/btf"
    assert "/sys/kernel/debug" not in mounts  # optional, off by default
    # hostPID: the pod's own /proc is the host's process list.
    assert e["PFI_PROC_ROOT"]["value"] == "/proc"
    # The root filesystem is read-only; perf.data goes to an emptyDir.
    assert "emptyDir" in mounts["/tmp"][1]
    assert e["TMPDIR"]["value"] == "/tmp"


def test_debugfs_optional(chart: Any) -> None:
    mounts = _mounts(render(chart, {"hostMounts": {"debugfs": True}}))
    mount, volume = mounts["/sys/kernel/debug"]
    assert mount["readOnly"] is True and volume["hostPath"]["path"] == "/sys/kernel/debug"


def test_probes(chart: Any) -> None:
    c = container(render(chart))
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_command_and_grace_period(chart: Any) -> None:
    objs = render(chart)
    c = container(objs)
    # The image's ENTRYPOINT is pagefault-inspector; the chart only passes the subcommand.
    assert "command" not in c and c["args"] == ["serve"]
    grace = pod_spec(objs)["terminationGracePeriodSeconds"]
    assert grace >= 30, "enough to stop perf/bpftrace and write the partial report"
    assert one(objs, "DaemonSet")["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_env_downward_api_and_kubelet(chart: Any) -> None:
    objs = render(chart)
    names = [e["name"] for e in container(objs)["env"]]
    e = env(objs)
    assert e["PFI_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert e["PFI_NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert e["PFI_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # No URL built from $(PFI_NODE_IP) (invalid for an IPv6 node IP): the app builds
    # https://[ip]:port from PFI_NODE_IP and PFI_KUBELET_PORT.
    assert "PFI_KUBELET_URL" not in e
    assert e["PFI_KUBELET_PORT"]["value"] == "10250"
    assert not [n for n, v in e.items() if "$(" in str(v.get("value", ""))]
    assert e["PFI_KUBELET_CA_FILE"]["value"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert e["PFI_KUBELET_INSECURE_SKIP_TLS_VERIFY"]["value"] == "false"
    assert e["PFI_KUBELET_TOKEN_FILE"]["value"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert e["PFI_LISTEN_ADDRESS"]["value"] == "[::]:8080"
    assert e["PFI_UI_LISTEN_ADDRESS"]["value"] == "127.0.0.1:8081"
    assert e["PFI_PEER_PORT"]["value"] == "8080"
    assert e["PFI_TRACER"]["value"] == "auto"
    assert len(names) == len(set(names))


def test_kubelet_explicit_url_and_port(chart: Any) -> None:
    e = env(render(chart, CASES["explicit-kubelet-url"]))
    assert e["PFI_KUBELET_URL"]["value"] == "https://kubelet-proxy.example:10250"
    assert "PFI_KUBELET_PORT" not in e
    assert env(render(chart, {"kubelet": {"port": 10255}}))["PFI_KUBELET_PORT"]["value"] == "10255"
    for bad in ({"kubelet": {"url": "kubelet:10250"}}, {"kubelet": {"port": 0}}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_listen_address_follows_the_port_and_parses(chart: Any) -> None:
    from app.parsers.address import parse_listen_address

    e = env(render(chart, {"port": 9090}))
    assert parse_listen_address(e["PFI_LISTEN_ADDRESS"]["value"]) == ("::", 9090)
    assert container(render(chart, {"port": 9090}))["ports"][0]["containerPort"] == 9090


@pytest.mark.parametrize("case", sorted(CASES))
def test_priority_class(chart: Any, case: str) -> None:
    spec = pod_spec(render(chart, case_values(case)))
    if case == "no-events-no-mounts":  # priorityClassName: "" opts out
        assert "priorityClassName" not in spec
    else:
        assert spec["priorityClassName"] == "system-node-critical"
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"priorityClassName": "Not A Name"})


def test_rollout_is_a_percentage(chart: Any) -> None:
    strategy = one(render(chart), "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}


def test_kubelet_skip_verify_and_no_ca(chart: Any) -> None:
    e = env(render(chart, {"kubelet": {"insecureSkipTLSVerify": True, "caFile": ""}}))
    assert e["PFI_KUBELET_INSECURE_SKIP_TLS_VERIFY"]["value"] == "true"
    assert "PFI_KUBELET_CA_FILE" not in e


def test_peer_selector_is_the_daemonset_selector(chart: Any) -> None:
    objs = render(chart)
    selector = one(objs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    value = env(objs)["PFI_PEER_LABEL_SELECTOR"]["value"]
    assert dict(kv.split("=", 1) for kv in value.split(",")) == selector
    assert one(objs, "Service")["spec"]["selector"] == selector


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pfi_variable_is_a_setting(chart: Any, case: str) -> None:
    """The chart sets only PFI_ names that app.config.Settings reads (PFI_ + field, upper-cased; a
    field's name is the same in its group)."""
    from app.config import FIELD_GROUP

    known = {f"PFI_{name.upper()}" for name in FIELD_GROUP}
    used = {n for n in env(render(chart, case_values(case))) if n.startswith("PFI_")}
    assert used - known == set()


def test_tracer_start_deadlines_default_to_the_settings_and_can_be_raised(chart: Any) -> None:
    """config.perfStartTimeoutSeconds / bpftraceStartTimeoutSeconds: the app's defaults unless set (a slow node
    raises them); the schema refuses 0."""
    from app.config import TracingSettings

    e = env(render(chart))
    for variable, field in (("PFI_PERF_START_TIMEOUT_SECONDS", "perf_start_timeout_seconds"),
                            ("PFI_BPFTRACE_START_TIMEOUT_SECONDS", "bpftrace_start_timeout_seconds")):
        assert float(e[variable]["value"]) == TracingSettings.model_fields[field].default
    raised = env(render(chart, {"config": {"perfStartTimeoutSeconds": 90, "bpftraceStartTimeoutSeconds": 120}}))
    assert (raised["PFI_PERF_START_TIMEOUT_SECONDS"]["value"], raised["PFI_BPFTRACE_START_TIMEOUT_SECONDS"]["value"]) == (
        "90", "120")
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"perfStartTimeoutSeconds": 0}})


def test_exact_max_rate_defaults_to_the_setting_and_can_be_turned_off(chart: Any) -> None:
    """config.exactMaxRate: above it auto samples one fault in N (issue 27); 0 records every fault."""
    from app.config import Settings, TracingSettings

    assert int(env(render(chart))["PFI_EXACT_MAX_RATE"]["value"]) == TracingSettings.model_fields["exact_max_rate"].default
    off = env(render(chart, {"config": {"exactMaxRate": 0}}))["PFI_EXACT_MAX_RATE"]["value"]
    assert Settings(kubelet_url=None, exact_max_rate=int(off)).tracing.exact_max_rate == 0
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"exactMaxRate": -1}})


def test_sinks(chart: Any) -> None:
    e = env(render(chart, CASES["no-events-no-mounts"]))
    assert e["PFI_ALERTMANAGER_URL"]["value"] == "http://am:9093"
    assert e["PFI_REPORT_WEBHOOK_URL"]["value"] == "http://r"
    assert e["PFI_SLACK_WEBHOOK_URL"]["valueFrom"] == {"secretKeyRef": {"name": "slack", "key": "url"}}
    assert e["PFI_KUBERNETES_EVENTS"]["value"] == "false"
    d = env(render(chart))
    assert not {"PFI_ALERTMANAGER_URL", "PFI_SLACK_WEBHOOK_URL", "PFI_REPORT_WEBHOOK_URL"} & set(d)


def test_image_tag_defaults_to_app_version_and_digest_wins(chart: Any) -> None:
    assert container(render(chart))["image"].endswith(":" + chart.metadata["appVersion"])
    digest = "sha256:" + "a" * 64
    assert container(render(chart, {"image": {"digest": digest}}))["image"].endswith("@" + digest)


# --- the Service -------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_service_exposes_only_the_webhook_port(chart: Any, case: str) -> None:
    objs = render(chart, case_values(case))
    svc = one(objs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    # The UI port is on the pod's loopback: not in the Service, not even as a container port.
    assert 8081 not in [p["containerPort"] for p in container(objs)["ports"]]


# --- RBAC --------------------------------------------------------------------------------


def test_rbac_default_exact(chart: Any) -> None:
    objs = render(chart)
    assert rules(objs) == [*BASE_RULES, EVENTS_RULE]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_nodes_proxy_only_behind_the_value(chart: Any) -> None:
    assert NODES_PROXY_RULE not in rules(render(chart))
    with_proxy = rules(render(chart, {"rbac": {"nodesProxy": True}}))
    assert with_proxy == [BASE_RULES[0], NODES_PROXY_RULE, *BASE_RULES[1:], EVENTS_RULE]
    # The values comment says what it costs.
    values_text = (CHART_DIR / "values.yaml").read_text()
    assert re.search(r"nodes/proxy[\s\S]{0,600}exec into", values_text)
    assert "nodes/proxy" in notes(chart, {"rbac": {"nodesProxy": True}})


def test_events_rule_only_when_events_are_written(chart: Any) -> None:
    assert rules(render(chart, {"kubernetesEvents": False})) == BASE_RULES


@pytest.mark.parametrize("case", sorted(CASES))
def test_rbac_no_wildcards_no_writes_beyond_events(chart: Any, case: str) -> None:
    objs = render(chart, case_values(case))
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")]
    for groups, resources, verbs in rules(objs):
        assert "*" not in groups + resources + verbs
        if resources != ["events"]:
            assert set(verbs) <= {"get", "list"}


def test_rbac_off(chart: Any) -> None:
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds(render(chart, {"rbac": {"create": False}})))


# --- the webhook token -------------------------------------------------------------------


def _secret_token(objs: list[dict[str, Any]], namespace: str = NAMESPACE) -> str:
    secrets = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["namespace"] == namespace]
    assert len(secrets) == 1
    return base64.b64decode(secrets[0]["data"]["token"]).decode()


def test_token_generated_on_install_and_mounted_as_file(chart: Any) -> None:
    objs = render(chart)
    token = _secret_token(objs)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    assert token != _secret_token(render(chart)), "a fresh install gets its own random token"
    secret = one(objs, "Secret")
    mount, volume = _mounts(objs)["/etc/pagefault-inspector/webhook"]
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert env(objs)["PFI_WEBHOOK_TOKEN_FILE"]["value"] == "/etc/pagefault-inspector/webhook/token"


def test_token_fixed_value(chart: Any) -> None:
    assert _secret_token(render(chart, {"webhookToken": {"value": "s3cret"}})) == "s3cret"


def test_existing_secret_creates_none(chart: Any) -> None:
    objs = render(chart, {"webhookToken": {"existingSecret": "my-token", "key": "bearer"}})
    assert "Secret" not in kinds(objs)
    _, volume = _mounts(objs)["/etc/pagefault-inspector/webhook"]
    assert volume["secret"]["secretName"] == "my-token"
    assert env(objs)["PFI_WEBHOOK_TOKEN_FILE"]["value"] == "/etc/pagefault-inspector/webhook/bearer"


def _checksum(objs: list[dict[str, Any]]) -> str | None:
    return one(objs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"].get("checksum/token")


def test_checksum_annotation_is_the_tokens(chart: Any) -> None:
    """The pods roll when the token the chart makes or is given changes; the annotation is a hash
    of the token in the Secret, never the token."""
    import hashlib

    for values in ({}, {"webhookToken": {"value": "s3cret"}}, ALL_INTEGRATIONS):
        objs = render(chart, values)
        token = _secret_token(objs)
        assert _checksum(objs) == hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps(one(objs, "DaemonSet"))
    assert _checksum(render(chart, {"webhookToken": {"value": "a"}})) != _checksum(
        render(chart, {"webhookToken": {"value": "b"}})
    )
    # Not given the token (existingSecret): no annotation; docs/deploy.md says to restart.
    assert _checksum(render(chart, {"webhookToken": {"existingSecret": "my-token"}})) is None


class _FakeApiServer(BaseHTTPRequestHandler):
    """Just enough of the API server for Helm's `lookup` of one Secret: discovery of v1 and
    GET of the stored Secrets; everything else 404."""

    secrets: dict[str, dict[str, Any]] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        self.requests.append(path)
        if path == "/api/v1":
            body: dict[str, Any] | None = {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "secrets",
                        "singularName": "secret",
                        "namespaced": True,
                        "kind": "Secret",
                        "verbs": ["get", "list"],
                    }
                ],
            }
        elif path == "/api":
            body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        elif path == "/apis":
            body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        else:
            body = self.secrets.get(path)
        code = 200 if body is not None else 404
        if body is None:
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
            }
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api_server() -> Iterator[tuple[Any, type[_FakeApiServer]]]:
    handler = type("Handler", (_FakeApiServer,), {"secrets": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = helm.Config(
        kube_apiserver=f"http://127.0.0.1:{server.server_port}", kube_token="test", namespace=NAMESPACE
    )
    try:
        yield config, handler
    finally:
        config.close()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_token_kept_across_upgrades(chart: Any, api_server: tuple[Any, type[_FakeApiServer]]) -> None:
    config, handler = api_server
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{RELEASE}-webhook"
    # First install: nothing stored, a token is generated.
    first = _objects(
        config.render(chart, ALL_INTEGRATIONS, name=RELEASE, namespace=NAMESPACE, is_install=True)
    )
    generated = _secret_token(first)
    assert path in handler.requests, "the template looked the Secret up"
    handler.secrets[path] = one(first, "Secret", f"{RELEASE}-webhook")
    # Upgrade: the stored token is reused, in both Secrets (the AlertmanagerConfig's copy too).
    for _ in range(2):
        upgraded = _objects(
            config.render(chart, ALL_INTEGRATIONS, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        )
        assert _secret_token(upgraded) == generated
        assert _secret_token(upgraded, "monitoring") == generated
        # ...so the pods do not roll on an upgrade that keeps the token.
        assert _checksum(upgraded) == _checksum(first)


# --- kube-prometheus-stack integration ---------------------------------------------------


def test_integrations_off_by_default(chart: Any) -> None:
    assert not CRD_KINDS & set(kinds(render(chart)))
    assert "NetworkPolicy" not in kinds(render(chart))


def test_alertmanager_config(chart: Any) -> None:
    objs = render(chart, ALL_INTEGRATIONS)
    amc = one(objs, "AlertmanagerConfig")
    assert amc["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    # In the node-exporter's namespace: the operator matches only alerts whose namespace label is its own.
    assert amc["metadata"]["namespace"] == "monitoring"
    route = amc["spec"]["route"]
    assert route["matchers"] == [
        {"name": "alertname", "matchType": "=", "value": "NodeMemoryMajorPagesFaults"}
    ]
    (receiver,) = amc["spec"]["receivers"]
    assert route["receiver"] == receiver["name"]
    (hook,) = receiver["webhookConfigs"]
    assert hook["url"] == f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:8080/api/v1/alerts"
    auth = hook["httpConfig"]["authorization"]
    assert auth["type"] == "Bearer"
    # The credentials Secret exists in the AlertmanagerConfig's namespace with the same token.
    copy = one(objs, "Secret", auth["credentials"]["name"])
    assert copy["metadata"]["namespace"] == "monitoring"
    assert auth["credentials"]["key"] in copy["data"]
    assert _secret_token(objs, "monitoring") == _secret_token(objs)
    # The Service the URL names exists and serves that port.
    svc = one(objs, "Service")
    assert (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]) == (RELEASE, 8080)


def test_alertmanager_config_in_release_namespace_uses_the_secret_itself(chart: Any) -> None:
    objs = render(chart, CASES["integrations-same-namespace"])
    auth = one(objs, "AlertmanagerConfig")["spec"]["receivers"][0]["webhookConfigs"][0]["httpConfig"][
        "authorization"
    ]
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Secret"] == [auth["credentials"]["name"]]


def test_alertmanager_config_with_existing_secret(chart: Any) -> None:
    objs = render(chart, CASES["integrations-existing-secret"])
    assert "Secret" not in kinds(objs)
    auth = one(objs, "AlertmanagerConfig")["spec"]["receivers"][0]["webhookConfigs"][0]["httpConfig"][
        "authorization"
    ]
    assert auth["credentials"] == {"name": "my-token", "key": "token"}


def test_alertmanager_config_several_alertnames(chart: Any) -> None:
    def matchers(names: str) -> list[dict[str, str]]:
        values = {"alertmanagerConfig": {"enabled": True}, "config": {"alertnames": names}}
        return one(render(chart, values), "AlertmanagerConfig")["spec"]["route"]["matchers"]

    assert matchers("NodeMemoryMajorPagesFaults,Other") == [
        {"name": "alertname", "matchType": "=~", "value": "NodeMemoryMajorPagesFaults|Other"}
    ]
    # Trimmed like the app trims PFI_ALERTNAMES; empty items dropped; regex characters quoted.
    assert matchers(" NodeMemoryMajorPagesFaults , Other.X ,") == [
        {"name": "alertname", "matchType": "=~", "value": "NodeMemoryMajorPagesFaults|Other\\.X"}
    ]
    assert matchers(" Only ,") == [{"name": "alertname", "matchType": "=", "value": "Only"}]
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"alertnames": " , "}})


def test_service_monitor(chart: Any) -> None:
    sm = one(render(chart, ALL_INTEGRATIONS), "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_prometheus_rule_is_node_mixins(chart: Any) -> None:
    rule_obj = one(render(chart, ALL_INTEGRATIONS), "PrometheusRule")
    (group,) = rule_obj["spec"]["groups"]
    (rule,) = group["rules"]
    assert rule["alert"] == "NodeMemoryMajorPagesFaults"
    assert rule["expr"] == 'rate(node_vmstat_pgmajfault{job="node-exporter"}[5m]) > 500'
    assert rule["for"] == "15m"
    assert rule["labels"] == {"severity": "warning"}
    assert rule["annotations"]["summary"] == "Memory major page faults are occurring at very high rate."
    assert rule["annotations"]["description"] == (
        "Memory major pages are occurring at very high rate at {{ $labels.instance }}, 500 major page faults "
        'per second for the last 15 minutes, is currently at {{ printf "%.2f" $value }}.\n'
        "Please check that there is enough memory available at this instance."
    )


def test_network_policy(chart: Any) -> None:
    objs = render(chart, ALL_INTEGRATIONS)
    np = one(objs, "NetworkPolicy")
    selector = one(objs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert np["spec"]["podSelector"] == {"matchLabels": selector}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    (ingress,) = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}},
        },
        {"podSelector": {"matchLabels": selector}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
    ]


def test_notes_without_inline_credentials(chart: Any) -> None:
    for values in ({}, ALL_INTEGRATIONS):
        text = notes(chart, values)
        assert not re.search(r"\bcredentials:", text), "NOTES must not suggest a token inline"
        assert "credentials_file" in text or "AlertmanagerConfig" in text
        assert "Rotate the webhook token" in text
        assert "Uninstalling leaves the report store /var/lib/pagefault-inspector" in text


def test_no_create_namespace_suggestion() -> None:
    """`--create-namespace` makes the namespace without the Pod Security label the pods need."""
    files = [*CHART_DIR.rglob("*.yaml"), *CHART_DIR.rglob("*.txt"), ROOT / "README.md", *ROOT.glob("docs/*.md")]
    for f in files:
        for line in f.read_text().splitlines():
            if "--create-namespace" in line:
                # Only where it is named to warn against it.
                assert re.search(r"would (skip|make it without) the", line), f"{f}: {line}"


def test_notes_tell_port_forward_and_where_reports_go(chart: Any) -> None:
    text = notes(chart)
    assert "kubectl -n pagefault-inspector port-forward" in text and " 8081" in text
    assert "/var/lib/pagefault-inspector" in text
    assert "http://pagefault-inspector.pagefault-inspector.svc.cluster.local:8080/api/v1/alerts" in text


# --- manifests/ --------------------------------------------------------------------------


def test_manifests_match_the_chart() -> None:
    """manifests/ is rendered from the chart; this fails when either changed alone."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_manifests.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_manifests_content() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "pagefault-inspector.yaml").read_text()) if d]
    assert kinds(docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Namespace",
        "Service",
        "ServiceAccount",
    ]
    ns = one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # No token in a committed file: the Secret is created by the user, under the name mounted.
    _, volume = _mounts(docs)["/etc/pagefault-inspector/webhook"]
    assert volume["secret"]["secretName"] == "pagefault-inspector-webhook"
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
