"""Repositories: take a Session, return domain objects, flush but never commit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca_service.clock import as_utc

# AuditEvent and StoredCRL live in ca_service.domain; the "as" imports re-export them
# for authority.py, which imports them from storage.repositories until the core split.
from ca_service.domain import (
    AuditEvent,
    AuthorityRecord,
    CertificateFilter,
    CertificateRecord,
    CertStatus,
    RevocationReason,
    StoredCRL,
)
from ca_service.errors import Conflict, NotFound
from ca_service.storage.group_commit import insert_later
from ca_service.storage.models import (
    SEARCH_FTS_TABLE,
    SEARCH_PG_INDEXES,
    AuditRow,
    AuthorityRow,
    Base,
    CertificateRow,
    CRLRow,
)
from ca_service.storage.name_index import indexed_through
from ca_service.storage.ocsp_repository import bump_stamp

# Name search (CertificateFilter.name): terms this long use the trigram index; shorter ones are
# matched over windows of this many rows, newest first, one window per page.
MIN_INDEXED_TERM = 3
SHORT_TERM_WINDOW = 20_000
_FTS = table(SEARCH_FTS_TABLE, column("rowid"))
# How many characters of a long term the trigram index is asked for (6 trigrams: every trigram
# of a pattern costs a posting list, and a common one is long), and the sample of stored names
# that picks the least common slice: its size (SQLite) and how long it is kept per database.
INDEX_SLICE = 8
SAMPLE_ROWS = 2000
SAMPLE_SECONDS = 600.0
# A term found in at least this share of the sampled names is "common": newest-first by primary
# key fills a page after about limit / share rows; a rarer one is fetched whole through the index.
PG_COMMON_SHARE = 0.01


class _NameSample:
    """Per expression (common name, SANs), the planner's sample of the stored lower-case text."""

    def __init__(self, taken: float, columns: Sequence[Sequence[str]]) -> None:
        self.taken = taken
        self.columns = [list(c) for c in columns if c]
        self.counts: dict[str, int] = {}
        for value in itertools.chain.from_iterable(self.columns):
            for trigram in {value[i : i + 3] for i in range(len(value) - 2)}:
                self.counts[trigram] = self.counts.get(trigram, 0) + 1

    def is_rare(self, term: str) -> bool:
        """False without a sample (a new or never analyzed table): the planner decides."""
        if not self.columns:
            return False
        share = max(sum(term in v for v in values) / len(values) for values in self.columns)
        return share < PG_COMMON_SHARE

    def rarest_slice(self, term: str) -> str:
        """The INDEX_SLICE characters of ``term`` whose trigrams are rarest in the sample.

        A trigram index (GIN or FTS5) reads the posting list of every trigram of the pattern,
        and one that nearly every row has (those of ".example.test") is long: a whole host name
        spent 100+ ms (PostgreSQL) or 50+ ms (SQLite) there at a million rows.
        """
        if len(term) <= INDEX_SLICE:
            return term

        def weight(start: int) -> int:
            part = term[start : start + INDEX_SLICE]
            return sum(self.counts.get(part[i : i + 3], 0) for i in range(len(part) - 2))

        best = min(range(len(term) - INDEX_SLICE + 1), key=weight)
        return term[best : best + INDEX_SLICE]


_SAMPLES: dict[str, _NameSample] = {}


_CERTIFICATE_INSERT = insert(Base.metadata.tables["certificates"])
_AUDIT_INSERT = insert(Base.metadata.tables["audit_events"])
# The row is read whatever its status, so that FOR SHARE locks it even while it is valid (a
# filter on status locked nothing until the row was revoked: no wait for a revocation at all).
_REVOCATION = select(
    CertificateRow.status, CertificateRow.revoked_at, CertificateRow.revocation_reason
).where(CertificateRow.fingerprint_sha256 == bindparam("fingerprint"))
_REVOCATION_SHARED = _REVOCATION.with_for_update(read=True)
_DEFAULT_NAME = select(AuthorityRow.name).where(AuthorityRow.is_default.is_(True)).limit(1)


def _audit_params(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "request_id": event.request_id,
        "client_address": event.client_address,
        "details": event.details,
    }


def _utc(value: dt.datetime) -> dt.datetime:
    return as_utc(value)


