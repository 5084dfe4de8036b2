"""Plain data shared by every layer: no I/O, no ORM, no Flask."""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca_service.errors import BadRequest


class KeyType(enum.StrEnum):
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, value: str) -> KeyType:
        try:
            return cls(value.strip().lower())
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise BadRequest(f"unknown key type {value!r}; use one of: {allowed}") from None


class CertStatus(enum.StrEnum):
    """Stored status. ``expired`` is never stored: it is derived from not_after at read time."""

    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"


class RevocationReason(enum.StrEnum):
    """RFC 5280 section 5.3.1 reason codes, by their RFC names (removeFromCRL is not a reason)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @classmethod
    def parse(cls, value: str) -> RevocationReason:
        for reason in cls:
            if reason.value.lower() == value.strip().lower():
                return reason
        allowed = ", ".join(r.value for r in cls)
        raise BadRequest(f"unknown revocation reason {value!r}; use one of: {allowed}")

    @property
    def code(self) -> int:
        """The CRLReason ENUMERATED value (RFC 5280 5.3.1) that CRLs and OCSP answers carry."""
        return _RFC5280[self][0]

    @property
    def flag(self) -> x509.ReasonFlags:
        return _RFC5280[self][1]


# The one table of reason codes: RFC 5280 code and `cryptography`'s flag of each reason (7 is
# unused; removeFromCRL, 8, is an action of delta CRLs, not a reason).
_RFC5280 = {
    RevocationReason.UNSPECIFIED: (0, x509.ReasonFlags.unspecified),
    RevocationReason.KEY_COMPROMISE: (1, x509.ReasonFlags.key_compromise),
    RevocationReason.CA_COMPROMISE: (2, x509.ReasonFlags.ca_compromise),
    RevocationReason.AFFILIATION_CHANGED: (3, x509.ReasonFlags.affiliation_changed),
    RevocationReason.SUPERSEDED: (4, x509.ReasonFlags.superseded),
    RevocationReason.CESSATION_OF_OPERATION: (5, x509.ReasonFlags.cessation_of_operation),
    RevocationReason.CERTIFICATE_HOLD: (6, x509.ReasonFlags.certificate_hold),
    RevocationReason.PRIVILEGE_WITHDRAWN: (9, x509.ReasonFlags.privilege_withdrawn),
    RevocationReason.AA_COMPROMISE: (10, x509.ReasonFlags.aa_compromise),
}


class NameKind(enum.StrEnum):
    DNS = "dns"
    IP = "ip"
    EMAIL = "email"
    URI = "uri"


@dataclass(frozen=True, order=True)
class SubjectName:
    """One subject alternative name, already normalised (DNS as lower-case A-labels)."""

    kind: NameKind
    value: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.value}"

    def general_name(self) -> x509.GeneralName:
        if self.kind is NameKind.DNS:
            return x509.DNSName(self.value)
        if self.kind is NameKind.IP:
            return x509.IPAddress(ipaddress.ip_address(self.value))
        if self.kind is NameKind.EMAIL:
            return x509.RFC822Name(self.value)
        return x509.UniformResourceIdentifier(self.value)


@dataclass(frozen=True)
class CallerPolicy:
    """What one caller may ask for. ``None`` means the caller is not restricted on that axis.

    ``allowed_subjects`` (``ATTR=glob`` patterns) are the subject values a caller whose names
    are restricted may put in a certificate besides a CN that repeats one of its checked SANs.
    """

    allowed_names: tuple[str, ...] | None = None
    profiles: tuple[str, ...] | None = None
    max_validity_days: int | None = None
    authorities: tuple[str, ...] | None = None
    allow_wildcards: bool = False
    allowed_subjects: tuple[str, ...] | None = None

    @property
    def restricts_names(self) -> bool:
        return self.allowed_names is not None or self.allowed_subjects is not None

    @classmethod
    def unrestricted(cls) -> CallerPolicy:
        return cls(allow_wildcards=True)


class TokenConfirmation:
    """An API token that a front end accepted from its process's cache of verified tokens,
    still to be confirmed active by the store inside the request's own write transaction.

    So a revoked token stops at once (the check sees every revocation committed before it)
    without a query of its own on every request. ``confirmed`` is set by the store when the
    check passed; a front end that finds it unset after the request must check the token itself
    before it answers (web/auth.py does, on success and on error alike).
    """

    __slots__ = ("confirmed", "token_id")

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        self.confirmed = False


@dataclass(frozen=True)
class Actor:
    """Who asks, for the record: identity plus the request context the audit log keeps."""

    identity: str
    request_id: str | None = None
    client_address: str | None = None
    policy: CallerPolicy = field(default_factory=CallerPolicy.unrestricted)
    # What the credential said about the caller, kept in every audit event of this actor
    # (an OIDC token's jti, repository, ref, workflow): the core records it without knowing
    # what kind of credential it came from.
    credential: tuple[tuple[str, str], ...] = ()
    # Set when the caller's token came from a cache: see TokenConfirmation.
    confirm: TokenConfirmation | None = field(default=None, compare=False)


@dataclass(frozen=True)
class IssuanceRequest:
    """A parsed, not yet approved request: the names and key the caller wants certified."""

    public_key: CertificatePublicKeyTypes
    key_type: KeyType
    common_name: str | None
    names: tuple[SubjectName, ...]
    profile: str = "server"
    validity_days: int | None = None
    authority: str | None = None


@dataclass(frozen=True)
class ApprovedTemplate:
    """Everything the signer needs, decided by policy: the signer adds nothing of its own."""

    authority: str
    serial: int
    subject: x509.Name
    common_name: str | None
    names: tuple[SubjectName, ...]
    public_key: CertificatePublicKeyTypes
    key_type: KeyType
    profile: str
    not_before: dt.datetime
    not_after: dt.datetime
    extended_key_usages: tuple[x509.ObjectIdentifier, ...]
    crl_url: str
    ca_issuers_url: str
    ocsp_url: str | None
    # keyUsage bits by their `cryptography` names, e.g. ("digital_signature", "key_encipherment").
    key_usages: tuple[str, ...] = ("digital_signature",)
    # id-pkix-ocsp-nocheck: only for delegated OCSP responder certificates (RFC 6960 4.2.2.2.1).
    ocsp_nocheck: bool = False
    # The Freshest CRL extension's URL (RFC 5280 4.2.1.15: where the delta CRLs are), or none.
    freshest_crl_url: str | None = None


@dataclass(frozen=True)
class CertificateRecord:
    """A stored certificate as every layer above storage sees it."""

    authority: str
    serial: str
    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    key_type: str
    profile: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: CertStatus
    revoked_at: dt.datetime | None
    revocation_reason: RevocationReason | None
    fingerprint_sha256: str
    der: bytes
    requester: str
    created_at: dt.datetime
    # Serial of the certificate that renewed this one, if any.
    successor: str | None = None
    # The path of the ACME order it was issued for (/acme/<authority>/order/<id>), when the
    # listing was asked to say (Catalog.with_acme_orders); None otherwise.
    acme_order: str | None = None

    def status_at(self, now: dt.datetime) -> CertStatus:
        if self.status is CertStatus.VALID and self.not_after <= now:
            return CertStatus.EXPIRED
        return self.status


@dataclass(frozen=True)
class CertificateFilter:
    """Which stored certificates a listing returns (API ``GET /certificates``, CLI ``list``)."""

    authority: str | None = None
    status: CertStatus | None = None
    name: str | None = None
    expires_before: dt.datetime | None = None
    # Keyset cursor: the id after which to continue, in the order of the listing.
    after_id: int | None = None
    limit: int = 100


class CertificateSort(enum.StrEnum):
    """The orders of the admin UI's certificate list (issue 13), each a keyset order."""

    ISSUED = "issued"  # newest issued first (id desc)
    EXPIRY = "expiry"  # soonest not_after first (not_after asc, id asc)


