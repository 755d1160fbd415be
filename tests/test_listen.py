"""PFI_LISTEN_ADDRESS in every form an operator writes, and the default `[::]:8080` really serving
IPv4 and IPv6 clients (an IPv6 pod IP, and the kubelet's probes on either family)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.parsers.address import AddressError, client_host, parse_listen_address
from app.service.web.listen import listen_socket
from tests.service_support import run_serve, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:8080", ("::", 8080)),
        ("[::]", ("::", 7)),
        ("::", ("::", 7)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":8080", ("::", 8080)),
        ("*:9000", ("::", 9000)),
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("localhost:8081", ("localhost", 8081)),
        ("pod-a.example:80", ("pod-a.example", 80)),
        ("127.0.0.1", ("127.0.0.1", 7)),
        ("[fd00:10:96::a]:8080", ("fd00:10:96::a", 8080)),
        ("[::1]:8081", ("::1", 8081)),
        ("fd00::1", ("fd00::1", 7)),
        ("[fe80::1%eth0]:8080", ("fe80::1%eth0", 8080)),
        ("  [::]:8080\n", ("::", 8080)),
    ],
)
def test_parse_listen_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address, 7) == expected


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "empty"),
        ("[::1", "without ']'"),
        ("[::1]8080", "expected ':port'"),
        ("[]:8080", "brackets hold an IPv6 address"),
        ("[10.0.0.1]:80", "brackets hold an IPv6 address"),
        ("0.0.0.0:http", "not a number"),
        ("0.0.0.0:70000", "not a number"),
        ("fd00::zz", "not an IPv6 address"),
        ("http://0.0.0.0:8080", "not an IPv6 address"),
        ("a b:80", "not a host name"),
    ],
)
def test_bad_listen_address_says_why(address: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        parse_listen_address(address, 8080)


def test_no_port_without_default() -> None:
    with pytest.raises(AddressError, match="has no port"):
        parse_listen_address("[::]")


def test_client_host() -> None:
    assert client_host("::") == "[::1]"
    assert client_host("0.0.0.0") == "127.0.0.1"
    assert client_host("fd00::1") == "[fd00::1]"
    assert client_host("127.0.0.1") == "127.0.0.1"


def test_default_is_dual_stack() -> None:
    assert Settings().web.listen_address == "[::]:8080"
    assert parse_listen_address(Settings().web.listen_address) == ("::", 8080)


def _need_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def _free_dual_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return int(s.getsockname()[1])


def test_listen_socket_dual_stack_accepts_both_families() -> None:
    _need_ipv6_loopback()
    sock = listen_socket("::", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        sock.setblocking(True)
        sock.settimeout(5)
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as c:
                c.settimeout(5)
                c.connect((host, port))
                conn, peer = sock.accept()
                conn.close()
                # An IPv4 client arrives as a v4-mapped address on the one IPv6 socket.
                assert peer[0] == ("::ffff:127.0.0.1" if family == socket.AF_INET else "::1")
    finally:
        sock.close()


def test_listen_socket_ipv4_only_refuses_ipv6() -> None:
    _need_ipv6_loopback()
    sock = listen_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as c, pytest.raises(ConnectionRefusedError):
            c.settimeout(5)
            c.connect(("::1", port))
    finally:
        sock.close()


@pytest.mark.servers
def test_serve_with_the_default_host_answers_on_127_0_0_1_and_ipv6_loopback(tmp_path: Path) -> None:
    """`serve` with PFI_LISTEN_ADDRESS=[::]:PORT (the default's form; a free port instead of 8080):
    /healthz and the token-checked API answer on both loopbacks."""
    _need_ipv6_loopback()
    port = _free_dual_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS=f"[::]:{port}",
        PFI_UI_LISTEN_ADDRESS="127.0.0.1:0",
        PFI_DATA_DIR=str(tmp_path / "data"),
        PFI_TRACER="procfs",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "from app.service.web.server import serve; serve()"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        urls = [f"http://127.0.0.1:{port}", f"http://[::1]:{port}"]

        def up() -> bool:
            try:
                return all(httpx.get(f"{u}/healthz", timeout=1).status_code == 200 for u in urls)
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: fail below with its stderr

        wait_for(up, timeout=30, what="serve() on [::]")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        token = (tmp_path / "data" / "webhook-token").read_text().strip()
        for u in urls:
            assert httpx.get(f"{u}/api/v1/investigations", timeout=5).status_code == 401
            r = httpx.get(f"{u}/api/v1/investigations", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            assert r.status_code == 200 and r.json()["investigations"] == []
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert f"API on http://[::]:{port}" in err


@pytest.mark.servers
def test_serve_bad_listen_address_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFI_")}
    env.update(
        PFI_LISTEN_ADDRESS="[::1:8080",
        PFI_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(ROOT),
    )
    out = run_serve(env)
    assert out.returncode == 1
    assert "cannot listen on PFI_LISTEN_ADDRESS=[::1:8080: listen address '[::1:8080': '[' without ']'" in out.stderr
    assert "Traceback" not in out.stderr
