"""The admin UI's reads (issue 13): the certificate list with its filters and two keyset orders,
the dashboard's counts and expiry histogram, a certificate's history and the audit log page.

Every page is a keyset page (never OFFSET): its cost does not grow with how deep the page is,
and rows written between two pages neither shift nor repeat the rows of the next one. Cursors
are opaque url-safe text; one that does not parse is a BadRequest, never a 500.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Integer, and_, column, func, literal_column, or_, select, tuple_, values
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
from ca_service.storage.models import (
    REQUESTER_KIND_SQL,
    UTC_DATETIME,
    AuditRow,
    AuthorityRow,
    CertificateRow,
)
from ca_service.storage.repositories import (
    MIN_INDEXED_TERM,
    CertificateRepository,
    audit_event,
    serial_of_any_authority,
)

HOLD = RevocationReason.CERTIFICATE_HOLD.value
VALID, REVOKED = CertStatus.VALID.value, CertStatus.REVOKED.value
_HEX = frozenset("0123456789abcdef")
_ISSUED_CURSOR = re.compile(r"i([1-9][0-9]{0,18})")
_EXPIRY_CURSOR = re.compile(r"e(-?[0-9]{1,17})_([1-9][0-9]{0,18})")
_AUDIT_CURSOR = re.compile(r"a([1-9][0-9]{0,18})")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_HISTOGRAM_DAYS = 1000


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
                serial = serial_of_any_authority(_serial_form(hexed))
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
        # The expiry column the filters compare. Newest first on SQLite, a copy the index of
        # (status, not_after, id) cannot serve (unary plus): SQLite keeps no statistics, and
        # without them it takes that index for every range, then sorts all the valid (or all
        # the expired: most of a CA's store) rows by id, 0.4 to 3.6 s at 1M; walking the
        # id-ordered indexes instead stops at the page size. PostgreSQL's planner has
        # statistics and picks between the two itself.
        sqlite = self.s.get_bind().dialect.name == "sqlite"
        expiry: Any = CertificateRow.not_after
        if query.sort is CertificateSort.ISSUED and sqlite:
            expiry = literal_column("+certificates.not_after", UTC_DATETIME)
        state = CertificateState(query.status.value) if query.status else None
        if state is CertificateState.VALID:
            stmt = stmt.where(CertificateRow.status == VALID, expiry > now)
        elif state is CertificateState.EXPIRED:
            stmt = stmt.where(CertificateRow.status == VALID, expiry <= now)
        elif state is CertificateState.REVOKED:
            stmt = stmt.where(
                CertificateRow.status == REVOKED,
                or_(
                    CertificateRow.revocation_reason.is_(None),
                    CertificateRow.revocation_reason != HOLD,
                ),
            )
        elif state is CertificateState.ON_HOLD:
            # Only a revoked row has a reason (a release clears it), so the status adds nothing
            # but a hint to the planners. PostgreSQL multiplied the two shares of these related
            # columns, expected 165 rows of the 4,000, and sorted them all (30-60 ms at 1M):
            # the reason alone keeps it on the hold index in id order. SQLite, which counts
            # equalities, needs the status to keep an authority's 150k rows from being sorted
            # by expiry (0.4 s); it then walks the status or CRL index.
            stmt = stmt.where(CertificateRow.revocation_reason == HOLD)
            if sqlite:
                stmt = stmt.where(CertificateRow.status == REVOKED)
        if query.expiring_within_days is not None:
            stmt = stmt.where(
                CertificateRow.status == VALID,
                expiry > now,
                expiry <= now + dt.timedelta(days=query.expiring_within_days),
            )
        if query.profile:
            stmt = stmt.where(CertificateRow.profile == query.profile)
        if query.requester_kind:
            # The expression of the index, as literal SQL: a bound parameter inside it would
            # make another expression, which the index does not serve.
            kind: Any = literal_column(REQUESTER_KIND_SQL[self.s.get_bind().dialect.name])
            stmt = stmt.where(kind == query.requester_kind)
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
        found: Sequence[tuple[Any, Any]]
        if query.sort is CertificateSort.ISSUED:
            if after is not None:
                stmt = stmt.where(CertificateRow.id < after.id)
            parts = [stmt.order_by(CertificateRow.id.desc())]
            if term is not None:
                found = self.certs.indexed_name_filter(
                    stmt, term, after_id=after.id if after else None
                )
                parts = [part.order_by(newest) for part, newest in found]
        else:
            if after is not None:
                stmt = stmt.where(
                    tuple_(CertificateRow.not_after, CertificateRow.id)
                    > tuple_(after.not_after, after.id)
                )
            found = [(stmt, None)]
            if term is not None:
                found = self.certs.indexed_name_filter(stmt, term, newest_first=False)
            by_expiry = (CertificateRow.not_after, CertificateRow.id)
            parts = [part.order_by(*by_expiry) for part, _ in found]
        sort = query.sort
        rows = self.certs.merged(
            parts, query.limit + 1, key=lambda r: _Key(sort, r[0].id, r[0].not_after).order()
        )
        return self._records(rows, sort)

    def _rows(self, stmt: Any, sort: CertificateSort) -> list[tuple[_Key, CertificateRecord]]:
        return self._records(self.s.execute(stmt), sort)

    @staticmethod
    def _records(
        rows: Iterable[Any], sort: CertificateSort
    ) -> list[tuple[_Key, CertificateRecord]]:
        out = []
        for row, name in rows:
            record = CertificateRepository._to_record(row, name)
            out.append((_Key(sort, row.id, record.not_after), record))
        return out

    # ------------------------------------------------------------------ the dashboard

    def status_counts(self, now: dt.datetime) -> list[AuthorityStatusCounts]:
        """Every authority (zeros included) with its count of certificates in each state.

        Per authority, counts of ranges of the CRL index (authority_id, status, not_after),
        which hold every column they look at (index only), and of the hold index: one pass
        over all the rows' columns instead took 2-3 s at 1M on SQLite. Expiry still costs a
        step per stored entry (SQLite and PostgreSQL count no range without walking it).
        """

        def count(*where: Any) -> int:
            return int(self.s.scalar(select(func.count()).where(*where)) or 0)

        out = []
        for a, name in self.s.execute(
            select(AuthorityRow.id, AuthorityRow.name).order_by(AuthorityRow.name)
        ):
            mine = CertificateRow.authority_id == a
            valid = and_(mine, CertificateRow.status == VALID)
            unexpired = count(valid, CertificateRow.not_after > now)
            hold = count(CertificateRow.revocation_reason == HOLD, mine)
            out.append(
                AuthorityStatusCounts(
                    authority=name,
                    valid=unexpired,
                    revoked=count(mine, CertificateRow.status == REVOKED) - hold,
                    expired=count(valid, CertificateRow.not_after <= now),
                    on_hold=hold,
                )
            )
        return out

    def expiry_histogram(self, now: dt.datetime, days: int) -> list[tuple[dt.date, int]]:
        """Valid certificates by the UTC day they expire, for ``days`` days from today's date:
        day 0 counts those expiring after ``now`` until midnight, every day is present.

        One index-only range count per day, the days sent as a VALUES list: grouping the rows
        by a day computed from each (to_char, substr) cost 100 ms at 90 days of a 1M store.
        """
        if not 1 <= days <= MAX_HISTOGRAM_DAYS:
            raise BadRequest(f"days must be between 1 and {MAX_HISTOGRAM_DAYS}, not {days}")
        start = _utc(now).date()
        midnight = dt.datetime.combine(start, dt.time(), dt.UTC)
        tick = dt.timedelta(microseconds=1)  # the stores keep microseconds: > lo is >= midnight
        bounds = [
            (i, now if i == 0 else midnight + dt.timedelta(days=i) - tick,
             midnight + dt.timedelta(days=i + 1))
            for i in range(days)
        ]  # fmt: skip
        table = (
            values(
                column("i", Integer),
                column("lo", UTC_DATETIME),
                column("hi", UTC_DATETIME),
                name="days",
            )
            .data(bounds)
            .cte("days")
        )  # a CTE, since SQLite takes no column aliases on a VALUES in FROM
        count = (
            select(func.count())
            .where(
                CertificateRow.status == VALID,
                CertificateRow.not_after > table.c.lo,
                CertificateRow.not_after < table.c.hi,
            )
            .scalar_subquery()
        )
        found = {int(i): int(n) for i, n in self.s.execute(select(table.c.i, count))}
        return [(start + dt.timedelta(days=i), found.get(i, 0)) for i in range(days)]


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