class CertificateState(enum.StrEnum):
    """What the admin UI shows and filters a certificate by: CertStatus, with a certificate on
    hold (revoked with reason certificateHold, which can still be released) apart from one
    revoked for good. Not a stored value: the store keeps status and revocation_reason."""

    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"
    ON_HOLD = "on_hold"


# The kinds of requester identity the service writes (the text before the first ':' of
# CertificateRecord.requester): API tokens, the local CLI, ACME accounts, OIDC ID tokens, and a
# client certificate over mutual TLS. A listing may filter on any kind; these are the known ones.
REQUESTER_KINDS = ("token", "cli", "acme", "oidc", "cert")
MAX_PAGE = 200
MAX_EXPIRING_DAYS = 36500


@dataclass(frozen=True)
class CertificateQuery:
    """One page of the admin UI's certificate list: filters, order and keyset cursor.

    ``q`` is a name substring (common name or SAN, case-insensitive, 3 characters at least),
    or a serial in hex (colons, spaces, ``0x``, leading zeros and any case allowed), or a SHA-256
    fingerprint (64 hex, colons allowed): a serial or fingerprint finds that certificate, and a
    q of 3 characters or more is searched as a name too (a shorter one that is not hex is a
    BadRequest). ``status`` takes CertificateState (or CertStatus, whose
    values it shares): ``revoked`` leaves out the certificates on hold, ``on_hold`` is only
    them. ``expiring_within_days``: valid with not_after in (now, now + N days]. ``cursor`` is
    the opaque ``next_cursor`` of the previous page, for the same sort.
    """

    q: str | None = None
    authority: str | None = None
    status: CertificateState | CertStatus | None = None
    profile: str | None = None
    requester_kind: str | None = None
    expiring_within_days: int | None = None
    sort: CertificateSort = CertificateSort.ISSUED
    cursor: str | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        # A bound on what one page may cost, checked where every front end passes.
        if not 1 <= self.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}, not {self.limit}")
        days = self.expiring_within_days
        if days is not None and not 0 <= days <= MAX_EXPIRING_DAYS:
            raise BadRequest(
                f"expiring_within_days must be between 0 and {MAX_EXPIRING_DAYS}, not {days}"
            )
        kind = self.requester_kind
        if kind is not None and not (
            0 < len(kind) <= 32 and all(c.isascii() and (c.isalnum() or c in "-_") for c in kind)
        ):
            raise BadRequest(f"requester kind {kind!r} is not a word such as token or acme")


