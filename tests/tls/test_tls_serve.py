"""Issue items 1 and 6: `ca-service serve --tls` over real handshakes on loopback, and the
automatic renewal of its certificate driven by an injected clock.

The live server and the renewals run on SQLite and PostgreSQL: the server's certificate is a
stored issuance, and each renewal (at most one among concurrent checks) goes through the store.
The root the clients trust is read from the store, never taken from the server under test.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ca_service.clock import FixedClock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.tls import client_context, connect
from ca_service.tls.serving import (
    ServerTLS,
    bundle_path,
    client_trust_pem,
    ensure_server_certificate,
    read_leaf,
    renew_if_due,
    tls_directory,
)
from ca_service.wiring import build_authority

from ..conftest import ADMIN, PASSPHRASE, make_settings, run
from ..helpers import LoopbackServer, legacy_client
from ..live import LiveServer, start_server

IO_TIMEOUT = 5.0
AEAD_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
}


@pytest.fixture(scope="module")
def tls_live(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("tls-serve")
    server = start_server(base / "data", module_db_url, tls=True)
    yield server
    server.stop()


@dataclass(frozen=True)
class Handshake:
    """What a finished handshake showed; the connection itself is closed at once."""

    chain: list[x509.Certificate]
    protocol: str
    cipher: str | None


def _handshake(ctx: SSL.Context, port: int, name: str) -> Handshake:
    conn = connect(ctx, "127.0.0.1", port, server_hostname=name, timeout=IO_TIMEOUT)
    try:
        chain = [c.to_cryptography() for c in conn.get_peer_cert_chain() or []]
        return Handshake(chain, conn.get_protocol_version_name(), conn.get_cipher_name())
    finally:
        conn.close()  # pyOpenSSL passes close() to the socket


def _crl(live: LiveServer) -> bytes:
    reply = live.request("GET", "/crl")
    assert reply.status == 200
    return reply.body


# ---------------------------------------------------------------------------- item 1 over HTTPS


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_server_sends_the_full_chain_for_the_configured_names(
    tls_live: LiveServer, name: str
) -> None:
    assert tls_live.root_pem is not None
    ctx = client_context(tls_live.root_pem, crls=[_crl(tls_live)])  # leaf checked against CRL
    chain = _handshake(ctx, tls_live.port, name).chain
    assert len(chain) == 2, [c.subject.rfc4514_string() for c in chain]
    leaf, intermediate = chain
    root = x509.load_pem_x509_certificate(tls_live.root_pem.encode())
    assert leaf.issuer == intermediate.subject and intermediate.issuer == root.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=29) < life <= dt.timedelta(days=30, minutes=1)  # tls_cert_days
    # The leaf is a stored, audited issuance of the default authority.
    reply = tls_live.request(
        "GET", f"/api/v1/certificates/{leaf.serial_number:x}", token=tls_live.admin_token
    )
    assert reply.status == 200 and reply.json["profile"] == "server"
    assert reply.json["requester"] == "system:tls"


def test_tls13_is_preferred(tls_live: LiveServer) -> None:
    assert tls_live.root_pem is not None
    shake = _handshake(client_context(tls_live.root_pem), tls_live.port, "localhost")
    assert shake.protocol == "TLSv1.3"
    with socket.create_connection(("127.0.0.1", tls_live.port), timeout=IO_TIMEOUT) as raw:
        stdlib = ssl.create_default_context(cadata=tls_live.root_pem)
        with stdlib.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"


@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
def test_tls10_and_tls11_are_refused(tls_live: LiveServer, version: int) -> None:
    with pytest.raises(SSL.Error) as refused:
        connect(legacy_client(version), "127.0.0.1", tls_live.port, timeout=IO_TIMEOUT)
    assert "protocol version" in str(refused.value)


def test_tls12_negotiates_only_ecdhe_aead(tls_live: LiveServer) -> None:
    assert tls_live.root_pem is not None
    seen = set()
    # Offer everything this OpenSSL has, AEAD last: the server still picks an AEAD suite.
    for offer in (
        b"ALL:@SECLEVEL=0",
        b"AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256",
    ):
        ctx = client_context(tls_live.root_pem)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(offer)
        shake = _handshake(ctx, tls_live.port, "localhost")
        assert shake.protocol == "TLSv1.2"
        seen.add(shake.cipher)
    assert seen and seen <= AEAD_TLS12, seen
    only_cbc = client_context(tls_live.root_pem)
    only_cbc.set_max_proto_version(SSL.TLS1_2_VERSION)
    only_cbc.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA")
    with pytest.raises(SSL.Error) as refused:
        connect(only_cbc, "127.0.0.1", tls_live.port, server_hostname="localhost")
    assert "handshake failure" in str(refused.value)


def test_openssl_s_client_verifies_the_chain_sent(
    tls_live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    assert tls_live.root_pem is not None
    root = tmp_path / "root.pem"
    root.write_text(tls_live.root_pem)
    result = run(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{tls_live.port}",
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            str(root),
            "-verify_return_error",
            "-showcerts",
        ],
        input="",
    )
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert result.stdout.count("-----BEGIN CERTIFICATE-----") == 2  # leaf + intermediate
    assert " 1 s:O = ca-service, CN = default Issuing CA" in result.stdout


def test_api_over_https_and_the_server_key_is_encrypted_at_rest(tls_live: LiveServer) -> None:
    reply = tls_live.request("GET", "/api/v1/authorities", token=tls_live.admin_token)
    assert reply.status == 200 and {a["name"] for a in reply.json["items"]} >= {"default"}
    assert tls_live.request("GET", "/api/v1/authorities").status == 401
    bundle = Path(tls_live.env["CA_DATA_DIR"]) / "tls" / "server.pem"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    data = bundle.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"-----BEGIN PRIVATE KEY-----" not in data
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, password=None)
    key = serialization.load_pem_private_key(data, password=b"live-test-passphrase")
    leaf = read_leaf(bundle)
    assert leaf is not None and leaf.public_key() == key.public_key()
    # Plain HTTP on the HTTPS port gets no API answer.
    with socket.create_connection(("127.0.0.1", tls_live.port), timeout=IO_TIMEOUT) as raw:
        raw.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = raw.recv(1024)
    assert b'"status"' not in answer


# ---------------------------------------------------------------------------- automatic renewal


class StdlibTLSServer(LoopbackServer):
    """A stdlib-ssl server that wraps every connection with ONE context object, chosen at
    start, as a server that never rebuilds its context would. A renewed certificate can only
    reach its clients through the context's per-handshake callback."""

    def __init__(self, ctx: ssl.SSLContext, max_connections: int = 8) -> None:
        super().__init__(max_connections=max_connections, lifetime=60.0)
        self.ctx = ctx

    def __enter__(self) -> StdlibTLSServer:
        super().__enter__()
        return self

    def handle(self, sock: socket.socket) -> None:
        sock.settimeout(IO_TIMEOUT)
        try:
            with self.ctx.wrap_socket(sock, server_side=True) as tls:
                tls.sendall(b"ok\n")
        except (ssl.SSLError, OSError):
            pass  # the client may close first; what it saw is what the test checks
        finally:
            sock.close()


