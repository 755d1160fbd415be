"""Every Alertmanager snippet in README.md and docs/*.md, tested the way an operator would use it.

Each ```yaml block that configures Alertmanager is taken from the Markdown as written, merged into
kube-prometheus-stack's default Alertmanager configuration (tests/fixtures/kube-prometheus-stack/,
copied from the chart's values.yaml), and then:

1. `amtool check-config` accepts the result (a snippet that drops the stack's 'null' receiver, which
   the root and Watchdog routes still name, is refused here, as Alertmanager would refuse it);
2. `amtool config routes test` routes NodeMemoryMajorPagesFaults to a receiver whose webhook URL is
   the Service that the documented `helm install pfi charts/pagefault-inspector -n …` renders (the
   real chart, rendered by the real Helm engine), and Watchdog still to 'null';
3. a real Alertmanager on a free loopback port loads it, with that URL's host replaced by a
   recording webhook receiver on loopback (nothing resolves the in-cluster name here), and must
   deliver the alert there with `Authorization: Bearer <token>` read from the credentials file,
   and must not deliver Watchdog.

How a snippet is merged follows what the snippet tells the operator to do:
- kube-prometheus-stack values (`alertmanager.config`): Helm's own values merge, by rendering a tiny
  chart whose values.yaml holds the stack's default, with the snippet as user values (maps merge,
  lists are replaced: exactly what breaks a snippet that forgets the defaults);
- a plain alertmanager.yml fragment: its routes appended to `route.routes`, its receivers to
  `receivers`;
- an AlertmanagerConfig object: converted the way prometheus-operator does (receiver named
  `<namespace>/<name>/<receiver>`, the matcher `namespace="<namespace>"` added, `continue: true`,
  the route put first; the Secret's token handed over as a file).
The Secret copy step next to a values snippet is checked too: the Secret it creates is the one
`alertmanagerSpec.secrets` mounts and `credentials_file` reads, and it carries the release's token.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    free_port,
    http_json,
    recording_receiver,
    start_process,
    stop_process,
    wait_http_ok,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) is not installed")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "pagefault-inspector"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KPS_DEFAULT = ROOT / "tests" / "fixtures" / "kube-prometheus-stack" / "alertmanager-config-default.yaml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
ALERT_LABELS = {
    "alertname": "NodeMemoryMajorPagesFaults",
    "severity": "warning",
    "namespace": "monitoring",  # node-exporter's namespace in kube-prometheus-stack
    "instance": "10.0.3.7:9100",
    "job": "node-exporter",
}
SECRETS_DIR = "/etc/alertmanager/secrets/"


# --- the snippets ----------------------------------------------------------------------------------


@dataclass
class Snippet:
    doc: Path
    line: int
    kind: str  # "stack-values", "alertmanager.yml", "AlertmanagerConfig", "stack-values-spec-only"
    data: dict[str, Any]
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("kind") == "AlertmanagerConfig":
        return "AlertmanagerConfig"
    am = data.get("alertmanager")
    if isinstance(am, dict):
        return "stack-values" if "config" in am else "stack-values-spec-only"
    if "route" in data or "receivers" in data:
        return "alertmanager.yml"
    return None


FENCE = re.compile(r"^( *)```ya?ml\n(.*?)^\1```", re.S | re.M)  # also fences indented in a list item


def yaml_blocks(doc: Path) -> Iterator[tuple[int, str]]:
    text = doc.read_text()
    for m in FENCE.finditer(text):
        yield text[: m.start()].count("\n") + 1, textwrap.dedent(m.group(2))


def snippets() -> list[Snippet]:
    found = []
    for doc in DOCS:
        for line, block in yaml_blocks(doc):
            data = yaml.safe_load(block)
            kind = _kind(data)
            if kind is not None:
                found.append(Snippet(doc, line, kind, data, block))
    return found


SNIPPETS = snippets()
ROUTED = [s for s in SNIPPETS if s.kind != "stack-values-spec-only"]


def test_the_snippets_are_found() -> None:
    where = {(s.doc.name, s.kind) for s in SNIPPETS}
    assert {
        ("README.md", "stack-values"),
        ("deploy.md", "stack-values"),
        ("service.md", "alertmanager.yml"),
        ("service.md", "AlertmanagerConfig"),
        ("deploy.md", "stack-values-spec-only"),  # alertmanagerConfigMatcherStrategy: no routing
    } <= where
    # Every yaml block that looks like Alertmanager configuration was classified (none slips by).
    for doc in DOCS:
        for _, block in yaml_blocks(doc):
            if re.search(r"^\s*(receivers|webhook_configs|webhookConfigs|alertmanager):", block, re.M):
                assert _kind(yaml.safe_load(block)) is not None, block[:200]


def test_spec_only_snippets_touch_no_routing() -> None:
    for s in SNIPPETS:
        if s.kind == "stack-values-spec-only":
            assert set(s.data["alertmanager"]) == {"alertmanagerSpec"}, s.id


# --- what `helm install` renders --------------------------------------------------------------------


@dataclass
class Install:
    release: str
    namespace: str
    service_url: str
    token_secret: str


@pytest.fixture(scope="module")
def install() -> Install:
    """The release and namespace of the README's `helm install`, rendered by the real chart."""
    cmds = set(re.findall(r"helm install (\S+) charts/pagefault-inspector -n (\S+)", (ROOT / "README.md").read_text()))
    assert len(cmds) == 1, f"the README's helm install commands disagree: {cmds}"
    ((release, namespace),) = cmds
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render({}, name=release, namespace=namespace, is_install=True)
    objs = [o for src, t in rendered.items() if src.endswith(".yaml") for o in yaml.safe_load_all(t) if o]
    (svc,) = [o for o in objs if o["kind"] == "Service"]
    (secret,) = [o for o in objs if o["kind"] == "Secret"]
    port = svc["spec"]["ports"][0]["port"]
    url = f"http://{svc['metadata']['name']}.{namespace}.svc.cluster.local:{port}/api/v1/alerts"
    notes = next(t for src, t in rendered.items() if src.endswith("NOTES.txt"))
    assert url in notes, "NOTES.txt prints the same URL"
    return Install(release, namespace, url, secret["metadata"]["name"])


