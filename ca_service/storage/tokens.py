"""Store access for API tokens: rows go in, domain records (``TokenRecord``) come out.

The secret's SHA-256 is written here and read back only by ``find_with_hash``, for the one
comparison that authenticates a caller; no record above storage carries it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from ca_service.clock import as_utc
from ca_service.domain import CallerPolicy, Role, TokenRecord
from ca_service.errors import NotFound
from ca_service.storage.models import TokenRow

# A plain Core SELECT rather than an ORM get: this runs on every authenticated request.
_TOKEN_BY_ID = select(TokenRow.__table__).where(TokenRow.__table__.c.id == bindparam("id"))
_TOKEN_STATE = select(TokenRow.__table__.c.revoked_at, TokenRow.__table__.c.expires_at).where(
    TokenRow.__table__.c.id == bindparam("id")
)
_TOKEN_STATE_SHARED = _TOKEN_STATE.with_for_update(read=True)


def policy_to_json(policy: CallerPolicy) -> dict[str, Any]:
    """The stored form of a token's policy (the ``policy`` JSON column)."""
    return {
        "allowed_names": list(policy.allowed_names) if policy.allowed_names is not None else None,
        "profiles": list(policy.profiles) if policy.profiles is not None else None,
        "max_validity_days": policy.max_validity_days,
        "authorities": list(policy.authorities) if policy.authorities is not None else None,
        "allow_wildcards": policy.allow_wildcards,
        "allowed_subjects": (
            list(policy.allowed_subjects) if policy.allowed_subjects is not None else None
        ),
    }


def policy_from_json(data: dict[str, Any] | None, role: Role) -> CallerPolicy:
    """The policy a stored token carries: admins are unrestricted whatever the column holds."""
    if role is Role.ADMIN or not data:
        return CallerPolicy.unrestricted() if role is Role.ADMIN else CallerPolicy()

    def opt(key: str) -> tuple[str, ...] | None:
        value = data.get(key)
        return tuple(value) if value is not None else None

    return CallerPolicy(
        allowed_names=opt("allowed_names"),
        profiles=opt("profiles"),
        max_validity_days=data.get("max_validity_days"),
        authorities=opt("authorities"),
        allow_wildcards=bool(data.get("allow_wildcards", False)),
        allowed_subjects=opt("allowed_subjects"),
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else as_utc(value)


def token_record(row: Any) -> TokenRecord:
    """From an ORM row or a Core row of api_tokens (both have the columns as attributes); the
    UI's sessions (storage/ui_sessions.py) read their token's columns through this too."""
    role = Role(row.role)
    created_at = _utc(row.created_at)
    assert created_at is not None
    return TokenRecord(
        id=row.id,
        name=row.name,
        role=role,
        policy=policy_from_json(row.policy, role),
        created_by=row.created_by,
        created_at=created_at,
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
    )


class TokenRepository:
    """API tokens in one session: flushes, never commits (the caller owns the transaction)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def add(
        self,
        *,
        token_id: str,
        name: str,
        role: Role,
        secret_sha256: str,
        policy: CallerPolicy,
        created_by: str,
        created_at: dt.datetime,
        expires_at: dt.datetime | None,
    ) -> TokenRecord:
        """Store a new token; the record is read back from the row, as every later read is."""
        row = TokenRow(
            id=token_id,
            name=name,
            role=role.value,
            secret_sha256=secret_sha256,
            policy=policy_to_json(policy) if role is not Role.ADMIN else None,
            created_by=created_by[:255],
            created_at=created_at,
            expires_at=expires_at,
            revoked_at=None,
        )
        self.s.add(row)
        self.s.flush()
        return token_record(row)

    def find_with_hash(self, token_id: str) -> tuple[TokenRecord, str] | None:
        """The token and its secret's stored SHA-256, for authentication only."""
        row = self.s.connection().execute(_TOKEN_BY_ID, {"id": token_id}).one_or_none()
        if row is None:
            return None
        return token_record(row), str(row.secret_sha256)

    def state(self, token_id: str, now: dt.datetime, *, share_lock: bool = False) -> str:
        """"active", "revoked", "expired" or "unknown", as the store has it now: the check a
        write transaction makes for a token accepted from a cache (domain.TokenConfirmation).
        ``share_lock`` (FOR SHARE on PostgreSQL; SQLite's writers are serial anyway): a
        revocation of the token (FOR UPDATE) waits until this transaction ends."""
        query = _TOKEN_STATE_SHARED if share_lock else _TOKEN_STATE
        row = self.s.connection().execute(query, {"id": token_id}).one_or_none()
        if row is None:
            return "unknown"
        if row.revoked_at is not None:
            return "revoked"
        expires = _utc(row.expires_at)
        if expires is not None and expires <= now:
            return "expired"
        return "active"

    def list(self) -> list[TokenRecord]:
        """Every token, newest first."""
        rows = self.s.scalars(select(TokenRow).order_by(TokenRow.created_at.desc()))
        return [token_record(r) for r in rows]

    def revoke(self, token_id: str, now: dt.datetime) -> tuple[TokenRecord, bool]:
        """Mark the token revoked at ``now`` unless it is already; True when this changed it.
        The row is locked first, so two concurrent revocations change (and audit) it once."""
        row = self.s.get(TokenRow, token_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no token with id {token_id!r}")
        changed = row.revoked_at is None
        if changed:
            row.revoked_at = now
        self.s.flush()
        return token_record(row), changed

    def count(self) -> int:
        return int(self.s.scalar(select(func.count()).select_from(TokenRow)) or 0)
