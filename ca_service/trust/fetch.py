"""Fetch a ca-service root over the network and accept it only by its SHA-256 fingerprint.

A dev machine that does not trust the CA yet cannot verify the server's TLS certificate (that is
the whole point of installing the root), so the GET is made without verification and the
fingerprint the user copied from the operator decides: a man in the middle can answer, but not
with a root whose DER hashes to that value.

``ca-service request`` has its own root bootstrap by fingerprint (``ca_service/client/
bootstrap.py``), written in parallel; the lead will fold this module into that one at merge if
both exist, so keep the interface small: :func:`parse_fingerprint`, :func:`fetch_root`,
:func:`load_root`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_service.errors import BadRequest, Unavailable

ROOT_PATH = "/ca/root.pem"
TIMEOUT = 15.0
# A root is a few kB; anything much larger is not what we asked for.
MAX_BYTES = 256 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")


class FingerprintMismatch(Unavailable):
    """The server answered with another root: nothing is installed (exit 3, like no answer)."""


@dataclass(frozen=True)
class Root:
    """The root to install, with the names every store derives from it."""

    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(Encoding.PEM).decode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def fp8(self) -> str:
        return self.sha256[:8]

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def name(self) -> str:
        """A file-name-safe form of the common name: people see it in the store listings."""
        cns = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        text = str(cns[0].value) if cns else ""
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
        return slug or "root"


def parse_fingerprint(text: str) -> bytes:
    """The 32 bytes of a SHA-256 fingerprint written any usual way: ``AB:CD:..``, ``abcd..``,
    with a ``SHA256:``/``sha256=`` prefix or spaces."""
    clean = text.strip().lower()
    for prefix in ("sha256:", "sha256=", "sha-256:", "sha-256="):
        if clean.startswith(prefix):
            clean = clean[len(prefix) :]
    clean = re.sub(r"[\s:]", "", clean)
    if not _HEX.fullmatch(clean):
        raise BadRequest("the root fingerprint must be a SHA-256: 64 hex digits, colons allowed")
    return bytes.fromhex(clean)


def _check(root: Root, expected: bytes) -> None:
    # Constant time: the comparison should not tell an attacker how many bytes matched.
    if not hmac.compare_digest(hashlib.sha256(root.der).digest(), expected):
        raise FingerprintMismatch(
            f"the root's SHA-256 is {root.sha256}, not the fingerprint given; nothing was installed"
        )


def _parse_root(data: bytes, where: str) -> Root:
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        raise BadRequest(f"{where} is not a PEM or DER certificate") from None
    return Root(cert)


def load_root(path: Path, fingerprint: bytes | None = None) -> Root:
    """A root from a file (``--root FILE``), checked against ``fingerprint`` when one is given."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    root = _parse_root(data, str(path))
    if fingerprint is not None:
        _check(root, fingerprint)
    return root


def fetch_root(server: str, fingerprint: bytes, *, timeout: float = TIMEOUT) -> Root:
    """GET ``<server>/ca/root.pem`` (TLS not verified: the fingerprint decides) and check it."""
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("https", "http") or not url.hostname:
        raise BadRequest(f"--server must be an https:// (or http://) URL, not {server!r}")
    path = url.path.rstrip("/") + ROOT_PATH
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/x-pem-file"})
        resp = conn.getresponse()
        data = resp.read(MAX_BYTES + 1)
        status = resp.status
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"cannot reach {server}: {exc}") from None
    finally:
        conn.close()
    if status != 200:
        raise Unavailable(f"{server}{ROOT_PATH} answered HTTP {status}")
    if len(data) > MAX_BYTES:
        raise Unavailable(f"{server}{ROOT_PATH} answered more than {MAX_BYTES} bytes")
    try:
        root = _parse_root(data, f"{server}{ROOT_PATH}")
    except BadRequest as exc:
        raise Unavailable(exc.detail) from None
    _check(root, fingerprint)
    return root
