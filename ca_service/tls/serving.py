"""HTTPS for ``ca-service serve --tls``: the server certificate, its renewal, and the contexts.

gunicorn does TLS with the stdlib ``ssl`` module and asks its ``ssl_context`` hook for a context;
the hook returns :meth:`ServerTLS.context`. Renewal without a restart or a dropped request works
on two levels, because neither alone is guaranteed by gunicorn's documentation:

* gunicorn 21-27 call the hook for every accepted connection, so a new connection gets the
  newest context as soon as the certificate file changed;
* every context carries an ``sni_callback`` that moves the handshaking socket to the newest
  context, so a server that built its context once (another gunicorn version, or any server
  holding one context) still presents the renewed certificate. OpenSSL calls it for every
  ClientHello, with ``server_name=None`` when the client sends no SNI (IP literals never do).

Connections already open keep the certificate they were set up with; nothing is dropped.

The certificate is one file, ``<data_dir>/tls/server.pem``: the private key encrypted with the
CA passphrase (PKCS#8, so a copied data directory does not hand out the key) followed by the
leaf and its intermediates, replaced atomically with ``os.replace`` so that a reader sees the
old pair or the new pair, never a key of one and a certificate of the other. Several gunicorn
workers check for renewal; an ``fcntl`` lock and a second look under it make exactly one renew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.crypto.fields import certificate_names
from ca_service.crypto.keys import fingerprint_sha256, generate_private_key
from ca_service.crypto.names import parse_name
from ca_service.domain import Actor, CertStatus, KeyType
from ca_service.errors import CAError, ConfigError, NotFound
from ca_service.signing.serials import serial_hex
from ca_service.tls.contexts import TLS12_CIPHERS

log = logging.getLogger(__name__)

BUNDLE_NAME = "server.pem"
LOCK_NAME = "renew.lock"
SYSTEM_ACTOR = Actor("system:tls")
# How often a worker looks whether the certificate is due (the check reads one file and, when
# the leaf is still fresh, one row).
RENEW_CHECK_SECONDS = 30.0
# How often a worker looks at the bundle's inode/mtime for a renewal done by another worker.
STAT_INTERVAL_SECONDS = 1.0

Refusal = Callable[[str, str | None], None]


def tls_directory(settings: Settings) -> Path:
    return settings.data_dir / "tls"


def bundle_path(settings: Settings) -> Path:
    return tls_directory(settings) / BUNDLE_NAME


# ---------------------------------------------------------------------------- the certificate


def read_leaf(bundle: Path) -> x509.Certificate | None:
    """The server certificate in ``bundle`` (the first certificate), or None when absent."""
    try:
        data = bundle.read_bytes()
    except FileNotFoundError:
        return None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return None
    return certs[0] if certs else None


def renew_at(cert: x509.Certificate) -> dt.datetime:
    """Two thirds into the certificate's life: late enough not to churn, early enough that a
    failed renewal has a third of the life left to be retried and noticed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * 2 / 3


def _wanted_names(hostnames: Sequence[str]) -> set[str]:
    return {str(parse_name(h)) for h in hostnames}


def renewal_reason(
    ca: Core,
    cert: x509.Certificate | None,
    hostnames: Sequence[str],
    now: dt.datetime,
) -> str | None:
    """Why the server certificate must be (re)issued now, or None when it is good."""
    if cert is None:
        return "no server certificate yet"
    if set(certificate_names(cert)) != _wanted_names(hostnames):
        return "the configured host names changed"
    if now >= renew_at(cert):
        return "two thirds of its lifetime have passed"
    record = _stored_record(ca, cert)
    if record is None:
        return "the store does not hold it (a new database?)"
    if record.status is CertStatus.REVOKED:
        return "it was revoked"
    return None


