"""Run `pagefault-inspector serve` as a user would: a subprocess configured by PFI_ variables."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.stack import Proc, free_port, http_get, start_process, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]


def service_argv() -> list[str]:
    exe = Path(sys.executable).with_name("pagefault-inspector")
    if exe.exists():
        return [str(exe), "serve"]
    return [sys.executable, "-m", "app.cli", "serve"]


def service_missing() -> str | None:
    """Why the service cannot be started from this checkout yet, or None."""
    for rel in ("app/service/web/server.py", "app/investigation/engine.py"):
        if not (REPO / rel).exists():
            return f"{rel} does not exist yet"
    return None


@dataclass
class Service:
    proc: Proc
    url: str
    ui_url: str
    token: str
    data_dir: Path

    def tail(self, n: int = 60) -> str:
        return f"--- pagefault-inspector serve (alive={self.proc.alive()}) ---\n{self.proc.tail(n)}"


@contextlib.contextmanager
def run_service(
    workdir: Path, token: str, env: dict[str, str], *, port: int | None = None, startup_timeout: float = 30.0
) -> Iterator[Service]:
    """The service on 127.0.0.1:<port> (API and webhook) and another free port (the pages)."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port, ui_port = port or free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PFI_")},
        "PFI_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "PFI_UI_LISTEN_ADDRESS": f"127.0.0.1:{ui_port}",
        "PFI_WEBHOOK_TOKEN_FILE": str(token_file),
        "PFI_DATA_DIR": str(workdir / "data"),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    proc = start_process("pagefault-inspector", service_argv(), workdir, env=full_env)
    svc = Service(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", token, workdir / "data")
    try:

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"the service exited with {proc.popen.returncode}:\n{proc.tail()}")
            return http_get(f"{svc.url}/healthz", timeout=2)[0] == 200

        wait_for("the service's /healthz", up, startup_timeout, 0.3, svc.tail)
        yield svc
    finally:
        stop_process(proc, grace=10)
