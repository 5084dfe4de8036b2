"""The admin UI's reads (issue 13): the certificate list with its filters and two keyset orders,
the dashboard's counts and expiry histogram, a certificate's history and the audit log page.

Every page is a keyset page (never OFFSET): its cost does not grow with how deep the page is,
and rows written between two pages neither shift nor repeat the rows of the next one. Cursors
are opaque url-safe text; one that does not parse is a BadRequest, never a 500.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, or_, select, tuple_
from sqlalchemy.orm import Session

from ca_service.clock import as_utc as _utc
from ca_service.domain import (
    MAX_PAGE,
    AuditEvent,
    AuthorityStatusCounts,
    CertificatePage,
    CertificateQuery,
    CertificateRecord,
    CertificateSort,
    CertificateState,
    CertStatus,
    RevocationReason,
)
from ca_service.errors import BadRequest
from ca_service.storage.models import AuditRow, AuthorityRow, CertificateRow
from ca_service.storage.repositories import MIN_INDEXED_TERM, CertificateRepository, audit_event

HOLD = RevocationReason.CERTIFICATE_HOLD.value
VALID, REVOKED = CertStatus.VALID.value, CertStatus.REVOKED.value
_HEX = frozenset("0123456789abcdef")
_ISSUED_CURSOR = re.compile(r"i([1-9][0-9]{0,18})")
_EXPIRY_CURSOR = re.compile(r"e(-?[0-9]{1,17})_([1-9][0-9]{0,18})")
_AUDIT_CURSOR = re.compile(r"a([1-9][0-9]{0,18})")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _bad_cursor(cursor: str) -> BadRequest:
    return BadRequest(
        f"cursor {cursor[:80]!r} is not one this listing gave out: start again from the first page"
    )


def _micros(value: dt.datetime) -> int:
    return (_utc(value) - _EPOCH) // dt.timedelta(microseconds=1)


def _hex_of(q: str) -> str | None:
    """``q`` as lower-case hex without colons, spaces or 0x, or None when it is not hex."""
    cleaned = "".join(q.lower().split()).replace(":", "").removeprefix("0x")
    return cleaned if cleaned and set(cleaned) <= _HEX else None


def _serial_form(hexed: str) -> str:
    """A hex serial as the store writes it (serials.serial_hex: no leading zeros, 2 digits
    at least)."""
    return (hexed.lstrip("0") or "0").rjust(2, "0")


class _Key:
    """The keyset position of one row in one sort."""

    def __init__(self, sort: CertificateSort, row_id: int, not_after: dt.datetime) -> None:
        self.sort = sort
        self.id = row_id
        self.not_after = _utc(not_after)

    def order(self) -> tuple[Any, ...]:
        if self.sort is CertificateSort.ISSUED:
            return (-self.id,)
        return (self.not_after, self.id)

    def text(self) -> str:
        if self.sort is CertificateSort.ISSUED:
            return f"i{self.id}"
        return f"e{_micros(self.not_after)}_{self.id}"

    @classmethod
    def parse(cls, sort: CertificateSort, cursor: str) -> _Key:
        if sort is CertificateSort.ISSUED:
            m = _ISSUED_CURSOR.fullmatch(cursor)
            if m is None:
                raise _bad_cursor(cursor)
            return cls(sort, int(m[1]), _EPOCH)
        m = _EXPIRY_CURSOR.fullmatch(cursor)
        if m is None:
            raise _bad_cursor(cursor)
        try:
            at = _EPOCH + dt.timedelta(microseconds=int(m[1]))
        except OverflowError:
            raise _bad_cursor(cursor) from None
        return cls(sort, int(m[2]), at)


class CertificateSearch:
    """The certificate list, counts and histogram of the admin UI, over one session."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.certs = CertificateRepository(session)

    # ------------------------------------------------------------------ the list

    def search(self, query: CertificateQuery, now: dt.datetime) -> CertificatePage:
        """One page of ``query``, in its sort, after its cursor."""
        after = _Key.parse(query.sort, query.cursor) if query.cursor else None
        base = self._filtered(query, now)
        if base is None:
            return CertificatePage([], None)
        q = (query.q or "").strip()
        exact: list[tuple[_Key, CertificateRecord]] = []
        name_rows: list[tuple[_Key, CertificateRecord]] = []
        more = False
        if q:
            if any(ord(c) < 32 for c in q):
                raise BadRequest("the search text holds a control character")
            hexed = _hex_of(q)
            if hexed is not None and len(hexed) <= 42:
                serial = CertificateRow.serial == _serial_form(hexed)
                exact += self._rows(base.where(serial), query.sort)
            if hexed is not None and len(hexed) == 64:
                fingerprint = CertificateRow.fingerprint_sha256 == hexed
                exact += self._rows(base.where(fingerprint), query.sort)
            if len(q) >= MIN_INDEXED_TERM:
                name_rows = self._page(base, query, after, q.lower())
                more = len(name_rows) > query.limit
            elif hexed is None:
                raise BadRequest(
                    f"a name search needs {MIN_INDEXED_TERM} characters at least, not {q!r}"
                )
        else:
            name_rows = self._page(base, query, after, None)
            more = len(name_rows) > query.limit
        # Exact matches are few (one per authority at most): merged into the name page by the
        # sort key, after the cursor, each row once.
        merged: dict[int, tuple[_Key, CertificateRecord]] = {k.id: (k, r) for k, r in name_rows}
        for key, record in exact:
            if after is None or key.order() > after.order():
                merged.setdefault(key.id, (key, record))
        ordered = sorted(merged.values(), key=lambda kr: kr[0].order())
        page = ordered[: query.limit]
        more = more or len(ordered) > query.limit
        return CertificatePage([r for _, r in page], page[-1][0].text() if more and page else None)

    def _filtered(self, query: CertificateQuery, now: dt.datetime) -> Any:
        """The listing with every filter but the name search and the cursor; None when an
        authority named is not stored (nothing can match)."""
        stmt = select(CertificateRow, AuthorityRow.name).join(
            AuthorityRow, AuthorityRow.id == CertificateRow.authority_id
        )
        if query.authority:
            # Its id first: a constant the planner can match with an index, not a join.
            authority_id = self.s.scalar(
                select(AuthorityRow.id).where(AuthorityRow.name == query.authority)
            )
            if authority_id is None:
                return None
            stmt = stmt.where(CertificateRow.authority_id == authority_id)
        state = CertificateState(query.status.value) if query.status else None
        if state is CertificateState.VALID:
            stmt = stmt.where(CertificateRow.status == VALID, CertificateRow.not_after > now)
        elif state is CertificateState.EXPIRED:
            stmt = stmt.where(CertificateRow.status == VALID, CertificateRow.not_after <= now)
        elif state is CertificateState.REVOKED:
            stmt = stmt.where(
                CertificateRow.status == REVOKED,
                or_(
                    CertificateRow.revocation_reason.is_(None),
                    CertificateRow.revocation_reason != HOLD,
                ),
            )
        elif state is CertificateState.ON_HOLD:
            stmt = stmt.where(
                CertificateRow.status == REVOKED, CertificateRow.revocation_reason == HOLD
            )
        if query.expiring_within_days is not None:
            stmt = stmt.where(
                CertificateRow.status == VALID,
                CertificateRow.not_after > now,
                CertificateRow.not_after <= now + dt.timedelta(days=query.expiring_within_days),
            )
        if query.profile:
            stmt = stmt.where(CertificateRow.profile == query.profile)
        if query.requester_kind:
            # A range rather than LIKE 'kind:%': an index on requester serves it on both
            # databases (SQLite's LIKE is case-insensitive, so it cannot use one).
            kind = query.requester_kind
            stmt = stmt.where(
                CertificateRow.requester >= kind + ":", CertificateRow.requester < kind + ";"
            )
        return stmt

    def _page(
        self,
        base: Any,
        query: CertificateQuery,
        after: _Key | None,
        term: str | None,
    ) -> list[tuple[_Key, CertificateRecord]]:
        """Up to limit + 1 rows of ``base`` after ``after``, in the query's sort."""
        stmt = base
        if query.sort is CertificateSort.ISSUED:
            if after is not None:
                stmt = stmt.where(CertificateRow.id < after.id)
            order: Sequence[Any] = (CertificateRow.id.desc(),)
            if term is not None:
                stmt, newest = self.certs.indexed_name_filter(
                    stmt, term, after_id=after.id if after else None
                )
                order = (newest,)
        else:
            if after is not None:
                stmt = stmt.where(
                    tuple_(CertificateRow.not_after, CertificateRow.id)
                    > tuple_(after.not_after, after.id)
                )
            if term is not None:
                stmt, _ = self.certs.indexed_name_filter(stmt, term, newest_first=False)
            order = (CertificateRow.not_after, CertificateRow.id)
        return self._rows(stmt.order_by(*order).limit(query.limit + 1), query.sort)

    def _rows(self, stmt: Any, sort: CertificateSort) -> list[tuple[_Key, CertificateRecord]]:
        out = []
        for row, name in self.s.execute(stmt):
            record = CertificateRepository._to_record(row, name)
            out.append((_Key(sort, row.id, record.not_after), record))
        return out

    # ------------------------------------------------------------------ the dashboard

    def status_counts(self, now: dt.datetime) -> list[AuthorityStatusCounts]:
        """Every authority (zeros included) with its count of certificates in each state."""
        valid = CertificateRow.status == VALID
        hold = and_(CertificateRow.status == REVOKED, CertificateRow.revocation_reason == HOLD)

        def count(condition: Any) -> Any:
            return func.sum(case((condition, 1), else_=0))

        rows = self.s.execute(
            select(
                CertificateRow.authority_id,
                count(and_(valid, CertificateRow.not_after > now)),
                count(and_(valid, CertificateRow.not_after <= now)),
                count(CertificateRow.status == REVOKED),
                count(hold),
            ).group_by(CertificateRow.authority_id)
        ).all()
        counts = {r[0]: [int(n or 0) for n in r[1:]] for r in rows}
        out = []
        for authority_id, name in self.s.execute(
            select(AuthorityRow.id, AuthorityRow.name).order_by(AuthorityRow.name)
        ):
            n_valid, n_expired, n_revoked, n_hold = counts.get(authority_id, [0, 0, 0, 0])
            out.append(AuthorityStatusCounts(name, n_valid, n_revoked - n_hold, n_expired, n_hold))
        return out

    def expiry_histogram(self, now: dt.datetime, days: int) -> list[tuple[dt.date, int]]:
        """Valid certificates by the UTC day they expire, for ``days`` days from today's date:
        day 0 counts those expiring after ``now`` until midnight, every day is present."""
        if not 1 <= days <= 3660:
            raise BadRequest(f"days must be between 1 and 3660, not {days}")
        start = _utc(now).date()
        end = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(), dt.UTC)
        if self.s.get_bind().dialect.name == "sqlite":
            # The stored text is naive UTC 'YYYY-MM-DD HH:MM:SS...': its first ten characters.
            day: Any = func.substr(CertificateRow.not_after, 1, 10)
        else:
            day = func.to_char(func.timezone("UTC", CertificateRow.not_after), "YYYY-MM-DD")
        rows = self.s.execute(
            select(day, func.count())
            .where(
                CertificateRow.status == VALID,
                CertificateRow.not_after > now,
                CertificateRow.not_after < end,
            )
            .group_by(day)
        ).all()
        found = {dt.date.fromisoformat(str(d)): int(n) for d, n in rows}
        return [
            (start + dt.timedelta(days=i), found.get(start + dt.timedelta(days=i), 0))
            for i in range(days)
        ]