def _opt_utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _utc(value)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _name_like(term: str) -> Any:
    """``LIKE '%term%'`` on the lower-cased common name or SAN text: what a name search means,
    whichever index finds the candidates."""
    pattern = "%" + _like_escape(term) + "%"
    return or_(
        func.lower(CertificateRow.common_name).like(pattern, escape="\\"),
        func.lower(CertificateRow.sans).like(pattern, escape="\\"),
    )


class AuthorityRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def _to_record(self, row: AuthorityRow) -> AuthorityRecord:
        parent = self.s.get(AuthorityRow, row.parent_id) if row.parent_id else None
        revoked = self.revocation_of_certificate(hashlib.sha256(row.cert_der).hexdigest())
        return AuthorityRecord(
            name=row.name,
            parent=parent.name if parent else None,
            is_root=row.is_root,
            is_default=row.is_default,
            subject=row.subject,
            key_type=row.key_type,
            not_before=_utc(row.not_before),
            not_after=_utc(row.not_after),
            cert_der=row.cert_der,
            key_file=row.key_file,
            name_constraints=row.name_constraints or None,
            external_chain_pem=row.external_chain_pem,
            revoked_at=revoked[0] if revoked else None,
            revocation_reason=revoked[1] if revoked else None,
        )

    def revocation_of_certificate(
        self, fingerprint_sha256: str, *, share_lock: bool = False
    ) -> tuple[dt.datetime, RevocationReason | None] | None:
        """When and why the certificate with this fingerprint was revoked; None if it is not.

        An authority's own certificate is stored under its issuer, so this is the status the
        issuer's CRL and OCSP publish. ``share_lock`` (FOR SHARE on PostgreSQL; SQLite's write
        transactions are serial anyway) makes a revocation of that certificate wait for this
        transaction, and this transaction wait for one in progress: issuance that checks it
        commits either before the revocation or not at all.
        """
        # Prebuilt: every issuance runs it, and building the select anew cost more than running it.
        query = _REVOCATION_SHARED if share_lock else _REVOCATION
        found = self.s.connection().execute(query, {"fingerprint": fingerprint_sha256}).first()
        if found is None or found.status != CertStatus.REVOKED.value:
            return None
        _status, at, reason = found
        # Every revocation stores its time; a row without one is still revoked, never valid.
        when = _utc(at) if at is not None else dt.datetime.fromtimestamp(0, dt.UTC)
        return when, RevocationReason(reason) if reason else None

    def add(
        self,
        *,
        name: str,
        parent: str | None,
        is_root: bool,
        subject: str,
        key_type: str,
        cert_der: bytes,
        key_file: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        name_constraints: dict[str, Any] | None,
        created_at: dt.datetime,
        external_chain_pem: str | None = None,
    ) -> AuthorityRecord:
        parent_row = self._row(parent) if parent else None
        row = AuthorityRow(
            name=name,
            parent_id=parent_row.id if parent_row else None,
            is_root=is_root,
            is_default=False,
            subject=subject,
            key_type=key_type,
            cert_der=cert_der,
            key_file=key_file,
            not_before=not_before,
            not_after=not_after,
            name_constraints=name_constraints,
            external_chain_pem=external_chain_pem,
            crl_number=0,
            created_at=created_at,
        )
        self.s.add(row)
        try:
            self.s.flush()
        except IntegrityError:
            raise Conflict(f"an authority named {name!r} exists already") from None
        return self._to_record(row)

    def _row(self, name: str) -> AuthorityRow:
        row = self.s.scalar(select(AuthorityRow).where(AuthorityRow.name == name))
        if row is None:
            raise NotFound(f"no authority named {name!r}")
        return row

    def id_of(self, name: str) -> int:
        return self._row(name).id

    def get(self, name: str) -> AuthorityRecord:
        return self._to_record(self._row(name))

    def find(self, name: str) -> AuthorityRecord | None:
        row = self.s.scalar(select(AuthorityRow).where(AuthorityRow.name == name))
        return self._to_record(row) if row else None

    def default(self) -> AuthorityRecord | None:
        row = self.s.scalar(select(AuthorityRow).where(AuthorityRow.is_default.is_(True)))
        return self._to_record(row) if row else None

    def default_name(self) -> str | None:
        """The default authority's name alone: asked twice a second by every worker, where the
        whole record (its parent and its certificate's revocation) was three reads."""
        name = self.s.connection().execute(_DEFAULT_NAME).scalar()
        return str(name) if name is not None else None

    def list(self) -> list[AuthorityRecord]:
        rows = self.s.scalars(select(AuthorityRow).order_by(AuthorityRow.id))
        return [self._to_record(r) for r in rows]

    def set_default(self, name: str) -> None:
        target = self._row(name)
        self.s.execute(update(AuthorityRow).values(is_default=False))
        self.s.execute(
            update(AuthorityRow).where(AuthorityRow.id == target.id).values(is_default=True)
        )
        self.s.flush()

    def lock_crl_number(self, name: str) -> int:
        """Lock the authority's row for this transaction and return its last CRL number."""
        number = self.s.execute(
            select(AuthorityRow.crl_number).where(AuthorityRow.name == name).with_for_update()
        ).scalar_one_or_none()
        if number is None:
            raise NotFound(f"no authority named {name!r}")
        return int(number)

    def next_crl_number(self, name: str) -> int:
        """Atomically take the next CRL number; the row lock orders concurrent callers."""
        authority_id = self.id_of(name)
        number = self.s.execute(
            update(AuthorityRow)
            .where(AuthorityRow.id == authority_id)
            .values(crl_number=AuthorityRow.crl_number + 1)
            .returning(AuthorityRow.crl_number)
        ).scalar_one()
        return int(number)


