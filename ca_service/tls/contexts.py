"""pyOpenSSL contexts for services that use certificates from ca-service.

``server_context`` and ``client_context`` hold the security choices in one place, so that a
Python service gets them right in a few lines:

* TLS 1.2 is the floor. TLS 1.0 and 1.1 use SHA-1/MD5 in their handshake and CBC suites with
  known padding-oracle history; RFC 8996 deprecates both.
* For TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305) is allowed:
  forward secrecy and no CBC/RC4/3DES. TLS 1.3 suites are all AEAD and stay at OpenSSL's default.
* Compression is off (CRIME) and renegotiation is off (a DoS lever, and never needed here).
* Revocation is checked by OpenSSL's own verifier from CRLs the caller passes in
  (``X509StoreFlags.CRL_CHECK``, or ``CRL_CHECK_ALL`` for the whole chain).

Host-name checking. OpenSSL can match names itself (``X509_VERIFY_PARAM_set1_host``), but
pyOpenSSL does not expose that call; reaching it means using the private ``_lib`` binding, which
cryptography has been shrinking release by release. So the name is checked in the verify
callback at depth 0, after OpenSSL has accepted the chain, with :func:`hostname_matches`
(RFC 6125 / RFC 9525: subjectAltName only, a wildcard only as the whole leftmost label, IP
addresses only against iPAddress entries). Raising there aborts the handshake, so the client
never sends a byte to a server with the wrong name, and the error names the reason.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto

from ca_service.crypto.names import normalize_dns
from ca_service.errors import BadRequest

# Mozilla "intermediate" TLS 1.2 list, restricted to ECDHE + AEAD (no finite-field DHE: slow and
# often with weak groups). ECDSA first since ca-service issues P-256 keys by default.
TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

Revocation = Literal["none", "leaf", "chain"]
PemInput = str | bytes | x509.Certificate | Iterable[str | bytes | x509.Certificate]
CrlInput = str | bytes | x509.CertificateRevocationList

_SHA256 = hashes.SHA256()


def _readable(constant: str) -> str:
    words = constant.removeprefix("ERR_").lower().split("_")
    spelled = {"cert": "certificate", "crl": "CRL", "ca": "CA", "akid": "AKID", "skid": "SKID"}
    return " ".join(spelled.get(w, w) for w in words)


# pyOpenSSL exposes the codes but not OpenSSL's texts for them; these read nearly the same
# ("ERR_CERT_REVOKED" -> "certificate revoked").
_ERROR_NAMES: dict[int, str] = {
    value: _readable(name)
    for name, value in vars(SSL.X509VerificationCodes).items()
    if name.startswith("ERR_") and isinstance(value, int)
}


class VerificationFailed(SSL.Error):
    """The peer's certificate chain was refused; ``code`` is OpenSSL's X509_V_ERR_* value.

    A subclass of ``SSL.Error`` so code that already catches pyOpenSSL errors still does.
    """

    def __init__(self, message: str, *, code: int, depth: int, subject: str) -> None:
        super().__init__(message)
        self.code = code
        self.depth = depth
        self.subject = subject


class HostnameMismatch(VerificationFailed):
    """The chain is valid but the leaf does not name the host the client meant to reach."""


def verify_error_name(code: int) -> str:
    """A readable name for an X509_V_ERR_* code, e.g. 'cert revoked'."""
    return _ERROR_NAMES.get(code, f"verify error {code}")


# ---------------------------------------------------------------------------- loading


def load_certificates(pem: PemInput) -> list[x509.Certificate]:
    """Certificates from PEM text (one or many), certificate objects, or a list of either."""
    if isinstance(pem, x509.Certificate):
        return [pem]
    if isinstance(pem, str | bytes):
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise BadRequest("expected PEM certificates (BEGIN CERTIFICATE)") from None
    certs: list[x509.Certificate] = []
    for item in pem:
        certs.extend(load_certificates(item))
    return certs


def load_crl(data: CrlInput) -> x509.CertificateRevocationList:
    """A CRL from DER, PEM or an already parsed object (ca-service stores DER)."""
    if isinstance(data, x509.CertificateRevocationList):
        return data
    raw = data.encode() if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(raw)
        return x509.load_der_x509_crl(raw)
    except ValueError:
        raise BadRequest("expected a CRL in DER or PEM form") from None


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


# ---------------------------------------------------------------------------- names


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """Whether ``cert`` is valid for host ``name`` (a DNS name or an IP address literal).

    Only subjectAltName counts: RFC 9525 removed the common-name fallback and ca-service always
    writes SANs. A wildcard matches exactly one whole leftmost label ("*.a.test" matches
    "b.a.test", not "a.test" nor "c.b.a.test"); partial wildcards ("f*.a.test") never match.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name.strip().strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    try:
        wanted = normalize_dns(name)
    except BadRequest:
        return False
    if wanted.startswith("*."):
        return False  # a client never asks for a wildcard
    for entry in san.get_values_for_type(x509.DNSName):
        pattern = entry.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:] and pattern.count(".") >= 2:
            head, _, rest = wanted.partition(".")
            if head and rest == pattern[2:]:
                return True
    return False


