"""Trust on first use, made safe by a fingerprint (what ``step ca bootstrap`` does).

The very first fetch of the root cannot be verified by TLS: the root is what would verify
it. So it is fetched over an unverified channel and judged by one thing only: the SHA-256 of
its DER must equal the fingerprint the operator handed over out of band (``ca-service
authorities`` prints it). Whoever sits in the middle can send any certificate, but not one with
that hash. Once kept, the root is the only trust anchor of every later connection.
"""

from __future__ import annotations

import hmac
import re
import ssl
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from ca_service.client.errors import Unreachable, UsageError
from ca_service.client.files import PUBLIC, write_atomic
from ca_service.client.transport import Endpoint, HttpsClient, unverified_context

_HEX = re.compile(r"^[0-9a-f]{64}$")


def parse_fingerprint(text: str) -> bytes:
    """32 bytes from hex, with or without colons or spaces, any case, with an optional
    'sha256:' or 'SHA256 Fingerprint=' (as ``openssl x509 -fingerprint -sha256`` prints it)."""
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:"):
        value = value.removeprefix(prefix)
    value = re.sub(r"[\s:]", "", value)
    if not _HEX.match(value):
        raise UsageError(
            "--root-fingerprint must be the SHA-256 of the root (64 hex digits, colons allowed)"
        )
    return bytes.fromhex(value)


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def load_root_pem(data: bytes, where: str) -> x509.Certificate:
    """Exactly one self-signed CA certificate, or an error naming ``where`` it came from."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise Unreachable(f"{where} is not a PEM certificate") from None
    if len(certs) != 1:
        raise Unreachable(f"{where} holds {len(certs)} certificates, not one root")
    cert = certs[0]
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca or cert.issuer != cert.subject:
        raise Unreachable(f"{where} is not a self-signed CA certificate")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise Unreachable(f"{where}: the root's self-signature does not verify") from None
    return cert


def root_path(authority: str | None) -> str:
    """The public path of the root above ``authority`` (the default authority's if None)."""
    if authority is None:
        return "/ca/root.pem"
    return f"/ca/{urllib.parse.quote(authority, safe='')}/root.pem"


def fetch_root(
    endpoint: Endpoint,
    expected: bytes,
    *,
    authority: str | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
    context: ssl.SSLContext | None = None,
) -> x509.Certificate:
    """The root from the server, kept only if its fingerprint is ``expected``."""
    client = HttpsClient(
        endpoint, context or unverified_context(), timeout=timeout, attempts=attempts
    )
    path = root_path(authority)
    answer = client.request("GET", path, headers={"Accept": "application/x-pem-file"})
    if answer.status != 200:
        raise Unreachable(f"{endpoint.url}{path} answered {answer.status}, not the root")
    cert = load_root_pem(answer.body, f"{endpoint.url}{path}")
    got = fingerprint(cert)
    # Constant time, though a fingerprint is no secret: it costs nothing and settles the doubt.
    if not hmac.compare_digest(got, expected):
        raise Unreachable(
            f"the root at {endpoint.url}{path} has SHA-256 fingerprint {colon_hex(got)}, not "
            f"{colon_hex(expected)}: refusing it (wrong server, or someone in the middle)"
        )
    return cert


def ensure_root(
    endpoint: Endpoint,
    path: Path,
    fingerprint_text: str | None,
    *,
    authority: str | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
    context: ssl.SSLContext | None = None,
) -> tuple[str, bool]:
    """The root to trust, as PEM, and whether it was fetched now.

    With a fingerprint: the root file if it matches, else the server's root if that matches
    (then saved to ``path``). Without: the root file, which must exist.
    """
    expected = parse_fingerprint(fingerprint_text) if fingerprint_text is not None else None
    if path.exists():
        cert = load_root_pem(path.read_bytes(), str(path))
        if expected is None or hmac.compare_digest(fingerprint(cert), expected):
            return _pem(cert), False
    elif expected is None:
        raise UsageError(
            f"no trusted root at {path}: pass --root-fingerprint SHA256 once (the root's "
            "fingerprint, from 'ca-service authorities' on the CA) or --root FILE"
        )
    assert expected is not None
    cert = fetch_root(
        endpoint, expected, authority=authority, timeout=timeout, attempts=attempts, context=context
    )
    pem = _pem(cert)
    write_atomic(path, pem.encode(), PUBLIC)
    return pem, True


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
