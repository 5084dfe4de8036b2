"""Probe a live TLS endpoint: what chain it presents and whether a careful client would accept it.

The handshake itself verifies nothing (VERIFY_NONE), so that a broken endpoint still yields its
chain for the report; the chain is then judged by OpenSSL's verifier through pyOpenSSL's
``X509StoreContext`` against the given trust anchors and CRLs, the same code a real client runs.
The CRLs are also read with ``cryptography`` to report the revocation reason and date, which
OpenSSL's verifier does not return. Only the host and port the caller names are contacted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from OpenSSL import SSL, crypto

from ca_service.crypto.fields import certificate_names
from ca_service.crypto.names import normalize_dns
from ca_service.domain import RevocationReason
from ca_service.tls.contexts import (
    TLS12_CIPHERS,
    CrlInput,
    PemInput,
    handshake,
    hostname_matches,
    load_certificates,
    load_crl,
)

DEFAULT_WARN_DAYS = 14
_AEAD_TLS12 = set(TLS12_CIPHERS.decode().split(":"))


class ProbeConnectError(Exception):
    """No TLS session could be established: DNS, TCP or the handshake itself failed."""


@dataclass(frozen=True)
class ChainEntry:
    """One certificate as the server sent it."""

    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    sha256: str
    names: list[str]
    self_signed: bool


@dataclass
class ProbeReport:
    """Everything the probe learned; ``problems`` empty means a careful client would connect."""

    host: str
    port: int
    servername: str | None
    checked_name: str
    protocol: str
    cipher: str
    cipher_bits: int | None
    chain: list[ChainEntry]
    chain_valid: bool
    verify_error: str | None
    verified_chain: list[str]
    name_matches: bool
    revocation: str  # "good", "revoked", "not checked", "check failed"
    revoked_subject: str | None
    revocation_reason: str | None
    revoked_at: str | None
    not_after: str | None
    days_left: int | None
    warn_days: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the same keys as the dataclass plus ``ok``."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _ssl_error_text(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        return "; ".join(str(part[-1]) for part in exc.args[0] if part)
    return str(exc) or type(exc).__name__


def _entry(cert: x509.Certificate) -> ChainEntry:
    return ChainEntry(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        names=list(certificate_names(cert)),
        self_signed=cert.issuer == cert.subject,
    )


def fetch_chain(
    host: str, port: int, servername: str | None, timeout: float
) -> tuple[list[x509.Certificate], str, str, int | None]:
    """Handshake with ``host:port`` (TLS 1.2+, SNI) and return (chain, protocol, cipher, bits)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    # Offer OpenSSL's default TLS 1.2 list, wider than what we serve, so that a server with
    # weaker suites is still reached and reported rather than unreachable.
    ctx.set_verify(SSL.VERIFY_NONE)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ProbeConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    try:
        conn = SSL.Connection(ctx, sock)
        if servername:
            conn.set_tlsext_host_name(normalize_dns(servername).encode("ascii"))
        conn.set_connect_state()
        try:
            handshake(conn, sock, timeout)
        except (SSL.Error, OSError) as exc:
            raise ProbeConnectError(
                f"TLS handshake with {host}:{port} failed: {_ssl_error_text(exc)}"
            ) from None
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        protocol = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name() or "?"
        bits = conn.get_cipher_bits()
        # A close_notify the server never answers is not a finding.
        with contextlib.suppress(SSL.Error, OSError):
            conn.shutdown()
    finally:
        sock.close()
    if not chain:
        raise ProbeConnectError(f"{host}:{port} presented no certificate")
    return chain, protocol, cipher, bits


def _store(
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    flags: int,
    now: dt.datetime | None,
) -> crypto.X509Store:
    store = crypto.X509Store()
    for cert in anchors:
        store.add_cert(crypto.X509.from_cryptography(cert))
    for crl in crls:
        store.add_crl(crl)
    if now is not None:
        store.set_time(now)
    if flags:
        store.set_flags(flags)
    return store


def _verify(
    store: crypto.X509Store, chain: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], str | None]:
    """OpenSSL's verdict: (verified path leaf-first, None) or ([], reason)."""
    ctx = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(chain[0]),
        [crypto.X509.from_cryptography(c) for c in chain[1:]],
    )
    try:
        path = ctx.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        _code, depth, message = exc.errors
        subject = exc.certificate.to_cryptography().subject.rfc4514_string()
        return [], f"{message} (depth {depth}: {subject})"
    return [c.to_cryptography() for c in path], None


def _crl_for(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
) -> x509.CertificateRevocationList | None:
    """The newest CRL signed by ``issuer`` that covers ``cert``, if any."""
    key = issuer.public_key()
    found = [
        crl
        for crl in crls
        if crl.issuer == cert.issuer and _signed_by(crl, key)  # type: ignore[arg-type]
    ]
    return max(found, key=lambda c: c.last_update_utc, default=None)


def _signed_by(crl: x509.CertificateRevocationList, key: CertificateIssuerPublicKeyTypes) -> bool:
    try:
        return crl.is_signature_valid(key)
    except (TypeError, ValueError):
        return False


