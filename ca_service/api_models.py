"""The JSON wire shapes of the service, as typed models: what the HTTP API accepts and answers,
and what the CLI prints with ``--json``.

One definition per shape, so the request checks, the answers and the OpenAPI document cannot
disagree: the web layer validates request bodies with the request models, builds every JSON
answer through the response models, and generates the document's schemas from both. Kept free
of Flask so that the CLI (which never imports ``web``) prints the same records the API returns.

Every model is strict and refuses unknown fields: a JSON ``"5"`` is not an integer, ``true`` is
not a number, and a misspelt field is an error rather than silently ignored. Values that the
domain parses (key types, reasons, roles) stay text here, checked by the domain's own parser
with its messages; the document lists the domain enum's values, taken from the enum itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from ca_service import domain
from ca_service.domain import AuditEvent as StoredAuditEvent
from ca_service.domain import (
    AuthorityRecord,
    CertificateRecord,
    CertStatus,
    KeyType,
    RevocationReason,
)
from ca_service.tokens import Role, TokenRecord

STRICT = ConfigDict(strict=True, extra="forbid")


def iso(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the form every answer has always used."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


Time = Annotated[
    dt.datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _enum_text(values: list[str], **extra: Any) -> Any:
    """A text field whose document lists ``values`` (taken from a domain enum, so the list is
    not written twice); the domain's parser decides what it accepts, with its own message."""
    return WithJsonSchema({"type": "string", "enum": values, **extra})


# Optional request fields: leaving one out means "not given". ``null`` is refused before the
# model sees it (see web/body.py), so the document shows the plain type, not a nullable one.
Absent = SkipJsonSchema[None]


class _Model(BaseModel):
    model_config = STRICT


# ---------------------------------------------------------------------------- requests


class IssueRequest(_Model):
    """Either csr, or common_name and/or sans (a key is then generated)."""

    csr: str | Absent = Field(None, description="PKCS#10 request, PEM")
    common_name: str | Absent = None
    sans: list[str] | Absent = None
    key_type: Annotated[str, _enum_text([k.value for k in KeyType])] | Absent = None
    profile: str | Absent = Field(None, json_schema_extra={"default": "server"})
    validity_days: int | Absent = Field(None, json_schema_extra={"minimum": 1})
    authority: str | Absent = None


_REASONS = [r.value for r in RevocationReason]


class RevokeRequest(_Model):
    reason: Annotated[str, _enum_text(_REASONS)] | Absent = None
    authority: str | Absent = None


class RenewRequest(_Model):
    """All optional. Without csr the successor certifies the same public key."""

    csr: str | Absent = Field(
        None,
        description="PKCS#10 request, PEM, for a new key; its names, if any, must be the "
        "certificate's",
    )
    validity_days: int | Absent = Field(None, json_schema_extra={"minimum": 1})
    authority: str | Absent = Field(None, description="When the serial is ambiguous")


class AuthorityRevokeRequest(_Model):
    reason: Annotated[
        str,
        _enum_text(
            [r for r in _REASONS if r != RevocationReason.CERTIFICATE_HOLD.value],
            description="certificateHold is refused: an authority's revocation is final.",
        ),
    ]


_ROLES = [r.value for r in Role]


class TokenRequest(_Model):
    name: str
    role: Annotated[str, _enum_text(_ROLES)]
    allowed_names: list[str] | Absent = Field(
        None, description="Patterns: host, *.domain, CIDR, *@domain, uri-prefix*"
    )
    profiles: list[str] | Absent = None
    max_validity_days: int | Absent = Field(None, json_schema_extra={"minimum": 1})
    authorities: list[str] | Absent = None
    allow_wildcards: bool | Absent = None
    allowed_subjects: list[str] | Absent = Field(
        None,
        description="Subject values besides a CN repeating a SAN: ATTR=glob, e.g. CN=build-*",
    )
    expires_in_days: int | Absent = Field(None, json_schema_extra={"minimum": 1, "maximum": 3650})


