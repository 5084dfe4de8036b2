"""API tokens and roles: who may call what, and within which policy.

A token is ``cas_<id>_<secret>``: the id finds the row, the secret (256 random bits) is checked
against its stored SHA-256 in constant time. Only the hash is stored, and the full token is
shown once, at creation.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select

from ca_service.clock import Clock, SystemClock, as_utc
from ca_service.domain import Actor, CallerPolicy
from ca_service.errors import BadRequest, NotFound, Unauthorized
from ca_service.policy.names import validate_pattern, validate_subject_pattern
from ca_service.refusals import RefusalLog
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.models import TokenRow
from ca_service.storage.repositories import AuditEvent, AuditRepository

_TOKEN_RE = re.compile(r"^cas_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")


class Role(enum.StrEnum):
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


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else as_utc(value)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def policy_to_json(policy: CallerPolicy) -> dict[str, Any]:
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


_TOKEN_BY_ID = select(TokenRow.__table__).where(TokenRow.__table__.c.id == bindparam("id"))


def _to_record(row: Any) -> TokenRecord:
    """From an ORM row or a Core row of api_tokens (both have the columns as attributes)."""
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


def build_policy(
    role: Role,
    *,
    names: list[str] | None = None,
    profiles: list[str] | None = None,
    max_validity_days: int | None = None,
    authorities: list[str] | None = None,
    allow_wildcards: bool = False,
    subjects: list[str] | None = None,
) -> CallerPolicy:
    """Validate a token's policy when it is made, so that a typo fails then and not at use."""
    if role is Role.ADMIN:
        if names or profiles or max_validity_days or authorities or subjects:
            raise BadRequest("admin tokens are unrestricted; a policy applies to issuer tokens")
        return CallerPolicy.unrestricted()
    if role is Role.ISSUER and not names:
        raise BadRequest("an issuer token needs at least one allowed name pattern")
    if max_validity_days is not None and (
        isinstance(max_validity_days, bool)
        or not isinstance(max_validity_days, int)
        or max_validity_days < 1
    ):
        raise BadRequest("max_validity_days must be a positive integer")
    return CallerPolicy(
        allowed_names=tuple(validate_pattern(n) for n in names) if names else None,
        profiles=tuple(profiles) if profiles else None,
        max_validity_days=max_validity_days,
        authorities=tuple(authorities) if authorities else None,
        allow_wildcards=allow_wildcards,
        allowed_subjects=tuple(validate_subject_pattern(p) for p in subjects) if subjects else None,
    )


class TokenService:
    def __init__(
        self, db: Database, clock: Clock | None = None, refusals: RefusalLog | None = None
    ) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        # Shared with the authority, so that one process counts unauthenticated requests once.
        self.refusals = refusals or RefusalLog(db, lambda: self.clock.now())

    def create(
        self,
        name: str,
        role: Role,
        policy: CallerPolicy,
        actor: Actor,
        *,
        expires_at: dt.datetime | None = None,
    ) -> tuple[str, TokenRecord]:
        """Make a token; the returned plain token exists nowhere else and cannot be recovered."""
        name = name.strip()
        if not name or len(name) > 128:
            raise BadRequest("a token needs a name of 1 to 128 characters")
        now = self.clock.now()
        if expires_at is not None and expires_at <= now:
            raise BadRequest("expires_at must be in the future")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        row = TokenRow(
            id=token_id,
            name=name,
            role=role.value,
            secret_sha256=_hash(secret),
            policy=policy_to_json(policy) if role is not Role.ADMIN else None,
            created_by=actor.identity[:255],
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )
        with unit_of_work(self.db, write=True) as s:
            s.add(row)
            s.flush()
            AuditRepository(s).add(
                AuditEvent.of(
                    actor,
                    "token.create",
                    f"token:{token_id}",
                    now,
                    {"role": role.value, "name": name},
                )
            )
            record = _to_record(row)
        return f"cas_{token_id}_{secret}", record

    def authenticate(self, presented: str) -> TokenRecord:
        """The token's record if it is well-formed, known, unexpired and unrevoked."""
        match = _TOKEN_RE.match(presented.strip())
        if not match:
            raise Unauthorized("malformed bearer token")
        token_id, secret = match.groups()
        with unit_of_work(self.db) as s:
            # A plain SELECT rather than an ORM get: this runs on every authenticated request.
            row = s.connection().execute(_TOKEN_BY_ID, {"id": token_id}).one_or_none()
            record = _to_record(row) if row is not None else None
            stored_hash = row.secret_sha256 if row is not None else _hash("")
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        if not hmac.compare_digest(stored_hash, _hash(secret)) or record is None:
            raise Unauthorized("unknown bearer token")
        state = record.state(self.clock.now())
        if state != "active":
            raise Unauthorized(f"bearer token {state}")
        return record

    def list(self) -> list[TokenRecord]:
        with unit_of_work(self.db) as s:
            rows = s.scalars(select(TokenRow).order_by(TokenRow.created_at.desc()))
            return [_to_record(r) for r in rows]

    def revoke(self, token_id: str, actor: Actor) -> TokenRecord:
        now = self.clock.now()
        with unit_of_work(self.db, write=True) as s:
            row = s.get(TokenRow, token_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no token with id {token_id!r}")
            if row.revoked_at is None:
                row.revoked_at = now
                AuditRepository(s).add(
                    AuditEvent.of(actor, "token.revoke", f"token:{token_id}", now)
                )
            s.flush()
            return _to_record(row)

    def record_refusal(
        self,
        identity: str,
        target: str,
        reason: str,
        request_id: str | None,
        client_address: str | None,
    ) -> None:
        """Audit a refusal before anyone is authenticated (a client certificate refused in the
        TLS handshake): counted per client address and minute, see ca_service.refusals."""
        self.refusals.unauthenticated(identity, target, reason, request_id, client_address)

    def count(self) -> int:
        with unit_of_work(self.db) as s:
            return int(s.scalar(select(func.count()).select_from(TokenRow)) or 0)