# Expected peer name per client Connection. Kept beside the Connection rather than in its
# app_data, which belongs to the application.
_expected: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()
_expected_lock = threading.Lock()


def _expected_name(conn: SSL.Connection) -> str | None:
    with _expected_lock:
        name = _expected.get(conn)
    if name is None:
        sni = conn.get_servername()
        name = sni.decode("ascii") if sni else None
    return name


def _make_verify_callback(check_hostname: bool) -> object:
    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        subject = cert.to_cryptography().subject.rfc4514_string()
        if not ok:
            # Raising keeps OpenSSL's reason (revoked, expired, unknown issuer) for the caller;
            # pyOpenSSL re-raises it from do_handshake after the handshake has been aborted.
            raise VerificationFailed(
                f"certificate verify failed at depth {depth} ({subject}): "
                f"{verify_error_name(errno)}",
                code=errno,
                depth=depth,
                subject=subject,
            )
        if depth == 0 and check_hostname:
            name = _expected_name(conn)
            if not name:
                raise HostnameMismatch(
                    "no host name to check the certificate against; create the connection "
                    "with client_connection(ctx, sock, server_hostname) or pass "
                    "check_hostname=False",
                    code=SSL.X509VerificationCodes.ERR_HOSTNAME_MISMATCH,
                    depth=0,
                    subject=subject,
                )
            if not hostname_matches(cert.to_cryptography(), name):
                raise HostnameMismatch(
                    f"certificate ({subject}) is not valid for {name!r}",
                    code=SSL.X509VerificationCodes.ERR_HOSTNAME_MISMATCH,
                    depth=0,
                    subject=subject,
                )
        return True

    return verify


# ---------------------------------------------------------------------------- contexts


def _base_context(min_version: int) -> SSL.Context:
    if min_version < SSL.TLS1_2_VERSION:
        raise BadRequest("TLS versions below 1.2 are not supported (RFC 8996)")
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(min_version)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    return ctx


def _trust(ctx: SSL.Context, ca_pem: PemInput) -> list[x509.Certificate]:
    anchors = load_certificates(ca_pem)
    if not anchors:
        raise BadRequest("no CA certificate to trust")
    store = ctx.get_cert_store()
    assert store is not None
    for cert in anchors:
        store.add_cert(crypto.X509.from_cryptography(cert))
    return anchors


def _add_crls(ctx: SSL.Context, crls: Iterable[CrlInput]) -> None:
    # Not public on purpose: adding a newer CRL to a context that holds an older one of the same
    # issuer does not reliably replace it. OpenSSL keeps both and prefers the later thisUpdate,
    # which has one-second resolution, so a CRL signed in the same second as the one it replaces
    # loses. The safe way to take in a new CRL is a new context (cheap; see client_context).
    store = ctx.get_cert_store()
    assert store is not None
    for item in crls:
        store.add_crl(load_crl(item))


def _revocation_flags(revocation: Revocation) -> int:
    if revocation == "leaf":
        return crypto.X509StoreFlags.CRL_CHECK
    if revocation == "chain":
        return crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL
    return 0


def server_context(
    cert_pem: PemInput,
    key_pem: str | bytes,
    *,
    chain_pem: PemInput | None = None,
    key_password: bytes | None = None,
    min_version: int = SSL.TLS1_2_VERSION,
    client_ca_pem: PemInput | None = None,
    client_crls: Sequence[CrlInput] = (),
    require_client_cert: bool = True,
) -> SSL.Context:
    """A server context for a certificate issued by ca-service.

    ``cert_pem`` is the leaf, or the full chain (``IssuedCertificate.fullchain_pem``); the
    intermediates are sent to clients, since a client that trusts only the root cannot build the
    path otherwise. Self-signed roots are left out: the client must already hold them.

    With ``client_ca_pem`` the server asks for a client certificate (mutual TLS) issued under
    it, refuses connections without one when ``require_client_cert`` and checks it against
    ``client_crls`` (the whole chain when CRLs are given).
    """
    certs = load_certificates(cert_pem)
    if chain_pem is not None:
        certs.extend(load_certificates(chain_pem))
    if not certs:
        raise BadRequest("no server certificate given")
    raw_key = key_pem.encode() if isinstance(key_pem, str) else key_pem
    try:
        key = serialization.load_pem_private_key(raw_key, password=key_password)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"cannot load the server private key: {exc}") from None
    ctx = _base_context(min_version)
    ctx.use_certificate(certs[0])
    seen = {certs[0].fingerprint(_SHA256)}
    for cert in certs[1:]:
        fp = cert.fingerprint(_SHA256)
        if _is_self_signed(cert) or fp in seen:
            continue
        seen.add(fp)
        ctx.add_extra_chain_cert(cert)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise BadRequest("the private key does not belong to the server certificate") from None
    if client_ca_pem is not None:
        anchors = _trust(ctx, client_ca_pem)
        for cert in anchors:
            ctx.add_client_ca(cert)
        if client_crls:
            _add_crls(ctx, client_crls)
            store = ctx.get_cert_store()
            assert store is not None
            store.set_flags(_revocation_flags("chain"))
        mode = SSL.VERIFY_PEER
        if require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _make_verify_callback(check_hostname=False))  # type: ignore[arg-type]
    return ctx