# --- merging ------------------------------------------------------------------------------------------


def kps_default() -> dict[str, Any]:
    return yaml.safe_load(KPS_DEFAULT.read_text())


def helm_merge(tmp_path: Path, user_values: dict[str, Any]) -> dict[str, Any]:
    """kube-prometheus-stack's alertmanager.config after Helm merges the user's values into the
    chart's default, computed by the Helm engine itself (a chart holding only that default)."""
    chart = tmp_path / "kps-merge"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: kps-merge\nversion: 0.0.1\n")
    (chart / "values.yaml").write_text(yaml.safe_dump({"alertmanager": {"config": kps_default()}}))
    (chart / "templates" / "config.yaml").write_text("{{ .Values.alertmanager.config | toYaml }}\n")
    with helm.Chart.load(chart) as c:
        rendered = c.render(user_values, name="kps", namespace="monitoring", is_install=True)
    (text,) = rendered.values()
    return yaml.safe_load(text)


def append_fragment(fragment: dict[str, Any]) -> dict[str, Any]:
    cfg = kps_default()
    assert set(fragment) <= {"route", "receivers"}, "a fragment adds routes and receivers only"
    assert set(fragment.get("route", {})) <= {"routes"}, "a fragment must not replace the root route"
    cfg["route"]["routes"] = [*cfg["route"].get("routes", []), *fragment["route"]["routes"]]
    cfg["receivers"] = [*cfg["receivers"], *fragment["receivers"]]
    return cfg


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def operator_convert(obj: dict[str, Any], token_file: Path) -> tuple[dict[str, Any], str]:
    """The AlertmanagerConfig as prometheus-operator puts it into the configuration (matcher
    strategy OnNamespace, the default); returns the config and the Secret name it reads."""
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    spec = obj["spec"]

    def rname(r: str) -> str:
        return f"{ns}/{name}/{r}"

    route = spec["route"]
    matchers = [f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in route.get("matchers", [])]
    converted_route: dict[str, Any] = {
        "receiver": rname(route["receiver"]),
        "matchers": [*matchers, f'namespace="{ns}"'],
        "continue": True,  # the operator forces it on first-level routes
    }
    for key in ("groupBy", "groupWait", "groupInterval", "repeatInterval"):
        if key in route:
            converted_route[_camel_to_snake(key)] = route[key]
    receivers = []
    secrets = set()
    for r in spec["receivers"]:
        hooks = []
        for w in r.get("webhookConfigs", []):
            auth = w["httpConfig"]["authorization"]
            secrets.add(auth["credentials"]["name"])
            hooks.append(
                {
                    "url": w["url"],
                    "send_resolved": w.get("sendResolved", True),
                    "http_config": {
                        "authorization": {"type": auth.get("type", "Bearer"), "credentials_file": str(token_file)}
                    },
                }
            )
        receivers.append({"name": rname(r["name"]), "webhook_configs": hooks})
    cfg = kps_default()
    cfg["route"]["routes"] = [converted_route, *cfg["route"].get("routes", [])]
    cfg["receivers"] = [*cfg["receivers"], *receivers]
    (secret,) = secrets
    return cfg, secret