@dataclass(frozen=True)
class CertificatePage:
    """A page of the certificate list and the cursor of the next one (None: the last page)."""

    records: list[CertificateRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class AuthorityStatusCounts:
    """How many certificates of one authority are in each state, for the dashboard."""

    authority: str
    valid: int
    revoked: int
    expired: int
    on_hold: int


@dataclass(frozen=True)
class AuthorityRecord:
    name: str
    parent: str | None
    is_root: bool
    is_default: bool
    subject: str
    key_type: str
    not_before: dt.datetime
    not_after: dt.datetime
    cert_der: bytes
    key_file: str
    name_constraints: dict[str, list[str]] | None
    external_chain_pem: str | None
    # The revocation of the authority's own certificate, as its issuer's store holds it: one
    # source of truth for the issuer's CRL, OCSP, issuance and readiness.
    revoked_at: dt.datetime | None = None
    revocation_reason: RevocationReason | None = None

    def status_at(self, now: dt.datetime) -> CertStatus:
        if self.revoked_at is not None:
            return CertStatus.REVOKED
        if self.not_after <= now:
            return CertStatus.EXPIRED
        return CertStatus.VALID


@dataclass(frozen=True)
class IssuedCertificate:
    """What issuance hands back, only after the record is committed.

    ``chain_pem`` follows the convention of certbot and step: the intermediates a server sends
    after its certificate, without the root, which clients hold already (sending it only costs
    bytes, and a client that trusted it from the wire would trust anything). ``root_pem`` is the
    self-signed root above them, or None when this service does not hold it (an imported
    intermediate without its chain).
    """

    record: CertificateRecord
    certificate_pem: str
    chain_pem: tuple[str, ...]
    private_key_pem: str | None = None
    pkcs12: bytes | None = None
    root_pem: str | None = None

    @property
    def fullchain_pem(self) -> str:
        """The certificate and its intermediates: what a TLS server is configured with."""
        return self.certificate_pem + "".join(self.chain_pem)


class Role(enum.StrEnum):
    """What an API token (or a client certificate through an ``[[mtls]]`` rule) may call."""

    READER = "reader"
    ISSUER = "issuer"
    ADMIN = "admin"

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value)
        except ValueError:
            raise BadRequest(f"unknown role {value!r}; use admin, issuer or reader") from None

    def allows(self, needed: Role) -> bool:
        """Roles are ordered: an admin may do what an issuer may, an issuer what a reader may."""
        order = [Role.READER, Role.ISSUER, Role.ADMIN]
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class TokenRecord:
    """A stored API token as every layer above storage sees it (never its secret or hash)."""

    id: str
    name: str
    role: Role
    policy: CallerPolicy
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def identity(self) -> str:
        return f"token:{self.id}"

    def actor(self, request_id: str | None, client_address: str | None) -> Actor:
        return Actor(self.identity, request_id, client_address, self.policy)

    def state(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class UISession:
    """A signed-in admin UI session, joined to its API token as it stands now: the session
    lives only while that token is active (a revoked token ends its sessions at once)."""

    id_sha256: str
    token: TokenRecord
    csrf: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True)