def client_context(
    ca_pem: PemInput,
    *,
    crls: Sequence[CrlInput] = (),
    revocation: Revocation | None = None,
    check_hostname: bool = True,
    client_cert_pem: PemInput | None = None,
    client_key_pem: str | bytes | None = None,
    min_version: int = SSL.TLS1_2_VERSION,
) -> SSL.Context:
    """A client context that trusts ``ca_pem`` (the ca-service root, or several) only.

    Revocation: with ``crls`` the leaf is checked against them by default (``"leaf"``: the CRL
    of the issuing CA, the one the leaf's CRL Distribution Point names); ``"chain"`` checks
    every certificate and then needs the root's CRL too. A missing or expired CRL for a checked
    certificate fails the handshake: a revocation check that silently passes when it cannot run
    is no check. ``revocation="leaf"`` without CRLs is refused for the same reason.

    The CRLs are copied into the context when it is built; when a new CRL is published, build
    a new context (it is cheap) and use it for new connections.

    Connect with :func:`client_connection` or :func:`connect` so the host name is checked.
    """
    mode: Revocation = revocation or ("leaf" if crls else "none")
    if mode != "none" and not crls:
        raise BadRequest(f"revocation={mode!r} needs at least one CRL")
    ctx = _base_context(min_version)
    _trust(ctx, ca_pem)
    if crls:
        _add_crls(ctx, crls)
    store = ctx.get_cert_store()
    assert store is not None
    flags = _revocation_flags(mode)
    if flags:
        store.set_flags(flags)
    if client_cert_pem is not None or client_key_pem is not None:
        if client_cert_pem is None or client_key_pem is None:
            raise BadRequest("client_cert_pem and client_key_pem go together")
        certs = load_certificates(client_cert_pem)
        raw_key = client_key_pem.encode() if isinstance(client_key_pem, str) else client_key_pem
        ctx.use_certificate(certs[0])
        for cert in certs[1:]:
            if not _is_self_signed(cert):
                ctx.add_extra_chain_cert(cert)
        ctx.use_privatekey(serialization.load_pem_private_key(raw_key, None))  # type: ignore[arg-type]
        ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER, _make_verify_callback(check_hostname))  # type: ignore[arg-type]
    return ctx


def client_connection(
    ctx: SSL.Context, sock: socket.socket | None, server_hostname: str
) -> SSL.Connection:
    """A client Connection that sends SNI for ``server_hostname`` and will check that name.

    SNI is sent for DNS names only: RFC 6066 forbids IP literals there; an IP address is still
    checked against the certificate's iPAddress entries.
    """
    conn = SSL.Connection(ctx, sock)
    try:
        ipaddress.ip_address(server_hostname.strip("[]"))
    except ValueError:
        conn.set_tlsext_host_name(normalize_dns(server_hostname).encode("ascii"))
    with _expected_lock:
        _expected[conn] = server_hostname
    conn.set_connect_state()
    return conn


def handshake(conn: SSL.Connection, sock: socket.socket, timeout: float) -> None:
    """Complete the handshake within ``timeout`` seconds, whatever the socket's blocking mode.

    pyOpenSSL turns a socket timeout into WantReadError/WantWriteError rather than waiting, so
    the wait happens here, with select and a deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            wait_read, wait_write = [sock], []
        except SSL.WantWriteError:
            wait_read, wait_write = [], [sock]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"TLS handshake did not finish within {timeout:g} s")
        ready = select.select(wait_read, wait_write, [], remaining)
        if not any(ready):
            raise TimeoutError(f"TLS handshake did not finish within {timeout:g} s")


def connect(
    ctx: SSL.Context,
    host: str,
    port: int,
    *,
    server_hostname: str | None = None,
    timeout: float = 10.0,
) -> SSL.Connection:
    """Open TCP to ``host:port``, handshake, and return the verified Connection.

    ``server_hostname`` is the name to send in SNI and check (default: ``host``). The socket is
    returned in blocking mode; ``conn.settimeout(t)`` reaches it (pyOpenSSL then raises
    WantReadError when nothing arrived in time, instead of waiting).
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        conn = client_connection(ctx, sock, server_hostname or host)
        handshake(conn, sock, timeout)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return conn
