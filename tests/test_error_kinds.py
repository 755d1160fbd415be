"""What we expect is reported, our own bugs surface with their traceback: a bad setting in the CLI, an
unreachable kubelet or API server against a bug while asking them, a pod-directory bug in a recorder
sample. (Issue 19: broad excepts narrowed.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from tests.service_support import make_settings

# --- broad excepts narrowed: what we expect is reported, our own bugs surface with their traceback ------


def test_cli_reports_a_bad_setting_but_not_a_bug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    import app.cli

    monkeypatch.setenv("PFI_INVESTIGATION_SECONDS", "-1")
    assert app.cli.main(["probe", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert "bad setting" in err and "investigation_seconds" in err
    monkeypatch.delenv("PFI_INVESTIGATION_SECONDS")

    def broken() -> Settings:
        raise KeyError("a bug in a validator")

    monkeypatch.setattr(app.cli, "Settings", broken)
    with pytest.raises(KeyError, match="a bug in a validator"):  # was: "bad setting: 'a bug in a validator'", exit 2
        app.cli.main(["probe"])


def _kubelet_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, kubelet_url="https://127.0.0.1:1", apiserver_fallback=False)


def test_kubelet_unreachable_is_an_attribution_error(tmp_path: Path) -> None:
    from app.collectors.kubelet import PodDirectory

    index, attribution = PodDirectory(_kubelet_settings(tmp_path)).index()
    assert index is None and attribution.error is not None and "unreachable" in attribution.error


def test_a_bug_while_asking_the_kubelet_is_not_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3

    from app.collectors.kubelet import PodDirectory

    def bug(*_a: object, **_k: object) -> None:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(urllib3.PoolManager, "request", bug)
    with pytest.raises(TypeError, match="a bug of ours"):  # was: attribution "kubelet unreachable: TypeError"
        PodDirectory(_kubelet_settings(tmp_path)).index()


def test_a_bug_in_an_api_server_call_is_not_unreachable() -> None:
    from app.collectors.apiserver import ApiServer, ApiServerConfig, ApiServerError

    api = ApiServer(ApiServerConfig("PFI_APISERVER_URL", "https://127.0.0.1:1", None, None, None, 2.0))

    def refused(_client: object) -> object:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ApiServerError, match="unreachable: connection refused"):
        api._call("test", refused)

    def bug(_client: object) -> object:
        raise AttributeError("a bug of ours")

    with pytest.raises(AttributeError, match="a bug of ours"):  # was: ApiServerError "unreachable: AttributeError"
        api._call("test", bug)
    api.close()


def test_a_pod_directory_bug_fails_the_recorder_sample(tmp_path: Path) -> None:
    """It used to be one warning line without traceback per sample, with the pod left unnamed; now the
    sample raises and the service's recorder thread logs it with its traceback."""
    from app.collectors.flight_recorder import FaultRecorder
    from tests.test_recorder import V2_B, Node

    class BrokenPods:
        def pod_for(self, ref: object) -> None:
            raise ZeroDivisionError("a bug of ours")

    n = Node(tmp_path, 2)
    n.set(V2_B, 70)
    rec = FaultRecorder(n.cg, n.proc, interval=10, retention=60, pods=BrokenPods())
    with pytest.raises(ZeroDivisionError):
        rec.sample()
