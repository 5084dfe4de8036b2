"""Signing CRLs. The entries and the number are decided by the caller; this only encodes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from ca_service.crypto.keys import signature_hash
from ca_service.domain import RevocationReason, RevokedEntry
from ca_service.signing.material import CAMaterial


def sign_crl(
    ca: CAMaterial,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    entries: Sequence[RevokedEntry],
) -> x509.CertificateRevocationList:
    revoked = [_entry(e) for e in entries]
    # One builder with the whole list: chaining add_revoked_certificate copies the list each call
    # and turns 100k entries into a quadratic build.
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.certificate.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca.ski),
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=revoked,
    )
    return builder.sign(ca.key, signature_hash(ca.key_type))


def _entry(entry: RevokedEntry) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder(
        serial_number=entry.serial, revocation_date=entry.revoked_at
    )
    # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be absent rather than encoded.
    if entry.reason is not None and entry.reason is not RevocationReason.UNSPECIFIED:
        builder = builder.add_extension(x509.CRLReason(entry.reason.flag), False)
    return builder.build()