class EABKeyRequest(_Model):
    """An External Account Binding key's grant: what the ACME accounts it binds may order."""

    name: str = Field(
        description="What the key is for, 1 to 128 printable characters",
        json_schema_extra={"minLength": 1, "maxLength": 128},
    )
    allowed_names: list[str] = Field(
        description="Patterns the accounts may order: host, *.domain, CIDR",
        json_schema_extra={"minItems": 1},
    )
    profiles: list[str] | Absent = None
    max_validity_days: int | Absent = Field(None, json_schema_extra={"minimum": 1})
    authorities: list[str] | Absent = None
    allow_wildcards: bool | Absent = None


class ProvisionerRequest(_Model):
    name: str = Field(description="1 to 64 of a-z 0-9 . _ -; part of the caller's identity")
    type: Literal["oidc"] | Absent = None
    preset: Literal["github-actions", "gitlab"] | Absent = Field(
        None,
        description="Fills the issuer (github-actions: https://token.actions.githubusercontent.com"
        ", gitlab: https://gitlab.com unless issuer is given) and requires a claim rule on the "
        "repository (project)",
    )
    issuer: str | Absent = Field(None, description="https URL; required without a preset")
    audience: str
    jwks_uri: str | Absent = Field(
        None, description="Else discovered from <issuer>/.well-known/openid-configuration"
    )
    claims: dict[str, str | list[str]] | Absent = Field(
        None,
        description="Claim -> glob pattern, or a list of them (any may match); every claim "
        "listed must be present and match",
    )
    allowed_names: list[str] = Field(
        description="Name patterns; {claim} placeholders (DNS names only) are filled with the "
        "token's claim made into a DNS label"
    )
    profiles: list[str] | Absent = None
    max_validity_days: int | Absent = Field(None, json_schema_extra={"minimum": 1})
    authorities: list[str] | Absent = None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    IssueRequest,
    RevokeRequest,
    RenewRequest,
    AuthorityRevokeRequest,
    TokenRequest,
    EABKeyRequest,
    ProvisionerRequest,
)

# ---------------------------------------------------------------------------- answers


class Certificate(_Model):
    serial: str
    authority: str
    subject: str
    common_name: str | None
    sans: list[str]
    key_type: str
    profile: str
    not_before: Time
    not_after: Time
    status: CertStatus
    revoked_at: Time | None
    revocation_reason: RevocationReason | None
    fingerprint_sha256: str
    requester: str
    created_at: Time
    successor: str | None = Field(description="Serial of the certificate that renewed this one")
    acme_order: str | None = Field(
        default=None,
        description="Path of the ACME order the certificate was issued for "
        "(/acme/<authority>/order/<id>); null when it was not issued through ACME",
    )


# The convention of certbot and step (and RFC 8555's chain): what a server sends is fullchain.
class CertificateWithPem(Certificate):
    certificate: str = Field(description="PEM: the certificate")
    chain: str = Field(
        description="PEM: the intermediates above the certificate, issuing CA first, without "
        "the root, which is the root field (chain is empty for a certificate issued by a root)"
    )
    fullchain: str = Field(
        description="PEM: certificate followed by chain; what a TLS server is configured with"
    )
    root: str | None = Field(
        description="PEM: the root above the chain, for clients to trust (distribute it out "
        "of band); null when this service does not hold it (an imported intermediate)"
    )


class IssuedCertificate(CertificateWithPem):
    private_key: str | SkipJsonSchema[None] = Field(
        None,
        description="PKCS#8 PEM; only when the key was generated by the service. It is not "
        "stored and cannot be fetched again.",
    )


class CertificatePage(_Model):
    items: list[Certificate]
    next_cursor: str | None


class Authority(_Model):
    name: str
    parent: str | None
    is_root: bool
    is_default: bool
    subject: str
    key_type: str
    not_before: Time
    not_after: Time
    name_constraints: dict[str, list[str]] | None
    status: CertStatus = Field(
        description="Of the authority's own certificate, as its issuer publishes it. A revoked "
        "or expired authority issues nothing."
    )
    revoked_at: Time | None
    revocation_reason: RevocationReason | None


class AuthorityList(_Model):
    items: list[Authority]


class TokenPolicy(_Model):
    allowed_names: list[str] | None
    profiles: list[str] | None
    max_validity_days: int | None
    authorities: list[str] | None
    allow_wildcards: bool
    allowed_subjects: list[str] | None


