"""http-01 validation and the dispatcher (retries, refused combinations) on real loopback servers.

Each test runs a real HTTP server on 127.0.0.1 (or ::1) and resolves names through a real loopback
DNS server; nothing of the network is mocked.
"""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.acme.validation import (
    Identifier,
    ValidationConfig,
    ValidationFailed,
    validate,
    validate_http01,
)

from .dns_server import LoopbackDNS

TOKEN = "tok_en-123"
KEY_AUTH = f"{TOKEN}.thumbprint-abc"
PATH = f"/.well-known/acme-challenge/{TOKEN}"
NAME = Identifier("dns", "a.example.test")

Reply = tuple[int, dict[str, str], bytes]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ChallengeHTTPServer

    def do_GET(self) -> None:
        self.server.record(self.path, self.headers.get("Host"))
        route = self.server.routes.get(self.path)
        status, headers, body = route() if route else (404, {}, b"not found")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ChallengeHTTPServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server whose answers are callables per path, counting its hits."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.routes: dict[str, Callable[[], Reply]] = {}
        self.hits: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def record(self, path: str, host: str | None) -> None:
        with self._lock:
            self.hits.append((path, host))

    def serve(self, path: str, status: int, body: bytes = b"", **headers: str) -> None:
        self.routes[path] = lambda: (status, dict(headers), body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.serve(path, status, b"", Location=location)


def _start(server: ChallengeHTTPServer) -> ChallengeHTTPServer:
    server.thread.start()
    return server


@pytest.fixture
def http_server() -> Iterator[ChallengeHTTPServer]:
    server = _start(ChallengeHTTPServer())
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _config(dns: LoopbackDNS, http_port: int, **kw: object) -> ValidationConfig:
    base: dict[str, object] = {
        "http01_port": http_port,
        "tlsalpn01_port": 1,  # nothing listens: redirects to it are allowed, never reached
        "resolver": dns.resolver,
        "caa_identities": ("ca.example.test",),
        "timeout_seconds": 0.5,
        "attempts": 1,
        "retry_delay_seconds": 0.0,
    }
    base.update(kw)
    return ValidationConfig(**base)  # type: ignore[arg-type]


def _fails(call: Callable[[], None]) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        call()
    return info.value


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- http-01 -----------------------------------------------------------------------------------


def test_http01_passes_and_sends_the_identifier_as_host(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, KEY_AUTH.encode() + b"\r\n \n")  # trailing whitespace is allowed
    validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    assert http_server.hits == [(PATH, "a.example.test")]


def test_http01_connects_to_the_address_our_resolver_gives(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    # The name exists only in our DNS server: the system resolver would not find it at all.
    loopback_dns.set("only-here.example.test", "A", ["127.0.0.1"])
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    ident = Identifier("dns", "only-here.example.test")
    validate_http01(ident, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    # Pointing the name elsewhere makes the same validation fail: the resolver decides.
    loopback_dns.set("only-here.example.test", "A", ["127.0.0.2"])
    http_server.hits.clear()
    exc = _fails(
        lambda: validate_http01(ident, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "connection" and http_server.hits == []


def test_http01_404_is_an_incorrect_response(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "incorrectResponse"
    assert exc.detail == (
        f"http-01: GET http://a.example.test:{http_server.port}{PATH} returned 404"
    )


def test_http01_wrong_body_is_unauthorized(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, b"someone-else.thumbprint")
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "unauthorized" and "not the key authorization" in exc.detail


def test_http01_body_with_leading_whitespace_is_not_accepted(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, b" " + KEY_AUTH.encode())
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "unauthorized"


def test_http01_body_too_large(loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer) -> None:
    # The key authorization followed by whitespace past the limit: only the size can refuse it.
    http_server.serve(PATH, 200, KEY_AUTH.encode() + b" " * 200)
    config = _config(loopback_dns, http_server.port, max_body_bytes=100)
    exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, config))
    assert exc.acme_type == "incorrectResponse" and "more than 100 bytes" in exc.detail
    # Exactly at the limit passes.
    http_server.serve(PATH, 200, KEY_AUTH.encode().ljust(100))
    validate_http01(NAME, TOKEN, KEY_AUTH, config)


def test_http01_connection_refused(loopback_dns: LoopbackDNS) -> None:
    port = _free_port()
    exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, port)))
    assert exc.acme_type == "connection" and "connection refused" in exc.detail


def test_http01_name_without_address_is_a_dns_failure(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json") as dns_server:  # no default A: unknown names NXDOMAIN
        exc = _fails(
            lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(dns_server, _free_port()))
        )
    assert exc.acme_type == "dns" and "no A or AAAA record for a.example.test" in exc.detail


def test_http01_follows_a_redirect_on_the_same_port(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    port = http_server.port
    http_server.redirect(PATH, f"http://b.example.test:{port}/moved")
    http_server.redirect("/moved", "/final", status=307)  # relative Location
    http_server.serve("/final", 200, KEY_AUTH.encode())
    validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, port))
    # Each hop carries its own Host: the redirect target's, not the identifier.
    assert http_server.hits == [
        (PATH, "a.example.test"),
        ("/moved", f"b.example.test:{port}"),
        ("/final", f"b.example.test:{port}"),
    ]


