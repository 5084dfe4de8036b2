"""Loopback peers for the client's tests: a tiny CA, and an HTTP(S) server whose answers a
test chooses. Fakes stand only where the peer is not ours to run (GitHub's token endpoint) or
where the test needs a server that misbehaves (answers from another CA, 503s, dropped
connections); everything that works is tested against the real `ca-service serve`."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TinyCA:
    """A root that signs leaves directly: enough to stand in for a ca-service's answers."""

    def __init__(self, cn: str = "Fake Root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        public_key: Any,
        names: list[x509.GeneralName],
        *,
        days: int = 10,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_name("leaf"))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_from_csr(self, csr_pem: str) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return self.issue(csr.public_key(), list(san))

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """A TLS server context for 127.0.0.1 whose certificate this CA signed."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.issue(key.public_key(), [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        path = directory / f"server-{cert.serial_number:x}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(path)
        return context


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# What a route answers: status, headers, body; or None to drop the connection unanswered.
Reply = tuple[int, dict[str, str], bytes] | None
Route = Callable[[Seen], Reply]


@dataclass
class FakeServer:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)


def json_reply(status: int, body: Any, **headers: str) -> Reply:
    kind = "application/problem+json" if status >= 400 else "application/json"
    return status, {"Content-Type": kind, **headers}, json.dumps(body).encode()


@contextmanager
def serve(route: Route, context: ssl.SSLContext | None = None) -> Iterator[FakeServer]:
    """Serve ``route`` on 127.0.0.1 (HTTPS with ``context``) in a thread, until the block ends."""
    seen: list[Seen] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Seen(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            seen.append(request)
            reply = route(request)
            if reply is None:
                self.close_connection = True
                return
            status, headers, data = reply
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        do_GET = _handle
        do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    scheme = "https" if context is not None else "http"
    try:
        yield FakeServer(f"{scheme}://127.0.0.1:{port}", port, seen)
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


def fake_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped string (unsigned): what the client must pass on untouched."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'not-a-signature')}"


def ca_service_route(ca: TinyCA, signer: TinyCA | None = None) -> Route:
    """/ca/root.pem and POST /api/v1/certificates like a ca-service, certificates signed by
    ``signer`` (default: ``ca`` itself; another CA makes an answer that must be refused)."""

    def route(req: Seen) -> Reply:
        if req.method == "GET" and req.path == "/ca/root.pem":
            return 200, {"Content-Type": "application/x-pem-file"}, ca.pem.encode()
        if req.method == "POST" and req.path == "/api/v1/certificates":
            body = json.loads(req.body)
            cert = (signer or ca).issue_from_csr(body["csr"])
            answer = {
                "serial": format(cert.serial_number, "x"),
                "certificate": pem(cert),
                "chain": "",
                "fullchain": pem(cert),
                "root": ca.pem,
            }
            return json_reply(201, answer)
        return json_reply(404, {"detail": "no such path", "status": 404})

    return route