class Token(_Model):
    id: str
    name: str
    role: Role
    state: Literal["active", "expired", "revoked"]
    policy: TokenPolicy
    created_by: str
    created_at: Time
    expires_at: Time | None
    revoked_at: Time | None
    token: str | SkipJsonSchema[None] = Field(
        None, description="Only in the answer that creates it."
    )


class TokenList(_Model):
    items: list[Token]


class EABKey(_Model):
    """An External Account Binding key (RFC 8555 section 7.3.4) and the policy it grants."""

    kid: str = Field(description="The key identifier an ACME client sends (--eab-kid)")
    hmac_key: str | SkipJsonSchema[None] = Field(
        None,
        description="base64url, no padding (--eab-hmac-key). Only in the answer that creates "
        "the key: it is stored encrypted and cannot be fetched again.",
    )
    name: str
    allowed_names: list[str]
    profiles: list[str] | None
    max_validity_days: int | None
    authorities: list[str] | None
    allow_wildcards: bool
    created_at: Time
    bound_account: str | None = Field(
        description="The ACME account bound with the key; a key binds one account only"
    )
    revoked_at: Time | None


class EABKeyList(_Model):
    items: list[EABKey]


class Provisioner(_Model):
    name: str
    type: Literal["oidc"]
    issuer: str
    audience: str
    jwks_uri: str | None
    claims: dict[str, list[str]]
    allowed_names: list[str]
    profiles: list[str] | None
    max_validity_days: int | None
    authorities: list[str] | None
    created_by: str
    created_at: Time


class ProvisionerList(_Model):
    items: list[Provisioner]


class AuditEvent(_Model):
    id: int | None
    at: Time
    actor: str
    action: str
    target: str | None
    request_id: str | None
    client_address: str | None
    details: dict[str, Any] | None


class AuditPage(_Model):
    items: list[AuditEvent]
    next_cursor: str | None


class ChainLink(_Model):
    name: str
    # The core's readiness report holds the status as text (it is also logged as such).
    status: CertStatus = Field(strict=False)


class Alive(_Model):
    status: Literal["ok"]


class Health(_Model):
    status: Literal["ok"]
    database: str
    keys: str
    authority: str = Field(description="The default issuing authority")
    chain: list[ChainLink] = Field(
        description="That authority and each CA above it, with its status"
    )
    authorities: int = Field(description="How many this service holds")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    # Problem details are extensible (RFC 9457 section 3.2): members beyond these may follow.
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    title: str
    status: int
    detail: str
    request_id: str | SkipJsonSchema[None] = None
    rule: str | SkipJsonSchema[None] = Field(
        None, description="The policy rule that refused the request."
    )


class NotReady(Problem):
    """Problem details (type urn:ca-service:problem:not-ready) with each reason."""

    problems: list[str]
    checks: dict[str, Any] = Field(description="What was checked, as in Health, where it could be")


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Certificate,
    CertificateWithPem,
    IssuedCertificate,
    CertificatePage,
    Authority,
    AuthorityList,
    Token,
    TokenList,
    EABKey,
    EABKeyList,
    Provisioner,
    ProvisionerList,
    AuditEvent,
    AuditPage,
    Alive,
    Health,
    Problem,
    NotReady,
)

# ---------------------------------------------------------------------------- records to answers


