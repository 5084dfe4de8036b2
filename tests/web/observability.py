"""Helpers of the observability tests (issue 14 items 4, 5, 7): reading /metrics with
prometheus_client's own parser, JSON log lines, OCSP requests, and real loopback webhook
receivers (http.server in a thread) that check the signature."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client.parser import text_string_to_metric_families

from tests.live import LiveServer


def scrape(
    live: LiveServer, token: str | None = None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics, parsed by prometheus_client: sample name -> [(labels, value)]."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    reply = live.request("GET", "/metrics", headers=headers)
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type == "text/plain"
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items())
    )


def json_lines(text: str, *, being_written: bool = False) -> list[dict[str, Any]]:
    """Every line of a log, each of which must be one JSON object.

    ``being_written``: the log of a server that is still answering, read while a worker may be
    in the middle of writing a line: text after the last newline is not a line yet and is left
    for the next read (CI run 15 failed on such a half-written access line). A log read after
    the server stopped is checked whole."""
    if being_written:
        text = text[: text.rfind("\n") + 1]
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(event, dict), line
        events.append(event)
    return events


def wait_for(condition: Callable[[], Any], what: str, seconds: float = 30.0) -> Any:
    """Poll ``condition`` (bounded in time) until it returns something true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def ocsp_request(cert_pem: str, issuer_pem: str, *, serial: int | None = None) -> bytes:
    """A DER OCSP request for the certificate, or (``serial``) for a serial of its issuer that
    the store does not hold."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    issuer = x509.load_pem_x509_certificates(issuer_pem.encode())[0]
    builder = ocsp.OCSPRequestBuilder()
    if serial is None:
        builder = builder.add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    else:
        real = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303
        builder = builder.add_certificate_by_hash(
            real.issuer_name_hash,
            real.issuer_key_hash,
            serial,
            hashes.SHA1(),  # noqa: S303
        )
    return builder.build().public_bytes(serialization.Encoding.DER)


def post_ocsp(live: LiveServer, der: bytes) -> ocsp.OCSPResponse:
    reply = live.request(
        "POST", "/ocsp", raw=der, headers={"Content-Type": "application/ocsp-request"}
    )
    assert reply.status == 200
    return ocsp.load_der_ocsp_response(reply.body)


# ---------------------------------------------------------------------------- webhook receivers


@dataclass
class Delivery:
    body: dict[str, Any]
    signature_ok: bool
    timestamp: int
    # What ``Receiver.inspect`` saw while the request was held (the store, say).
    seen: Any = None


@dataclass
class Receiver:
    """A loopback HTTP server that receives webhooks and checks each signature.

    ``fail_first``: answer 503 to the first attempts of each event. ``hang``: hold every
    request until ``release`` is set (bounded: at most ``hang_seconds``)."""

    secret: bytes
    fail_first: int = 0
    hang: bool = False
    hang_seconds: float = 60.0
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    blocked: int = 0  # requests being held right now
    inspect: Callable[[dict[str, Any]], Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                timestamp = self.headers.get("X-CA-Timestamp", "")
                expected = (
                    "sha256="
                    + hmac.new(
                        receiver.secret, timestamp.encode() + b"." + raw, hashlib.sha256
                    ).hexdigest()
                )
                ok = hmac.compare_digest(expected, self.headers.get("X-CA-Signature", ""))
                body = json.loads(raw)
                with receiver.lock:
                    tries = receiver.attempts.get(body["id"], 0) + 1
                    receiver.attempts[body["id"]] = tries
                    if receiver.hang:
                        receiver.blocked += 1
                if receiver.hang:
                    receiver.release.wait(receiver.hang_seconds)
                    with receiver.lock:
                        receiver.blocked -= 1
                seen = receiver.inspect(body) if receiver.inspect else None
                if tries <= receiver.fail_first:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.deliveries.append(Delivery(body, ok, int(timestamp or 0), seen))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self, kind: str, serial: str | None = None) -> list[Delivery]:
        with self.lock:
            return [
                d
                for d in self.deliveries
                if d.body["type"] == kind
                and (serial is None or d.body["certificate"]["serial"] == serial)
            ]