def test_http01_refuses_a_redirect_to_another_port(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    other = _start(ChallengeHTTPServer())
    try:
        other.serve("/x", 200, KEY_AUTH.encode())
        http_server.redirect(PATH, f"http://a.example.test:{other.port}/x")
        exc = _fails(
            lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
        )
        assert exc.acme_type == "connection"
        assert f"to port {other.port}: only ports" in exc.detail
        assert other.hits == []  # never contacted
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.parametrize(
    "location",
    ["ftp://a.example.test/x", "file:///etc/passwd", "gopher://a.example.test:80/x"],
)
def test_http01_refuses_a_redirect_to_another_scheme(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer, location: str
) -> None:
    http_server.redirect(PATH, location)
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "connection" and "only http and https" in exc.detail


def test_http01_redirect_chain_is_bounded(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    # PATH -> /r1 -> ... -> /r6 -> answer: six redirects, one more than allowed.
    http_server.redirect(PATH, "/r1")
    for i in range(1, 6):
        http_server.redirect(f"/r{i}", f"/r{i + 1}")
    http_server.serve("/r6", 200, KEY_AUTH.encode())
    config = _config(loopback_dns, http_server.port, max_redirects=5)
    exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, config))
    assert exc.acme_type == "connection" and "more than 5 redirects" in exc.detail
    paths = [path for path, _host in http_server.hits]
    assert paths == [PATH, "/r1", "/r2", "/r3", "/r4", "/r5"]  # /r6 never fetched
    # Five redirects are fine.
    http_server.redirect(PATH, "/r2")
    http_server.hits.clear()
    validate_http01(NAME, TOKEN, KEY_AUTH, config)
    assert len(http_server.hits) == 6


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.1:{port}/x", "not IP addresses"),
        ("http://[::1]:{port}/x", "not IP addresses"),
        ("http://a.example.test.well-known/acme-challenge/x", "ends in .well-known"),
        ("http://bad_host!.example.test:{port}/x", "not a valid DNS name"),
        ("http://user:pw@a.example.test:{port}/x", "credentials"),
        ("http://a.example.test:{port}/" + "p" * 2001, "path is too long"),
        ("http://a.example.test:99999/x", "invalid URL"),
    ],
)
def test_http01_redirect_rules(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer, location: str, reason: str
) -> None:
    http_server.redirect(PATH, location.format(port=http_server.port))
    http_server.serve("/x", 200, KEY_AUTH.encode())
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "connection" and reason in exc.detail
    assert len(http_server.hits) == 1  # the target was never fetched
    assert len(exc.detail) <= 400


def test_http01_ip_identifier_may_redirect_to_its_own_address(
    http_server: ChallengeHTTPServer,
) -> None:
    http_server.redirect(PATH, f"http://127.0.0.1:{http_server.port}/x")
    http_server.serve("/x", 200, KEY_AUTH.encode())
    config = ValidationConfig(
        http01_port=http_server.port, resolver=("127.0.0.1", 9), timeout_seconds=0.5
    )
    validate_http01(Identifier("ip", "127.0.0.1"), TOKEN, KEY_AUTH, config)
    assert [p for p, _ in http_server.hits] == [PATH, "/x"]


@pytest.mark.parametrize("status", [303, 300, 304])
def test_http01_only_301_302_307_308_are_followed(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer, status: int
) -> None:
    http_server.redirect(PATH, "/x", status=status)
    http_server.serve("/x", 200, KEY_AUTH.encode())
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "connection" and f"returned {status}" in exc.detail
    assert len(http_server.hits) == 1


