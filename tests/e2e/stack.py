"""The real Prometheus stack on loopback, for end-to-end tests.

Debian's `prometheus-node-exporter` (vmstat collector only), `prometheus` (1 s scrapes and rule
evaluation, the node-mixin alert `NodeMemoryMajorPagesFaults` with its threshold and `for:` lowered)
and `prometheus-alertmanager` (clustering off, a webhook receiver with a bearer token from a file),
each on a free 127.0.0.1 port, in a tmp dir, in its own process group. Everything is killed and
reaped when the context exits, also on failure.

    with prometheus_stack(tmp, webhook_url="http://127.0.0.1:8080/api/v1/alerts", token="s3cret") as s:
        s.wait_alert_firing("NodeMemoryMajorPagesFaults")
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.needs import require_marker
from tests.workloads import forget_process, record_process

NODE_EXPORTER = os.environ.get("PFI_NODE_EXPORTER", "prometheus-node-exporter")
PROMETHEUS = os.environ.get("PFI_PROMETHEUS", "prometheus")
ALERTMANAGER = os.environ.get("PFI_ALERTMANAGER", "prometheus-alertmanager")
BINARIES = (NODE_EXPORTER, PROMETHEUS, ALERTMANAGER)

ALERTNAME = "NodeMemoryMajorPagesFaults"
# node-mixin (prometheus/node_exporter docs/node-mixin/alerts/alerts.libsonnet), with its threshold
# (memoryMajorPagesFaultsThreshold, 500 there) and rate window / `for:` lowered for a test.
NODE_MIXIN_SUMMARY = "Memory major page faults are occurring at very high rate."
NODE_MIXIN_DESCRIPTION = (
    "Memory major pages are occurring at very high rate at {{ $labels.instance }}, %(threshold)d major page "
    'faults per second for the last 15 minutes, is currently at {{ printf "%%.2f" $value }}.\n'
    "Please check that there is enough memory available at this instance.\n"
)
NODE_EXPORTER_SELECTOR = 'job="node"'  # node-mixin's default nodeExporterSelector


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes ---------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen  # type: ignore[type-arg]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def alive(self) -> bool:
        return self.popen.poll() is None


def start_process(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start argv in its own session (process group), output to <workdir>/<name>.log."""
    require_marker("servers", f"the real service {name}")
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    record_process(p)  # in the run-state folder: scripts/cleanup.sh stops it if this run dies first
    return Proc(name, p, log)


def stop_process(proc: Proc, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL; always reap."""
    p = proc.popen
    try:
        pgid = os.getpgid(p.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(grace)
    if pgid is not None:  # also whatever it left behind in its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(grace)
    if p.poll() is not None:
        forget_process(p)


# --- HTTP ----------------------------------------------------------------------------------------------


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 5.0
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.5,
    diagnostics: Callable[[], str] | None = None,
) -> Any:
    """Poll check() until it returns something truthy; fail with `what` and diagnostics at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = check()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f"\nlast error: {last_exc!r}" if last_exc else ""
            if diagnostics:
                extra += "\n" + diagnostics()
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_http_ok(url: str, timeout: float, proc: Proc | None = None) -> None:
    def check() -> bool:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        return http_get(url, timeout=2)[0] == 200

    wait_for(url, check, timeout, 0.2, (lambda: proc.tail()) if proc else None)


# --- a recording webhook receiver ---------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class RecordingReceiver:
    url: str
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.body for r in self.received]


@contextlib.contextmanager
def recording_receiver(path: str = "/api/v1/alerts", status: int = 202) -> Iterator[RecordingReceiver]:
    """A loopback HTTP server that records every POST (headers and JSON body) and answers `status`."""
    rec = RecordingReceiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            with rec.lock:
                rec.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format, *args):  # noqa: A002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


