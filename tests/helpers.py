"""Helpers shared by the core test modules: CSRs, keys, the linters, row counts, CA builders."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from ca_service.cli import cli
from ca_service.clock import Clock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import KeyType
from ca_service.storage.db import Database
from ca_service.wiring import build_authority

from .conftest import PASSPHRASE, make_settings, new_ca, run

BIN = Path(sys.executable).parent
LINT_CERT = BIN / "lint_pkix_cert"
LINT_CRL = BIN / "lint_crl"


# ---------------------------------------------------------------------------- keys and CSRs


def make_key(
    kind: str = "p256",
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """A private key by short name: p256, p384, secp521r1, secp256k1, ed25519, rsa<bits>."""
    curves = {
        "p256": ec.SECP256R1,
        "p384": ec.SECP384R1,
        "secp521r1": ec.SECP521R1,
        "secp256k1": ec.SECP256K1,
    }
    if kind in curves:
        return ec.generate_private_key(curves[kind]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(kind)


LEAF_KEY_KIND = {
    KeyType.ECDSA_P256: "p256",
    KeyType.ECDSA_P384: "p384",
    KeyType.ED25519: "ed25519",
    KeyType.RSA_2048: "rsa2048",
    KeyType.RSA_3072: "rsa3072",
    KeyType.RSA_4096: "rsa4096",
}


def build_csr(
    key: object,
    common_name: str | None = None,
    names: Sequence[x509.GeneralName] = (),
) -> x509.CertificateSigningRequest:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def csr_pem(key: object, common_name: str | None = None, dns: Iterable[str] = ()) -> bytes:
    csr = build_csr(key, common_name, [x509.DNSName(d) for d in dns])
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_der(key: object, common_name: str | None = None, dns: Iterable[str] = ()) -> bytes:
    csr = build_csr(key, common_name, [x509.DNSName(d) for d in dns])
    return csr.public_bytes(serialization.Encoding.DER)


def tamper_signature(der: bytes) -> bytes:
    """Flip bits of the last byte of a DER CSR: it lies inside the signature BIT STRING."""
    return der[:-1] + bytes([der[-1] ^ 0x55])


def private_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def secret_fragments(key: object) -> list[bytes]:
    """Byte strings that would betray a private key: its clear DER, PEM body and raw scalar."""
    der = private_der(key)
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    body = b"".join(pem.splitlines()[1:-1])
    out = [der, body[:64]]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        out.append(key.private_numbers().private_value.to_bytes(size, "big"))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        out.append(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    elif isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
        out.append(d.to_bytes((d.bit_length() + 7) // 8, "big"))
    return out


# ---------------------------------------------------------------------------- files and linters


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def lint_cert(path: Path) -> str:
    """pkilint's PKIX certificate lint at WARNING and above: '' when clean."""
    result = run([str(LINT_CERT), "lint", "-s", "WARNING", str(path)])
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else "rc!=0")


def lint_crl(path: Path) -> str:
    result = run([str(LINT_CRL), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(path)])
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else "rc!=0")


def openssl_verify(
    openssl: str, root: Path, leaf: Path, untrusted: Path | None = None, *extra: str
) -> tuple[int, str]:
    cmd = [openssl, "verify", *extra, "-CAfile", str(root)]
    if untrusted is not None:
        cmd += ["-untrusted", str(untrusted)]
    result = run([*cmd, str(leaf)])
    return result.returncode, result.stdout + result.stderr


def chain_files(
    ca: Core, directory: Path, authority: str | None = None
) -> tuple[Path, Path]:
    """Write the root and the issuing intermediate of ``authority`` as PEM; return their paths."""
    chain = ca.chain_pem(authority)
    return write(directory / "root.pem", chain[-1]), write(directory / "inter.pem", chain[0])


# ---------------------------------------------------------------------------- databases


