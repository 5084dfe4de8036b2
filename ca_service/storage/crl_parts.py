"""The store of shard and delta CRLs (docs/crl.md): their latest editions, one per scope, and
the queries that choose their entries.

A shard CRL lists one shard's revoked, unexpired certificates; a delta CRL lists the
certificates whose status changed at or after its base's CRL number (``status_crl_number``,
written under the authority row's lock by CertificateRepository.set_revocation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from ca_service.clock import as_utc
from ca_service.domain import CertStatus, StoredCRL
from ca_service.storage.models import CertificateRow, CRLPartRow

# (serial, status, revocation time or None, reason or None) of a certificate whose status
# changed since a delta's base.
ChangedRow = tuple[str, str, dt.datetime | None, str | None]


class CRLPartRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def header(
        self, authority_id: int, scope: str
    ) -> tuple[int, int | None, dt.datetime, dt.datetime] | None:
        """Number, base number (deltas), thisUpdate and nextUpdate, without the body."""
        row = self.s.execute(
            select(
                CRLPartRow.number,
                CRLPartRow.base_number,
                CRLPartRow.this_update,
                CRLPartRow.next_update,
            ).where(CRLPartRow.authority_id == authority_id, CRLPartRow.scope == scope)
        ).one_or_none()
        if row is None:
            return None
        base = None if row[1] is None else int(row[1])
        return int(row[0]), base, as_utc(row[2]), as_utc(row[3])

    def numbers(self, authority_id: int, prefix: str) -> dict[str, int]:
        """The number of each stored CRL whose scope starts with ``prefix``."""
        rows = self.s.execute(
            select(CRLPartRow.scope, CRLPartRow.number).where(
                CRLPartRow.authority_id == authority_id, CRLPartRow.scope.startswith(prefix)
            )
        ).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def get(self, authority: str, authority_id: int, scope: str) -> StoredCRL | None:
        row = self.s.execute(
            select(CRLPartRow).where(
                CRLPartRow.authority_id == authority_id, CRLPartRow.scope == scope
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        return StoredCRL(
            authority, int(row.number), as_utc(row.this_update), as_utc(row.next_update), row.der
        )

    def save(
        self, authority_id: int, scope: str, crl: StoredCRL, base_number: int | None
    ) -> None:
        """Keep the CRL unless a higher-numbered one of its scope is stored (another won)."""
        values = {
            "number": crl.number,
            "base_number": base_number,
            "this_update": crl.this_update,
            "next_update": crl.next_update,
            "der": crl.der,
        }
        exists = self.s.scalar(
            select(CRLPartRow.number)
            .where(CRLPartRow.authority_id == authority_id, CRLPartRow.scope == scope)
            .with_for_update()
        )
        if exists is None:
            self.s.execute(
                insert(CRLPartRow).values(authority_id=authority_id, scope=scope, **values)
            )
        else:
            self.s.execute(
                update(CRLPartRow)
                .where(
                    CRLPartRow.authority_id == authority_id,
                    CRLPartRow.scope == scope,
                    CRLPartRow.number < crl.number,
                )
                .values(**values)
            )

    def shard_rows(
        self, authority_id: int, shard: int, now: dt.datetime
    ) -> Iterator[tuple[str, dt.datetime, str | None]]:
        """One shard's revoked, unexpired entries (serial, revocation time, reason), streamed."""
        c = CertificateRow
        result = self.s.execute(
            select(c.serial, c.revoked_at, c.revocation_reason)
            .where(
                c.authority_id == authority_id,
                c.crl_shard == shard,
                # Every revocation of a sharded certificate has its number (both came with
                # 0010): the shard's index then reaches its changed rows only.
                c.status_crl_number.is_not(None),
                c.status == CertStatus.REVOKED.value,
                c.not_after > now,
            )
            .execution_options(yield_per=10_000)
        )
        for serial, revoked_at, reason in result:
            assert revoked_at is not None  # every revoked row has its time
            yield serial, as_utc(revoked_at), reason

    def changed_rows(
        self, authority_id: int, since: int, now: dt.datetime, shard: int | None
    ) -> list[ChangedRow]:
        """Unexpired certificates whose status changed at or after CRL number ``since``; of one
        shard, or of the whole authority (``shard`` None)."""
        c = CertificateRow
        query = select(c.serial, c.status, c.revoked_at, c.revocation_reason).where(
            c.authority_id == authority_id, c.status_crl_number >= since, c.not_after > now
        )
        if shard is not None:
            query = query.where(c.crl_shard == shard)
        return [
            (r[0], r[1], None if r[2] is None else as_utc(r[2]), r[3])
            for r in self.s.execute(query.order_by(c.serial))
        ]

    def changed_shards(self, authority_id: int, since: int) -> dict[int, int]:
        """Per shard, the highest status_crl_number at or above ``since``: a shard whose stored
        CRL is numbered at or below it is missing a change."""
        c = CertificateRow
        rows = self.s.execute(
            select(c.crl_shard, func.max(c.status_crl_number))
            .where(
                c.authority_id == authority_id,
                c.status_crl_number >= since,
                c.crl_shard.is_not(None),
            )
            .group_by(c.crl_shard)
        ).all()
        return {int(r[0]): int(r[1]) for r in rows if r[0] is not None and r[1] is not None}

    def last_change(self, authority_id: int, shard: int | None) -> int | None:
        """The highest status_crl_number of the authority (or of one shard): a CRL of that
        scope numbered at or below it misses a change."""
        c = CertificateRow
        query = select(func.max(c.status_crl_number)).where(c.authority_id == authority_id)
        if shard is not None:
            query = query.where(c.crl_shard == shard)
        value = self.s.scalar(query)
        return None if value is None else int(value)

    def highest_shard(self, authority_id: int) -> int:
        """The highest shard any certificate of the authority names (0: none)."""
        c = CertificateRow
        value = self.s.scalar(select(func.max(c.crl_shard)).where(c.authority_id == authority_id))
        return int(value or 0)
