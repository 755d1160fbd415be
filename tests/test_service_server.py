"""serve(): the real process, with no settings but ports and a data dir; real engine (procfs
tracer, short window); SIGTERM while an investigation runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service_support import bind_loopback, free_port, run_serve, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.servers
def test_serve_first_try_then_sigterm_mid_investigation(tmp_path: Path) -> None:
    api, ui = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{api}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{ui}",
        PFI_TRACER="procfs",
        PFI_INVESTIGATION_SECONDS="30",
        PYTHONPATH=str(ROOT),
    )
    if os.geteuid() == 0:  # root's default is /var/lib/pagefault-inspector, not the working directory
        env["PFI_DATA_DIR"] = str(tmp_path / ".pfi-data")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from app.service.web.server import serve; serve()"],
        cwd=tmp_path,  # a user's default data dir ./.pfi-data lands here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{api}"
        wait_for(lambda: _ok(f"{base}/healthz"), timeout=30, what="serve() up")
        token_file = tmp_path / ".pfi-data" / "webhook-token"
        token = token_file.read_text().strip()
        assert (token_file.stat().st_mode & 0o777) == 0o600
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=10) as c:
            # The hostname is the node name: an alert naming it is for this node.
            node = c.get(f"{base}/api/v1/investigations", headers=auth).json()["node"]
            assert node == os.uname().nodename
            body = {
                "version": "4",
                "alerts": [
                    {"status": "firing", "labels": {"alertname": "NodeMemoryMajorPagesFaults", "node": node}}
                ],
            }
            acc = c.post(f"{base}/api/v1/alerts", json=body, headers=auth).json()["accepted"][0]
            wait_for(
                lambda: (
                    c.get(f"{base}/api/v1/investigations", headers=auth).json()["investigations"][0]["state"]
                    == "running"
                ),
                what="running",
            )
            page = c.get(f"http://127.0.0.1:{ui}/reports/{acc['id']}")
            assert page.status_code == 200 and "<html" in page.text.lower()
            time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    # Printed once: the token and a ready-to-paste curl line.
    assert token in err
    assert re.search(r"curl -sS -X POST -H 'Authorization: Bearer \S+'", err)
    assert "SIGTERM: shutting down" in err
    # The cancelled report was written before exit.
    import sqlite3

    db = sqlite3.connect(tmp_path / ".pfi-data" / "reports.sqlite3")
    rows = db.execute("SELECT id, status FROM reports").fetchall()
    db.close()
    assert rows == [(acc["id"], "cancelled")]


@pytest.mark.servers
def test_serve_exits_nonzero_when_the_port_is_taken(tmp_path: Path) -> None:
    busy = bind_loopback()
    busy.listen()
    port = busy.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_DATA_DIR=str(tmp_path / "d"),
        PYTHONPATH=str(ROOT),
    )
    try:
        out = run_serve(env)
    finally:
        busy.close()
    assert out.returncode != 0
    assert "address already in use" in out.stderr.lower()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