class AuditEvent:
    """One line of the audit log: who did (or was refused) what, on what, from where."""

    at: dt.datetime
    actor: str
    action: str
    target: str | None
    request_id: str | None
    client_address: str | None
    details: dict[str, Any] | None
    id: int | None = None

    @classmethod
    def of(
        cls,
        actor: Actor,
        action: str,
        target: str | None,
        at: dt.datetime,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """An event by ``actor``, with the request context (and credential) the actor carries."""
        if actor.credential:
            details = {**(details or {}), "credential": dict(actor.credential)}
        return cls(
            at=at,
            actor=actor.identity[:255],
            action=action,
            target=target[:255] if target else None,
            request_id=actor.request_id,
            client_address=actor.client_address,
            details=details,
        )


@dataclass(frozen=True)
class StoredCRL:
    """The current CRL of one authority, as published."""

    authority: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes


@dataclass(frozen=True)
class ResponderRecord:
    """A delegated OCSP responder certificate of one authority (its key stays in a file)."""

    authority: str
    serial: str
    cert_der: bytes
    key_file: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class SerialStatus:
    """What an OCSP answer says of one serial: the stored status, when and why revoked."""

    status: CertStatus
    revoked_at: dt.datetime | None
    reason: RevocationReason | None


@dataclass(frozen=True)
class PresignedAnswer:
    """A signed nonce-less OCSP answer kept for one certificate and CertID (RFC 5019), and the
    certificate status (``state``) it states, so that a reader can tell it is still true."""

    authority: str
    serial: str
    cert_id: bytes
    state: str
    responder_serial: str
    der: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    refresh_at: dt.datetime


# ---------------------------------------------------------------------------- ACME (RFC 8555)
# The records the ACME store returns. States are the RFC's words (section 7.1.6); which moves
# between them are allowed is ca_service/acme/states.py's business, not the store's.


@dataclass(frozen=True)
class ACMEIdentifier:
    """An order's identifier: ``dns`` (lower-case A-label, ``*.`` kept for a wildcard) or
    ``ip`` (RFC 8738)."""

    type: str
    value: str

    @property
    def wildcard(self) -> bool:
        return self.type == "dns" and self.value.startswith("*.")

    @property
    def base(self) -> str:
        """The name an authorization is for: a wildcard's name without ``*.``."""
        return self.value[2:] if self.wildcard else self.value


@dataclass(frozen=True)
class EABKeyRecord:
    """An External Account Binding key: a name, the policy its accounts inherit, and whether
    it is still usable. The HMAC key itself never leaves the store's encrypted column except
    to verify a binding."""

    kid: str
    name: str
    policy: CallerPolicy
    created_by: str
    created_at: dt.datetime
    account_id: str | None = None
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ACMEAccountRecord:
    id: str
    authority: str
    jwk: dict[str, Any]
    thumbprint: str
    status: str
    contact: tuple[str, ...]
    eab_kid: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class ACMEChallengeRecord:
    id: str
    authz_id: str
    type: str
    token: str
    status: str
    validated_at: dt.datetime | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class ACMEAuthzRecord:
    id: str
    account_id: str
    authority: str
    identifier: ACMEIdentifier
    status: str
    expires: dt.datetime
    created_at: dt.datetime
    challenges: tuple[ACMEChallengeRecord, ...] = ()


@dataclass(frozen=True)
class ACMEOrderRecord:
    id: str
    account_id: str
    authority: str
    status: str
    identifiers: tuple[ACMEIdentifier, ...]
    authz_ids: tuple[str, ...]
    profile: str
    expires: dt.datetime
    created_at: dt.datetime
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    error: dict[str, Any] | None = None
    certificate_serial: str | None = None
    replaces: str | None = None


# ---------------------------------------------------------------------------- OIDC provisioners


@dataclass(frozen=True)
class ProvisionerRecord:
    """An OIDC provisioner: which issuer's ID tokens (for which audience, with which claims)
    may ask for certificates, and for which names. ``claims`` maps a claim to the patterns
    its value must match (all claims must match); ``allowed_names`` may hold ``{claim}``
    placeholders, filled from the token when it is used."""

    name: str
    type: str
    issuer: str
    audience: str
    jwks_uri: str | None
    claims: dict[str, tuple[str, ...]]
    allowed_names: tuple[str, ...]
    profiles: tuple[str, ...] | None
    max_validity_days: int | None
    authorities: tuple[str, ...] | None
    created_by: str
    created_at: dt.datetime
