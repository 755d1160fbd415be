"""Rows 5 and 6: the service on loopback. Alert POST -> stored report (minus the window), and the
service's RSS idle / during investigations and CPU idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .common import kill_group, log, proc_cpu_seconds, proc_rss_mib

NODE = "pfi-bench-node"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> tuple[bool, str]:
    try:
        import app.service.web.server  # noqa: F401
    except ImportError as e:
        return False, f"app.service.web.server: {e}"
    return True, ""


def _tree_rss(pid: int) -> float:
    """RSS of the service and any children it has (a tracer during an investigation is not counted:
    it is the tracer's own row; only python processes of the service are)."""
    return proc_rss_mib(pid)


@contextlib.contextmanager
def running_service(workdir: Path, window: float = 1.0) -> Iterator[dict]:
    d = Path(tempfile.mkdtemp(prefix="svc-", dir=workdir))
    token = secrets.token_urlsafe(24)
    (d / "token").write_text(token + "\n")
    os.chmod(d / "token", 0o600)
    port, ui_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PFI_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "PFI_UI_LISTEN_ADDRESS": f"127.0.0.1:{ui_port}",
        "PFI_WEBHOOK_TOKEN_FILE": str(d / "token"),
        "PFI_DATA_DIR": str(d / "data"),
        "PFI_INVESTIGATION_SECONDS": str(window),
        "PFI_COOLDOWN_SECONDS": "0",
        "PFI_NODE_NAME": NODE,
        "PFI_APISERVER_FALLBACK": "false",
        "PFI_KUBERNETES_EVENTS": "false",
    }
    for k in ("PFI_KUBELET_URL", "PFI_ALERTMANAGER_URL", "PFI_SLACK_WEBHOOK_URL", "PFI_REPORT_WEBHOOK_URL"):
        env.pop(k, None)
    exe = Path(sys.executable).parent / "pagefault-inspector"
    argv = [str(exe), "serve"] if exe.exists() else [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())", "serve"]
    errf = open(d / "stderr", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=errf)
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited {proc.returncode}: {(d / 'stderr').read_text()[-400:]}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("service not healthy after 30 s")
            time.sleep(0.1)
        yield {"proc": proc, "client": client, "dir": d}
    finally:
        client.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        kill_group(proc)
        errf.close()
        shutil.rmtree(d, ignore_errors=True)


def alert_payload(n: int) -> dict:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    labels = {"alertname": "NodeMemoryMajorPagesFaults", "severity": "warning", "node": NODE,
              "instance": f"{NODE}:9100", "job": "node-exporter", "bench_run": str(n)}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="NodeMemoryMajorPagesFaults", bench_run="{n}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "pagefault-inspector",
        "groupLabels": {"alertname": "NodeMemoryMajorPagesFaults"},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "Memory major page faults are occurring at very high rate."},
        "externalURL": "http://alertmanager.local",
        "alerts": [{
            "status": "firing", "labels": labels,
            "annotations": {"summary": "Memory major page faults are occurring at very high rate."},
            "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local/graph", "fingerprint": secrets.token_hex(8),
        }],
    }


def _report_ids(client) -> set[str]:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/reports", params={"limit": 500})
    r.raise_for_status()
    return {row.get("id") for row in r.json().get("reports", [])}


def measure(workdir: Path, alerts: int = 3, idle_seconds: float = 20.0, window: float = 1.0) -> dict:
    out: dict = {"alert_to_report": [], "windows": [], "errors": [], "reports": []}
    with running_service(workdir, window=window) as svc:
        proc, client = svc["proc"], svc["client"]
        time.sleep(2.0)  # let start-up settle
        out["rss_idle_mib"] = _tree_rss(proc.pid)
        log(f"  service idle: measuring CPU over {idle_seconds:.0f} s")
        c0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_seconds)
        c1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
        out["cpu_idle_pct"] = 100.0 * (c1 - c0) / (t1 - t0)
        out["rss_idle_after_mib"] = _tree_rss(proc.pid)

        peak = [0.0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    peak[0] = max(peak[0], _tree_rss(proc.pid))
                stop.wait(0.05)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        try:
            for n in range(alerts):
                before = _report_ids(client)
                t_post = time.monotonic()
                r = client.post("/api/v1/alerts", content=json.dumps(alert_payload(n)),
                                headers={"Content-Type": "application/json"})
                t_acc = time.monotonic()
                if r.status_code >= 300:
                    out["errors"].append(f"POST {r.status_code}: {r.text[:200]}")
                    continue
                new: set[str] = set()
                deadline = t_post + window + 60
                while time.monotonic() < deadline:
                    new = _report_ids(client) - before
                    if new:
                        break
                    time.sleep(0.02)
                t_rep = time.monotonic()
                if not new:
                    out["errors"].append(f"no report 60 s after the alert; answer was {r.text[:200]}")
                    continue
                rep = client.get(f"/api/v1/reports/{sorted(new)[0]}").json()
                win = float(rep.get("window_seconds") or window)
                out["alert_to_report"].append(t_rep - t_post - window)  # minus the configured window
                out["windows"].append(win)
                tr = rep.get("tracer") or {}
                procs = rep.get("processes") or []
                out.setdefault("reports", []).append({
                    "backend": tr.get("backend"), "events": tr.get("events"), "errors": tr.get("errors") or [],
                    "top_major_faults": procs[0].get("major_faults") if procs else None,
                })
                log(f"  alert {n}: accepted in {t_acc - t_post:.3f}s, report after {t_rep - t_post:.3f}s "
                    f"(report's window_seconds {win:.2f}s, tracer {rep.get('tracer', {}).get('backend')})")
                time.sleep(0.5)
        finally:
            stop.set()
            w.join()
        out["rss_busy_mib"] = peak[0]
    return out
