"""The data directory is ours or refused (issue 23 item 5): it holds command lines and the webhook
token, so a directory another user owns, others may write into, or whose files are symlinks is
refused with one line naming the path and the fix; nothing of anyone else's is chmod-ed."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.service import report_store
from app.service.auth import load_token
from app.service.report_store import DB_NAME, ReportStore, data_dir_problem
from app.service.web import server
from tests.needs import require_marker
from tests.service_support import free_port, run_serve

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
PLANTED = "planted-token-0123456789abcdef"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _foreign_dir_with_token(tmp_path: Path) -> Path:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    (d / "webhook-token").write_text(PLANTED + "\n")
    os.chown(d / "webhook-token", NOBODY, NOBODY)
    os.chown(d, NOBODY, NOBODY)
    return d


@needs_root
def test_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    d = _foreign_dir_with_token(tmp_path)
    problem = data_dir_problem(d)
    assert problem is not None and str(d) in problem and f"uid {NOBODY}" in problem and "PFI_DATA_DIR" in problem
    assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (NOBODY, 0o700)  # left as it was


def test_a_directory_others_may_write_into_is_refused_not_chmodded(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    problem = data_dir_problem(d)
    assert problem is not None and "1777" in problem and f"chmod 0700 {d}" in problem
    assert d.stat().st_mode & 0o7777 == 0o1777


def test_a_symlinked_store_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o644)
    (d / DB_NAME).symlink_to(target)
    problem = data_dir_problem(d)
    assert problem is not None and f"{DB_NAME} is a symlink" in problem
    store = ReportStore(d)
    store.open()  # the store alone (tests, tools) does not chmod through the link either
    store.close()
    assert target.stat().st_mode & 0o777 == 0o644


def test_our_own_directory_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    d.chmod(0o755)  # readable by others but ours and not writable by them: tightened
    assert data_dir_problem(d) is None
    assert data_dir_problem(tmp_path / "new" / "data") is None
    assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o700


@needs_root
def test_root_without_pfi_data_dir_uses_the_fixed_default_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: root starts `serve` in a directory uid 65534 owns, holding ./.pfi-data with a
    planted token. The working directory is not used at all now."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    planted = _foreign_dir_with_token(cwd)
    planted.rename(cwd / ".pfi-data")
    os.chown(cwd, NOBODY, NOBODY)
    monkeypatch.chdir(cwd)
    fixed = tmp_path / "var-lib-pagefault-inspector"
    monkeypatch.setattr(server, "ROOT_DATA_DIR", fixed)
    monkeypatch.delenv("PFI_DATA_DIR", raising=False)
    settings = server._own_data_dir(Settings())
    assert Path(settings.store.data_dir) == fixed
    source = load_token(settings)
    assert source.token != PLANTED and source.path == fixed / "webhook-token"
    # and told explicitly to use that directory, it is refused
    with pytest.raises(SystemExit) as exit_:
        server._own_data_dir(Settings(data_dir=cwd / ".pfi-data"))
    assert exit_.value.code == 1
    assert Path("/var/lib/pagefault-inspector") == report_store.ROOT_DATA_DIR


@needs_root
@pytest.mark.servers
def test_serve_refuses_a_foreign_data_dir_in_one_line(tmp_path: Path) -> None:
    d = _foreign_dir_with_token(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_DATA_DIR=str(d),
        PYTHONPATH=str(ROOT),
    )
    done = run_serve(env)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(d) in lines[0] and "PFI_DATA_DIR" in lines[0] and "Traceback" not in done.stderr
    assert not (d / DB_NAME).exists()


def _no_file_growth() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # as a full disk: every write to a file fails


@pytest.mark.servers
def test_serve_on_a_full_disk_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The empty data dir cannot take the generated token (RLIMIT_FSIZE 0: writes fail with EFBIG, as
    they would with ENOSPC; Python ignores SIGXFSZ)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_UI_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        PFI_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(ROOT),
    )
    require_marker("servers", "`serve` in a subprocess")
    done = subprocess.run(
        [sys.executable, "-c", "from app.service.web.server import serve; serve()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_no_file_growth,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) <= 2, done.stderr[-2000:]
    assert "cannot get the webhook token" in lines[-1] and "File too large" in lines[-1], lines
