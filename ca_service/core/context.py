"""What every part of the core shares: its collaborators, and how a signed certificate becomes
the record the store keeps.

The parts hold this one object rather than copies of its fields, so a clock or serial source
swapped on a running core (as tests do) is seen by all of them at once. It must never hold
state of its own: caches belong to the part that fills them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.clock import Clock
from ca_service.config import Settings
from ca_service.crypto.fields import certificate_names, common_name_of
from ca_service.crypto.keys import key_type_of
from ca_service.domain import ApprovedTemplate, CertificateRecord, CertStatus
from ca_service.errors import BadRequest
from ca_service.notify import Events, NoEvents
from ca_service.signing.keystore import Keystore
from ca_service.signing.serials import parse_serial, serial_hex
from ca_service.storage.db import Database

# How stale a process's copy of shared store state may get (the default authority, the OCSP
# responder, a served CRL): replicas share only the database, so each process looks again at
# least this often and a change made on one replica is seen on every other within a second
# (issue 14). Each look is one indexed read of a few columns.
STORE_RECHECK_SECONDS = 0.5


@dataclass
class Context:
    settings: Settings
    db: Database
    keystore: Keystore
    clock: Clock
    serials: Callable[[], int]
    # Told of each certificate issued, revoked or expiring, after its commit (notify.py).
    events: Events = field(default_factory=NoEvents)


def record_for(
    cert: x509.Certificate, authority: str, profile: str, requester: str, now: dt.datetime
) -> CertificateRecord:
    """The stored form of a certificate ``authority`` has just signed, read from the certificate
    (a CA's own: its template is not an ApprovedTemplate)."""
    return _record(
        cert, authority, cert.subject.rfc4514_string(), common_name_of(cert),
        certificate_names(cert), key_type_of(cert.public_key()).value, profile, requester, now,
    )  # fmt: skip


def record_of_leaf(
    cert: x509.Certificate, template: ApprovedTemplate, requester: str, now: dt.datetime
) -> CertificateRecord:
    """The stored form of an end-entity certificate just signed from ``template``: the same
    record as ``record_for(cert, ...)``, in a third of its time (issue 15).

    The names, subject and key type are the template's, which the signer encodes and never
    adds to (ApprovedTemplate); reading them back out of the certificate cost 17 us of the 28
    us a record took, on every issuance. What only the signature decides (the serial's and the
    validity's encoding, the bytes and so the fingerprint) is still read from the certificate.
    tests/core/test_record_of_leaf.py holds the two forms equal across every kind of name,
    profile and key type.
    """
    return _record(
        cert, template.authority, template.subject.rfc4514_string(), template.common_name,
        tuple(map(str, template.names)), template.key_type.value, template.profile, requester,
        now,
    )  # fmt: skip


def _record(
    cert: x509.Certificate,
    authority: str,
    subject: str,
    common_name: str | None,
    sans: tuple[str, ...],
    key_type: str,
    profile: str,
    requester: str,
    now: dt.datetime,
) -> CertificateRecord:
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertificateRecord(
        authority=authority,
        serial=serial_hex(cert.serial_number),
        subject=subject,
        common_name=common_name,
        sans=sans,
        key_type=key_type,
        profile=profile,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        status=CertStatus.VALID,
        revoked_at=None,
        revocation_reason=None,
        # The DER serialised once, and hashed: what fingerprint_sha256(cert) computes.
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        requester=requester[:255],
        created_at=now,
    )


def normalize_serial(serial: str) -> str:
    """A serial as the store writes it (lower-case hex), from any way users copy one."""
    try:
        return serial_hex(parse_serial(serial))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