def check_secret_copy_step(snippet: Snippet, install: Install, secret: str) -> None:
    """The doc holding a values snippet says to copy the release's token into that Secret."""
    text = snippet.doc.read_text()
    get = re.findall(
        rf"TOKEN=\$\(kubectl -n {re.escape(install.namespace)} get secret (\S+) -o jsonpath='\{{\.data\.token\}}'",
        text,
    )
    assert install.token_secret in get, f"{snippet.id}: no step reads the release's Secret {install.token_secret}"
    create = re.findall(r"kubectl -n (\S+) create secret generic (\S+) --from-literal=token=\"\$TOKEN\"", text)
    assert ("monitoring", secret) in create, f"{snippet.id}: no step creates Secret {secret} in monitoring"


def merged_config(snippet: Snippet, tmp_path: Path, install: Install, token_file: Path) -> dict[str, Any]:
    if snippet.kind == "AlertmanagerConfig":
        cfg, secret = operator_convert(snippet.data, token_file)
        assert snippet.data["metadata"]["namespace"] == ALERT_LABELS["namespace"], "see the namespace caveat"
        return cfg
    if snippet.kind == "stack-values":
        cfg = helm_merge(tmp_path, snippet.data)
        mounted = snippet.data["alertmanager"].get("alertmanagerSpec", {}).get("secrets", [])
    else:
        cfg = append_fragment(snippet.data)
        mounted = None
    # credentials_file must read the mounted Secret; here it reads a file holding the token.
    for r in cfg["receivers"]:
        for w in r.get("webhook_configs", []):
            auth = w.get("http_config", {}).get("authorization", {})
            path = auth.get("credentials_file")
            if path is None:
                continue
            assert "credentials" not in auth, f"{snippet.id}: the token inline"
            assert path.startswith(SECRETS_DIR), f"{snippet.id}: {path} is not a mounted Secret"
            secret, key = path[len(SECRETS_DIR) :].split("/")
            if mounted is not None:
                assert secret in mounted, f"{snippet.id}: {secret} is not in alertmanagerSpec.secrets {mounted}"
                check_secret_copy_step(snippet, install, secret)
            assert key == "token"
            auth["credentials_file"] = str(token_file)
    return cfg


# --- amtool and a real Alertmanager -----------------------------------------------------------------


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30, check=False)