def test_http01_redirect_loop_is_refused(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.redirect(PATH, "/a")
    http_server.redirect("/a", PATH, status=301)
    exc = _fails(
        lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    )
    assert exc.acme_type == "connection" and "redirect loop" in exc.detail
    assert len(http_server.hits) == 2


def test_failure_details_are_one_bounded_printable_line() -> None:
    exc = ValidationFailed("connection", "a\r\nb\x00c" + "x" * 1000)
    assert exc.detail.startswith("a??b?c") and len(exc.detail) == 400
    assert exc.detail.isprintable() and str(exc) == exc.detail and exc.acme_type == "connection"


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "https.pem", tmp_path / "https.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_http01_follows_a_redirect_to_https_on_the_tls_port_without_verifying(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer, tmp_path: Path
) -> None:
    https = ChallengeHTTPServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path, "b.example.test"))  # self-signed: unverifiable
    https.socket = context.wrap_socket(https.socket, server_side=True)
    _start(https)
    try:
        https.serve("/secure", 200, KEY_AUTH.encode())
        http_server.redirect(PATH, f"https://b.example.test:{https.port}/secure")
        config = _config(loopback_dns, http_server.port, tlsalpn01_port=https.port)
        validate_http01(NAME, TOKEN, KEY_AUTH, config)
        assert https.hits == [("/secure", f"b.example.test:{https.port}")]
        # The same redirect with the TLS port configured elsewhere is refused.
        exc = _fails(
            lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
        )
        assert exc.acme_type == "connection" and f"port {https.port}" in exc.detail
    finally:
        https.shutdown()
        https.server_close()


def test_http01_slow_server_times_out(loopback_dns: LoopbackDNS) -> None:
    # A listener that accepts (the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        config = _config(loopback_dns, port, timeout_seconds=0.3)
        exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, config))
    assert exc.acme_type == "connection" and "timed out" in exc.detail


def test_http01_dripping_server_is_cut_off_by_one_deadline(loopback_dns: LoopbackDNS) -> None:
    # Each byte comes well within the per-read timeout; the whole answer would not.
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def drip() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    if stop.wait(0.05):
                        return
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        return

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        config = _config(loopback_dns, port, timeout_seconds=0.3)
        exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, config))
        stop.set()
        thread.join(timeout=5)
    assert exc.acme_type == "connection" and "timed out" in exc.detail


def test_http01_garbage_answer_is_a_connection_failure(loopback_dns: LoopbackDNS) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"this is not HTTP\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        exc = _fails(lambda: validate_http01(NAME, TOKEN, KEY_AUTH, _config(loopback_dns, port)))
        thread.join(timeout=5)
    assert exc.acme_type == "connection" and "\n" not in exc.detail


def test_http01_ip_identifier_ipv4(http_server: ChallengeHTTPServer) -> None:
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    # No resolver is needed for an IP identifier: point it at nothing to prove it is unused.
    config = ValidationConfig(
        http01_port=http_server.port, resolver=("127.0.0.1", 9), timeout_seconds=0.5
    )
    validate_http01(Identifier("ip", "127.0.0.1"), TOKEN, KEY_AUTH, config)
    assert http_server.hits == [(PATH, "127.0.0.1")]


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
def test_http01_ip_identifier_ipv6() -> None:
    server = _start(ChallengeHTTPServer("::1"))
    try:
        server.serve(PATH, 200, KEY_AUTH.encode())
        config = ValidationConfig(
            http01_port=server.port, resolver=("127.0.0.1", 9), timeout_seconds=0.5
        )
        validate_http01(Identifier("ip", "::1"), TOKEN, KEY_AUTH, config)
        assert server.hits == [(PATH, "[::1]")]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
