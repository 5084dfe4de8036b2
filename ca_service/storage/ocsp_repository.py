"""Store access for OCSP: responder certificates and per-serial status lookups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca_service.clock import as_utc

# ResponderRecord and SerialStatus live in ca_service.domain; the "as" imports re-export them
# for authority.py, which imports them from storage.ocsp_repository until the core split.
from ca_service.domain import CertStatus, ResponderRecord, RevocationReason, SerialStatus
from ca_service.storage.models import AuthorityRow, CertificateRow, OCSPResponderRow


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
            serial: SerialStatus(
                CertStatus(status),
                as_utc(revoked_at) if revoked_at else None,
                RevocationReason(reason) if reason else None,
            )
            for serial, status, revoked_at, reason in rows
        }

    def lock_authority(self, authority: str) -> int:
        """Take the authority row's lock, ordering concurrent responder rotations."""
        row_id = self.s.execute(
            select(AuthorityRow.id).where(AuthorityRow.name == authority).with_for_update()
        ).scalar_one()
        return int(row_id)
