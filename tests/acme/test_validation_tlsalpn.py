"""tls-alpn-01 (RFC 8737, RFC 8738) against a real pyOpenSSL server on loopback."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import select
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from OpenSSL import SSL

from ca_service.acme.validation import (
    Identifier,
    ValidationConfig,
    ValidationFailed,
    validate,
    validate_tlsalpn01,
)

from .dns_server import LoopbackDNS

KEY_AUTH = "token-xyz.thumbprint-abc"
ACME_ID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
NAME = Identifier("dns", "a.example.test")


def _der_octet_string(data: bytes) -> bytes:
    assert len(data) < 128
    return bytes([0x04, len(data)]) + data


def make_cert(
    sans: list[x509.GeneralName],
    *,
    digest: bytes | None = None,
    critical: bool = True,
    with_extension: bool = True,
    raw_san: bytes | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed acme-tls/1 certificate, correct by default, each part breakable."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn-01")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if raw_san is not None:  # a subjectAltName of arbitrary (possibly broken) DER
        san_oid = x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        builder = builder.add_extension(x509.UnrecognizedExtension(san_oid, raw_san), False)
    elif sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if with_extension:
        value = digest if digest is not None else hashlib.sha256(KEY_AUTH.encode()).digest()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ACME_ID, _der_octet_string(value)), critical=critical
        )
    return builder.sign(key, hashes.SHA256()), key


@dataclass
class ALPNServer:
    """A TLS server that answers one handshake per connection, recording SNI and offered ALPN."""

    host: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    # What the ALPN callback answers: "acme" selects acme-tls/1, "decline" selects nothing (the
    # handshake goes on without ALPN), "other" selects a protocol the client did not offer.
    select: str = "acme"
    alpn: bool = True
    server_names: list[bytes | None] = field(default_factory=list)
    offered: list[list[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((self.host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_tlsext_servername_callback(
            lambda conn: self.server_names.append(conn.get_servername())
        )
        if self.alpn:

            def choose(_conn: SSL.Connection, protos: list[bytes]) -> bytes:
                self.offered.append(list(protos))
                if self.select == "acme" and b"acme-tls/1" in protos:
                    return b"acme-tls/1"
                if self.select == "decline":
                    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]
                return b"http/1.1"

            ctx.set_alpn_select_callback(choose)
        return ctx

    def _serve(self) -> None:
        ctx = self._context()
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with raw:
                raw.settimeout(0.05)
                conn = SSL.Connection(ctx, raw)
                conn.set_accept_state()
                for _ in range(100):  # at most ~5 s per connection
                    try:
                        conn.do_handshake()
                        break
                    except SSL.WantReadError:
                        select.select([raw], [], [], 0.05)
                    except (SSL.Error, OSError):
                        break
                with_ignore(conn.shutdown)

    def __enter__(self) -> ALPNServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def with_ignore(call: Callable[[], object]) -> None:
    with contextlib.suppress(SSL.Error, OSError):
        call()


def _config(dns: LoopbackDNS | None, port: int, **kw: object) -> ValidationConfig:
    base: dict[str, object] = {
        "tlsalpn01_port": port,
        "resolver": dns.resolver if dns else ("127.0.0.1", 9),
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


@pytest.fixture
def serve() -> Iterator[Callable[..., ALPNServer]]:
    started: list[ALPNServer] = []

    def start(
        sans: list[x509.GeneralName] | None = None, host: str = "127.0.0.1", **kw: object
    ) -> ALPNServer:
        cert_kw = {
            k: kw.pop(k) for k in ("digest", "critical", "with_extension", "raw_san") if k in kw
        }
        cert, key = make_cert(
            [x509.DNSName("a.example.test")] if sans is None else sans,
            **cert_kw,  # type: ignore[arg-type]
        )
        server = ALPNServer(host, cert, key, **kw)  # type: ignore[arg-type]
        started.append(server.__enter__())
        return server

    yield start
    for server in started:
        server.__exit__()


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_tlsalpn01_passes_with_sni_and_only_acme_tls(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve()
    validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port))
    assert server.server_names == [b"a.example.test"]
    assert server.offered == [[b"acme-tls/1"]]


def test_tlsalpn01_through_validate_checks_caa(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve()
    config = _config(loopback_dns, server.port)
    validate("tls-alpn-01", NAME, "", KEY_AUTH, wildcard=False, config=config)
    loopback_dns.set("a.example.test", "CAA", ['0 issue "other.example"'])
    exc = _fails(lambda: validate("tls-alpn-01", NAME, "", KEY_AUTH, wildcard=False, config=config))
    assert exc.acme_type == "caa"


def test_tlsalpn01_san_case_does_not_matter(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve([x509.DNSName("A.Example.TEST")])
    validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port))


def test_tlsalpn01_server_without_alpn_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve(alpn=False)
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "tls" and "acme-tls/1" in exc.detail


@pytest.mark.parametrize("select", ["decline", "other"])
def test_tlsalpn01_server_not_selecting_acme_tls_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer], select: str
) -> None:
    server = serve(select=select)
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "tls"
    assert server.offered == [[b"acme-tls/1"]]


def test_tlsalpn01_wrong_digest_is_unauthorized(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve(digest=hashlib.sha256(b"another key authorization").digest())
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "SHA-256 digest" in exc.detail


def test_tlsalpn01_extension_not_critical_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve(critical=False)
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "not critical" in exc.detail


def test_tlsalpn01_missing_extension_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve(with_extension=False)
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "no acmeIdentifier" in exc.detail


def test_tlsalpn01_two_sans_fail(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve([x509.DNSName("a.example.test"), x509.DNSName("b.example.test")])
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "2 subjectAltNames" in exc.detail


@pytest.mark.parametrize(
    "san",
    [
        x509.DNSName("b.example.test"),
        x509.DNSName("sub.a.example.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ],
)
def test_tlsalpn01_wrong_san_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer], san: x509.GeneralName
) -> None:
    server = serve([san])
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "is not a.example.test" in exc.detail


def test_tlsalpn01_no_san_fails(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve([])
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "no subjectAltName" in exc.detail


def test_tlsalpn01_unparsable_certificate_fails_cleanly(
    loopback_dns: LoopbackDNS, serve: Callable[..., ALPNServer]
) -> None:
    server = serve(raw_san=b"\x30\x03\x82\x05ab")  # a dNSName whose length overruns
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, server.port)))
    assert exc.acme_type == "unauthorized" and "malformed" in exc.detail


def test_tlsalpn01_connection_refused(loopback_dns: LoopbackDNS) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, _config(loopback_dns, port)))
    assert exc.acme_type == "connection" and "connection refused" in exc.detail


def test_tlsalpn01_silent_server_times_out(loopback_dns: LoopbackDNS) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        config = _config(loopback_dns, silent.getsockname()[1], timeout_seconds=0.3)
        exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, config))
    assert exc.acme_type == "connection" and "timed out" in exc.detail


def test_tlsalpn01_plain_tcp_peer_is_a_tls_failure(loopback_dns: LoopbackDNS) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        config = _config(loopback_dns, listener.getsockname()[1])
        exc = _fails(lambda: validate_tlsalpn01(NAME, KEY_AUTH, config))
        thread.join(timeout=5)
    assert exc.acme_type == "tls"


def test_tlsalpn01_ipv4_identifier(serve: Callable[..., ALPNServer]) -> None:
    server = serve([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    ident = Identifier("ip", "127.0.0.1")
    validate_tlsalpn01(ident, KEY_AUTH, _config(None, server.port))
    # RFC 8738 section 6: SNI carries the reverse-DNS name of the address.
    assert server.server_names == [b"1.0.0.127.in-addr.arpa"]
    # Through validate(): no CAA for an IP (the resolver points at nothing and is not used).
    validate("tls-alpn-01", ident, "", KEY_AUTH, wildcard=False, config=_config(None, server.port))


def test_tlsalpn01_ip_identifier_needs_an_ip_san(serve: Callable[..., ALPNServer]) -> None:
    server = serve([x509.DNSName("127.0.0.1")])
    ident = Identifier("ip", "127.0.0.1")
    exc = _fails(lambda: validate_tlsalpn01(ident, KEY_AUTH, _config(None, server.port)))
    assert exc.acme_type == "unauthorized"


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
def test_tlsalpn01_ipv6_identifier(serve: Callable[..., ALPNServer]) -> None:
    server = serve([x509.IPAddress(ipaddress.ip_address("::1"))], host="::1")
    validate_tlsalpn01(Identifier("ip", "::1"), KEY_AUTH, _config(None, server.port))
    assert server.server_names == [b"1." + b"0." * 31 + b"ip6.arpa"]
