"""The OIDC store: provisioners, and the ``jti`` of each ID token used (until it expires)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca_service.domain import ProvisionerRecord
from ca_service.storage.models import ProvisionerRow, UsedTokenRow


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _record(row: ProvisionerRow) -> ProvisionerRecord:
    return ProvisionerRecord(
        name=row.name,
        type=row.type,
        issuer=row.issuer,
        audience=row.audience,
        jwks_uri=row.jwks_uri,
        claims={k: tuple(v) for k, v in (row.claims or {}).items()},
        allowed_names=tuple(row.allowed_names),
        profiles=tuple(row.profiles) if row.profiles is not None else None,
        max_validity_days=row.max_validity_days,
        authorities=tuple(row.authorities) if row.authorities is not None else None,
        created_by=row.created_by,
        created_at=_utc(row.created_at),
    )


class ProvisionerRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, record: ProvisionerRecord) -> None:
        """Raises storage.db.DuplicateRow when the name is taken."""
        self.s.add(
            ProvisionerRow(
                name=record.name,
                type=record.type,
                issuer=record.issuer,
                audience=record.audience,
                jwks_uri=record.jwks_uri,
                claims={k: list(v) for k, v in record.claims.items()},
                allowed_names=list(record.allowed_names),
                profiles=list(record.profiles) if record.profiles is not None else None,
                max_validity_days=record.max_validity_days,
                authorities=list(record.authorities) if record.authorities is not None else None,
                created_by=record.created_by,
                created_at=record.created_at,
            )
        )
        self.s.flush()

    def get(self, name: str) -> ProvisionerRecord | None:
        row = self.s.get(ProvisionerRow, name)
        return _record(row) if row is not None else None

    def all(self) -> list[ProvisionerRecord]:
        return [
            _record(r) for r in self.s.scalars(select(ProvisionerRow).order_by(ProvisionerRow.name))
        ]

    def by_issuer(self, issuer: str) -> list[ProvisionerRecord]:
        rows = self.s.scalars(
            select(ProvisionerRow)
            .where(ProvisionerRow.issuer == issuer)
            .order_by(ProvisionerRow.name)
        )
        return [_record(r) for r in rows]

    def delete(self, name: str) -> ProvisionerRecord | None:
        row = self.s.get(ProvisionerRow, name, with_for_update=True)
        if row is None:
            return None
        record = _record(row)
        self.s.delete(row)
        self.s.flush()
        return record


class UsedTokenRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def use(self, issuer: str, jti: str, expires_at: dt.datetime) -> bool:
        """Record a token id as used; False when it was used before (a replay)."""
        try:
            with self.s.begin_nested():
                self.s.add(UsedTokenRow(issuer=issuer, jti=jti, expires_at=expires_at))
                self.s.flush()
        except IntegrityError:
            return False
        return True

    def purge(self, now: dt.datetime, limit: int = 1000) -> int:
        doomed = select(UsedTokenRow.jti).where(UsedTokenRow.expires_at <= now).limit(limit)
        result = self.s.execute(delete(UsedTokenRow).where(UsedTokenRow.jti.in_(doomed)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