def _served_serial(port: int, root: str, name: str) -> int:
    return int(_handshake(client_context(root), port, name).chain[0].serial_number)


def _clocked_ca(
    tmp_path: Path, db_url: str, clock: FixedClock
) -> tuple[Core, Settings]:
    settings = make_settings(tmp_path, db_url, tls=True)
    ca = build_authority(settings, apply_migrations=True, clock=clock)
    ca.create_hierarchy(HierarchySpec(), ADMIN)
    ca.load_keys()
    return ca, settings


def test_server_certificate_renews_at_two_thirds_without_a_restart(
    tmp_path: Path, db_url: str
) -> None:
    # The injected clock starts 25 days back, so that both certificates are valid in real time
    # for the (real-time) verifying client: A from -25 d to +5 d, B from -4 d to +26 d.
    real_now = dt.datetime.now(dt.UTC)
    clock = FixedClock(real_now - dt.timedelta(days=25))
    ca, settings = _clocked_ca(tmp_path, db_url, clock)
    assert renew_if_due(ca, settings) is True  # first start: issued
    root = ca.chain_pem()[-1]
    holder = ServerTLS(
        bundle_path(settings),
        PASSPHRASE,
        client_auth="optional",
        trust=lambda: client_trust_pem(ca),
    )
    with StdlibTLSServer(holder.context()) as server:
        first = _served_serial(server.port, root, "127.0.0.1")  # an IP: the client sends no SNI

        clock.advance(dt.timedelta(days=19))  # 19 of 30 days: not yet two thirds
        assert renew_if_due(ca, settings, holder) is False
        assert _served_serial(server.port, root, "localhost") == first

        clock.advance(dt.timedelta(days=2))  # 21 of 30 days
        assert renew_if_due(ca, settings, holder) is True
        assert renew_if_due(ca, settings, holder) is False  # renewed once, not at every check
        second = _served_serial(server.port, root, "127.0.0.1")  # no SNI
        assert second != first
        assert _served_serial(server.port, root, "localhost") == second  # with SNI

    old = ca.get_certificate(f"{first:x}")
    new = ca.get_certificate(f"{second:x}")
    assert old.successor == new.serial  # renewed through the core, linked
    assert new.created_at == clock.now() and new.profile == "server"  # the injected time
    assert set(new.sans) == set(old.sans) == {"dns:localhost", "ip:127.0.0.1"}
    assert new.requester == "system:tls"
    assert new.fingerprint_sha256 != old.fingerprint_sha256
    old_key = x509.load_der_x509_certificate(old.der).public_key()
    assert x509.load_der_x509_certificate(new.der).public_key() != old_key  # a fresh key
    ca.db.dispose()


