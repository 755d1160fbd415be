"""One host:port parser (app.parsers.address) and what reads addresses with it: the report URL from any
UI listen address, the UI exposure warning. (Issue 19.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.parsers.address import AddressError, split_host_port
from tests.service_support import make_settings

# --- one host:port parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ui", "url"),
    [
        ("127.0.0.1:8081", "http://127.0.0.1:8081/reports/r1"),
        ("*:8081", "http://127.0.0.1:8081/reports/r1"),  # was http://*:8081
        (":9000", "http://127.0.0.1:9000/reports/r1"),
        ("[::]:8081", "http://127.0.0.1:8081/reports/r1"),
        ("0.0.0.0:8081", "http://127.0.0.1:8081/reports/r1"),
        ("localhost", "http://localhost:8081/reports/r1"),  # was http://127.0.0.1:localhost
        ("localhost:8090", "http://localhost:8090/reports/r1"),
        ("[::1]:8081", "http://[::1]:8081/reports/r1"),  # was http://[::1]:8081 only by luck
        ("[fd00::7]", "http://[fd00::7]:8081/reports/r1"),
        ("fd00::7", "http://[fd00::7]:8081/reports/r1"),  # was http://fd00::7:8081 (no brackets)
    ],
)
def test_report_url_from_any_ui_listen_address(tmp_path: Path, ui: str, url: str) -> None:
    from app.service.delivery.sinks import report_url

    assert report_url(make_settings(tmp_path, ui_listen_address=ui, public_url=None).web, "r1") == url


@pytest.mark.parametrize(
    ("ui", "warns"),
    [("127.0.0.1:8081", False), ("localhost", False), ("[::1]", False), ("localhost:8081", False),
     ("*:8081", True), ("[::]:8081", True), ("10.0.0.5:8081", True), ("fd00::7", True)],
)
def test_ui_exposure_warning_reads_the_address_like_serve(tmp_path: Path, ui: str, warns: bool) -> None:
    """`localhost` without a port is loopback (it warned before: the port-less address lost its host)."""
    from app.service.ui.guard import allowed_ui_hosts, ui_exposure_warning

    assert (ui_exposure_warning(make_settings(tmp_path, ui_listen_address=ui).web) is not None) == warns
    assert "*" not in allowed_ui_hosts(make_settings(tmp_path, ui_listen_address=ui).web)


@pytest.mark.parametrize(
    ("text", "parts"),
    [("10.0.3.7:9100", ("10.0.3.7", "9100")), ("[fd00::1]:9100", ("fd00::1", "9100")), ("[fd00::1]", ("fd00::1", None)),
     ("fd00::1", ("fd00::1", None)), ("node-a", ("node-a", None)), (":8080", ("", "8080")), ("*:8081", ("*", "8081")),
     (" Node-A:1 ", ("Node-A", "1"))],
)
def test_split_host_port(text: str, parts: tuple[str, str | None]) -> None:
    assert split_host_port(text) == parts


@pytest.mark.parametrize("text", ["[fd00::1", "[fd00::1]9100", "[::1]x"])
def test_split_host_port_refuses_broken_brackets(text: str) -> None:
    with pytest.raises(AddressError):
        split_host_port(text)
