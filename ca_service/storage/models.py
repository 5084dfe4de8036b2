"""SQLAlchemy tables. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


UTC_DATETIME = DateTime(timezone=True)


class AuthorityRow(Base):
    __tablename__ = "authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"))
    is_root: Mapped[bool] = mapped_column(Boolean)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    subject: Mapped[str] = mapped_column(String(1024))
    key_type: Mapped[str] = mapped_column(String(16))
    cert_der: Mapped[bytes] = mapped_column(LargeBinary)
    key_file: Mapped[str] = mapped_column(String(255))
    not_before: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    not_after: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    name_constraints: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Issuer certificates above an imported CA that this service holds no key for (PEM).
    external_chain_pem: Mapped[str | None] = mapped_column(Text)
    # The last CRL number handed out; bumped with an atomic UPDATE so processes never share one.
    crl_number: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class CertificateRow(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("authority_id", "serial", name="uq_certificates_authority_serial"),
        # The CRL query: revoked, unexpired entries of one authority.
        Index("ix_certificates_crl", "authority_id", "status", "not_after"),
        # The full CRL's stored entries (migration 0013), revoked rows only, so an issuance
        # never writes it: the CRL reads this index alone, not a 1 KB table row per entry.
        Index(
            "ix_certificates_crl_entries",
            "authority_id",
            "status",
            "not_after",
            "serial",
            "crl_entry",
            sqlite_where=text("status = 'revoked'"),
            postgresql_where=text("status = 'revoked'"),
        ),
        # The admin UI's list (migration 0008, storage/search.py): a filter's index ends with
        # the id, so newest-first pages walk it in order whatever the value's share; expiry
        # order walks (not_after, id), or (status, not_after, id) for valid/expired only.
        Index("ix_certificates_authority_id_id", "authority_id", "id"),
        Index("ix_certificates_profile_id", "profile", "id"),
        Index("ix_certificates_not_after_id", "not_after", "id"),
        Index("ix_certificates_status_expiry", "status", "not_after", "id"),
        # Certificates on hold (few: a hold is temporary), listed and counted per authority.
        Index("ix_certificates_hold", "revocation_reason", "authority_id", "id"),
        # Shard CRLs and delta CRLs (migration 0010, docs/crl.md): one shard's changed rows
        # (its revoked ones among them) and its latest change, and the authority's rows whose
        # status changed at or after a base CRL's number.
        Index("ix_certificates_crl_shard", "authority_id", "crl_shard", "status_crl_number"),
        Index("ix_certificates_status_crl_number", "authority_id", "status_crl_number"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    # No index of its own (migration 0014): uq_certificates_authority_serial serves a lookup by
    # serial alone too, asked with every authority's id (repositories.serial_of_any_authority).
    serial: Mapped[str] = mapped_column(String(42))
    subject: Mapped[str] = mapped_column(String(1024))
    common_name: Mapped[str | None] = mapped_column(String(255), index=True)
    # Space-separated "kind:value" names with a leading and trailing space, for LIKE search.
    # Both names are searched through trigram indexes that only migration 0005 describes
    # (SEARCH_INDEX_OBJECTS): they are not expressible as portable SQLAlchemy metadata.
    sans: Mapped[str] = mapped_column(Text)
    key_type: Mapped[str] = mapped_column(String(16))
    profile: Mapped[str] = mapped_column(String(32))
    not_before: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    not_after: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    status: Mapped[str] = mapped_column(String(16), index=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    # The DER of this certificate's CRL entry while it is revoked, written with the revocation
    # (migration 0013): a full CRL joins them in the database instead of encoding each row.
    crl_entry: Mapped[bytes | None] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    requester: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    successor_serial: Mapped[str | None] = mapped_column(String(42))
    # The shard CRL its CRL Distribution Point names (1..N), fixed at issuance; None: the full
    # CRL only (issued before sharding, or a CA certificate).
    crl_shard: Mapped[int | None] = mapped_column(Integer)
    # The authority's CRL number when its status last changed (revoked, held or released),
    # taken under the authority row's lock: a CRL numbered above it lists the change, one
    # numbered at or below it does not, so a delta CRL lists exactly what its base lacks.
    status_crl_number: Mapped[int | None] = mapped_column(BigInteger)


# The name search index of migration 0005, made by SQL the models cannot state: on PostgreSQL two
# GIN trigram indexes, on SQLite an FTS5 trigram table (its shadow tables carry its name as a
# prefix) kept current by triggers. Schema comparison leaves exactly these out.
SEARCH_FTS_TABLE = "certificate_names"
SEARCH_PG_INDEXES = frozenset({"ix_certificates_common_name_trgm", "ix_certificates_sans_trgm"})


# The requester kind (the text before the first ':'), an expression index of migration 0008
# per database; the query must write the very same expression for the index to serve it.
REQUESTER_KIND_INDEX = "ix_certificates_requester_kind"
REQUESTER_KIND_SQL = {
    "sqlite": "substr(requester, 1, instr(requester || ':', ':') - 1)",
    "postgresql": "split_part(requester, ':', 1)",
}


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic ``include_object`` hook: everything but the search and requester kind index
    objects above."""
    if name is None:
        return True
    if type_ == "table":
        return name != SEARCH_FTS_TABLE and not name.startswith(SEARCH_FTS_TABLE + "_")
    if type_ == "index":
        return name not in SEARCH_PG_INDEXES and name != REQUESTER_KIND_INDEX
    return True


