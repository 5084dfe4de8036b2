"""Domain objects to JSON-ready dicts: the wire shapes the OpenAPI document describes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.domain import (
    AuditEvent,
    AuthorityRecord,
    CertificateRecord,
    IssuedCertificate,
    TokenRecord,
)


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def certificate(r: CertificateRecord, now: dt.datetime, *, pem: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "serial": r.serial,
        "authority": r.authority,
        "subject": r.subject,
        "common_name": r.common_name,
        "sans": list(r.sans),
        "key_type": r.key_type,
        "profile": r.profile,
        "not_before": iso(r.not_before),
        "not_after": iso(r.not_after),
        "status": r.status_at(now).value,
        "revoked_at": iso(r.revoked_at),
        "revocation_reason": r.revocation_reason.value if r.revocation_reason else None,
        "fingerprint_sha256": r.fingerprint_sha256,
        "requester": r.requester,
        "created_at": iso(r.created_at),
        "successor": r.successor,
    }
    if pem:
        cert = x509.load_der_x509_certificate(r.der)
        data["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode()
    return data


def with_chain(
    data: dict[str, Any], certificate_pem: str, chain: tuple[str, ...], root: str | None
) -> dict[str, Any]:
    """The PEM fields of a certificate answer, as certbot and step name them: ``chain`` the
    intermediates a server sends (no root), ``fullchain`` the certificate and ``chain``,
    ``root`` the trust anchor above them (null when this service does not hold it)."""
    data["certificate"] = certificate_pem
    data["chain"] = "".join(chain)
    data["fullchain"] = certificate_pem + data["chain"]
    data["root"] = root
    return data


def issued(result: IssuedCertificate, now: dt.datetime) -> dict[str, Any]:
    data = with_chain(
        certificate(result.record, now), result.certificate_pem, result.chain_pem, result.root_pem
    )
    if result.private_key_pem is not None:
        data["private_key"] = result.private_key_pem
    return data


def authority(r: AuthorityRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "name": r.name,
        "parent": r.parent,
        "is_root": r.is_root,
        "is_default": r.is_default,
        "subject": r.subject,
        "key_type": r.key_type,
        "not_before": iso(r.not_before),
        "not_after": iso(r.not_after),
        "name_constraints": r.name_constraints,
        "status": r.status_at(now).value,
        "revoked_at": iso(r.revoked_at),
        "revocation_reason": r.revocation_reason.value if r.revocation_reason else None,
    }


def token(r: TokenRecord, now: dt.datetime) -> dict[str, Any]:
    p = r.policy
    return {
        "id": r.id,
        "name": r.name,
        "role": r.role.value,
        "state": r.state(now),
        "policy": {
            "allowed_names": list(p.allowed_names) if p.allowed_names is not None else None,
            "profiles": list(p.profiles) if p.profiles is not None else None,
            "max_validity_days": p.max_validity_days,
            "authorities": list(p.authorities) if p.authorities is not None else None,
            "allow_wildcards": p.allow_wildcards,
            "allowed_subjects": (
                list(p.allowed_subjects) if p.allowed_subjects is not None else None
            ),
        },
        "created_by": r.created_by,
        "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at),
        "revoked_at": iso(r.revoked_at),
    }


def audit(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "request_id": e.request_id,
        "client_address": e.client_address,
        "details": e.details,
    }