def routes_test(config: Path, labels: dict[str, str]) -> list[str]:
    out = amtool("config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items()))
    assert out.returncode == 0, out.stderr + out.stdout
    return [r.strip() for r in out.stdout.strip().split(",") if r.strip()]


@pytest.fixture
def tools() -> None:
    missing = [n for n, p in (("amtool", AMTOOL), ("prometheus-alertmanager", ALERTMANAGER)) if p is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (Debian package prometheus-alertmanager)")


@pytest.fixture
def alertmanager_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "am"
    d.mkdir()
    yield d


def run_alertmanager(workdir: Path, config: Path) -> Any:
    port = free_port()
    proc = start_process(
        "alertmanager",
        [
            str(ALERTMANAGER),
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        workdir,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.servers
@pytest.mark.parametrize("snippet", ROUTED, ids=[s.id for s in ROUTED])
def test_snippet_merged_into_the_stack_default_routes_to_the_service(
    snippet: Snippet, install: Install, tools: None, tmp_path: Path
) -> None:
    token = "tok-" + snippet.doc.stem + str(snippet.line)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")  # kubectl create secret --from-literal has none; a newline is trimmed
    cfg = merged_config(snippet, tmp_path, install, token_file)

    # The stack's defaults survived the merge.
    default = kps_default()
    assert {"name": "null"} in cfg["receivers"]
    assert cfg["inhibit_rules"] == default["inhibit_rules"]
    assert cfg["route"]["receiver"] == "null"
    assert cfg["templates"] == default["templates"]

    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    checked = amtool("check-config", str(config))
    assert checked.returncode == 0, f"{snippet.id}:\n{checked.stdout}{checked.stderr}"

    # Routing: the alert reaches exactly one receiver, whose URL is the rendered Service.
    (receiver,) = routes_test(config, ALERT_LABELS)
    (hook,) = next(r for r in cfg["receivers"] if r["name"] == receiver)["webhook_configs"]
    assert hook["url"] == install.service_url, snippet.id
    assert hook.get("send_resolved") is True
    assert routes_test(config, {"alertname": "Watchdog", "severity": "none", "namespace": "monitoring"}) == ["null"]

    # A real Alertmanager delivers it, with the token, to a receiver standing in for the Service.
    with recording_receiver() as rec:
        hook["url"] = rec.url
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc, am = run_alertmanager(tmp_path, config)
        try:
            wait_http_ok(f"{am}/-/ready", 30, proc)
            alerts = [
                {"labels": ALERT_LABELS, "annotations": {"summary": "test"}},
                {"labels": {"alertname": "Watchdog", "severity": "none", "namespace": "monitoring"}},
            ]
            status, body = http_json("POST", f"{am}/api/v2/alerts", alerts)
            assert status == 200, body
            deadline = time.monotonic() + 20
            while not rec.received and time.monotonic() < deadline and proc.alive():
                time.sleep(0.1)
            time.sleep(0.5)  # anything else that would arrive (it must not be Watchdog)
        finally:
            stop_process(proc)
        assert rec.received, f"{snippet.id}: nothing delivered\n{proc.tail()}"
        for got in rec.received:
            assert got.path == "/api/v1/alerts"
            assert got.headers["authorization"] == f"Bearer {token}"
            names = {a["labels"]["alertname"] for a in got.body["alerts"]}
            assert names == {"NodeMemoryMajorPagesFaults"}, names
            assert got.body["receiver"] == receiver


def test_the_charts_own_alertmanager_config_routes_to_the_service(
    install: Install, tools: None, tmp_path: Path
) -> None:
    """alertmanagerConfig.enabled=true: the object the chart renders, converted as the operator does,
    routes the alert to the Service (its namespace matcher matches the node-exporter's label)."""
    values = {"alertmanagerConfig": {"enabled": True}, "config": {"alertnames": " NodeMemoryMajorPagesFaults , X"}}
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name=install.release, namespace=install.namespace, is_install=True)
    objs = [o for src, t in rendered.items() if src.endswith(".yaml") for o in yaml.safe_load_all(t) if o]
    (amc,) = [o for o in objs if o["kind"] == "AlertmanagerConfig"]
    (copy_secret,) = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["namespace"] == "monitoring"]
    cfg, secret = operator_convert(amc, tmp_path / "token")
    assert secret == copy_secret["metadata"]["name"]
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    checked = amtool("check-config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (receiver,) = routes_test(config, ALERT_LABELS)
    (hook,) = next(r for r in cfg["receivers"] if r["name"] == receiver)["webhook_configs"]
    assert hook["url"] == install.service_url
    assert routes_test(config, {**ALERT_LABELS, "alertname": "X"}) == [receiver]
    # The caveat, shown: the same alert from another namespace does not reach it.
    assert routes_test(config, {**ALERT_LABELS, "namespace": "kube-system"}) == ["null"]


def test_a_snippet_without_the_stack_defaults_is_caught(install: Install, tools: None, tmp_path: Path) -> None:
    """The old README snippet (receivers: only ours) merged by Helm drops 'null': amtool refuses it."""
    (readme,) = [s for s in SNIPPETS if s.doc.name == "README.md" and s.kind == "stack-values"]
    broken = copy.deepcopy(readme.data)
    cfg = broken["alertmanager"]["config"]
    cfg["receivers"] = [r for r in cfg["receivers"] if r["name"] != "null"]
    cfg["route"]["routes"] = [r for r in cfg["route"]["routes"] if r["receiver"] != "null"]
    merged = helm_merge(tmp_path, broken)
    assert {"name": "null"} not in merged["receivers"]
    config = tmp_path / "broken.yml"
    config.write_text(yaml.safe_dump(merged, sort_keys=False))
    checked = amtool("check-config", str(config))
    assert checked.returncode != 0
    assert 'undefined receiver "null"' in checked.stdout + checked.stderr
