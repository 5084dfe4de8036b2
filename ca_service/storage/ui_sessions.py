"""Store access for the admin UI's sessions (table ``ui_sessions``, migration 0008).

A session is found by the SHA-256 of the cookie's id, joined in the same query to the API token
it was opened with, so whoever resumes it sees the token as it stands now: revoked or expired,
the session is over. The cookie's id itself is never written here.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from ca_service.clock import as_utc
from ca_service.domain import UISession
from ca_service.storage.models import TokenRow, UISessionRow
from ca_service.storage.tokens import token_record

_SESSIONS = UISessionRow.__table__
_TOKENS = TokenRow.__table__
# One statement on every page a signed-in user opens: the session and its token together.
_JOINED = select(_SESSIONS, *[c.label(f"api_token_{c.name}") for c in _TOKENS.c]).join(
    _TOKENS, _TOKENS.c.id == _SESSIONS.c.token_id
)


class _TokenColumns:
    """The token half of a joined row, with the attribute names of an api_tokens row."""

    def __init__(self, row: object) -> None:
        for column in _TOKENS.c:
            setattr(self, column.name, getattr(row, f"api_token_{column.name}"))


class UISessionRepository:
    """UI sessions in one session of the store: flushes, never commits."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def add(
        self,
        *,
        id_sha256: str,
        token_id: str,
        csrf: str,
        now: dt.datetime,
        expires_at: dt.datetime,
    ) -> None:
        self.s.add(
            UISessionRow(
                id_sha256=id_sha256,
                token_id=token_id,
                csrf=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=expires_at,
            )
        )
        self.s.flush()

    def find(self, id_sha256: str) -> UISession | None:
        """The session and its token as they stand (whatever their state), or None."""
        row = (
            self.s.connection()
            .execute(_JOINED.where(_SESSIONS.c.id_sha256 == id_sha256))
            .one_or_none()
        )
        if row is None:
            return None
        return UISession(
            id_sha256=row.id_sha256,
            token=token_record(_TokenColumns(row)),
            csrf=row.csrf,
            created_at=as_utc(row.created_at),
            last_seen_at=as_utc(row.last_seen_at),
            expires_at=as_utc(row.expires_at),
        )

    def touch(self, id_sha256: str, now: dt.datetime) -> None:
        self.s.execute(
            update(UISessionRow).where(UISessionRow.id_sha256 == id_sha256).values(last_seen_at=now)
        )

    def delete(self, id_sha256: str) -> bool:
        """Remove one session; True when it existed."""
        result = self.s.execute(delete(UISessionRow).where(UISessionRow.id_sha256 == id_sha256))
        return bool(getattr(result, "rowcount", 0))

    def delete_ended(self, now: dt.datetime, idle_since: dt.datetime) -> int:
        """Remove every session past its absolute end or idle since before ``idle_since``."""
        result = self.s.execute(
            delete(UISessionRow).where(
                or_(UISessionRow.expires_at <= now, UISessionRow.last_seen_at < idle_since)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)
