"""A real TLS server on 127.0.0.1 playing the kubelet or the API server, with certificates made by
the openssl CLI (a CA, a server certificate for IP 127.0.0.1 signed by it, and an unrelated CA)."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# --- certificates -----------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    wrong_ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "wrong-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                 "-subj", f"/CN=pfi-test-{name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return Certs(d / "ca.crt", d / "wrong-ca.crt", d / "server.crt", d / "server.key")


# --- the stand-ins ----------------------------------------------------------------------------------


@dataclass
class StandIn:
    """A TLS server on 127.0.0.1:<free port>: serves `body` at `path` to `token` only."""

    path: str
    token: str
    body: bytes
    delay: float = 0.0
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def serve(certs: Certs) -> Iterator[object]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(stand: StandIn) -> StandIn:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                stand.requests.append(self.path)
                if stand.delay:
                    time.sleep(stand.delay)
                if urlsplit(self.path).path != stand.path:
                    self._send(404, b'{"kind":"Status","code":404}')
                elif self.headers.get("Authorization") != f"Bearer {stand.token}":
                    self._send(401, b"Unauthorized")
                else:
                    self._send(200, stand.body)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have given up (timeout and size tests).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return  # a client that does not trust us (the wrong-CA test)
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.cert, certs.key)
        server = TLSServer(("127.0.0.1", 0), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        stand.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return stand

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
