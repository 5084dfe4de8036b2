"""Real TLS handshakes on loopback with certificates from ca-service and ca_service.tls contexts.

A pyOpenSSL server runs in a thread on 127.0.0.1 (bounded: a fixed number of connections or a
deadline, whichever comes first). Clients are built with ``client_context``; the server records
how each handshake ended, so a refusal is seen from both sides. One CA serves the whole module,
once per backend (SQLite, PostgreSQL): the handshake does not depend on the database, but the
certificates, revocations and CRLs the clients check are read back from the store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ca_service.core.facade import Core
from ca_service.domain import IssuedCertificate, RevocationReason
from ca_service.errors import BadRequest
from ca_service.tls import (
    HostnameMismatch,
    VerificationFailed,
    client_connection,
    client_context,
    connect,
    handshake,
    hostname_matches,
    server_context,
)
from ca_service.tls.contexts import TLS12_CIPHERS

from ..conftest import ADMIN, make_settings, new_ca, run
from ..helpers import LoopbackServer, legacy_client

NAME = "service.test"
IO_TIMEOUT = 5.0


# ---------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Outcome:
    """How one server-side connection ended."""

    ok: bool
    protocol: str | None = None
    cipher: str | None = None
    error: str | None = None


def ssl_error_text(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        return "; ".join(str(part[-1]) for part in exc.args[0] if part) or repr(exc)
    return f"{type(exc).__name__}: {exc}"


class TLSServer(LoopbackServer):
    """A one-thread TLS echo server: answers 'pong' to a line, records every handshake."""

    def __init__(
        self, ctx: SSL.Context, *, max_connections: int = 4, lifetime: float = 30.0
    ) -> None:
        super().__init__(max_connections=max_connections, lifetime=lifetime)
        self.ctx = ctx
        self.outcomes: list[Outcome] = []
        self._cond = threading.Condition()

    def __enter__(self) -> TLSServer:
        super().__enter__()
        return self

    def handle(self, sock: socket.socket) -> None:
        outcome = self._handle(sock)
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def _handle(self, sock: socket.socket) -> Outcome:
        sock.settimeout(IO_TIMEOUT)
        conn = SSL.Connection(self.ctx, sock)
        conn.set_accept_state()
        try:
            handshake(conn, sock, IO_TIMEOUT)
            outcome = Outcome(
                ok=True,
                protocol=conn.get_protocol_version_name(),
                cipher=conn.get_cipher_name(),
            )
            line = recv_line(conn, sock)
            if line == b"ping\n":
                conn.sendall(b"pong\n")
            return outcome
        except (SSL.Error, OSError) as exc:
            return Outcome(ok=False, error=ssl_error_text(exc))
        finally:
            sock.close()

    def wait(self, count: int, timeout: float = IO_TIMEOUT + 2) -> list[Outcome]:
        """The first ``count`` outcomes, once the server has recorded them."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.outcomes) >= count, timeout=timeout)
            assert len(self.outcomes) >= count, f"server saw only {self.outcomes}"
            return list(self.outcomes[:count])


def recv_line(
    conn: SSL.Connection, sock: socket.socket | SSL.Connection, limit: int = 1024
) -> bytes:
    """Read up to a newline, EOF or ``limit`` bytes, within IO_TIMEOUT."""
    deadline = time.monotonic() + IO_TIMEOUT
    data = b""
    while b"\n" not in data and len(data) < limit:
        try:
            chunk = conn.recv(limit)
        except SSL.WantReadError:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise TimeoutError("no data from the peer") from None
            continue
        except SSL.ZeroReturnError:
            break
        if not chunk:
            break
        data += chunk
    return data