def serial_of_any_authority(serial: str) -> ColumnElement[bool]:
    """``serial`` under whichever authority: the unique (authority_id, serial) index probed once
    per authority (migration 0014 dropped the serial's own index, one random-keyed index fewer
    for every insert). Both planners need the authorities named to use it: PostgreSQL otherwise
    reads the whole index for a serial alone."""
    return and_(
        CertificateRow.authority_id.in_(select(AuthorityRow.id).scalar_subquery()),
        CertificateRow.serial == serial,
    )


class CertificateRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    @staticmethod
    def _to_record(row: CertificateRow, authority: str) -> CertificateRecord:
        return CertificateRecord(
            authority=authority,
            serial=row.serial,
            subject=row.subject,
            common_name=row.common_name,
            sans=tuple(row.sans.split()),
            key_type=row.key_type,
            profile=row.profile,
            not_before=_utc(row.not_before),
            not_after=_utc(row.not_after),
            status=CertStatus(row.status),
            revoked_at=_opt_utc(row.revoked_at),
            revocation_reason=(
                RevocationReason(row.revocation_reason) if row.revocation_reason else None
            ),
            fingerprint_sha256=row.fingerprint_sha256,
            der=row.der,
            requester=row.requester,
            created_at=_utc(row.created_at),
            successor=row.successor_serial,
        )

    def add(
        self, record: CertificateRecord, authority_id: int, *, crl_shard: int | None = None
    ) -> None:
        # A prebuilt Core INSERT with bound parameters, not an ORM add + flush: it runs once per
        # issuance, and the ORM's bookkeeping (or a fresh .values() statement, whose cache key
        # is rebuilt each time) cost more CPU than the statement itself. In a group commit it is
        # sent with the batch's other certificates as one executemany (storage/group_commit.py).
        insert_later(
            self.s,
            _CERTIFICATE_INSERT,
            {
                "authority_id": authority_id,
                "serial": record.serial,
                "subject": record.subject,
                "common_name": record.common_name,
                "sans": " " + " ".join(record.sans) + " ",
                "key_type": record.key_type,
                "profile": record.profile,
                "not_before": record.not_before,
                "not_after": record.not_after,
                "status": record.status.value,
                "revoked_at": None,
                "revocation_reason": None,
                "fingerprint_sha256": record.fingerprint_sha256,
                "der": record.der,
                "requester": record.requester,
                "created_at": record.created_at,
                # Named only when set: the column is migration 0010's (docs/crl.md).
                **({"crl_shard": crl_shard} if crl_shard is not None else {}),
            },
        )

    def _query(self) -> Any:
        return select(CertificateRow, AuthorityRow.name).join(
            AuthorityRow, AuthorityRow.id == CertificateRow.authority_id
        )

    def find(self, serial: str, authority: str | None = None) -> list[CertificateRecord]:
        """All certificates with this serial (one per authority at most)."""
        query = self._query().where(serial_of_any_authority(serial))
        if authority:
            query = query.where(AuthorityRow.name == authority)
        return [self._to_record(row, name) for row, name in self.s.execute(query)]

    def find_for_update(self, serial: str, authority: str) -> CertificateRecord | None:
        """The certificate, its row locked until the transaction ends, so that decisions on one
        certificate (revoke, release) are taken one after the other."""
        query = (
            select(CertificateRow)
            .join(AuthorityRow, AuthorityRow.id == CertificateRow.authority_id)
            .where(CertificateRow.serial == serial, AuthorityRow.name == authority)
            .with_for_update()
        )
        row = self.s.scalar(query)
        return None if row is None else self._to_record(row, authority)

    def set_successor(self, serial: str, authority_id: int, successor: str) -> None:
        row = self.s.scalar(
            select(CertificateRow)
            .where(CertificateRow.serial == serial, CertificateRow.authority_id == authority_id)
            .with_for_update()
        )
        if row is None:
            raise NotFound(f"no certificate with serial {serial}")
        row.successor_serial = successor
        self.s.flush()

    def set_revocation(
        self,
        locked: CertificateRecord,
        status: CertStatus,
        revoked_at: dt.datetime | None,
        reason: RevocationReason | None,
        crl_entry: bytes | None,
    ) -> CertificateRecord:
        """Store a revocation (or its release) decided on ``locked``, a record this transaction
        holds the lock of (find_for_update); returns the record as it now stands. ``crl_entry``:
        the DER of its entry in a full CRL (signing.crl.entry_der), None when released."""
        authority_id = self.s.execute(
            select(AuthorityRow.id).where(AuthorityRow.name == locked.authority)
        ).scalar_one()
        # Every process's cached OCSP answers of this authority are dropped when they see it.
        bump_stamp(self.s, authority_id)
        self.s.execute(
            update(CertificateRow)
            .where(
                CertificateRow.serial == locked.serial, CertificateRow.authority_id == authority_id
            )
            .values(
                status=status.value,
                revoked_at=revoked_at,
                revocation_reason=reason.value if reason else None,
                crl_entry=crl_entry,
                # Under the authority row's lock (see Revocation._locked): delta CRLs' marker.
                status_crl_number=select(AuthorityRow.crl_number)
                .where(AuthorityRow.name == locked.authority)
                .scalar_subquery(),
            )
            .execution_options(synchronize_session=False)
        )
        return dataclasses.replace(
            locked, status=status, revoked_at=_opt_utc(revoked_at), revocation_reason=reason
        )

    def last_id(self) -> int:
        """The id of the newest certificate (0: none), an upper bound that a long walk over the
        table can fix at its start, so rows it adds itself are not walked again."""
        return int(self.s.scalar(select(func.max(CertificateRow.id))) or 0)

    def renewal_candidates(
        self,
        now: dt.datetime,
        *,
        up_to_id: int,
        after: tuple[dt.datetime, int] | None = None,
        limit: int = 1000,
    ) -> tuple[list[CertificateRecord], tuple[dt.datetime, int] | None]:
        """A page of valid, unexpired leaf certificates that have no successor yet, the soonest
        to expire (the most due) first, and the keyset cursor of the next page (or None).

        Ordered by (not_after, id), so a page never depends on how many rows came before it
        and renewals made between pages (which give the old row a successor and add new rows
        above ``up_to_id``) neither skip nor repeat a certificate.
        """
        query = self._query().where(
            CertificateRow.status == CertStatus.VALID.value,
            CertificateRow.not_after > now,
            CertificateRow.successor_serial.is_(None),
            CertificateRow.profile.not_in(("ca", "ocsp-responder")),
            CertificateRow.id <= up_to_id,
        )
        if after is not None:
            not_after, after_id = after
            query = query.where(
                or_(
                    CertificateRow.not_after > not_after,
                    and_(CertificateRow.not_after == not_after, CertificateRow.id > after_id),
                )
            )
        query = query.order_by(CertificateRow.not_after, CertificateRow.id).limit(limit + 1)
        rows = self.s.execute(query).all()
        page = rows[:limit]
        records = [self._to_record(row, name) for row, name in page]
        cursor = (page[-1][0].not_after, page[-1][0].id) if len(rows) > limit else None
        return records, cursor

    def list(
        self, flt: CertificateFilter, now: dt.datetime
    ) -> tuple[list[CertificateRecord], int | None]:
        """A page of certificates, newest first, and the cursor of the next page (or None)."""
        query = self._query().add_columns(CertificateRow.id)
        if flt.authority:
            query = query.where(AuthorityRow.name == flt.authority)
        if flt.status is CertStatus.EXPIRED:
            query = query.where(
                CertificateRow.status == CertStatus.VALID.value, CertificateRow.not_after <= now
            )
        elif flt.status is CertStatus.VALID:
            query = query.where(
                CertificateRow.status == CertStatus.VALID.value, CertificateRow.not_after > now
            )
        elif flt.status is CertStatus.REVOKED:
            query = query.where(CertificateRow.status == CertStatus.REVOKED.value)
        if flt.expires_before:
            query = query.where(CertificateRow.not_after < flt.expires_before)
        if flt.after_id is not None:
            query = query.where(CertificateRow.id < flt.after_id)
        window_floor = None
        if flt.name:
            parts, window_floor = self._name_filter(query, flt.name, flt.after_id)
        else:
            parts = [query.order_by(CertificateRow.id.desc())]
        rows = self.merged(parts, flt.limit + 1, key=lambda row: -row[2])
        records = [self._to_record(row, name) for row, name, _ in rows[: flt.limit]]
        if len(rows) > flt.limit:
            next_cursor: int | None = rows[flt.limit - 1][2]
        else:
            # A short-term search looked at one window of rows: the next page goes on below it.
            next_cursor = window_floor
        return records, next_cursor

    def _name_filter(
        self, query: Any, name: str, after_id: int | None
    ) -> tuple[Sequence[Any], int | None]:
        """``query`` with the name search, as the newest-first parts that ``merged`` joins.

        The semantics are those of ``LIKE '%term%'`` on the lower-cased common name and SAN
        text, whatever the path: a term of MIN_INDEXED_TERM characters or more is looked up in
        the trigram index of migration 0005 by its least common slice (PostgreSQL: GIN pg_trgm
        through LIKE, all matches of a rare term then the newest, a common term newest-first by
        primary key; SQLite: the FTS5 table, driven newest-first so that LIMIT stops it early)
        and the whole term confirms each candidate. A shorter term has no trigram: it is matched
        over one window of
        SHORT_TERM_WINDOW rows below the cursor, and the returned floor of that window is the
        next page's cursor (the page may then hold fewer rows than asked for, even none).
        """
        term = name.lower()
        if len(name) < MIN_INDEXED_TERM or "\x00" in name:
            query = query.where(_name_like(term))
            floor = self.s.scalar(
                select(CertificateRow.id)
                .where(CertificateRow.id < after_id if after_id is not None else true())
                .order_by(CertificateRow.id.desc())
                .offset(SHORT_TERM_WINDOW - 1)
                .limit(1)
            )
            if floor is not None:
                query = query.where(CertificateRow.id >= floor)
            return [query.order_by(CertificateRow.id.desc())], floor
        parts = self.indexed_name_filter(query, term, after_id=after_id)
        return [part.order_by(order) for part, order in parts], None

    def merged(self, parts: Sequence[Any], limit: int, key: Callable[[Any], Any]) -> Sequence[Any]:
        """The first ``limit`` rows of the union of ``parts``: statements that each return
        rows already in the order that ``key`` sorts by, and no row in two of them."""
        if len(parts) == 1:
            return self.s.execute(parts[0].limit(limit)).all()
        runs = [self.s.execute(part.limit(limit)).all() for part in parts]
        return tuple(itertools.islice(heapq.merge(*runs, key=key), limit))

    def indexed_name_filter(
        self, query: Any, term: str, *, after_id: int | None = None, newest_first: bool = True
    ) -> Sequence[tuple[Any, Any]]:
        """The search for ``term`` (lower case, MIN_INDEXED_TERM characters or more) added to
        ``query`` through the trigram index: one or two parts, each with the newest-first order
        that goes with its path (which the caller applies, or replaces with its own order when
        ``newest_first`` is False: the admin UI's sort by expiry), to be joined by ``merged``.

        On SQLite the second part is the tail the FTS index does not hold yet
        (storage/name_index.py), matched by LIKE alone: every id in it is above every id in the
        first part, and both are read in the caller's one transaction.

        ``after_id`` (newest first only) is the keyset cursor, repeated on the index's rowid
        for SQLite, which otherwise reads the matches above the cursor too.
        """
        if self.s.get_bind().dialect.name != "sqlite":
            sample = self._name_sample()
            # The index gets the term's least common slice (LIKE, which GIN serves); strpos, which
            # it does not, checks the whole term on the few rows that come back.
            slice_ = "%" + _like_escape(sample.rarest_slice(term)) + "%"
            query = query.where(
                or_(
                    *(
                        and_(
                            func.lower(col).like(slice_, escape="\\"),
                            func.strpos(func.lower(col), term) > 0,
                        )
                        for col in (CertificateRow.common_name, CertificateRow.sans)
                    )
                )
            )
            if sample.is_rare(term):
                # All matches through the index, then the newest: "id + 0" keeps the planner
                # from walking the primary key newest-first through rows that do not match.
                return [(query, (CertificateRow.id + literal_column("0")).desc())]
            # A common term (or no statistics yet): newest-first stops at the page size.
            return [(query, CertificateRow.id.desc())]
        query = query.where(_name_like(term))
        sample = self._name_sample()
        if not newest_first and not sample.is_rare(term):
            # Another order over a common term: walking that order's index and checking each
            # row with LIKE fills a page after about limit / share rows, where the FTS table
            # would hand over every match to be sorted.
            return [(query, CertificateRow.id.desc())]
        held = indexed_through(self.s)
        assert held is not None
        # The tail is a few thousand of the newest rows: said to the planner, which would
        # otherwise walk the expiry index over the whole table to skip a sort of those few.
        tail = query.where(func.likelihood(CertificateRow.id > held, literal_column("0.001")))
        # FTS5 phrase of the term's least common slice: its trigrams in a row, i.e. that
        # substring, case-folded; the LIKE above then checks the whole term.
        slice_ = sample.rarest_slice(term)
        phrase = '"' + slice_.replace('"', '""') + '"'
        query = query.join(_FTS, _FTS.c.rowid == CertificateRow.id).where(
            literal_column(SEARCH_FTS_TABLE).op("MATCH")(phrase), _FTS.c.rowid <= held
        )
        if after_id is not None:
            query = query.where(_FTS.c.rowid < after_id)
        return [(tail, CertificateRow.id.desc()), (query, _FTS.c.rowid.desc())]

    def _name_sample(self) -> _NameSample:
        """Stored names, lower-cased, per column (common name, SANs), cached per database.

        PostgreSQL: the planner's own sample (pg_stats of the two trigram indexes, refreshed
        by ANALYZE). SQLite, which keeps none: the newest SAMPLE_ROWS rows.
        """
        key = str(self.s.get_bind().engine.url)
        cached = _SAMPLES.get(key)
        if cached and time.monotonic() - cached.taken < SAMPLE_SECONDS:
            return cached
        if self.s.get_bind().dialect.name == "sqlite":
            rows = self.s.execute(
                select(func.lower(CertificateRow.common_name), func.lower(CertificateRow.sans))
                .order_by(CertificateRow.id.desc())
                .limit(SAMPLE_ROWS)
            ).all()
            columns = [[r[0] for r in rows if r[0]], [r[1] for r in rows]]
        else:
            stats = self.s.execute(
                text(
                    "SELECT histogram_bounds::text::text[], most_common_vals::text::text[]"
                    " FROM pg_stats WHERE schemaname = current_schema() AND tablename = ANY(:names)"
                ),
                {"names": sorted(SEARCH_PG_INDEXES)},
            ).all()
            columns = [[*(h or ()), *(m or ())] for h, m in stats]
        sample = _NameSample(time.monotonic(), columns)
        _SAMPLES[key] = sample
        return sample

    def revoked_rows(
        self,
        authority_id: int,
        now: dt.datetime,
        batch: int = 50_000,
        *,
        except_serial: str | None = None,
        without_entry: bool = False,
    ) -> Iterator[tuple[str, str, str | None]]:
        """Revoked, unexpired entries of one authority as raw driver rows, streamed: (hex serial,
        revocation time as UTC text, reason or None), ``except_serial`` left out;
        ``without_entry``: only those with no stored CRL entry (see stored_crl_entries).

        This one query goes to the driver's own cursor: at a million entries, SQLAlchemy's
        per-row work alone costs seconds, and so does any Python work per row, so the database
        drops the excepted serial and PostgreSQL writes the time's digits, 'YYYYMMDDHHMMSS'
        (SQLite yields its stored 'YYYY-MM-DD HH:MM:SS.ffffff'). PostgreSQL reads through a
        server-side cursor, so memory stays flat, and the next batch is fetched by a thread
        while the caller encodes this one, so the server works meanwhile (issue 15 item 3).
        SQLite gets no such thread: its driver lets go of the GIL once per row, and a thread
        taking it back from a busy encoder every row is slower than no thread.
        """
        raw = self.s.connection().connection.driver_connection
        status = CertStatus.REVOKED.value
        skip = except_serial or ""
        only = int(without_entry)
        if self.s.get_bind().dialect.name == "sqlite":
            # SQLite compares the stored text, so ``now`` goes in the stored form, naive UTC; the
            # time is returned as stored ('YYYY-MM-DD HH:MM:SS.ffffff'): rewriting it in SQL
            # costs more than in Python (0.5 s per million, bench/PROFILES.md).
            cursor = raw.cursor()  # type: ignore[union-attr]
            cursor.execute(
                "SELECT serial, revoked_at, revocation_reason FROM certificates "
                "WHERE authority_id = ? AND status = ? AND not_after > ? AND serial != ? "
                "AND (? = 0 OR crl_entry IS NULL)",
                (
                    authority_id,
                    status,
                    now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                    skip,
                    only,
                ),
            )
            try:
                while part := cursor.fetchmany(batch):
                    yield from part
            finally:
                cursor.close()
            return
        cursor = raw.cursor(name=f"crl_rows_{authority_id}")  # type: ignore[union-attr]
        cursor.itersize = batch
        cursor.execute(
            "SELECT serial, to_char(revoked_at AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS'), "
            "revocation_reason FROM certificates "
            "WHERE authority_id = %s AND status = %s AND not_after > %s AND serial != %s "
            "AND (%s = 0 OR crl_entry IS NULL)",
            (authority_id, status, now, skip, only),
        )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crl-rows") as prefetch:
            try:
                pending = prefetch.submit(cursor.fetchmany, batch)
                while part := pending.result():
                    pending = prefetch.submit(cursor.fetchmany, batch)
                    yield from part
            finally:
                # The consumer stopped (or failed): let the fetch in flight end before the
                # cursor and its connection are used for anything else.
                pending.cancel() or pending.exception()
                cursor.close()

    def stored_crl_entries(
        self, authority_id: int, now: dt.datetime, *, except_serial: str | None = None
    ) -> tuple[int, int, bytes]:
        """The stored CRL entries of one authority's revoked, unexpired certificates, joined by
        the database into one value: (how many, how many revoked rows have none, the DER).

        One aggregate, so the driver hands over one value instead of three objects per row,
        which was half of a CRL's time at a million (bench/PROFILES.md, "CRL at 1M from stored
        entries"). Rows revoked before migration 0013 have no entry: the second count says
        how many, and revoked_rows(without_entry=True) gives them, so none is left out. The
        joined value is bounded by the database's largest value (1 GB on both; about 20M
        entries), far past the size at which an authority's CRL should be sharded."""
        where = (
            CertificateRow.authority_id == authority_id,
            # Literal, not a parameter: a generic plan (PostgreSQL's) may use the partial index
            # of migration 0013, which holds every column this query reads, only then.
            CertificateRow.status == literal_column(f"'{CertStatus.REVOKED.value}'"),
            CertificateRow.not_after > now,
            CertificateRow.serial != (except_serial or ""),
        )
        entry = CertificateRow.crl_entry
        if self.s.get_bind().dialect.name == "sqlite":
            # group_concat keeps a blob's bytes (NULs included) but types the result as text.
            joined = cast(func.group_concat(entry, literal("")), LargeBinary)
            count, total, blob = self.s.execute(
                select(func.count(entry), func.count(), joined).where(*where)
            ).one()
            return int(count), int(total) - int(count), bytes(blob or b"")
        # PostgreSQL: the driver's own cursor in binary format, so the 47 MB value of a million
        # entries comes as bytes, not as 95 MB of hex text decoded and copied (0.8-1.0 s against
        # 1.4 s; measured in bench/PROFILES.md).
        query = select(func.count(entry), func.count(), func.string_agg(entry, literal(b""))).where(
            *where
        )
        compiled = query.compile(dialect=self.s.get_bind().dialect)
        raw = self.s.connection().connection.driver_connection
        with raw.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            cursor.execute(str(compiled), compiled.params)
            count, total, blob = cursor.fetchone()
        return int(count), int(total) - int(count), bytes(blob or b"")


class CRLRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def latest(self, authority: str) -> StoredCRL | None:
        row = self.s.execute(
            select(CRLRow)
            .join(AuthorityRow, AuthorityRow.id == CRLRow.authority_id)
            .where(AuthorityRow.name == authority)
        ).scalar_one_or_none()
        if row is None:
            return None
        return StoredCRL(
            authority, int(row.number), _utc(row.this_update), _utc(row.next_update), row.der
        )

    def latest_header(self, authority: str) -> tuple[int, dt.datetime, dt.datetime] | None:
        """Number and dates of the stored CRL without its (possibly large) body."""
        row = self.s.execute(
            select(CRLRow.number, CRLRow.this_update, CRLRow.next_update)
            .join(AuthorityRow, AuthorityRow.id == CRLRow.authority_id)
            .where(AuthorityRow.name == authority)
        ).one_or_none()
        if row is None:
            return None
        return int(row[0]), _utc(row[1]), _utc(row[2])

    def summaries(self) -> list[tuple[str, int, dt.datetime, dt.datetime, int]]:
        """(authority, number, thisUpdate, nextUpdate, size in bytes) of every stored CRL, in
        one query that never reads a CRL's body (for the metrics)."""
        rows = self.s.execute(
            select(
                AuthorityRow.name,
                CRLRow.number,
                CRLRow.this_update,
                CRLRow.next_update,
                func.length(CRLRow.der),
            )
            .join(AuthorityRow, AuthorityRow.id == CRLRow.authority_id)
            .order_by(AuthorityRow.name)
        ).all()
        return [(r[0], int(r[1]), _utc(r[2]), _utc(r[3]), int(r[4] or 0)) for r in rows]

    def save(self, authority_id: int, crl: StoredCRL) -> None:
        """Keep the CRL unless a higher-numbered one is stored already (another process won).

        Plain UPDATE/INSERT: loading the stored row first would read the old CRL's body, tens
        of megabytes at a million entries, only to overwrite it.
        """
        values = {
            "number": crl.number,
            "this_update": crl.this_update,
            "next_update": crl.next_update,
            "der": crl.der,
        }
        if self.s.get_bind().dialect.name == "postgresql":
            self._fast_toast()
        exists = self.s.scalar(
            select(CRLRow.number).where(CRLRow.authority_id == authority_id).with_for_update()
        )
        if exists is None:
            self.s.execute(insert(CRLRow).values(authority_id=authority_id, **values))
        else:
            self.s.execute(
                update(CRLRow)
                .where(CRLRow.authority_id == authority_id, CRLRow.number < crl.number)
                .values(**values)
            )

    def _fast_toast(self) -> None:
        """Compress this transaction's CRL body with lz4 instead of PostgreSQL's default pglz:
        storing the 47 MB CRL of a million entries took 2.7-2.9 s with pglz and 0.8-0.9 s with
        lz4 (bench/PROFILES.md, issue 15 item 3), for a body 7 % larger. SET LOCAL, so nothing
        else in the session changes; skipped on a server built without lz4 (the SET would
        fail and abort the transaction)."""
        has_lz4 = self.s.scalar(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        )
        if has_lz4:
            self.s.execute(text("SET LOCAL default_toast_compression = 'lz4'"))


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, event: AuditEvent) -> int:
        """Append ``event``; returns its id."""
        result = self.s.connection().execute(_AUDIT_INSERT, _audit_params(event))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def add_later(self, event: AuditEvent) -> None:
        """Append ``event`` without reading its id back: in a group commit, with the batch's
        other events as one executemany (storage/group_commit.py)."""
        insert_later(self.s, _AUDIT_INSERT, _audit_params(event))

    def exists(self, action: str, target: str) -> bool:
        """Has an event of ``action`` on ``target`` been written (on the action's index)?"""
        found = self.s.scalar(
            select(AuditRow.id).where(AuditRow.action == action, AuditRow.target == target).limit(1)
        )
        return found is not None

    def set_details(self, event_id: int, details: dict[str, Any]) -> None:
        """Replace the details of one event: only a counted refusal is ever updated in place
        (ca_service.refusals), every other event is written once."""
        self.s.execute(update(AuditRow).where(AuditRow.id == event_id).values(details=details))

    def list(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        query = select(AuditRow)
        if actor:
            query = query.where(AuditRow.actor == actor)
        if action:
            query = query.where(AuditRow.action == action)
        if after_id is not None:
            query = query.where(AuditRow.id < after_id)
        rows = self.s.scalars(query.order_by(AuditRow.id.desc()).limit(limit))
        return [audit_event(r) for r in rows]


def audit_event(r: AuditRow) -> AuditEvent:
    """A stored audit row as the domain's event."""
    return AuditEvent(
        at=_utc(r.at),
        actor=r.actor,
        action=r.action,
        target=r.target,
        request_id=r.request_id,
        client_address=r.client_address,
        details=r.details,
        id=r.id,
    )