def as_json(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data, without the optional members that were not given (the
    private key of a certificate whose key was not made here, say)."""
    return model.model_dump(mode="json", exclude_unset=True)


def _certificate_fields(r: CertificateRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "serial": r.serial,
        "authority": r.authority,
        "subject": r.subject,
        "common_name": r.common_name,
        "sans": list(r.sans),
        "key_type": r.key_type,
        "profile": r.profile,
        "not_before": r.not_before,
        "not_after": r.not_after,
        "status": r.status_at(now),
        "revoked_at": r.revoked_at,
        "revocation_reason": r.revocation_reason,
        "fingerprint_sha256": r.fingerprint_sha256,
        "requester": r.requester,
        "created_at": r.created_at,
        "successor": r.successor,
        "acme_order": r.acme_order,
    }


def certificate(r: CertificateRecord, now: dt.datetime) -> Certificate:
    """A stored certificate as the API lists it and ``ca-service list/show --json`` prints it."""
    return Certificate(**_certificate_fields(r, now))


def _pem_fields(certificate_pem: str, chain: tuple[str, ...], root: str | None) -> dict[str, Any]:
    """The PEM fields of a certificate answer, as certbot and step name them: ``chain`` the
    intermediates a server sends (no root), ``fullchain`` the certificate and ``chain``,
    ``root`` the trust anchor above them (null when this service does not hold it)."""
    joined = "".join(chain)
    return {
        "certificate": certificate_pem,
        "chain": joined,
        "fullchain": certificate_pem + joined,
        "root": root,
    }


def certificate_with_pem(
    r: CertificateRecord,
    now: dt.datetime,
    certificate_pem: str,
    chain: tuple[str, ...],
    root: str | None,
) -> CertificateWithPem:
    return CertificateWithPem(
        **_certificate_fields(r, now), **_pem_fields(certificate_pem, chain, root)
    )


def issued(result: domain.IssuedCertificate, now: dt.datetime) -> IssuedCertificate:
    """A certificate just issued or renewed, with its PEM chain (and its key, if made here)."""
    fields = {
        **_certificate_fields(result.record, now),
        **_pem_fields(result.certificate_pem, result.chain_pem, result.root_pem),
    }
    if result.private_key_pem is not None:
        fields["private_key"] = result.private_key_pem
    return IssuedCertificate(**fields)


def authority(r: AuthorityRecord, now: dt.datetime) -> Authority:
    return Authority(
        name=r.name,
        parent=r.parent,
        is_root=r.is_root,
        is_default=r.is_default,
        subject=r.subject,
        key_type=r.key_type,
        not_before=r.not_before,
        not_after=r.not_after,
        name_constraints=r.name_constraints,
        status=r.status_at(now),
        revoked_at=r.revoked_at,
        revocation_reason=r.revocation_reason,
    )


def token(r: TokenRecord, now: dt.datetime, *, secret: str | None = None) -> Token:
    """A token record; ``secret`` (the plain token) only in the answer that creates it."""
    p = r.policy
    fields: dict[str, Any] = {
        "id": r.id,
        "name": r.name,
        "role": r.role,
        "state": r.state(now),
        "policy": TokenPolicy(
            allowed_names=list(p.allowed_names) if p.allowed_names is not None else None,
            profiles=list(p.profiles) if p.profiles is not None else None,
            max_validity_days=p.max_validity_days,
            authorities=list(p.authorities) if p.authorities is not None else None,
            allow_wildcards=p.allow_wildcards,
            allowed_subjects=(list(p.allowed_subjects) if p.allowed_subjects is not None else None),
        ),
        "created_by": r.created_by,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "revoked_at": r.revoked_at,
    }
    if secret is not None:
        fields["token"] = secret
    return Token(**fields)


def eab_key(r: domain.EABKeyRecord, *, hmac_key: str | None = None) -> EABKey:
    """An EAB key record; ``hmac_key`` only in the answer that creates it."""
    p = r.policy
    fields: dict[str, Any] = {
        "kid": r.kid,
        "name": r.name,
        "allowed_names": list(p.allowed_names or ()),
        "profiles": list(p.profiles) if p.profiles is not None else None,
        "max_validity_days": p.max_validity_days,
        "authorities": list(p.authorities) if p.authorities is not None else None,
        "allow_wildcards": p.allow_wildcards,
        "created_at": r.created_at,
        "bound_account": r.account_id,
        "revoked_at": r.revoked_at,
    }
    if hmac_key is not None:
        fields["hmac_key"] = hmac_key
    return EABKey(**fields)


def provisioner(r: domain.ProvisionerRecord) -> Provisioner:
    return Provisioner(
        name=r.name,
        type="oidc",
        issuer=r.issuer,
        audience=r.audience,
        jwks_uri=r.jwks_uri,
        claims={k: list(v) for k, v in r.claims.items()},
        allowed_names=list(r.allowed_names),
        profiles=list(r.profiles) if r.profiles is not None else None,
        max_validity_days=r.max_validity_days,
        authorities=list(r.authorities) if r.authorities is not None else None,
        created_by=r.created_by,
        created_at=r.created_at,
    )


def audit(e: StoredAuditEvent) -> AuditEvent:
    return AuditEvent(
        id=e.id,
        at=e.at,
        actor=e.actor,
        action=e.action,
        target=e.target,
        request_id=e.request_id,
        client_address=e.client_address,
        details=e.details,
    )