class CRLRow(Base):
    """The latest CRL of each authority, kept so that every process serves the same bytes."""

    __tablename__ = "crls"

    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    next_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class CRLPartRow(Base):
    """The latest shard and delta CRLs of each authority (docs/crl.md), one per scope:
    "shard:<k>", "delta" (the full CRL's) or "delta:<k>" (shard k's)."""

    __tablename__ = "crl_parts"

    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger)
    # A delta CRL's base CRL number (its Delta CRL Indicator); None for a shard CRL.
    base_number: Mapped[int | None] = mapped_column(BigInteger)
    this_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    next_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRow(Base):
    __tablename__ = "audit_events"
    # A certificate's history: its events by target (migration 0008).
    __table_args__ = (Index("ix_audit_events_target_id", "target", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TokenRow(Base):
    """API bearer tokens. Only the SHA-256 of the secret is kept: a token is 256 random bits, so
    a fast hash is as safe as a slow one and keeps authentication off the hot path's profile."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)


class OCSPResponderRow(Base):
    """Delegated OCSP responder certificates; the key is in the keystore like a CA key."""

    __tablename__ = "ocsp_responders"
    __table_args__ = (Index("ix_ocsp_responders_authority", "authority_id", "not_after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    serial: Mapped[str] = mapped_column(String(42))
    cert_der: Mapped[bytes] = mapped_column(LargeBinary)
    key_file: Mapped[str] = mapped_column(String(255))
    not_before: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    not_after: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class OCSPPresignedRow(Base):
    """A signed OCSP answer kept per certificate and CertID (RFC 5019: pre-produced answers), so
    that nonce-less requests cost no signature. ``state`` is the certificate status the answer
    states; a reader serves the row only while the certificate still has that status."""

    __tablename__ = "ocsp_presigned"
    __table_args__ = (
        UniqueConstraint("authority_id", "serial", "cert_id", name="uq_ocsp_presigned_cert_id"),
        Index("ix_ocsp_presigned_refresh_at", "refresh_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    serial: Mapped[str] = mapped_column(String(42))
    cert_id: Mapped[bytes] = mapped_column(LargeBinary)  # the CertID DER the answer echoes
    state: Mapped[str] = mapped_column(String(80))
    responder_serial: Mapped[str] = mapped_column(String(42))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    this_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    next_update: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    refresh_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class OCSPStampRow(Base):
    """A counter per authority that every status change (revoke, hold, release) raises in its
    own transaction: each process reads these few rows every half second and drops the cached
    answers of an authority whose counter moved, so a revocation reaches every worker of every
    replica within a second without a query per OCSP request."""

    __tablename__ = "ocsp_stamps"

    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), primary_key=True)
    changes: Mapped[int] = mapped_column(BigInteger)


class KeyBlobRow(Base):
    """CA and OCSP responder private keys of ``key_backend = "database"`` (issue 14): the
    passphrase-encrypted PKCS#8 PEM a key file would hold, never a clear key. In the database
    so that every replica reads the same keys and one backup (or PostgreSQL's replication)
    carries them; the passphrase is never stored, so the rows alone open nothing. An
    authority's or responder's ``key_file`` names a row as ``db:<name>``."""

    __tablename__ = "key_blobs"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    pem_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


# ---------------------------------------------------------------------------- ACME (RFC 8555)
# Ids are random url-safe strings: they appear in URLs, and sequential ids would let anyone
# count a CA's accounts and orders. Authority names are kept as text: they never change.


class ACMEEABKeyRow(Base):
    """External Account Binding keys. The HMAC key is stored encrypted (AES-GCM under a key
    derived from the CA passphrase): a copy of the database alone cannot bind accounts."""

    __tablename__ = "acme_eab_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    hmac_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    account_id: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)


class ACMEAccountRow(Base):
    __tablename__ = "acme_accounts"
    __table_args__ = (
        UniqueConstraint("authority", "thumbprint", name="uq_acme_accounts_authority_thumbprint"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    authority: Mapped[str] = mapped_column(String(64))
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    thumbprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    contact: Mapped[list[str] | None] = mapped_column(JSON)
    eab_kid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class ACMEOrderRow(Base):
    __tablename__ = "acme_orders"
    __table_args__ = (Index("ix_acme_orders_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("acme_accounts.id"))
    authority: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    identifiers: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    authz_ids: Mapped[list[str]] = mapped_column(JSON)
    profile: Mapped[str] = mapped_column(String(32))
    expires: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)
    not_after: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    certificate_serial: Mapped[str | None] = mapped_column(String(42), index=True)
    replaces: Mapped[str | None] = mapped_column(String(42))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class ACMEAuthzRow(Base):
    __tablename__ = "acme_authorizations"
    __table_args__ = (
        Index("ix_acme_authz_reuse", "account_id", "identifier_type", "identifier_value"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("acme_accounts.id"))
    authority: Mapped[str] = mapped_column(String(64))
    identifier_type: Mapped[str] = mapped_column(String(8))
    identifier_value: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    expires: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class ACMEChallengeRow(Base):
    __tablename__ = "acme_challenges"
    __table_args__ = (Index("ix_acme_challenges_authz", "authz_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    authz_id: Mapped[str] = mapped_column(ForeignKey("acme_authorizations.id"))
    # The account again, so that counting an account's failed validations needs no join.
    account_id: Mapped[str] = mapped_column(String(32), index=True)
    # Where the challenge stands in its authorization's list: the order the server offered
    # them in is the order every later read shows.
    position: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    validated_at: Mapped[dt.datetime | None] = mapped_column(UTC_DATETIME)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ACMENonceRow(Base):
    """Replay-Nonces that have been used, each kept until it would have expired anyway. A
    nonce is issued without a write (acme/nonces.py signs it), so an unauthenticated flood of
    newNonce costs the store nothing; its use is one insert, refused for a replay by the
    primary key on every worker and replica of one database."""

    __tablename__ = "acme_nonces"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME, index=True)


# ---------------------------------------------------------------------------- OIDC provisioners


class ProvisionerRow(Base):
    """OIDC provisioners, in the database so that every replica sees the same ones."""

    __tablename__ = "oidc_provisioners"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    issuer: Mapped[str] = mapped_column(String(512), index=True)
    audience: Mapped[str] = mapped_column(String(512))
    jwks_uri: Mapped[str | None] = mapped_column(String(1024))
    claims: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    allowed_names: Mapped[list[str]] = mapped_column(JSON)
    profiles: Mapped[list[str] | None] = mapped_column(JSON)
    max_validity_days: Mapped[int | None] = mapped_column(Integer)
    authorities: Mapped[list[str] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)


class UsedTokenRow(Base):
    """The ``jti`` of every ID token used, until it expires: a replay is refused by the
    primary key, on every worker and replica of one database."""

    __tablename__ = "oidc_used_tokens"

    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME, index=True)


# ---------------------------------------------------------------------------- admin UI sessions


class UISessionRow(Base):
    """Server-side sessions of the admin web UI (issue 13). The cookie carries a random id; only
    its SHA-256 is kept, as for API tokens. Every request joins the session to its API token, so
    revoking the token ends its sessions at once, on every replica."""

    __tablename__ = "ui_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    # The per-session CSRF secret: the forms carry it, and it is worthless without the cookie.
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME)
    # The absolute end of the session; the idle end is last_seen_at + the idle setting.
    expires_at: Mapped[dt.datetime] = mapped_column(UTC_DATETIME, index=True)
