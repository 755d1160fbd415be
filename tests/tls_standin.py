"""Real TLS servers on loopback playing the kubelet or the API server, with certificates made by the
openssl CLI (a CA, a server certificate for IPs 127.0.0.1 and ::1 signed by it, and an unrelated CA).

- `StandIn`: one path served to one bearer token (the kubelet's `GET /pods`), optionally slow
  (`delay` before answering), trickling (`trickle`: the whole answer, status line included, one
  byte every so many seconds), silent (`hang`: reads the request, never answers) or on `::1`.
- `ApiServer`: the few API-server routes the inspector uses, answering real API-server JSON
  (PodList, NodeList, events.k8s.io/v1 Event, Status errors) and evaluating label and field
  selectors the way the API server does for the fields used here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
        "subjectAltName=IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return Certs(d / "ca.crt", d / "wrong-ca.crt", d / "server.crt", d / "server.key")


# --- the API server's answers -----------------------------------------------------------------------


def status(code: int, reason: str, message: str) -> bytes:
    """A metav1.Status as the API server sends it with an error code."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


def _requirements(selector: str, what: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d` -> [(a, '=', b), (c, '!=', d)]; ValueError like the API server's 400."""
    out = []
    for part in filter(None, selector.split(",")):
        for op in ("!=", "==", "="):
            if op in part:
                key, value = part.split(op, 1)
                out.append((key.strip(), "=" if op == "==" else op, value.strip()))
                break
        else:
            raise ValueError(f"invalid {what} selector: {part!r}")
    return out


def _get(obj: dict[str, Any], dotted: str) -> str:
    cur: Any = obj
    for key in dotted.split("."):
        cur = (cur or {}).get(key)
    return "" if cur is None else str(cur)


def _selected(obj: dict[str, Any], reqs: list[tuple[str, str, str]], labels: bool) -> bool:
    for key, op, value in reqs:
        have = (obj.get("metadata", {}).get("labels") or {}).get(key, "") if labels else _get(obj, key)
        if (have == value) != (op == "="):
            return False
    return True


POD_FIELDS = {"spec.nodeName", "metadata.name", "metadata.namespace", "status.phase"}


class ApiServer:
    """Routes for a `StandIn(routes=...)`: pods (all namespaces and per namespace), nodes, and
    events.k8s.io/v1 Events. `forbid` holds paths answered 403 (RBAC)."""

    def __init__(self, pods: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None) -> None:
        self.pods = pods
        self.nodes = nodes or []
        self.events: list[dict[str, Any]] = []
        self.forbid: set[str] = set()
        self.fail_events: dict[str, int] = {}  # namespace -> how many 500s to answer first
        self.objects: dict[str, dict[str, Any]] = {}  # path -> one object answered to GET (a ReplicaSet, a Node)

    def _list(self, kind: str, items: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, bytes]:
        try:
            field_reqs = _requirements(query.get("fieldSelector", ""), "field")
            label_reqs = _requirements(query.get("labelSelector", ""), "label")
        except ValueError as exc:
            return 400, status(400, "BadRequest", str(exc))
        for key, _, _ in field_reqs:
            if key not in POD_FIELDS:
                return 400, status(400, "BadRequest", f'"{key}" is not a known field selector')
        found = [i for i in items if _selected(i, field_reqs, False) and _selected(i, label_reqs, True)]
        body = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "4242"}, "items": found}
        return 200, json.dumps(body).encode()

    def __call__(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path in self.forbid:
            return 403, status(403, "Forbidden", f'forbidden: cannot access "{path}"')
        parts = path.strip("/").split("/")
        if method == "GET" and path in self.objects:
            return 200, json.dumps(self.objects[path]).encode()
        if method == "GET" and path == "/api/v1/pods":
            return self._list("PodList", self.pods, query)
        if method == "GET" and len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            return self._list("PodList", [p for p in self.pods if _get(p, "metadata.namespace") == parts[3]], query)
        if method == "GET" and path == "/api/v1/nodes":
            return self._list("NodeList", self.nodes, query)
        if (method == "POST" and len(parts) == 6 and parts[:4] == ["apis", "events.k8s.io", "v1", "namespaces"]
                and parts[5] == "events"):
            ns = parts[4]
            if self.fail_events.get(ns, 0) > 0:
                self.fail_events[ns] -= 1
                return 500, status(500, "InternalError", "etcdserver: request timed out")
            event = json.loads(body)
            missing = [k for k in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
                       if not event.get(k)]
            if event.get("apiVersion") != "events.k8s.io/v1" or missing:
                return 422, status(422, "Invalid", f"Event is invalid: missing {missing}")
            meta = event.setdefault("metadata", {})
            meta.setdefault("name", meta.get("generateName", "ev-") + uuid.uuid4().hex[:5])
            meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="4243")
            self.events.append(event)
            return 201, json.dumps(event).encode()
        return 404, status(404, "NotFound", "the server could not find the requested resource")


# --- the stand-ins ----------------------------------------------------------------------------------


Routes = Callable[[str, str, dict[str, str], bytes], tuple[int, bytes]]


@dataclass
class StandIn:
    """A TLS server on host:<free port>: serves `body` at `path` to `token` only, or asks `routes`
    (still with the token checked)."""

    path: str
    token: str
    body: bytes = b""
    delay: float = 0.0
    trickle: float = 0.0
    hang: bool = False
    host: str = "127.0.0.1"
    routes: Routes | None = None
    requests: list[str] = field(default_factory=list)
    port: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


@pytest.fixture
def serve(certs: Certs) -> Iterator[Callable[[StandIn], StandIn]]:
    servers: list[tuple[ThreadingHTTPServer, threading.Thread, StandIn]] = []

    def start(stand: StandIn) -> StandIn:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand.requests.append(self.path if method == "GET" else f"{method} {self.path}")
                if stand.hang:
                    stand.stopped.wait(120)
                    self.close_connection = True
                    return
                if stand.delay:
                    time.sleep(stand.delay)
                url = urlsplit(self.path)
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or token != stand.token:  # the scheme is case-insensitive
                    self._send(401, status(401, "Unauthorized", "Unauthorized"))
                elif stand.routes is not None:
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    self._send(*stand.routes(method, url.path, query, body))
                elif url.path != stand.path:
                    self._send(404, status(404, "NotFound", "not found"))
                else:
                    self._send(200, stand.body)

            def _send(self, code: int, body: bytes) -> None:
                if stand.trickle:
                    self._trickle(code, body)
                    return
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may have given up (timeout and size tests).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.wfile.write(body)

            def _trickle(self, code: int, body: bytes) -> None:
                head = (f"HTTP/1.1 {code} OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                self.close_connection = True
                for i, byte in enumerate(head + body):
                    if stand.stopped.wait(stand.trickle if i else 0):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except (OSError, ssl.SSLError):
                        return  # the client gave up: what the test wants

            def log_message(self, format: str, *args: object) -> None:
                pass

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in stand.host else socket.AF_INET

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
        server = TLSServer((stand.host, 0), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        stand.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread, stand))
        return stand

    yield start
    for server, thread, stand in servers:
        stand.stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