def probe(
    host: str,
    port: int,
    *,
    trust_pem: PemInput,
    crls: Sequence[CrlInput] = (),
    servername: str | None = None,
    warn_days: int = DEFAULT_WARN_DAYS,
    now: dt.datetime | None = None,
    timeout: float = 10.0,
) -> ProbeReport:
    """Connect to ``host:port`` and judge the chain it presents. Raises ProbeConnectError.

    ``trust_pem`` are the trust anchors; ``crls`` the CRLs to check against. The name checked is
    ``servername`` (also sent as SNI) or else ``host``. With CRLs for every CA on the path the
    whole chain is checked (CRL_CHECK_ALL), otherwise the leaf only when its issuer's CRL is
    there; without any, revocation is reported as not checked.
    """
    anchors = load_certificates(trust_pem)
    crl_list = [load_crl(c) for c in crls]
    sni = None
    if servername:
        sni = servername
    else:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            sni = host  # a DNS name; IP literals never go into SNI (RFC 6066)
    chain, protocol, cipher, bits = fetch_chain(host, port, sni, timeout)
    when = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    checked_name = servername or host
    report = ProbeReport(
        host=host,
        port=port,
        servername=servername,
        checked_name=checked_name,
        protocol=protocol,
        cipher=cipher,
        cipher_bits=bits,
        chain=[_entry(c) for c in chain],
        chain_valid=False,
        verify_error=None,
        verified_chain=[],
        name_matches=hostname_matches(leaf, checked_name),
        revocation="not checked",
        revoked_subject=None,
        revocation_reason=None,
        revoked_at=None,
        not_after=leaf.not_valid_after_utc.isoformat(),
        days_left=(leaf.not_valid_after_utc - when).days,
        warn_days=warn_days,
    )

    path, error = _verify(_store(anchors, [], 0, now), chain)
    report.chain_valid = error is None
    report.verify_error = error
    report.verified_chain = [c.subject.rfc4514_string() for c in path]
    if error is not None:
        report.problems.append(f"chain does not verify: {error}")
        if len(chain) == 1 and not _entry(leaf).self_signed:
            report.notes.append("the server sent only its own certificate, no intermediates")
    else:
        _check_revocation(report, anchors, crl_list, chain, path, now)

    if not report.name_matches:
        report.problems.append(f"certificate is not valid for {checked_name!r}")
    deadline = when + dt.timedelta(days=warn_days)
    if leaf.not_valid_after_utc <= when:
        report.problems.append(f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    elif leaf.not_valid_after_utc <= deadline:
        report.problems.append(
            f"certificate expires in {report.days_left} day(s), within --warn-days {warn_days}"
        )
    if protocol == "TLSv1.2" and cipher not in _AEAD_TLS12:
        report.notes.append(f"TLS 1.2 cipher {cipher} is not ECDHE with an AEAD cipher")
    report.notes.append("OCSP was not queried; revocation comes from CRLs only")
    return report


def _check_revocation(
    report: ProbeReport,
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    path: Sequence[x509.Certificate],
    now: dt.datetime | None,
) -> None:
    """Fill the revocation fields: OpenSSL decides, cryptography explains (reason, date)."""
    if not crls:
        report.notes.append("revocation not checked: no CRL available (pass --crl)")
        return
    # path is leaf first, anchor last; every certificate but the anchor has an issuer CRL.
    covered = [(cert, _crl_for(cert, issuer, crls)) for cert, issuer in itertools.pairwise(path)]
    if not covered or covered[0][1] is None:
        report.notes.append("revocation not checked: no CRL from the leaf's issuer")
        return
    if all(crl is not None for _, crl in covered):
        flags = crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL
    else:
        flags = crypto.X509StoreFlags.CRL_CHECK
        report.notes.append("only the leaf was checked for revocation (no CRL for the CAs)")
    _, error = _verify(_store(anchors, crls, flags, now), chain)
    for cert, crl in covered:
        if crl is None:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            continue
        report.revocation = "revoked"
        report.revoked_subject = cert.subject.rfc4514_string()
        report.revoked_at = entry.revocation_date_utc.isoformat()
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            report.revocation_reason = _REASON_NAMES.get(reason, reason.value)
        except x509.ExtensionNotFound:
            report.revocation_reason = "unspecified"
        report.problems.append(
            f"certificate {report.revoked_subject} is revoked "
            f"({report.revocation_reason}, {entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC)"
        )
        return
    if error is not None:
        # Not on any CRL, yet OpenSSL refused with the CRLs in place: a stale or bad CRL.
        report.revocation = "check failed"
        report.problems.append(f"revocation check failed: {error}")
        return
    report.revocation = "good"


# RFC 5280 names, as ca-service's revoke command spells them.
_REASON_NAMES = {r.flag: r.value for r in RevocationReason}


def format_report(report: ProbeReport) -> str:
    """The report for people: verdict first, then the details behind it."""
    lines = [
        f"{report.host}:{report.port}"
        + (f" (SNI {report.servername})" if report.servername else "")
        + f": {'OK' if report.ok else 'PROBLEMS FOUND'}",
        f"  protocol:    {report.protocol}, {report.cipher}"
        + (f" ({report.cipher_bits} bits)" if report.cipher_bits else ""),
        f"  chain:       {'valid' if report.chain_valid else 'INVALID'}"
        + (f" ({report.verify_error})" if report.verify_error else ""),
        f"  name:        {report.checked_name}: "
        + ("matches" if report.name_matches else "DOES NOT MATCH"),
        f"  revocation:  {report.revocation}"
        + (f" ({report.revocation_reason}, {report.revoked_at})" if report.revoked_at else ""),
        f"  expires:     {report.not_after} ({report.days_left} days left)",
        "  presented chain:",
    ]
    for i, entry in enumerate(report.chain):
        lines.append(f"    {i}: {entry.subject}")
        lines.append(f"       issuer {entry.issuer}, serial {entry.serial}")
        lines.append(f"       valid to {entry.not_after}, sha256 {entry.sha256[:16]}...")
        if entry.names:
            lines.append(f"       names {', '.join(entry.names)}")
    for problem in report.problems:
        lines.append(f"  problem: {problem}")
    for note in report.notes:
        lines.append(f"  note:    {note}")
    return "\n".join(lines)
