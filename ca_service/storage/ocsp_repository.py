"""Store access for OCSP: responder certificates and per-serial status lookups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, and_, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as lite_insert
from sqlalchemy.orm import Session

from ca_service.clock import as_utc

# ResponderRecord and SerialStatus live in ca_service.domain; the "as" imports re-export them
# for authority.py, which imports them from storage.ocsp_repository until the core split.
from ca_service.domain import (
    CertStatus,
    PresignedAnswer,
    ResponderRecord,
    RevocationReason,
    SerialStatus,
)
from ca_service.storage.models import (
    AuthorityRow,
    CertificateRow,
    OCSPPresignedRow,
    OCSPResponderRow,
    OCSPStampRow,
)

MAX_KEPT_PER_CERTIFICATE = 16  # CertID variants (hash, encoding) kept for one certificate


class OCSPRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def latest_responder(self, authority: str, now: dt.datetime) -> ResponderRecord | None:
        row = self.s.execute(
            select(OCSPResponderRow)
            .join(AuthorityRow, AuthorityRow.id == OCSPResponderRow.authority_id)
            .where(AuthorityRow.name == authority, OCSPResponderRow.not_after > now)
            .order_by(OCSPResponderRow.not_before.desc(), OCSPResponderRow.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if row is None:
            return None
        return ResponderRecord(
            authority,
            row.serial,
            row.cert_der,
            row.key_file,
            as_utc(row.not_before),
            as_utc(row.not_after),
        )

    def latest_responder_serial(self, authority: str, now: dt.datetime) -> str | None:
        """The serial of what ``latest_responder`` would return, without its certificate."""
        return self.s.execute(
            select(OCSPResponderRow.serial)
            .join(AuthorityRow, AuthorityRow.id == OCSPResponderRow.authority_id)
            .where(AuthorityRow.name == authority, OCSPResponderRow.not_after > now)
            .order_by(OCSPResponderRow.not_before.desc(), OCSPResponderRow.id.desc())
            .limit(1)
        ).scalar_one_or_none()

    def add_responder(self, authority_id: int, record: ResponderRecord, now: dt.datetime) -> None:
        self.s.add(
            OCSPResponderRow(
                authority_id=authority_id,
                serial=record.serial,
                cert_der=record.cert_der,
                key_file=record.key_file,
                not_before=record.not_before,
                not_after=record.not_after,
                created_at=now,
            )
        )
        self.s.flush()

    def statuses(self, authority: str, serials: Sequence[str]) -> dict[str, SerialStatus]:
        """Status of each known serial of one authority; unknown serials are absent."""
        rows = self.s.execute(
            select(
                CertificateRow.serial,
                CertificateRow.status,
                CertificateRow.revoked_at,
                CertificateRow.revocation_reason,
            )
            .join(AuthorityRow, AuthorityRow.id == CertificateRow.authority_id)
            .where(AuthorityRow.name == authority, CertificateRow.serial.in_(list(serials)))
        )
        return {
            serial: _serial_status(status, revoked_at, reason)
            for serial, status, revoked_at, reason in rows
        }

    def lock_authority(self, authority: str) -> int:
        """Take the authority row's lock, ordering concurrent responder rotations."""
        row_id = self.s.execute(
            select(AuthorityRow.id).where(AuthorityRow.name == authority).with_for_update()
        ).scalar_one()
        return int(row_id)

    # ------------------------------------------------------------ pre-signed answers (RFC 5019)

    def stamps(self) -> dict[str, int]:
        """Each authority's count of status changes; an authority never changed is absent."""
        rows = self.s.execute(
            select(AuthorityRow.name, OCSPStampRow.changes).join(
                AuthorityRow, AuthorityRow.id == OCSPStampRow.authority_id
            )
        )
        return {name: int(changes) for name, changes in rows}

    def presigned(
        self, authority: str, serial: str, cert_id: bytes
    ) -> tuple[SerialStatus | None, PresignedAnswer | None]:
        """The certificate's status now (None: not issued by ``authority``) and the answer kept
        for it and ``cert_id``, in one read."""
        row = self.s.execute(
            select(
                CertificateRow.status,
                CertificateRow.revoked_at,
                CertificateRow.revocation_reason,
                OCSPPresignedRow,
            )
            .join(AuthorityRow, AuthorityRow.id == CertificateRow.authority_id)
            .outerjoin(
                OCSPPresignedRow,
                and_(
                    OCSPPresignedRow.authority_id == CertificateRow.authority_id,
                    OCSPPresignedRow.serial == CertificateRow.serial,
                    OCSPPresignedRow.cert_id == cert_id,
                ),
            )
            .where(AuthorityRow.name == authority, CertificateRow.serial == serial)
        ).first()
        if row is None:
            return None, None
        status, revoked_at, reason, kept = row
        found = _serial_status(status, revoked_at, reason)
        return found, _presigned(authority, kept) if kept is not None else None

    def store_presigned(self, answer: PresignedAnswer, replacing: bytes | None) -> None:
        """Keep ``answer``: added when none was kept (``replacing`` None), else in place of the
        answer whose DER is ``replacing``. A concurrent writer that got there first wins and this
        one is dropped, so every reader serves the same bytes."""
        values = {
            "state": answer.state,
            "responder_serial": answer.responder_serial,
            "der": answer.der,
            "this_update": answer.this_update,
            "next_update": answer.next_update,
            "refresh_at": answer.refresh_at,
        }
        authority_id = (
            select(AuthorityRow.id).where(AuthorityRow.name == answer.authority).scalar_subquery()
        )
        if replacing is not None:
            self.s.execute(
                update(OCSPPresignedRow)
                .where(
                    OCSPPresignedRow.authority_id == authority_id,
                    OCSPPresignedRow.serial == answer.serial,
                    OCSPPresignedRow.cert_id == answer.cert_id,
                    OCSPPresignedRow.der == replacing,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return
        dialect_insert = (
            pg_insert if self.s.get_bind().dialect.name == "postgresql" else lite_insert
        )
        self.s.execute(
            dialect_insert(OCSPPresignedRow)
            .values(
                authority_id=authority_id, serial=answer.serial, cert_id=answer.cert_id, **values
            )
            .on_conflict_do_nothing()
        )

    def kept_of(self, authority: str, serial: str) -> list[tuple[PresignedAnswer, SerialStatus]]:
        """The answers kept for one certificate (one per CertID asked for), with its status."""
        return self._kept(
            select(AuthorityRow.name)
            .where(AuthorityRow.name == authority, OCSPPresignedRow.serial == serial)
            .limit(MAX_KEPT_PER_CERTIFICATE)
        )

    def due_presigned(
        self, now: dt.datetime, limit: int, *, lock: bool
    ) -> list[tuple[PresignedAnswer, SerialStatus]]:
        """Up to ``limit`` kept answers of unexpired certificates whose refresh time has come,
        with their certificate's status now. ``lock``: take the rows' locks, skipping those
        another replica holds, so replicas refreshing at once share the work instead of each
        re-signing all of it."""
        query = (
            select(AuthorityRow.name)
            # An expired certificate's answer is signed again only when someone asks for it.
            .where(OCSPPresignedRow.refresh_at <= now, CertificateRow.not_after > now)
            .order_by(OCSPPresignedRow.refresh_at)
            .limit(limit)
        )
        if lock:
            query = query.with_for_update(of=OCSPPresignedRow, skip_locked=True)
        return self._kept(query)

    def _kept(self, query: Select[Any]) -> list[tuple[PresignedAnswer, SerialStatus]]:
        """Kept answers and their certificate's status, for ``query``'s conditions."""
        query = (
            query.add_columns(
                OCSPPresignedRow,
                CertificateRow.status,
                CertificateRow.revoked_at,
                CertificateRow.revocation_reason,
            )
            .select_from(OCSPPresignedRow)
            .join(AuthorityRow, AuthorityRow.id == OCSPPresignedRow.authority_id)
            .join(
                CertificateRow,
                and_(
                    CertificateRow.authority_id == OCSPPresignedRow.authority_id,
                    CertificateRow.serial == OCSPPresignedRow.serial,
                ),
            )
        )
        return [
            (_presigned(name, kept), _serial_status(status, revoked_at, reason))
            for name, kept, status, revoked_at, reason in self.s.execute(query)
        ]


def bump_stamp(session: Session, authority_id: int) -> None:
    """Count one status change of ``authority_id``'s certificates, in the changing transaction
    (which holds the authority row's lock, so two first changes cannot both insert)."""
    done = session.execute(
        update(OCSPStampRow)
        .where(OCSPStampRow.authority_id == authority_id)
        .values(changes=OCSPStampRow.changes + 1)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(insert(OCSPStampRow).values(authority_id=authority_id, changes=1))


def _presigned(authority: str, row: OCSPPresignedRow) -> PresignedAnswer:
    return PresignedAnswer(
        authority,
        row.serial,
        bytes(row.cert_id),
        row.state,
        row.responder_serial,
        bytes(row.der),
        as_utc(row.this_update),
        as_utc(row.next_update),
        as_utc(row.refresh_at),
    )


def _serial_status(status: str, revoked_at: dt.datetime | None, reason: str | None) -> SerialStatus:
    return SerialStatus(
        CertStatus(status),
        as_utc(revoked_at) if revoked_at else None,
        RevocationReason(reason) if reason else None,
    )