# --- the stack -----------------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    node_exporter_port: int
    prometheus_port: int
    alertmanager_port: int
    procs: list[Proc]

    @property
    def instance(self) -> str:
        """The `instance` label Prometheus gives the node-exporter target."""
        return f"127.0.0.1:{self.node_exporter_port}"

    @property
    def node_exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.node_exporter_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def logs(self, n: int = 30) -> str:
        return "\n".join(f"--- {p.name} (alive={p.alive()}) ---\n{p.tail(n)}" for p in self.procs)

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")

    # Prometheus
    def prometheus_alerts(self) -> list[dict[str, Any]]:
        status, body = http_json("GET", f"{self.prometheus_url}/api/v1/alerts")
        assert status == 200, body
        return body["data"]["alerts"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        status, body = http_json("GET", f"{self.prometheus_url}/api/v1/query?{q}")
        assert status == 200, body
        return body["data"]["result"]

    def wait_alert_firing(self, alertname: str = ALERTNAME, timeout: float = 45.0) -> dict[str, Any]:
        def check():
            self.check_alive()
            return next(
                (
                    a
                    for a in self.prometheus_alerts()
                    if a["labels"].get("alertname") == alertname and a["state"] == "firing"
                ),
                None,
            )

        return wait_for(f"{alertname} firing in Prometheus", check, timeout, 0.5, self.logs)

    # Alertmanager
    def alertmanager_alerts(self, alertname: str | None = None) -> list[dict[str, Any]]:
        url = f"{self.alertmanager_url}/api/v2/alerts"
        if alertname:
            url += "?" + urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        status, body = http_json("GET", url)
        assert status == 200, body
        return body


def prometheus_config(ne_port: int, am_port: int) -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{ne_port}"]}]}
            ],
        },
        indent=2,
    )


def node_mixin_rules(threshold: int, rate_window: str, for_: str) -> str:
    """The node-mixin NodeMemoryMajorPagesFaults rule (JSON is YAML), threshold/window/for lowered."""
    return json.dumps(
        {
            "groups": [
                {
                    "name": "node-exporter",
                    "rules": [
                        {
                            "alert": ALERTNAME,
                            "expr": f"rate(node_vmstat_pgmajfault{{{NODE_EXPORTER_SELECTOR}}}[{rate_window}]) > {threshold}\n",
                            "for": for_,
                            "labels": {"severity": "warning"},
                            "annotations": {
                                "summary": NODE_MIXIN_SUMMARY,
                                "description": NODE_MIXIN_DESCRIPTION % {"threshold": threshold},
                            },
                        }
                    ],
                }
            ]
        },
        indent=2,
    )


def alertmanager_config(webhook_url: str, token_file: Path) -> str:
    return json.dumps(
        {
            "route": {
                "receiver": "pagefault-inspector",
                "group_by": ["alertname", "instance"],
                "group_wait": "1s",
                "group_interval": "5s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "pagefault-inspector",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                            },
                        }
                    ],
                }
            ],
        },
        indent=2,
    )


@contextlib.contextmanager
def prometheus_stack(
    workdir: Path,
    *,
    webhook_url: str,
    token: str,
    threshold: int = 50,
    rate_window: str = "20s",
    for_: str = "5s",
    startup_timeout: float = 30.0,
) -> Iterator[Stack]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ne_port, prom_port, am_port = free_port(), free_port(), free_port()
    token_file = workdir / "webhook-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    (workdir / "prometheus.yml").write_text(prometheus_config(ne_port, am_port))
    (workdir / "rules.yml").write_text(node_mixin_rules(threshold, rate_window, for_))
    (workdir / "alertmanager.yml").write_text(alertmanager_config(webhook_url, token_file))
    (workdir / "prom-data").mkdir(exist_ok=True)
    (workdir / "am-data").mkdir(exist_ok=True)

    procs: list[Proc] = []
    stack = Stack(workdir, ne_port, prom_port, am_port, procs)
    try:
        procs.append(
            start_process(
                "node-exporter",
                [
                    NODE_EXPORTER,
                    f"--web.listen-address=127.0.0.1:{ne_port}",
                    "--collector.disable-defaults",
                    "--collector.vmstat",
                    "--collector.vmstat.fields=^(pgmajfault|pgfault|pswpin|pswpout)$",
                ],
                workdir,
            )
        )
        procs.append(
            start_process(
                "alertmanager",
                [
                    ALERTMANAGER,
                    f"--config.file={workdir / 'alertmanager.yml'}",
                    f"--storage.path={workdir / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                    "--log.level=debug",
                ],
                workdir,
            )
        )
        procs.append(
            start_process(
                "prometheus",
                [
                    PROMETHEUS,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                workdir,
            )
        )
        wait_http_ok(f"{stack.node_exporter_url}/metrics", startup_timeout, procs[0])
        wait_http_ok(f"{stack.alertmanager_url}/-/ready", startup_timeout, procs[1])
        wait_http_ok(f"{stack.prometheus_url}/-/ready", startup_timeout, procs[2])
        # the rule loaded and the target scraped
        wait_for(
            "the node-exporter target to be up",
            lambda: any(r["value"][1] == "1" for r in stack.query(f"up{{{NODE_EXPORTER_SELECTOR}}}")),
            startup_timeout,
            0.3,
            stack.logs,
        )
        yield stack
    finally:
        for p in reversed(procs):
            stop_process(p)