def count_rows(db: Database, table: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def counts(db: Database) -> tuple[int, int]:
    """Rows of certificates and audit events: what a refused request must leave unchanged."""
    return count_rows(db, "certificates"), count_rows(db, "audit_events")


def all_stored_bytes(db: Database) -> bytes:
    """Every value of every row of every table, as bytes, for searching for leaked secrets."""
    out = bytearray()
    with db.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        out += bytes(value)
                    elif value is not None:
                        out += str(value).encode()
    return bytes(out)


def ocsp_request_for(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for one certificate, SHA-1 CertID and no nonce (RFC 5019)."""
    from cryptography.x509 import ocsp

    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 (RFC 5019 CertIDs are SHA-1)
    return builder.build().public_bytes(serialization.Encoding.DER)


def ocsp_answer(der: bytes) -> tuple[str, int]:
    """A successful OCSP answer's status for its one certificate and its signer's serial."""
    from cryptography.x509 import ocsp

    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = response.certificates[0] if response.certificates else None
    signer_serial = signer.serial_number if signer is not None else 0
    return response.certificate_status.name.lower(), signer_serial


def stored_keys(db: Database | Settings) -> dict[str, bytes]:
    """The encrypted private keys the database holds (key_backend = database), by name."""
    if isinstance(db, Settings):
        opened = Database(db.resolved_database_url)
        try:
            return stored_keys(opened)
        finally:
            opened.dispose()
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, pem_encrypted FROM key_blobs"))
        return {name: bytes(data) for name, data in rows}


def assert_encrypted_keys(settings: Settings, count: int) -> None:
    """The database holds ``count`` keys, each passphrase-encrypted PKCS#8."""
    keys = stored_keys(settings)
    assert len(keys) == count
    for data in keys.values():
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def tree_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def module_ca(
    base: Path,
    key_type: KeyType = KeyType.ECDSA_P256,
    db_url: str | None = None,
    clock: Clock | None = None,
    **spec: object,
) -> Core:
    """A CA of its own in ``base`` (SQLite in its data dir unless ``db_url``)."""
    settings: Settings = make_settings(base, db_url or f"sqlite:///{base / 'ca.db'}")
    ca = new_ca(settings, key_type, **spec)
    if clock is not None:
        ca.clock = clock
    return ca


def reopen(ca: Core, clock: Clock | None = None) -> Core:
    """A second, independent Core over the same settings (as another process)."""
    return build_authority(ca.settings, clock=clock)


# ---------------------------------------------------------------------------- processes


def crl_worker(args: tuple[str, str, str, int]) -> list[int]:
    """Run in a separate process: open the CA at (data_dir, db_url) and sign ``n`` CRLs."""
    data_dir, db_url, passphrase, n = args
    settings = Settings(
        data_dir=Path(data_dir), database_url=db_url, key_passphrase=passphrase.encode()
    )
    ca = build_authority(settings)
    try:
        return [ca.generate_crl().number for _ in range(n)]
    finally:
        ca.db.dispose()


# ---------------------------------------------------------------------------- the CLI


def cli_env(settings: Settings, **env: str | None) -> dict[str, str | None]:
    """CA_* variables for ``settings`` (and none inherited from the test run's environment)."""
    base: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CA_")}
    base |= {
        "CA_DATA_DIR": str(settings.data_dir),
        "CA_DATABASE_URL": settings.resolved_database_url,
        "CA_KEY_PASSPHRASE": PASSPHRASE.decode(),
    }
    return base | env


def cli_run(settings: Settings, args: list[str], **env: str | None) -> Result:
    """``ca-service ARGS`` in-process; an exception that escaped the CLI fails the test."""
    result = CliRunner().invoke(cli, args, env=cli_env(settings, **env))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the CLI raised {result.exception!r}") from result.exception
    assert "Traceback" not in result.output
    return result


def one_error_line(result: Result) -> str:
    """The single 'error: ...' line a failed command prints on stderr."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def legacy_client(version: int) -> SSL.Context:
    """A client that speaks only TLS 1.0 or 1.1; OpenSSL 3 needs security level 0 for that."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


class LoopbackServer:
    """A one-thread server on 127.0.0.1 for handshake tests; subclasses say what ``handle``
    does with each accepted socket. Bounded: ``max_connections`` or ``lifetime`` seconds,
    whichever comes first, and stopped on leaving the ``with`` block."""

    def __init__(self, *, max_connections: int = 4, lifetime: float = 30.0) -> None:
        self.max_connections = max_connections
        self.lifetime = lifetime
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lifetime + 2)
        self._listener.close()

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        accepted = 0
        while accepted < self.max_connections and not self._stop.is_set():
            if time.monotonic() > deadline:
                break
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            accepted += 1
            self.handle(sock)

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError


def count_key_generation(monkeypatch: pytest.MonkeyPatch) -> list[KeyType]:
    """The key types the core asks to generate for callers: a counting wrapper around the real
    function (nothing is faked; every key is still made)."""
    from ca_service.core import issuance

    calls: list[KeyType] = []
    real = issuance.generate_private_key

    def counting(key_type: KeyType) -> Any:
        calls.append(key_type)
        return real(key_type)

    monkeypatch.setattr(issuance, "generate_private_key", counting)
    return calls