def test_a_renewal_by_another_worker_is_picked_up_from_the_file(
    tmp_path: Path, db_url: str
) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=25))
    ca, settings = _clocked_ca(tmp_path, db_url, clock)
    renew_if_due(ca, settings)
    # This worker's holder is not told about the renewal; it sees the file change.
    holder = ServerTLS(bundle_path(settings), PASSPHRASE, stat_interval=0.0)
    before = holder.context()
    clock.advance(dt.timedelta(days=21))
    assert renew_if_due(ca, settings) is True  # "another worker": no holder passed
    after = holder.context()
    assert after is not before
    assert holder.context() is after  # unchanged file: the same context, not a rebuild
    ca.db.dispose()


def test_concurrent_checks_renew_once(tmp_path: Path, db_url: str) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=25))
    ca, settings = _clocked_ca(tmp_path, db_url, clock)
    renew_if_due(ca, settings)
    clock.advance(dt.timedelta(days=21))
    results: list[bool] = []
    barrier = threading.Barrier(3, timeout=30)

    def check() -> None:
        barrier.wait()
        _, renewed = ensure_server_certificate(
            ca, settings.tls_hostnames, tls_directory(settings), days=settings.tls_cert_days
        )
        results.append(renewed)

    threads = [threading.Thread(target=check) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False, False, True]
    ca.db.dispose()


def test_changed_host_names_or_revocation_trigger_a_new_certificate(
    tmp_path: Path, db_url: str
) -> None:
    from ca_service.domain import RevocationReason

    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca, settings = _clocked_ca(tmp_path, db_url, clock)
    renew_if_due(ca, settings)
    first = read_leaf(bundle_path(settings))
    assert first is not None
    wider = settings.with_overrides(tls_hostnames=("localhost", "127.0.0.1", "api.internal"))
    assert renew_if_due(ca, wider) is True
    second = read_leaf(bundle_path(settings))
    assert second is not None
    names = second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.internal" in names.get_values_for_type(x509.DNSName)
    ca.revoke(f"{second.serial_number:x}", RevocationReason.KEY_COMPROMISE, ADMIN)
    assert renew_if_due(ca, wider) is True
    third = read_leaf(bundle_path(settings))
    assert third is not None and third.serial_number != second.serial_number
    ca.db.dispose()
