"""Mutual TLS: a client certificate of this CA as the caller's credential.

The TLS layer (``ca_service.tls.serving``) has already verified the chain to one of our
authorities and the validity period. What the handshake cannot know is checked here, per request,
against the store: the certificate must be one we issued (same serial and SHA-256 fingerprint),
not revoked now (the store, not a CRL that may be hours old), not expired, and of profile
``client`` or ``peer``. It then maps to a role and policy through the ``[[mtls]]`` rules; with
no matching rule it carries no role and may only renew itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from flask import g, request

from ca_service.config import MTLSRule
from ca_service.crypto.keys import fingerprint_sha256
from ca_service.crypto.names import parse_name
from ca_service.domain import Actor, CallerPolicy, CertificateRecord, CertStatus, Role
from ca_service.errors import Unauthorized
from ca_service.policy import authorization
from ca_service.policy.names import matches_pattern
from ca_service.signing.serials import serial_hex
from ca_service.web.extensions import core, settings

CLIENT_PROFILES = ("client", "peer")


@dataclass(frozen=True)
class CertificatePrincipal:
    """A caller authenticated by its client certificate; shaped like ``TokenRecord`` where the
    handlers use it (identity, role, policy, actor)."""

    record: CertificateRecord
    role: Role | None
    policy: CallerPolicy

    @property
    def identity(self) -> str:
        return authorization.certificate_identity(self.record.authority, self.record.serial)

    def actor(self, request_id: str | None, client_address: str | None) -> Actor:
        return Actor(self.identity, request_id, client_address, self.policy)


def peer_certificate_der() -> bytes | None:
    """The DER client certificate of this request's TLS connection, if it presented one."""
    sock = request.environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        der = getpeercert(binary_form=True)
    except ValueError:  # the handshake is not done: no certificate to speak of
        return None
    return der or None


def authenticate_certificate(der: bytes) -> CertificatePrincipal:
    """The principal for a verified client certificate, or Unauthorized saying why not."""
    cert = x509.load_der_x509_certificate(der)
    serial = serial_hex(cert.serial_number)
    fingerprint = fingerprint_sha256(cert)
    g.auth_identity = f"cert:{serial}"
    ca = core()
    found = ca.catalog.find_certificates(serial)
    record = next((r for r in found if r.fingerprint_sha256 == fingerprint), None)
    if record is None:
        raise Unauthorized(f"client certificate {serial} was not issued by this service")
    g.auth_identity = authorization.certificate_identity(record.authority, record.serial)
    now = ca.clock.now()
    status = record.status_at(now)
    if status is CertStatus.REVOKED:
        reason = record.revocation_reason.value if record.revocation_reason else "unspecified"
        raise Unauthorized(f"client certificate {serial} is revoked ({reason})")
    if status is CertStatus.EXPIRED or now < record.not_before:
        raise Unauthorized(f"client certificate {serial} is not valid at this time")
    if record.profile not in CLIENT_PROFILES:
        raise Unauthorized(
            f"client certificate {serial} has profile {record.profile!r}; "
            "only client and peer certificates authenticate"
        )
    role, policy = authorization.certificate_rights(
        first_matching_rule(cert, record, settings().mtls_rules)
    )
    return CertificatePrincipal(record, role, policy)


def first_matching_rule(
    cert: x509.Certificate, record: CertificateRecord, rules: tuple[MTLSRule, ...]
) -> MTLSRule | None:
    """Rules are tried in file order; the first that matches decides (as in a firewall)."""
    for rule in rules:
        if _matches(rule, cert, record):
            return rule
    return None


def _matches(rule: MTLSRule, cert: x509.Certificate, record: CertificateRecord) -> bool:
    if rule.issued_by is not None and record.authority != rule.issued_by:
        return False
    if rule.certificate_profile is not None and record.profile != rule.certificate_profile:
        return False
    if rule.kind == "subject":
        return cert.subject.rfc4514_string() == rule.value
    if rule.kind == "san":
        return any(matches_pattern(parse_name(n), rule.value) for n in record.sans)
    if rule.kind == "profile":
        return record.profile == rule.value
    if rule.kind == "extension":
        oid = x509.ObjectIdentifier(rule.value)
        return any(ext.oid == oid for ext in cert.extensions)
    return False
