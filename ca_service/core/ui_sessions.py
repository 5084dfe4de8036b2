"""Sessions of the admin web UI: an API token, presented once on the sign-in page, becomes a
server-side session whose random id the browser keeps in a cookie.

Why server-side and joined to the token: revoking or expiring the token must end every session
opened with it at once, on every replica, which no signed cookie can do. The id is 256 random
bits, so (as for API tokens) its SHA-256 is all that is stored: a copy of the database opens no
session. Each sign-in makes a new id (no session fixation), and a session ends when idle for
``ui_session_idle_minutes`` or ``ui_session_max_hours`` after sign-in, whichever comes first.

Only admin and reader tokens may sign in: the UI is for people who look and revoke; an issuer
token belongs to a pipeline, and an OIDC ID token proves a job, not a person. This module must
never store or log the token or the session id in clear, and never answer differently for an
unknown, malformed, expired or revoked token (the sign-in page is no oracle).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from ca_service.clock import Clock
from ca_service.domain import Actor, UISession
from ca_service.errors import Forbidden, Unauthorized
from ca_service.policy import authorization
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.ui_sessions import UISessionRepository
from ca_service.tokens import TokenService

# Three base64url parts: an OIDC ID token (a JWT), refused before anything else is tried.
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# A session seen within this many seconds is not written again: one UPDATE per page view would
# make every read a write, for an idle clock measured in minutes.
TOUCH_SECONDS = 30
# The one answer to every credential that is not a token of this service's, whatever the cause.
NOT_ACCEPTED = "The token was not accepted: it is unknown, malformed, expired or revoked."


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Where:
    """The request a sign-in or refusal comes from, for the audit log."""

    target: str
    request_id: str | None
    client_address: str | None


class UISessions:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        tokens: TokenService,
        *,
        idle_minutes: int,
        max_hours: int,
    ) -> None:
        self.db = db
        self.clock = clock
        self.tokens = tokens
        self.idle = dt.timedelta(minutes=idle_minutes)
        self.max_age = dt.timedelta(hours=max_hours)

    def sign_in(self, presented: str, where: Where) -> tuple[str, UISession]:
        """A new session for an admin or reader token: (the cookie's id, the session).

        ``Unauthorized`` (counted per address and minute, ca_service.refusals) for anything
        that is not an active token of ours; ``Forbidden`` (one audit event) for an issuer."""
        presented = presented.strip()
        if _JWT.match(presented):
            self._count_refusal("oidc", where, "an OIDC ID token cannot sign in to the UI")
            raise Unauthorized(
                "An OIDC ID token cannot sign in to the admin UI; use an admin or reader API token."
            )
        try:
            record = self.tokens.authenticate(presented)
        except Unauthorized as exc:
            self._count_refusal("anonymous", where, exc.detail)
            raise Unauthorized(NOT_ACCEPTED) from None
        try:
            authorization.check_ui_sign_in(record)
        except Forbidden as exc:
            actor = Actor(record.identity, where.request_id, where.client_address)
            self.tokens.refusals.record(actor, where.target, exc, attempted="ui.sign_in")
            raise
        session_id = secrets.token_urlsafe(32)
        now = self.clock.now()
        with unit_of_work(self.db, write=True) as s:
            repo = UISessionRepository(s)
            repo.delete_ended(now, now - self.idle)
            repo.add(
                id_sha256=session_hash(session_id),
                token_id=record.id,
                csrf=secrets.token_urlsafe(32),
                now=now,
                expires_at=now + self.max_age,
            )
            found = repo.find(session_hash(session_id))
        assert found is not None
        return session_id, found

    def resume(self, session_id: str) -> UISession | None:
        """The live session this cookie names, or None (unknown, idle, past its end, or its
        token no longer active: such a session is deleted on the way)."""
        if not session_id or len(session_id) > 128:
            return None
        key = session_hash(session_id)
        now = self.clock.now()
        with unit_of_work(self.db) as s:
            found = UISessionRepository(s).find(key)
        if found is None:
            return None
        if (
            found.token.state(now) != "active"
            or now >= found.expires_at
            or now - found.last_seen_at >= self.idle
        ):
            self._delete(key)
            return None
        if (now - found.last_seen_at).total_seconds() >= TOUCH_SECONDS:
            with unit_of_work(self.db, write=True) as s:
                UISessionRepository(s).touch(key, now)
        return found

    def sign_out(self, session_id: str) -> None:
        self._delete(session_hash(session_id))

    def _delete(self, key: str) -> None:
        with unit_of_work(self.db, write=True) as s:
            UISessionRepository(s).delete(key)

    def _count_refusal(self, identity: str, where: Where, reason: str) -> None:
        self.tokens.record_refusal(
            identity, where.target, reason, where.request_id, where.client_address
        )