class AuditSearch:
    """The audit log page and a certificate's history, over one session."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def page(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[AuditEvent], str | None]:
        """Events newest first (by id, the order they were written in), filtered; ``since``
        is inclusive and ``until`` exclusive."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        stmt = select(AuditRow)
        if cursor:
            m = _AUDIT_CURSOR.fullmatch(cursor)
            if m is None:
                raise _bad_cursor(cursor)
            stmt = stmt.where(AuditRow.id < int(m[1]))
        if actor:
            stmt = stmt.where(AuditRow.actor == actor)
        if action:
            stmt = stmt.where(AuditRow.action == action)
        if target:
            stmt = stmt.where(AuditRow.target == target)
        if since is not None:
            stmt = stmt.where(AuditRow.at >= since)
        if until is not None:
            stmt = stmt.where(AuditRow.at < until)
        rows = list(self.s.scalars(stmt.order_by(AuditRow.id.desc()).limit(limit + 1)))
        events = [audit_event(r) for r in rows[:limit]]
        more = len(rows) > limit
        return events, f"a{rows[limit - 1].id}" if more else None

    def certificate_history(self, authority: str, serial: str, limit: int) -> list[AuditEvent]:
        """Events about one certificate, newest first: those whose target is it (issue or
        renewal that made it, revocation, release, refusals), and the renewal that replaced it
        (whose target is the successor, with ``renews`` naming this serial)."""
        if not 1 <= limit <= 1000:
            raise BadRequest(f"limit must be between 1 and 1000, not {limit}")
        own = f"{authority}/{serial}"
        successor = self.s.scalar(
            select(CertificateRow.successor_serial)
            .join(AuthorityRow, AuthorityRow.id == CertificateRow.authority_id)
            .where(AuthorityRow.name == authority, CertificateRow.serial == serial)
        )
        # A refusal without an authority names the serial alone (refusal_audit).
        about: Any = AuditRow.target.in_((own, serial))
        if successor:
            about = or_(
                about,
                and_(
                    AuditRow.target == f"{authority}/{successor}",
                    AuditRow.action == "certificate.renew",
                ),
            )
        rows = self.s.scalars(
            select(AuditRow).where(about).order_by(AuditRow.id.desc()).limit(limit)
        )
        return [audit_event(r) for r in rows]
