"""Signing CRLs. The entries and the number are decided by the caller; this only encodes.

The CertificateList is written with crypto.der and signed by the CA's Signer; before it is
returned, `cryptography` parses it back and the signature is verified with the CA
certificate's public key, so a broken CRL is never published. Entries
stream in as raw rows (hex serial, revocation time, reason name): at a million entries there
is no per-entry object, and the per-entry work is one f-string (see _entries).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from itertools import islice

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca_service.crypto import der
from ca_service.domain import RevocationReason
from ca_service.signing import algorithms
from ca_service.signing.signer import Signer

# A stored revocation: (lower-case hex serial, revocation time in UTC as a datetime, as
# 'YYYYMMDDHHMMSS' or as SQLite's stored 'YYYY-MM-DD HH:MM:SS[.ffffff]', RevocationReason value
# or None).
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
# How many entries are turned from hex text into DER at a time: large enough that the one
# bytes.fromhex per chunk is all the C work, small enough that the chunk's text stays a few MB.
_CHUNK = 20_000


def _time_digits(value: dt.datetime | str) -> str:
    """'YYYYMMDDHHMMSS' in UTC from a datetime or a stored 'YYYY-MM-DD HH:MM:SS...' text."""
    if isinstance(value, str):
        return value[:19].translate(_DIGITS_ONLY)
    utc = value.astimezone(dt.UTC) if value.tzinfo else value
    return utc.strftime("%Y%m%d%H%M%S")


def _serial_octets(serial: str) -> bytes:
    body = bytes.fromhex(serial if not len(serial) & 1 else "0" + serial)
    body = body.lstrip(b"\x00") or b"\x00"
    if body[0] & 0x80:
        body = b"\x00" + body
    if len(body) > 21:
        raise ValueError(f"serial {serial} is longer than 20 octets")
    return body


def _shape(serial: str, digits: str, reason: str | None) -> tuple[str, str, int, str]:
    """The constant parts of every entry shaped like this one, as hex text: the header up to the
    serial's octets, the time's tag and length, where its digits start, and what follows them.
    An entry's shape is (serial length, first digit, reason, UTCTime or GeneralizedTime), so a
    CRL has a handful of shapes and a million entries share them."""
    body = _serial_octets(serial)
    utc = digits < "2050"
    when = 13 if utc else 15
    extension = _REASON_EXTENSIONS[reason] if reason else b""
    size = 2 + len(body) + 2 + when + len(extension)
    pad = body[: len(body) - len(serial) // 2]  # 0x00 before a serial whose top bit is set
    head = bytes((0x30, size, 0x02, len(body))) + pad
    return head.hex(), ("170d" if utc else "180f"), (2 if utc else 0), "5a" + extension.hex()


def _entry_hex(serial: str, digits: str, reason: str | None) -> str:
    """One entry as hex text, the general way (any hex serial, even with leading zeros)."""
    body = _serial_octets(serial)
    when = der.time_from_digits(digits)
    extension = _REASON_EXTENSIONS[reason] if reason else b""
    return der.sequence(der.tlv(0x02, body), when, extension).hex()


def entry_der(serial: str, revoked_at: dt.datetime, reason: str | None) -> bytes:
    """One revoked certificate's CRL entry, byte for byte what a CRL built from its row holds;
    kept with the revocation so that a full CRL joins stored entries (migration 0013)."""
    return bytes.fromhex(_entry_hex(serial, _time_digits(revoked_at), reason))


def _entries(rows: Iterable[RevokedRow]) -> tuple[list[bytes], int]:
    """The DER of every entry, in chunks, and their count.

    This loop runs once per revoked certificate, and at a million entries it was most of a
    CRL's time (profile in bench/PROFILES.md, issue 15 item 3): each entry is written as hex
    text from the constants of its shape, the stored hex serial and the time's digits, and each
    chunk becomes DER in one bytes.fromhex. Serials that are not plain even-length hex without
    leading zeros take the general path, one by one."""
    shapes: dict[tuple[int, str, str | None, bool], tuple[str, str, int, str]] = {}
    chunks: list[bytes] = []
    count = 0
    only_digits = _DIGITS_ONLY
    it = iter(rows)
    while batch := list(islice(it, _CHUNK)):
        parts: list[str] = []
        append = parts.append
        for serial, revoked_at, reason in batch:
            if type(revoked_at) is not str:
                digits = _time_digits(revoked_at)
            elif len(revoked_at) == 14:
                digits = revoked_at
            else:
                digits = revoked_at[:19].translate(only_digits)
            key = (len(serial), serial[0], reason, digits < "2050")
            shape = shapes.get(key)
            if shape is None:
                if len(serial) & 1 or serial[0] == "0":
                    # Odd length or leading zeros: no shape of its own, written one by one.
                    append(_entry_hex(serial, digits, reason))
                    continue
                shape = shapes[key] = _shape(serial, digits, reason)
            head, tag, cut, tail = shape
            append(f"{head}{serial}{tag}{digits[cut:].encode().hex()}{tail}")
        count += len(batch)
        chunks.append(bytes.fromhex("".join(parts)))
    return chunks, count


def sign_crl(
    ca: Signer,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    rows: Iterable[RevokedRow],
    *,
    more_extensions: Sequence[bytes] = (),
    stored: list[bytes] | None = None,
    stored_count: int = 0,
) -> bytes:
    """The DER CRL: v2, AKI and CRL number extensions, entries in the order given.
    ``more_extensions``: DER Extensions to add after those (IDP, Delta CRL Indicator, Freshest
    CRL: signing/crl_parts.py). ``stored``: ``stored_count`` entries already in DER (entry_der,
    joined by the database), put before those of ``rows``; the list is emptied, so that its
    bytes (45 MB at a million) are not held beside the TBS and the CRL."""
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
    chunks, count = _entries(rows)
    if stored:
        chunks[:0] = stored
        stored.clear()
        count += stored_count
    size = sum(map(len, chunks))
    head = b"".join(
        (
            der.integer(1),  # v2
            algorithm,
            ca.certificate.subject.public_bytes(),
            der.time_value(this_update),
            der.time_value(next_update),
            (b"\x30" + der.length(size)) if count else b"",
        )
    )
    tail = der.explicit(0, extensions)
    # One copy of the entries into the TBS and one into the CRL, none per layer: at a million
    # entries each copy is 47 MB of the peak memory.
    tbs = b"".join((b"\x30", der.length(len(head) + size + len(tail)), head, *chunks, tail))
    del chunks
    signature = ca.sign_crl_tbs(tbs)
    signature_field = der.bit_string(signature)
    crl_der = b"".join(
        (
            b"\x30",
            der.length(len(tbs) + len(algorithm) + len(signature_field)),
            tbs,
            algorithm,
            signature_field,
        )
    )
    parsed = x509.load_der_x509_crl(crl_der)
    try:
        algorithms.verify(ca.certificate, ca.key_type, signature, tbs)
    except InvalidSignature:
        raise RuntimeError("the CRL just signed does not verify; refusing to publish it") from None
    if len(parsed) != count:
        raise RuntimeError("the CRL just signed does not parse back; refusing to publish it")
    return crl_der
