"""Reads of the store for front ends; never writes a record.

Front ends (HTTP API, mutual TLS, TLS serving, CLI) must not open a unit of work or hold a
repository of their own, so every listing or lookup they show goes through here: each method
opens one read transaction, and returns domain records, never a session or a row. It needs
only the database, no CA key, so a command that only reads (``ca-service list``) can use it
on a store whose keys cannot be loaded. Its one write is upkeep of what its searches read:
``index_names`` moves the SQLite name index over the rows written since (storage/name_index.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from ca_service.core.context import normalize_serial
from ca_service.domain import (
    AuditEvent,
    AuthorityStatusCounts,
    CertificateFilter,
    CertificatePage,
    CertificateQuery,
    CertificateRecord,
    ResponderRecord,
)
from ca_service.metrics import CRLState, Expiry, StoreState
from ca_service.signing.serials import serial_hex
from ca_service.storage import name_index
from ca_service.storage.acme import OrderRepository
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.ocsp_repository import OCSPRepository
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
    CRLRepository,
)
from ca_service.storage.search import AuditSearch, CertificateSearch

# No certificate id is above this: a walk over every valid leaf, not one fixed at its start.
_ANY_ID = 2**62


class Catalog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def index_names(self, max_rows: int | None = None) -> int:
        """For the scheduler: index the names of the rows that searches still match one by
        one, at most ``max_rows``; how many rows (0 on PostgreSQL, whose server keeps its
        index itself)."""
        return name_index.catch_up(self._db, max_rows=max_rows)

    def list_certificates(
        self, flt: CertificateFilter, now: dt.datetime
    ) -> tuple[list[CertificateRecord], int | None]:
        """A page of certificates, newest first, and the cursor of the next page (or None).
        A short ``flt.name`` is searched window by window, so a page may come back short."""
        with unit_of_work(self._db) as s:
            return CertificateRepository(s).list(flt, now)

    def collect_certificates(
        self, flt: CertificateFilter, now: dt.datetime
    ) -> list[CertificateRecord]:
        """Up to ``flt.limit`` certificates, newest first, in one read transaction. A short
        ``flt.name`` is searched window by window (pages may come back short): this goes on
        until the limit is reached or the listing ends, so a command that shows one list (CLI
        ``list``) misses nothing."""
        records: list[CertificateRecord] = []
        with unit_of_work(self._db) as s:
            repo = CertificateRepository(s)
            while True:
                page, cursor = repo.list(flt, now)
                records += page
                if cursor is None or len(records) >= flt.limit:
                    return records
                flt = dataclasses.replace(flt, after_id=cursor, limit=flt.limit - len(records))

    def with_acme_orders(self, records: Sequence[CertificateRecord]) -> list[CertificateRecord]:
        """The records, each with the path of the ACME order it was issued for (one query
        for the whole page, on the orders' certificate index)."""
        if not records:
            return []
        with unit_of_work(self._db) as s:
            ids = OrderRepository(s).ids_for_certificates(
                [(r.authority, r.serial) for r in records]
            )
        return [
            dataclasses.replace(r, acme_order=f"/acme/{r.authority}/order/{ids[key]}")
            if (key := (r.authority, r.serial)) in ids
            else r
            for r in records
        ]

    def find_certificates(
        self, serial: str, authority: str | None = None
    ) -> list[CertificateRecord]:
        """Every stored certificate with this (lower-case hex) serial, one per authority at
        most; empty when none. Callers that hold the certificate compare fingerprints."""
        with unit_of_work(self._db) as s:
            return CertificateRepository(s).find(serial, authority)

    def last_certificate_id(self) -> int:
        """The id of the newest certificate (0: none): a long walk fixes it at its start so
        that certificates it issues itself are not walked again."""
        with unit_of_work(self._db) as s:
            return CertificateRepository(s).last_id()

    def renewal_candidates(
        self,
        now: dt.datetime,
        *,
        up_to_id: int,
        after: tuple[dt.datetime, int] | None = None,
        limit: int = 1000,
    ) -> tuple[list[CertificateRecord], tuple[dt.datetime, int] | None]:
        """A page of valid, unexpired leaves without a successor, the soonest to expire first,
        and the cursor of the next page (None: the last). One read transaction per page, so
        none is held while the caller renews."""
        with unit_of_work(self._db) as s:
            return CertificateRepository(s).renewal_candidates(
                now, up_to_id=up_to_id, after=after, limit=limit
            )

    def audit_events(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        """Up to ``limit`` audit events after the cursor ``after_id``, filtered by actor and
        action, in the order AuditRepository.list gives them."""
        with unit_of_work(self._db) as s:
            return AuditRepository(s).list(
                actor=actor, action=action, after_id=after_id, limit=limit
            )

    # ------------------------------------------------------------ the admin UI (issue 13)

    def search_certificates(self, query: CertificateQuery, now: dt.datetime) -> CertificatePage:
        """One keyset page of the certificate list (filters, sort, cursor: CertificateQuery);
        a malformed cursor or out-of-range limit is a BadRequest."""
        with unit_of_work(self._db) as s:
            return CertificateSearch(s).search(query, now)

    def status_counts(self, now: dt.datetime) -> list[AuthorityStatusCounts]:
        """Every authority, by name, with its valid, revoked, expired and on-hold counts."""
        with unit_of_work(self._db) as s:
            return CertificateSearch(s).status_counts(now)

    def expiry_histogram(self, now: dt.datetime, days: int = 90) -> list[tuple[dt.date, int]]:
        """Valid certificates expiring on each UTC day from today, ``days`` days, zeros kept."""
        with unit_of_work(self._db) as s:
            return CertificateSearch(s).expiry_histogram(now, days)

    def certificate_history(
        self, authority: str, serial: str, limit: int = 100
    ) -> list[AuditEvent]:
        """The audit events about one certificate (issue, renewals, revocation, release,
        refusals), newest first; the serial in any form users copy it in."""
        with unit_of_work(self._db) as s:
            return AuditSearch(s).certificate_history(authority, normalize_serial(serial), limit)

    def audit_page(
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
        """A keyset page of the audit log, newest first, and the next page's cursor (or None).
        ``since`` is inclusive, ``until`` exclusive."""
        with unit_of_work(self._db) as s:
            return AuditSearch(s).page(
                actor=actor, action=action, target=target, since=since, until=until,
                cursor=cursor, limit=limit,
            )  # fmt: skip

    def latest_audit_events(self, limit: int = 10) -> list[AuditEvent]:
        """The newest audit events, for the dashboard."""
        return self.audit_page(limit=limit)[0]

    def crl_header(self, authority: str) -> tuple[int, dt.datetime, dt.datetime] | None:
        """Number, thisUpdate and nextUpdate of the authority's stored CRL, without its body
        (tens of megabytes at a million entries); None before the first CRL."""
        with unit_of_work(self._db) as s:
            return CRLRepository(s).latest_header(authority)

    def ocsp_responder(self, authority: str, now: dt.datetime) -> ResponderRecord | None:
        """The delegated OCSP responder certificate in use (None: none made yet, or the CA
        signs its answers itself)."""
        with unit_of_work(self._db) as s:
            return OCSPRepository(s).latest_responder(authority, now)
    def store_state(self, now: dt.datetime, leaves: int) -> StoreState:
        """For a metrics scrape, in one read transaction: each stored CRL's header and size,
        the expiry of every CA certificate, and of the ``leaves`` soonest-expiring valid
        leaves (renewed ones excluded: their successor is what matters)."""
        with unit_of_work(self._db) as s:
            crls = tuple(CRLState(*row) for row in CRLRepository(s).summaries())
            authorities = AuthorityRepository(s).list()
            soonest: list[CertificateRecord] = []
            if leaves:
                soonest, _ = CertificateRepository(s).renewal_candidates(
                    now, up_to_id=_ANY_ID, limit=leaves
                )
        expiries = [
            Expiry(
                a.name,
                "ca",
                serial_hex(x509.load_der_x509_certificate(a.cert_der).serial_number),
                a.not_after,
            )
            for a in authorities
        ]
        expiries += [Expiry(r.authority, "leaf", r.serial, r.not_after) for r in soonest]
        return StoreState(now, crls, tuple(expiries))