def _stored_record(ca: Core, cert: x509.Certificate) -> Any:
    found = ca.catalog.find_certificates(serial_hex(cert.serial_number))
    fingerprint = fingerprint_sha256(cert)
    return next((r for r in found if r.fingerprint_sha256 == fingerprint), None)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` across processes (the gunicorn workers and the serve command)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_server_certificate(
    ca: Core,
    hostnames: Sequence[str],
    directory: Path,
    *,
    days: int,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, bool]:
    """The current server certificate, issued or renewed first when due; (cert, renewed).

    Renewal goes through the generation core (``renew`` with a CSR for a fresh key, so the old
    record links to its successor; a plain issuance when the names changed or the old one is
    unknown or revoked) and is audited like any other issuance, as ``system:tls``.
    """
    now = now or ca.clock.now()
    bundle = directory / BUNDLE_NAME
    cert = read_leaf(bundle)
    if renewal_reason(ca, cert, hostnames, now) is None:
        assert cert is not None
        return cert, False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _file_lock(directory / LOCK_NAME):
        # Another worker may have renewed while this one waited for the lock.
        cert = read_leaf(bundle)
        reason = renewal_reason(ca, cert, hostnames, now)
        if reason is None:
            assert cert is not None
            return cert, False
        log.warning("issuing the HTTPS server certificate: %s", reason)
        key = generate_private_key(KeyType.ECDSA_P256)
        record = _stored_record(ca, cert) if cert is not None else None
        if (
            cert is not None
            and record is not None
            and record.status is CertStatus.VALID
            and set(certificate_names(cert)) == _wanted_names(hostnames)
        ):
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
                .sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM)
            )
            issued = ca.renew(
                record.serial, SYSTEM_ACTOR, csr=csr, authority=record.authority, validity_days=days
            )
        else:
            with_key = ca.issue_with_new_key(
                SYSTEM_ACTOR,
                common_name=hostnames[0],
                names=hostnames,
                key_type=KeyType.ECDSA_P256,
                profile="server",
                validity_days=days,
            )
            assert with_key.private_key_pem is not None
            key = serialization.load_pem_private_key(with_key.private_key_pem.encode(), None)  # type: ignore[assignment]
            issued = with_key
        passphrase = ca.settings.require_passphrase()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        chain = [
            c
            for c in x509.load_pem_x509_certificates("".join(issued.chain_pem).encode())
            if c.issuer != c.subject  # the client holds the root; sending it only costs bytes
        ]
        text = key_pem + issued.certificate_pem.encode()
        text += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        _atomic_write(bundle, text)
        new_cert = read_leaf(bundle)
        assert new_cert is not None
        return new_cert, True


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def client_trust_pem(ca: Core) -> str:
    """Every certificate of every authority of this service: the anchors client certificates
    are verified against (intermediates too, so a client that sends only its leaf still
    verifies). A certificate from any other CA fails the handshake."""
    seen: dict[str, None] = {}
    for record in ca.list_authorities():
        for pem in ca.chain_pem(record.name):
            seen.setdefault(pem, None)
    return "".join(seen)


# ---------------------------------------------------------------------------- contexts


class ServerTLS:
    """Builds server contexts from the bundle file and hands out the newest one.

    ``client_auth`` is off, optional (a client may present a certificate; tokens still work) or
    required. ``trust`` returns the PEM anchors for client certificates and is read at every
    rebuild, so an authority created later is trusted after the next renewal. ``on_refusal``
    is told (reason, client address) when a client certificate fails verification in the
    handshake, which the application never sees, so that such refusals are audited too.
    """

    def __init__(
        self,
        bundle: Path,
        passphrase: bytes,
        *,
        client_auth: str = "off",
        trust: Callable[[], str] | None = None,
        on_refusal: Refusal | None = None,
        stat_interval: float = STAT_INTERVAL_SECONDS,
    ) -> None:
        if client_auth not in ("off", "optional", "required"):
            raise ConfigError("client_auth must be off, optional or required")
        if client_auth != "off" and trust is None:
            raise ConfigError("client certificates need trust anchors")
        self.bundle = bundle
        self._passphrase = passphrase
        self.client_auth = client_auth
        self._trust = trust
        self.on_refusal = on_refusal
        self._stat_interval = stat_interval
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._socket_class = _auditing_socket_class(self)

    def reload(self) -> None:
        """Look at the file on the next handshake (this process just renewed it)."""
        with self._lock:
            self._checked_at = float("-inf")

    def context(self) -> ssl.SSLContext:
        """The context for the certificate now in the bundle; rebuilt only when it changed."""
        with self._lock:
            current = self._context
            if current is not None and time.monotonic() - self._checked_at < self._stat_interval:
                return current
            self._checked_at = time.monotonic()
            try:
                st = self.bundle.stat()
                signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError as exc:
                if current is None:
                    raise ConfigError(f"cannot read {self.bundle}: {exc.strerror}") from None
                return current
            if current is not None and signature == self._signature:
                return current
            try:
                built = self._build()
            except (OSError, ssl.SSLError, CAError) as exc:
                if current is None:
                    raise ConfigError(f"cannot load {self.bundle}: {exc}") from None
                log.error("keeping the previous TLS certificate; the new one fails: %s", exc)
                return current
            self._context, self._signature = built, signature
            return built

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # TLS 1.2 is the floor (RFC 8996); 1.3 is OpenSSL's maximum and wins when both speak it.
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305 only. TLS 1.3 suites are all AEAD.
        ctx.set_ciphers(TLS12_CIPHERS.decode())
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.load_cert_chain(str(self.bundle), password=self._passphrase)
        if self.client_auth != "off":
            assert self._trust is not None
            ctx.load_verify_locations(cadata=self._trust())
            ctx.verify_mode = (
                ssl.CERT_REQUIRED if self.client_auth == "required" else ssl.CERT_OPTIONAL
            )
        ctx.sni_callback = self._on_client_hello
        ctx.sslsocket_class = self._socket_class
        return ctx

    def _on_client_hello(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        # Called for every handshake, SNI or not. Moving the socket to a newer context switches
        # the certificate it presents; verification settings are the same in every context.
        newest = self.context()
        if newest is not ctx:
            sock.context = newest

    def refused(self, reason: str, client_address: str | None) -> None:
        if self.on_refusal is None:
            return
        try:
            self.on_refusal(reason, client_address)
        except Exception:  # the audit must not turn a refusal into a crash of the worker
            log.exception("could not audit a refused client certificate")


def _auditing_socket_class(holder: ServerTLS) -> type[ssl.SSLSocket]:
    class AuditingSSLSocket(ssl.SSLSocket):
        """Reports client certificates refused in the handshake, then refuses as before."""

        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except ssl.SSLCertVerificationError as exc:
                try:
                    address = str(self.getpeername()[0])
                except OSError:
                    address = None
                detail = exc.verify_message or str(exc.reason)
                holder.refused(
                    f"client certificate refused in the TLS handshake: {detail}", address
                )
                raise

    return AuditingSSLSocket


# ---------------------------------------------------------------------------- gunicorn glue

_installed: ServerTLS | None = None


def install(holder: ServerTLS) -> None:
    global _installed
    _installed = holder


def installed() -> ServerTLS:
    if _installed is None:
        raise ConfigError("TLS is not set up in this process (post_worker_init did not run)")
    return _installed


def renew_if_due(
    ca: Core,
    settings: Settings,
    holder: ServerTLS | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """One renewal check; when it renewed, ``holder`` serves the new certificate from the next
    handshake on. ``now`` lets tests drive it with an injected clock."""
    _, renewed = ensure_server_certificate(
        ca,
        settings.tls_hostnames,
        tls_directory(settings),
        days=settings.tls_cert_days,
        now=now,
    )
    if renewed and holder is not None:
        holder.reload()
    return renewed


def start_worker(app: Any, settings: Settings) -> ServerTLS:
    """Called from gunicorn's post_worker_init: the holder for this worker, and its renewal
    thread (a daemon, so it never delays a worker's exit)."""
    ca: Core = app.extensions["ca_core"]
    tokens = app.extensions["ca_tokens"]

    def audit(reason: str, client_address: str | None) -> None:
        tokens.record_refusal(
            "tls:client-certificate", "TLS handshake", reason, None, client_address
        )

    holder = ServerTLS(
        bundle_path(settings),
        settings.require_passphrase(),
        client_auth=settings.tls_client_auth,
        trust=lambda: client_trust_pem(ca),
        on_refusal=audit,
    )
    holder.context()  # fail at start, not at the first connection
    install(holder)

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(RENEW_CHECK_SECONDS):
            try:
                renew_if_due(ca, settings, holder)
            except (CAError, OSError, NotFound) as exc:
                log.error("HTTPS certificate renewal failed (retrying): %s", exc)
            except Exception:
                log.exception("HTTPS certificate renewal failed (retrying)")

    threading.Thread(target=loop, name="tls-renewal", daemon=True).start()
    return holder
