"""Signing CRLs. The entries and the number are decided by the caller; this only encodes.

The CertificateList is written with crypto.der and signed by the CA's Signer; before it is
returned, `cryptography` parses it back and the signature is verified with the CA
certificate's public key, so a broken CRL is never published. Entries
stream in as raw rows (hex serial, revocation time, reason name): at a million entries there
is no per-entry object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca_service.crypto import der
from ca_service.domain import RevocationReason
from ca_service.signing import algorithms
from ca_service.signing.signer import Signer

# A stored revocation: (lower-case hex serial, revocation time as datetime or SQLite text in UTC,
# RevocationReason value or None).
RevokedRow = tuple[str, dt.datetime | str, str | None]

# crlEntryExtensions holding only reasonCode (2.5.29.21), non-critical, per reason.
_REASON_EXTENSIONS = {
    reason.value: (
        der.sequence(
            der.sequence(
                der.tlv(0x06, bytes.fromhex("551d15")),
                der.tlv(0x04, der.tlv(0x0A, bytes((reason.code,)))),
            )
        )
        # RFC 5280 5.3.1: unspecified SHOULD be absent, not encoded.
        if reason is not RevocationReason.UNSPECIFIED
        else b""
    )
    for reason in RevocationReason
}
# removeFromCRL (8): only in delta CRLs, for a certificate released from hold (RFC 5280 5.3.1).
REMOVE_FROM_CRL = "removeFromCRL"
_REASON_EXTENSIONS[REMOVE_FROM_CRL] = der.sequence(
    der.sequence(der.tlv(0x06, bytes.fromhex("551d15")), der.tlv(0x04, der.tlv(0x0A, b"\x08")))
)


_DIGITS_ONLY = str.maketrans("", "", "- :")


def _entries(rows: Iterable[RevokedRow]) -> bytes:
    """The DER of every entry, concatenated. This loop runs once per revoked certificate, so it
    is written flat: a serial of at most 21 octets and a whole entry under 128 octets always
    take single-octet lengths."""
    times: dict[dt.datetime, bytes] = {}
    reasons = _REASON_EXTENSIONS
    fromhex = bytes.fromhex
    digits_only = _DIGITS_ONLY
    out = bytearray()
    for serial, revoked_at, reason in rows:
        body = fromhex(serial if not len(serial) & 1 else "0" + serial)
        if body[0] == 0 and len(body) > 1:
            body = body.lstrip(b"\x00") or b"\x00"
        if body[0] & 0x80:
            body = b"\x00" + body
        if len(body) > 21:
            raise ValueError(f"serial {serial} is longer than 20 octets")
        if isinstance(revoked_at, str):
            # SQLite's stored UTC text 'YYYY-MM-DD HH:MM:SS...': its digits are the UTCTime.
            if revoked_at < "2050":
                when = b"\x17\x0d" + revoked_at[2:19].translate(digits_only).encode() + b"Z"
            else:
                when = der.time_from_text(revoked_at)
        else:
            cached = times.get(revoked_at)
            if cached is None:
                cached = times[revoked_at] = der.time_value(revoked_at)
            when = cached
        extension = reasons[reason] if reason else b""
        out += bytes((0x30, 2 + len(body) + len(when) + len(extension), 0x02, len(body)))
        out += body
        out += when
        out += extension
    return bytes(out)


def sign_crl(
    ca: Signer,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    rows: Iterable[RevokedRow],
    *,
    more_extensions: Sequence[bytes] = (),
) -> bytes:
    """The DER CRL: v2, AKI and CRL number extensions, entries in the order given.
    ``more_extensions``: DER Extensions to add after those (IDP, Delta CRL Indicator, Freshest
    CRL: signing/crl_parts.py)."""
    algorithm = algorithms.algorithm_identifier(ca.key_type)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski).public_bytes()
    extensions = der.sequence(
        der.sequence(der.tlv(0x06, bytes.fromhex("551d23")), der.tlv(0x04, aki)),
        der.sequence(
            der.tlv(0x06, bytes.fromhex("551d14")),
            der.tlv(0x04, x509.CRLNumber(number).public_bytes()),
        ),
        *more_extensions,
    )
    entries = _entries(rows)
    tbs = der.sequence(
        der.integer(1),  # v2
        algorithm,
        ca.certificate.subject.public_bytes(),
        der.time_value(this_update),
        der.time_value(next_update),
        der.tlv(0x30, entries) if entries else b"",
        der.explicit(0, extensions),
    )
    del entries
    signature = ca.sign_crl_tbs(tbs)
    crl_der = der.sequence(tbs, algorithm, der.bit_string(signature))
    # Before publishing: the whole CRL must parse, and its signature verify under the CA
    # certificate's key (checked over our own TBS bytes: is_signature_valid would re-walk
    # every entry, 80 ms per 100k).
    parsed = x509.load_der_x509_crl(crl_der)
    try:
        algorithms.verify(ca.certificate, ca.key_type, signature, tbs)
    except InvalidSignature:
        raise RuntimeError("the CRL just signed does not verify; refusing to publish it") from None
    if parsed.tbs_certlist_bytes != tbs:
        raise RuntimeError("the CRL just signed does not parse back; refusing to publish it")
    return crl_der