def talk(ctx: SSL.Context, port: int, server_hostname: str = NAME) -> tuple[bytes, SSL.Connection]:
    """Handshake as a client, send 'ping', return the reply (and the connection to inspect)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        conn = client_connection(ctx, sock, server_hostname)
        handshake(conn, sock, IO_TIMEOUT)
        conn.sendall(b"ping\n")
        return recv_line(conn, sock), conn
    finally:
        sock.close()


# ---------------------------------------------------------------------------- CA and certs


def make_tls_ca(base: Path, db_url: str | None = None) -> Core:
    """A CA on ``db_url`` (SQLite in ``base`` by default, as for a stranger CA)."""
    return new_ca(make_settings(base, db_url or f"sqlite:///{base / 'ca.db'}"))


@pytest.fixture(scope="module")
def tls_ca(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[Core]:
    authority = make_tls_ca(tmp_path_factory.mktemp("tls-ca"), module_db_url)
    yield authority
    authority.db.dispose()


def root_pem(ca: Core) -> str:
    return ca.chain_pem()[-1]


def issue(
    ca: Core, *names: str, profile: str = "server", days: int | None = None
) -> IssuedCertificate:
    issued = ca.issue_with_new_key(
        ADMIN, common_name=names[0], names=names, profile=profile, validity_days=days
    )
    assert issued.private_key_pem is not None
    return issued


def serve(issued: IssuedCertificate, **kwargs: object) -> SSL.Context:
    assert issued.private_key_pem is not None
    return server_context(issued.fullchain_pem, issued.private_key_pem, **kwargs)  # type: ignore[arg-type]


def crl_der(ca: Core, authority: str | None = None) -> bytes:
    stored = ca.current_crl(authority)
    assert stored is not None
    return stored.der


# ---------------------------------------------------------------------------- tests


def test_verified_handshake_sends_the_chain_and_carries_data(
    tls_ca: Core,
) -> None:
    issued = issue(tls_ca, NAME)
    client = client_context(root_pem(tls_ca), crls=[crl_der(tls_ca)])
    with TLSServer(serve(issued), max_connections=1) as server:
        reply, conn = talk(client, server.port)
        [outcome] = server.wait(1)
    assert reply == b"pong\n"
    assert outcome.ok and outcome.protocol == "TLSv1.3"
    # The client trusted only the root, so the server must have sent the intermediate; the root
    # itself is left out.
    sent = conn.get_peer_cert_chain(as_cryptography=True) or []
    assert [c.serial_number for c in sent] == [
        x509.load_pem_x509_certificate(p.encode()).serial_number
        for p in (issued.certificate_pem, issued.chain_pem[0])
    ]
    verified = conn.get_verified_chain(as_cryptography=True) or []
    assert verified[-1].subject == verified[-1].issuer  # ends at the trusted root


def test_tls12_negotiates_only_ecdhe_aead(tls_ca: Core) -> None:
    issued = issue(tls_ca, NAME)
    client = client_context(root_pem(tls_ca))
    client.set_max_proto_version(SSL.TLS1_2_VERSION)
    cbc_only = client_context(root_pem(tls_ca))
    cbc_only.set_max_proto_version(SSL.TLS1_2_VERSION)
    cbc_only.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    with TLSServer(serve(issued), max_connections=2) as server:
        reply, _ = talk(client, server.port)
        with pytest.raises(SSL.Error):
            talk(cbc_only, server.port)
        first, second = server.wait(2)
    assert reply == b"pong\n"
    assert first.protocol == "TLSv1.2"
    assert first.cipher in TLS12_CIPHERS.decode().split(":")
    assert not second.ok and "no shared cipher" in (second.error or "")


def test_revoked_certificate_fails_a_crl_checking_client(tls_ca: Core) -> None:
    issued = issue(tls_ca, NAME)
    before = client_context(root_pem(tls_ca), crls=[crl_der(tls_ca)])
    with TLSServer(serve(issued), max_connections=4) as server:
        assert talk(before, server.port)[0] == b"pong\n"

        tls_ca.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
        after = client_context(root_pem(tls_ca), crls=[crl_der(tls_ca)])
        with pytest.raises(VerificationFailed) as refused:
            talk(after, server.port)

        # A context keeps the CRLs it was built with (the documented contract: build a new
        # context when a new CRL arrives), and without revocation checking the certificate is
        # still accepted: the new CRL is what made the difference above.
        assert talk(before, server.port)[0] == b"pong\n"
        assert talk(client_context(root_pem(tls_ca)), server.port)[0] == b"pong\n"
        outcomes = server.wait(4)
    assert refused.value.code == SSL.X509VerificationCodes.ERR_CERT_REVOKED
    assert refused.value.depth == 0
    assert outcomes[0].ok and outcomes[2].ok and outcomes[3].ok
    # The server was told why: the client sent a certificate_revoked alert.
    assert not outcomes[1].ok and "certificate revoked" in (outcomes[1].error or "")


def test_whole_chain_revocation_fails_closed_without_the_root_crl(
    tls_ca: Core,
) -> None:
    issued = issue(tls_ca, NAME)
    issuing_crl = crl_der(tls_ca)
    root_name = f"{issued.record.authority}-root"
    leaf_only = client_context(root_pem(tls_ca), crls=[issuing_crl], revocation="chain")
    full = client_context(
        root_pem(tls_ca), crls=[issuing_crl, crl_der(tls_ca, root_name)], revocation="chain"
    )
    with TLSServer(serve(issued), max_connections=2) as server:
        with pytest.raises(VerificationFailed) as missing:
            talk(leaf_only, server.port)
        assert talk(full, server.port)[0] == b"pong\n"
    assert missing.value.code == SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_CRL
    assert missing.value.depth == 1  # the intermediate, whose CRL is the root's


def test_certificate_for_another_name_fails(tls_ca: Core) -> None:
    issued = issue(tls_ca, "other.test")
    client = client_context(root_pem(tls_ca), crls=[crl_der(tls_ca)])
    with TLSServer(serve(issued), max_connections=2) as server:
        with pytest.raises(HostnameMismatch) as mismatch:
            talk(client, server.port, "service.test")
        # Same server, same client, the name the certificate carries: accepted.
        assert talk(client, server.port, "other.test")[0] == b"pong\n"
        refused, accepted = server.wait(2)
    assert "service.test" in str(mismatch.value)
    assert not refused.ok and accepted.ok


def test_ip_address_name_is_checked_without_sni(tls_ca: Core) -> None:
    by_ip = issue(tls_ca, "127.0.0.1")
    client = client_context(root_pem(tls_ca))
    with TLSServer(serve(by_ip), max_connections=2) as server:
        conn = connect(client, "127.0.0.1", server.port, timeout=IO_TIMEOUT)
        conn.settimeout(IO_TIMEOUT)  # Connection passes socket methods through
        conn.sendall(b"ping\n")
        assert recv_line(conn, conn) == b"pong\n"
        conn.close()
        with pytest.raises(HostnameMismatch):
            talk(client, server.port, "127.0.0.2")


def test_certificate_from_another_ca_fails(tls_ca: Core, tmp_path: Path) -> None:
    stranger = make_tls_ca(tmp_path)
    try:
        issued = issue(stranger, NAME)
    finally:
        stranger.db.dispose()
    client = client_context(root_pem(tls_ca))
    with (
        TLSServer(serve(issued), max_connections=1) as server,
        pytest.raises(VerificationFailed) as refused,
    ):
        talk(client, server.port)
    assert refused.value.code == SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


@pytest.mark.parametrize(
    ("version", "label"), [(SSL.TLS1_VERSION, "TLSv1"), (SSL.TLS1_1_VERSION, "TLSv1.1")]
)
def test_tls10_and_tls11_are_refused_by_the_server_context(
    tls_ca: Core, version: int, label: str
) -> None:
    issued = issue(tls_ca, NAME)
    assert issued.private_key_pem is not None
    # Control: the same client and certificate against a permissive server do connect, so the
    # refusal below comes from server_context and not from this OpenSSL build or the client.
    permissive = SSL.Context(SSL.TLS_METHOD)
    permissive.set_min_proto_version(SSL.TLS1_VERSION)
    permissive.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    permissive.use_certificate(x509.load_pem_x509_certificate(issued.certificate_pem.encode()))
    permissive.use_privatekey(
        serialization.load_pem_private_key(issued.private_key_pem.encode(), None)  # type: ignore[arg-type]
    )
    with TLSServer(permissive, max_connections=1) as control:
        assert talk(legacy_client(version), control.port)[0] == b"pong\n"
        [accepted] = control.wait(1)
    assert accepted.ok and accepted.protocol == label

    with TLSServer(serve(issued), max_connections=1) as server:
        with pytest.raises(SSL.Error) as refused:
            talk(legacy_client(version), server.port)
        [outcome] = server.wait(1)
    assert "protocol version" in str(refused.value)  # the server's protocol_version alert
    assert not outcome.ok and "unsupported protocol" in (outcome.error or "")


def test_server_context_refuses_versions_below_tls12(tls_ca: Core) -> None:
    issued = issue(tls_ca, NAME)
    with pytest.raises(BadRequest, match=r"below 1\.2"):
        serve(issued, min_version=SSL.TLS1_1_VERSION)


def test_mutual_tls_with_client_revocation(tls_ca: Core) -> None:
    server_cert = issue(tls_ca, NAME)
    alice = issue(tls_ca, "alice", profile="client")
    mallory = issue(tls_ca, "mallory", profile="client")
    tls_ca.revoke(mallory.record.serial, RevocationReason.PRIVILEGE_WITHDRAWN, ADMIN)
    root = root_pem(tls_ca)
    root_crl = crl_der(tls_ca, f"{server_cert.record.authority}-root")
    ctx = serve(server_cert, client_ca_pem=root, client_crls=[crl_der(tls_ca), root_crl])

    def client_for(who: IssuedCertificate | None) -> SSL.Context:
        if who is None:
            return client_context(root)
        return client_context(
            root, client_cert_pem=who.fullchain_pem, client_key_pem=who.private_key_pem
        )

    with TLSServer(ctx, max_connections=3) as server:
        assert talk(client_for(alice), server.port)[0] == b"pong\n"
        for who in (None, mallory):
            # In TLS 1.3 the client may finish its handshake before the server has judged its
            # certificate; the refusal then shows as a failed read. Either way: no pong.
            try:
                reply, _ = talk(client_for(who), server.port)
            except (SSL.Error, OSError):
                reply = b""
            assert reply != b"pong\n"
        ok, anonymous, revoked = server.wait(3)
    assert ok.ok
    assert not anonymous.ok and "did not return a certificate" in (anonymous.error or "")
    assert not revoked.ok and "certificate revoked" in (revoked.error or "")


def test_openssl_s_client_accepts_the_server_and_sees_the_revocation(
    tls_ca: Core, openssl: str, tmp_path: Path
) -> None:
    issued = issue(tls_ca, NAME)
    root_file = tmp_path / "root.pem"
    root_file.write_text(root_pem(tls_ca))
    base = [
        openssl,
        "s_client",
        "-brief",
        "-servername",
        NAME,
        "-verify_hostname",
        NAME,
        "-CAfile",
        str(root_file),
        "-verify_return_error",
    ]
    with TLSServer(serve(issued), max_connections=3) as server:
        target = ["-connect", f"127.0.0.1:{server.port}"]
        good = run([*base, *target], input="")
        wrong = run([*base[:5], "-verify_hostname", "other.test", *base[7:], *target], input="")

        tls_ca.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
        crl_file = tmp_path / "crl.pem"
        crl = x509.load_der_x509_crl(crl_der(tls_ca))
        crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        revoked = run([*base, "-crl_check", "-CRL", str(crl_file), *target], input="")
    assert good.returncode == 0, good.stderr
    assert "Verification: OK" in good.stderr
    assert "Protocol version: TLSv1.3" in good.stderr
    assert wrong.returncode != 0 and "hostname mismatch" in wrong.stderr.lower()
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stderr


# ---------------------------------------------------------------------------- name matching


def _cert_with(*names: x509.GeneralName) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "match.test")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("san", "name", "expected"),
    [
        ("a.test", "a.test", True),
        ("a.test", "A.Test.", True),
        ("a.test", "b.test", False),
        ("*.a.test", "b.a.test", True),
        ("*.a.test", "a.test", False),
        ("*.a.test", "c.b.a.test", False),
        ("*.test", "a.test", False),  # a wildcard over a whole TLD never matches
        ("ip:10.0.0.1", "10.0.0.1", True),
        ("ip:10.0.0.1", "10.0.0.2", False),
        ("10.0.0.1", "10.0.0.1", False),  # an IP written as a DNS name is not an IP SAN
        ("ip:::1", "[::1]", True),
    ],
)
def test_hostname_matches(san: str, name: str, expected: bool) -> None:
    if san.startswith("ip:"):
        general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(san[3:]))
    else:
        general = x509.DNSName(san)
    assert hostname_matches(_cert_with(general), name) is expected


def test_common_name_alone_never_matches() -> None:
    assert hostname_matches(_cert_with(), "match.test") is False