def test_http01_tries_ipv6_then_falls_back_to_ipv4(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    # AAAA ::1 has nothing listening on the port; A 127.0.0.1 has the server.
    loopback_dns.set("dual.example.test", "AAAA", ["::1"])
    loopback_dns.set("dual.example.test", "A", ["127.0.0.1"])
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    ident = Identifier("dns", "dual.example.test")
    validate_http01(ident, TOKEN, KEY_AUTH, _config(loopback_dns, http_server.port))
    assert http_server.hits == [(PATH, "dual.example.test")]
    # An IPv6-only name reaches an IPv6-only server.
    v6 = _start(ChallengeHTTPServer("::1"))
    try:
        v6.serve(PATH, 200, KEY_AUTH.encode())
        loopback_dns.set("v6.example.test", "AAAA", ["::1"])
        ident6 = Identifier("dns", "v6.example.test")
        validate_http01(ident6, TOKEN, KEY_AUTH, _config(loopback_dns, v6.port))
        assert v6.hits == [(PATH, "v6.example.test")]
    finally:
        v6.shutdown()
        v6.server_close()


# --- identifiers and the dispatcher ------------------------------------------------------------


@pytest.mark.parametrize(
    "identifier",
    [
        Identifier("dns", "*.a.example.test"),
        Identifier("dns", "A.Example.Test"),
        Identifier("dns", "a.example.test."),
        Identifier("dns", "localhost"),
        Identifier("dns", "a..example.test"),
        Identifier("dns", "bad name.example.test"),
        Identifier("ip", "999.1.1.1"),
        Identifier("email", "a@example.test"),
    ],
)
def test_malformed_identifiers_are_rejected(identifier: Identifier) -> None:
    config = ValidationConfig(resolver=("127.0.0.1", 9), timeout_seconds=0.5)
    exc = _fails(
        lambda: validate("http-01", identifier, TOKEN, KEY_AUTH, wildcard=False, config=config)
    )
    assert exc.acme_type == "rejectedIdentifier"


def test_ip_identifier_by_dns01_is_rejected() -> None:
    config = ValidationConfig(resolver=("127.0.0.1", 9), timeout_seconds=0.5)
    exc = _fails(
        lambda: validate(
            "dns-01",
            Identifier("ip", "127.0.0.1"),
            TOKEN,
            KEY_AUTH,
            wildcard=False,
            config=config,
        )
    )
    assert exc.acme_type == "rejectedIdentifier" and "RFC 8738" in exc.detail


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_wildcard_by_anything_but_dns01_is_rejected(
    challenge: str, loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    config = _config(loopback_dns, http_server.port)
    exc = _fails(lambda: validate(challenge, NAME, TOKEN, KEY_AUTH, wildcard=True, config=config))
    assert exc.acme_type == "rejectedIdentifier" and http_server.hits == []


def test_unknown_challenge_type_is_rejected() -> None:
    config = ValidationConfig(resolver=("127.0.0.1", 9), timeout_seconds=0.5)
    exc = _fails(lambda: validate("http-02", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config))
    assert exc.acme_type == "rejectedIdentifier"


def test_validate_http01_passes_and_checks_caa(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    config = _config(loopback_dns, http_server.port)
    validate("http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config)
    # A CAA record naming another CA now refuses the same, otherwise valid, challenge.
    loopback_dns.set("example.test", "CAA", ['0 issue "other-ca.example"'])
    exc = _fails(lambda: validate("http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config))
    assert exc.acme_type == "caa" and "CAA at example.test" in exc.detail


def test_retry_passes_on_the_second_attempt(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    answers = iter([(404, {}, b"not yet"), (200, {}, KEY_AUTH.encode())])
    http_server.routes[PATH] = lambda: next(answers)
    sleeps: list[float] = []
    config = _config(loopback_dns, http_server.port, attempts=2, retry_delay_seconds=0.25)
    validate("http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config, sleep=sleeps.append)
    assert sleeps == [0.25]
    assert len(http_server.hits) == 2


def test_retries_are_bounded_and_raise_the_last_failure(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    statuses = iter([500, 503, 404, 200])
    http_server.routes[PATH] = lambda: (next(statuses), {}, b"")
    sleeps: list[float] = []
    config = _config(loopback_dns, http_server.port, attempts=3, retry_delay_seconds=1.5)
    exc = _fails(
        lambda: validate(
            "http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config, sleep=sleeps.append
        )
    )
    assert len(http_server.hits) == 3
    assert sleeps == [1.5, 1.5]
    assert exc.acme_type == "incorrectResponse" and exc.detail.endswith("returned 404")


def test_a_wrong_key_authorization_is_not_retried(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, b"wrong")
    sleeps: list[float] = []
    config = _config(loopback_dns, http_server.port, attempts=3)
    exc = _fails(
        lambda: validate(
            "http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config, sleep=sleeps.append
        )
    )
    assert exc.acme_type == "unauthorized"
    assert len(http_server.hits) == 1 and sleeps == []


def test_a_caa_refusal_is_not_retried(
    loopback_dns: LoopbackDNS, http_server: ChallengeHTTPServer
) -> None:
    http_server.serve(PATH, 200, KEY_AUTH.encode())
    loopback_dns.set("a.example.test", "CAA", ['0 issue ";"'])
    sleeps: list[float] = []
    config = _config(loopback_dns, http_server.port, attempts=3)
    exc = _fails(
        lambda: validate(
            "http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config, sleep=sleeps.append
        )
    )
    assert exc.acme_type == "caa" and len(http_server.hits) == 1 and sleeps == []


def test_connection_failures_are_retried(loopback_dns: LoopbackDNS) -> None:
    sleeps: list[float] = []
    config = _config(loopback_dns, _free_port(), attempts=3)
    exc = _fails(
        lambda: validate(
            "http-01", NAME, TOKEN, KEY_AUTH, wildcard=False, config=config, sleep=sleeps.append
        )
    )
    assert exc.acme_type == "connection" and len(sleeps) == 2
