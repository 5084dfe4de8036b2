"""API tokens: made, authenticated and revoked (who may then do what: policy/authorization).

A token is ``cas_<id>_<secret>``: the id finds the row, the secret (256 random bits) is checked
against its stored SHA-256 in constant time. Only the hash is stored, and the full token is
shown once, at creation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets

from ca_service.clock import Clock, SystemClock
from ca_service.domain import Actor, AuditEvent, CallerPolicy, TokenConfirmation

# Role, TokenRecord (ca_service.domain), build_policy (ca_service.policy.authorization) and the
# stored form of a policy (ca_service.storage.tokens) moved out of this module; the "as" imports
# keep the old names importable from here.
from ca_service.domain import Role as Role
from ca_service.domain import TokenRecord as TokenRecord
from ca_service.errors import BadRequest, Unauthorized
from ca_service.policy.authorization import build_policy as build_policy
from ca_service.refusals import RefusalLog
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository
from ca_service.storage.tokens import TokenRepository
from ca_service.storage.tokens import policy_from_json as policy_from_json
from ca_service.storage.tokens import policy_to_json as policy_to_json

_TOKEN_RE = re.compile(r"^cas_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")
# Verified tokens a process keeps (web/auth.py's issuance routes use them, with the store's
# confirmation in the request's write transaction); beyond this many it starts afresh.
CACHE_LIMIT = 10_000


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse(presented: str) -> tuple[str, str]:
    """The token's id and secret, or Unauthorized for anything not shaped like a token."""
    match = _TOKEN_RE.match(presented.strip())
    if not match:
        raise Unauthorized("malformed bearer token")
    token_id, secret = match.groups()
    return token_id, secret


class TokenService:
    def __init__(
        self, db: Database, clock: Clock | None = None, refusals: RefusalLog | None = None
    ) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        # Shared with the authority, so that one process counts unauthenticated requests once.
        self.refusals = refusals or RefusalLog(db, lambda: self.clock.now())
        # token id -> (record, stored hash): what a query returned once. Only for callers that
        # have the store confirm the token in their write transaction (domain.TokenConfirmation).
        self._verified: dict[str, tuple[TokenRecord, str]] = {}

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
        with unit_of_work(self.db, write=True) as s:
            record = TokenRepository(s).add(
                token_id=token_id,
                name=name,
                role=role,
                secret_sha256=_hash(secret),
                policy=policy,
                created_by=actor.identity,
                created_at=now,
                expires_at=expires_at,
            )
            AuditRepository(s).add(
                AuditEvent.of(
                    actor,
                    "token.create",
                    f"token:{token_id}",
                    now,
                    {"role": role.value, "name": name},
                )
            )
        return f"cas_{token_id}_{secret}", record

    def authenticate(self, presented: str) -> TokenRecord:
        """The token's record if it is well-formed, known, unexpired and unrevoked."""
        token_id, secret = _parse(presented)
        with unit_of_work(self.db) as s:
            found = TokenRepository(s).find_with_hash(token_id)
        if found is not None:
            self._remember(token_id, found)
        return self._check(found, secret)

    def authenticate_to_confirm(self, presented: str) -> tuple[TokenRecord, TokenConfirmation]:
        """Like ``authenticate``, from this process's cache of tokens verified before when it
        has the token, with the confirmation the store must give inside the request's write
        transaction (a revocation since the cache was filled is seen there). The secret is
        checked against the stored hash every time; an expired token is refused here."""
        token_id, secret = _parse(presented)
        found = self._verified.get(token_id)
        if found is None:
            return self.authenticate(presented), TokenConfirmation(token_id)
        return self._check(found, secret), TokenConfirmation(token_id)

    def forget(self, token_id: str) -> None:
        """Drop a token from the cache (the store said it is no longer active)."""
        self._verified.pop(token_id, None)

    def _remember(self, token_id: str, found: tuple[TokenRecord, str]) -> None:
        if found[0].state(self.clock.now()) != "active":
            self._verified.pop(token_id, None)
            return
        if len(self._verified) >= CACHE_LIMIT:
            self._verified.clear()
        self._verified[token_id] = found

    def _check(self, found: tuple[TokenRecord, str] | None, secret: str) -> TokenRecord:
        record, stored_hash = found if found is not None else (None, _hash(""))
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        if not hmac.compare_digest(stored_hash, _hash(secret)) or record is None:
            raise Unauthorized("unknown bearer token")
        state = record.state(self.clock.now())
        if state != "active":
            raise Unauthorized(f"bearer token {state}")
        return record

    def list(self) -> list[TokenRecord]:
        with unit_of_work(self.db) as s:
            return TokenRepository(s).list()

    def revoke(self, token_id: str, actor: Actor) -> TokenRecord:
        now = self.clock.now()
        with unit_of_work(self.db, write=True) as s:
            record, changed = TokenRepository(s).revoke(token_id, now)
            self.forget(token_id)
            if changed:
                AuditRepository(s).add(
                    AuditEvent.of(actor, "token.revoke", f"token:{token_id}", now)
                )
            return record

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
            return TokenRepository(s).count()
