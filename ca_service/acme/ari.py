"""ACME Renewal Information (RFC 9773): when each certificate should be renewed.

This is where a private CA can do better than waiting for expiry: the CA knows when a
certificate must go (revoked, on hold, or under an issuing CA that will not outlive it), and
ARI-aware clients (certbot, lego, Caddy) ask before they decide. Such a certificate gets a
window that has already begun, so the client replaces it on its next check; every other
certificate gets the usual window in the last third of its life.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from cryptography import x509

from ca_service.acme.problems import ACMEProblem
from ca_service.core.facade import Core
from ca_service.domain import CertificateRecord, CertStatus
from ca_service.errors import NotFound
from ca_service.signing.serials import serial_hex

# How often clients should ask again (RFC 9773 section 4.3's Retry-After).
RETRY_AFTER = 6 * 3600
URGENT_RETRY_AFTER = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or "=" in text:
        raise ValueError("padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cert_id(cert: x509.Certificate) -> str:
    """base64url(AKI keyIdentifier) "." base64url(serial DER content octets)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    length = serial.bit_length() // 8 + 1  # DER INTEGER: a leading 0 byte for a set top bit
    return f"{_b64(aki.key_identifier)}.{_b64(serial.to_bytes(length, 'big'))}"


def _der_positive(octets: bytes) -> bool:
    """The content octets of a DER INTEGER that is positive: no sign bit, no padding byte
    unless the next one has its top bit set (RFC 9773 4.1 names a serial by exactly these)."""
    if octets[0] & 0x80:
        return False
    return not (len(octets) > 1 and octets[0] == 0 and not octets[1] & 0x80)


def _authority_with_key_id(core: Core, key_id: bytes) -> str | None:
    for record in core.list_authorities():
        cert = core.authority_certificate(record.name)
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            continue
        if ski.digest == key_id:
            return record.name
    return None


def certificate_of(core: Core, raw: Any) -> CertificateRecord:
    """The certificate an ARI CertID names (``malformed``, or 404 when it is not ours)."""
    if not isinstance(raw, str) or raw.count(".") != 1:
        raise ACMEProblem("malformed", "a CertID is base64url(AKI).base64url(serial)")
    left, right = raw.split(".")
    try:
        key_id, serial_bytes = _unb64(left), _unb64(right)
    except (ValueError, binascii.Error):
        raise ACMEProblem("malformed", "a CertID is base64url(AKI).base64url(serial)") from None
    if not key_id or not serial_bytes or len(serial_bytes) > 21 or not _der_positive(serial_bytes):
        raise ACMEProblem("malformed", "a CertID is base64url(AKI).base64url(serial)")
    authority = _authority_with_key_id(core, key_id)
    if authority is None:
        raise ACMEProblem(
            "malformed", "no authority of this CA has that key identifier", status=404
        )
    serial = serial_hex(int.from_bytes(serial_bytes, "big"))
    try:
        return core.get_certificate(serial, authority)
    except NotFound:
        raise ACMEProblem("malformed", "no such certificate", status=404) from None


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def renewal_info(core: Core, raw: Any) -> tuple[dict[str, Any], int]:
    """The suggested window of the certificate ``raw`` names, and the Retry-After seconds."""
    record = certificate_of(core, raw)
    now = core.clock.now()
    urgent = _reason_to_replace_now(core, record, now)
    if urgent is not None:
        # A window wholly in the past: RFC 9773 section 4.2 says to renew at once.
        body: dict[str, Any] = {
            "suggestedWindow": {
                "start": _iso(now - dt.timedelta(hours=2)),
                "end": _iso(now - dt.timedelta(hours=1)),
            },
            "explanation": urgent,
        }
        return body, URGENT_RETRY_AFTER
    life = record.not_after - record.not_before
    start = record.not_before + life * 2 / 3
    end = record.not_before + life * 5 / 6
    return {"suggestedWindow": {"start": _iso(start), "end": _iso(end)}}, RETRY_AFTER


def _reason_to_replace_now(core: Core, record: CertificateRecord, now: dt.datetime) -> str | None:
    if record.status is CertStatus.REVOKED:
        reason = record.revocation_reason.value if record.revocation_reason else "unspecified"
        return f"the certificate was revoked ({reason})"
    authority = core.get_authority(record.authority)
    if authority.revoked_at is not None:
        return "the issuing CA was revoked"
    ca_cert = core.authority_certificate(record.authority)
    life = record.not_after - record.not_before
    if ca_cert.not_valid_after_utc < record.not_before + life * 5 / 6:
        return "the issuing CA expires before this certificate's renewal window ends"
    return None
