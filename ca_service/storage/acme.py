"""The ACME store: accounts, orders, authorizations, challenges, nonces and EAB keys.

Each repository takes a Session (the caller's unit of work) and returns records of
ca_service.domain. State changes are compare-and-set (``UPDATE ... WHERE status IN (...)``)
so that two workers racing on one order or challenge cannot both move it: the loser sees
False and re-reads. Which moves are allowed at all is decided above, in acme/states.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca_service.clock import as_utc
from ca_service.domain import (
    ACMEAccountRecord,
    ACMEAuthzRecord,
    ACMEChallengeRecord,
    ACMEIdentifier,
    ACMEOrderRecord,
    EABKeyRecord,
    Role,
)
from ca_service.storage.models import (
    ACMEAccountRow,
    ACMEAuthzRow,
    ACMEChallengeRow,
    ACMEEABKeyRow,
    ACMENonceRow,
    ACMEOrderRow,
)
from ca_service.storage.tokens import policy_from_json, policy_to_json


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes and psycopg the session's zone; every record carries
    aware UTC, like the rest of the store's."""
    return None if value is None else as_utc(value)


def _aware(value: dt.datetime) -> dt.datetime:
    return as_utc(value)


def _db(value: dt.datetime) -> dt.datetime:
    """A time as it is written or compared: aware UTC. SQLite keeps no offset, so a time in
    another zone would be stored as its wall clock, hours off, and compared as text; a naive
    time would mean UTC on SQLite but the session's zone on PostgreSQL. So refuse naive ones."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} given to the ACME store")
    return value.astimezone(dt.UTC)


def _db_opt(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _db(value)


# ---------------------------------------------------------------------------- nonces


class NonceRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def use(self, value: str, expires_at: dt.datetime) -> bool:
        """Record a nonce as used, until it would have expired anyway: True for the one
        request that inserts the row, False for every replay (the primary key refuses it on
        every worker and replica of one database)."""
        try:
            with self.s.begin_nested():
                self.s.add(ACMENonceRow(value=value, expires_at=_db(expires_at)))
                self.s.flush()
        except IntegrityError:
            return False
        return True

    def purge(self, now: dt.datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` expired nonces (bounded, so no request pays for a backlog)."""
        doomed = select(ACMENonceRow.value).where(ACMENonceRow.expires_at <= _db(now)).limit(limit)
        result = self.s.execute(delete(ACMENonceRow).where(ACMENonceRow.value.in_(doomed)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- EAB keys


def _eab(row: ACMEEABKeyRow) -> EABKeyRecord:
    return EABKeyRecord(
        kid=row.kid,
        name=row.name,
        policy=policy_from_json(row.policy, Role.ISSUER),
        created_by=row.created_by,
        created_at=_aware(row.created_at),
        account_id=row.account_id,
        revoked_at=_utc(row.revoked_at),
    )


class EABKeyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, record: EABKeyRecord, hmac_key_encrypted: bytes) -> None:
        """Store the record whole: one added bound or revoked (an import) stays so."""
        self.s.add(
            ACMEEABKeyRow(
                kid=record.kid,
                name=record.name,
                hmac_key_encrypted=hmac_key_encrypted,
                policy=policy_to_json(record.policy),
                created_by=record.created_by,
                created_at=_db(record.created_at),
                account_id=record.account_id,
                revoked_at=_db_opt(record.revoked_at),
            )
        )

    def get(self, kid: str) -> tuple[EABKeyRecord, bytes] | None:
        row = self.s.get(ACMEEABKeyRow, kid)
        return (_eab(row), row.hmac_key_encrypted) if row is not None else None

    def list(self) -> list[EABKeyRecord]:
        rows = self.s.scalars(
            select(ACMEEABKeyRow).order_by(ACMEEABKeyRow.created_at, ACMEEABKeyRow.kid)
        )
        return [_eab(r) for r in rows]

    def bind(self, kid: str, account_id: str) -> bool:
        """Bind an unused, unrevoked key to its one account; False when another got it first."""
        result = self.s.execute(
            update(ACMEEABKeyRow)
            .where(
                ACMEEABKeyRow.kid == kid,
                ACMEEABKeyRow.account_id.is_(None),
                ACMEEABKeyRow.revoked_at.is_(None),
            )
            .values(account_id=account_id)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def revoke(self, kid: str, now: dt.datetime) -> tuple[EABKeyRecord, bool] | None:
        """Revoke a key (idempotent): the record, and whether this call revoked it."""
        row = self.s.get(ACMEEABKeyRow, kid, with_for_update=True)
        if row is None:
            return None
        changed = row.revoked_at is None
        if changed:
            row.revoked_at = _db(now)
        self.s.flush()
        return _eab(row), changed


# ---------------------------------------------------------------------------- accounts


def _account(row: ACMEAccountRow) -> ACMEAccountRecord:
    return ACMEAccountRecord(
        id=row.id,
        authority=row.authority,
        jwk=dict(row.jwk),
        thumbprint=row.thumbprint,
        status=row.status,
        contact=tuple(row.contact or ()),
        eab_kid=row.eab_kid,
        created_at=_aware(row.created_at),
    )


class AccountRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, record: ACMEAccountRecord) -> None:
        """Raises storage.db.DuplicateRow when the key already has an account here."""
        self.s.add(
            ACMEAccountRow(
                id=record.id,
                authority=record.authority,
                jwk=record.jwk,
                thumbprint=record.thumbprint,
                status=record.status,
                contact=list(record.contact),
                eab_kid=record.eab_kid,
                created_at=_db(record.created_at),
            )
        )
        self.s.flush()

    def get(self, account_id: str) -> ACMEAccountRecord | None:
        row = self.s.get(ACMEAccountRow, account_id)
        return _account(row) if row is not None else None

    def by_thumbprint(self, authority: str, thumbprint: str) -> ACMEAccountRecord | None:
        row = self.s.scalar(
            select(ACMEAccountRow).where(
                ACMEAccountRow.authority == authority, ACMEAccountRow.thumbprint == thumbprint
            )
        )
        return _account(row) if row is not None else None

    def update(
        self,
        account_id: str,
        *,
        expected_status: str = "valid",
        status: str | None = None,
        contact: tuple[str, ...] | None = None,
        jwk: dict[str, Any] | None = None,
        thumbprint: str | None = None,
    ) -> bool:
        """Change a ``valid`` account; False when it is no longer in ``expected_status`` (even
        when nothing is to change: the caller acts on the answer). A key change names the key
        and its thumbprint together; a new key that already has an account raises
        storage.db.DuplicateRow."""
        if (jwk is None) != (thumbprint is None):
            raise ValueError("a key change gives the jwk and its thumbprint together")
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
        if contact is not None:
            values["contact"] = list(contact)
        if jwk is not None:
            values["jwk"] = jwk
            values["thumbprint"] = thumbprint
        where = (ACMEAccountRow.id == account_id, ACMEAccountRow.status == expected_status)
        if not values:
            return self.s.scalar(select(ACMEAccountRow.id).where(*where)) is not None
        result = self.s.execute(update(ACMEAccountRow).where(*where).values(**values))
        self.s.flush()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- orders


def _identifier(data: dict[str, str]) -> ACMEIdentifier:
    return ACMEIdentifier(type=data["type"], value=data["value"])


def _order(row: ACMEOrderRow) -> ACMEOrderRecord:
    return ACMEOrderRecord(
        id=row.id,
        account_id=row.account_id,
        authority=row.authority,
        status=row.status,
        identifiers=tuple(_identifier(i) for i in row.identifiers),
        authz_ids=tuple(row.authz_ids),
        profile=row.profile,
        expires=_aware(row.expires),
        created_at=_aware(row.created_at),
        not_before=_utc(row.not_before),
        not_after=_utc(row.not_after),
        error=row.error,
        certificate_serial=row.certificate_serial,
        replaces=row.replaces,
    )


class OrderRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, record: ACMEOrderRecord) -> None:
        self.s.add(
            ACMEOrderRow(
                id=record.id,
                account_id=record.account_id,
                authority=record.authority,
                status=record.status,
                identifiers=[{"type": i.type, "value": i.value} for i in record.identifiers],
                authz_ids=list(record.authz_ids),
                profile=record.profile,
                expires=_db(record.expires),
                not_before=_db_opt(record.not_before),
                not_after=_db_opt(record.not_after),
                error=record.error,
                certificate_serial=record.certificate_serial,
                replaces=record.replaces,
                created_at=_db(record.created_at),
            )
        )
        self.s.flush()

    def get(self, order_id: str) -> ACMEOrderRecord | None:
        row = self.s.get(ACMEOrderRow, order_id)
        return _order(row) if row is not None else None

    def for_account(
        self, account_id: str, *, after: str | None = None, limit: int = 100
    ) -> list[ACMEOrderRecord]:
        """An account's orders, newest first, a page at a time (``after``: the last id seen).
        A cursor that is not an order of this account ends the list: starting over would hand a
        client following "next" links the first page again, forever."""
        query = select(ACMEOrderRow).where(ACMEOrderRow.account_id == account_id)
        if after is not None:
            anchor = self.s.get(ACMEOrderRow, after)
            if anchor is None or anchor.account_id != account_id:
                return []
            query = query.where(
                (ACMEOrderRow.created_at < anchor.created_at)
                | ((ACMEOrderRow.created_at == anchor.created_at) & (ACMEOrderRow.id < after))
            )
        query = query.order_by(ACMEOrderRow.created_at.desc(), ACMEOrderRow.id.desc())
        return [_order(r) for r in self.s.scalars(query.limit(limit))]

    def by_certificate(self, serial: str) -> ACMEOrderRecord | None:
        row = self.s.scalar(select(ACMEOrderRow).where(ACMEOrderRow.certificate_serial == serial))
        return _order(row) if row is not None else None

    def ids_for_certificates(
        self, certificates: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The order id of each (authority, serial) that an ACME order was finalized with."""
        serials = sorted({serial for _, serial in certificates})
        if not serials:
            return {}
        rows = self.s.execute(
            select(ACMEOrderRow.authority, ACMEOrderRow.certificate_serial, ACMEOrderRow.id).where(
                ACMEOrderRow.certificate_serial.in_(serials)
            )
        )
        wanted = set(certificates)
        return {(a, s): i for a, s, i in rows if s is not None and (a, s) in wanted}

    def replacing(self, serial: str) -> list[ACMEOrderRecord]:
        """Orders that name ``serial`` in ``replaces`` (RFC 9773 section 5)."""
        rows = self.s.scalars(select(ACMEOrderRow).where(ACMEOrderRow.replaces == serial))
        return [_order(r) for r in rows]

    def move(
        self,
        order_id: str,
        expected: Collection[str],
        status: str,
        *,
        error: dict[str, Any] | None = None,
        certificate_serial: str | None = None,
    ) -> bool:
        """Compare-and-set the order's status; False when it was not in ``expected``."""
        values: dict[str, Any] = {"status": status}
        if error is not None:
            values["error"] = error
        if certificate_serial is not None:
            values["certificate_serial"] = certificate_serial
        result = self.s.execute(
            update(ACMEOrderRow)
            .where(ACMEOrderRow.id == order_id, ACMEOrderRow.status.in_(list(expected)))
            .values(**values)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def count_since(self, account_id: str, since: dt.datetime) -> int:
        return int(
            self.s.scalar(
                select(func.count())
                .select_from(ACMEOrderRow)
                .where(ACMEOrderRow.account_id == account_id, ACMEOrderRow.created_at >= _db(since))
            )
            or 0
        )

    def oldest_since(self, account_id: str, since: dt.datetime) -> dt.datetime | None:
        """When the oldest order still counted against the hourly limit was made."""
        return _utc(
            self.s.scalar(
                select(func.min(ACMEOrderRow.created_at)).where(
                    ACMEOrderRow.account_id == account_id, ACMEOrderRow.created_at >= _db(since)
                )
            )
        )


# ---------------------------------------------------------------------------- authorizations


def _challenge(row: ACMEChallengeRow) -> ACMEChallengeRecord:
    return ACMEChallengeRecord(
        id=row.id,
        authz_id=row.authz_id,
        type=row.type,
        token=row.token,
        status=row.status,
        validated_at=_utc(row.validated_at),
        error=row.error,
    )


class AuthorizationRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add(self, record: ACMEAuthzRecord) -> None:
        """Store an authorization and its challenges, which must name it: a challenge of
        another authorization would silently be re-parented and read back changed."""
        strays = [c.id for c in record.challenges if c.authz_id != record.id]
        if strays:
            raise ValueError(f"challenges {strays} do not belong to authorization {record.id}")
        self.s.add(
            ACMEAuthzRow(
                id=record.id,
                account_id=record.account_id,
                authority=record.authority,
                identifier_type=record.identifier.type,
                identifier_value=record.identifier.value,
                status=record.status,
                expires=_db(record.expires),
                created_at=_db(record.created_at),
            )
        )
        self.s.flush()
        for position, c in enumerate(record.challenges):
            self.s.add(
                ACMEChallengeRow(
                    id=c.id,
                    authz_id=record.id,
                    account_id=record.account_id,
                    position=position,
                    type=c.type,
                    token=c.token,
                    status=c.status,
                    validated_at=_db_opt(c.validated_at),
                    error=c.error,
                )
            )
        self.s.flush()

    def _record(self, row: ACMEAuthzRow) -> ACMEAuthzRecord:
        challenges = self.s.scalars(
            select(ACMEChallengeRow)
            .where(ACMEChallengeRow.authz_id == row.id)
            .order_by(ACMEChallengeRow.position)
        )
        return ACMEAuthzRecord(
            id=row.id,
            account_id=row.account_id,
            authority=row.authority,
            identifier=ACMEIdentifier(row.identifier_type, row.identifier_value),
            status=row.status,
            expires=_aware(row.expires),
            created_at=_aware(row.created_at),
            challenges=tuple(_challenge(c) for c in challenges),
        )

    def get(self, authz_id: str) -> ACMEAuthzRecord | None:
        row = self.s.get(ACMEAuthzRow, authz_id)
        return self._record(row) if row is not None else None

    def many(self, authz_ids: Collection[str]) -> list[ACMEAuthzRecord]:
        rows = self.s.scalars(select(ACMEAuthzRow).where(ACMEAuthzRow.id.in_(list(authz_ids))))
        found = {r.id: self._record(r) for r in rows}
        return [found[i] for i in authz_ids if i in found]

    def reusable(
        self, account_id: str, authority: str, identifier: ACMEIdentifier, now: dt.datetime
    ) -> ACMEAuthzRecord | None:
        """A valid, unexpired authorization of this account for exactly this identifier."""
        row = self.s.scalar(
            select(ACMEAuthzRow)
            .where(
                ACMEAuthzRow.account_id == account_id,
                ACMEAuthzRow.authority == authority,
                ACMEAuthzRow.identifier_type == identifier.type,
                ACMEAuthzRow.identifier_value == identifier.value,
                ACMEAuthzRow.status == "valid",
                ACMEAuthzRow.expires > _db(now),
            )
            .order_by(ACMEAuthzRow.expires.desc())
            .limit(1)
        )
        return self._record(row) if row is not None else None

    def move(
        self,
        authz_id: str,
        expected: Collection[str],
        status: str,
        *,
        expires: dt.datetime | None = None,
    ) -> bool:
        values: dict[str, Any] = {"status": status}
        if expires is not None:
            values["expires"] = _db(expires)
        result = self.s.execute(
            update(ACMEAuthzRow)
            .where(ACMEAuthzRow.id == authz_id, ACMEAuthzRow.status.in_(list(expected)))
            .values(**values)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def get_challenge(self, challenge_id: str) -> ACMEChallengeRecord | None:
        row = self.s.get(ACMEChallengeRow, challenge_id)
        return _challenge(row) if row is not None else None

    def move_challenge(
        self,
        challenge_id: str,
        expected: Collection[str],
        status: str,
        *,
        validated_at: dt.datetime | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        values: dict[str, Any] = {"status": status}
        if validated_at is not None:
            values["validated_at"] = _db(validated_at)
        if error is not None:
            values["error"] = error
        result = self.s.execute(
            update(ACMEChallengeRow)
            .where(ACMEChallengeRow.id == challenge_id, ACMEChallengeRow.status.in_(list(expected)))
            .values(**values)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def failures_since(self, account_id: str, since: dt.datetime) -> list[dt.datetime]:
        """When this account's challenges failed in the window (for the rate limit)."""
        rows = self.s.scalars(
            select(ACMEChallengeRow.validated_at).where(
                ACMEChallengeRow.account_id == account_id,
                ACMEChallengeRow.status == "invalid",
                ACMEChallengeRow.validated_at >= _db(since),
            )
        )
        return sorted(_aware(r) for r in rows if r is not None)
