"""The commit of an issuance: the certificate's record, its audit event and a renewal's
successor link, written in one transaction that concurrent issuances of this process share
(storage/group_commit.py), so that each certificate is durable before it is returned without
every request paying for a commit of its own.

The issuing authority's revocation is checked inside that transaction, so an issuance commits
either before its CA's revocation or not at all. This part never signs, never decides policy,
and never hands a certificate out: it only says when its record is committed.
"""

from __future__ import annotations

import datetime as dt
import threading

from ca_service.core.context import Context
from ca_service.domain import Actor, AuditEvent, CertificateRecord, TokenConfirmation
from ca_service.errors import Conflict, Unauthorized
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.group_commit import GroupCommit, Transaction, once
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
)
from ca_service.storage.tokens import TokenRepository


class IssuedRecords:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._writes: GroupCommit | None = None
        self._building = threading.Lock()

    def commit(
        self,
        record: CertificateRecord,
        actor: Actor,
        *,
        authority_id: int,
        authority_fingerprint: str,
        crl_shard: int | None,
        renews: CertificateRecord | None,
    ) -> None:
        """Store ``record`` and its audit event; returns once they are committed. Raises
        DuplicateRow on a serial collision (nothing of this record is then stored)."""
        name = record.authority
        details: dict[str, object] = {"profile": record.profile, "names": list(record.sans)}
        if renews is not None:
            details["renews"] = renews.serial
        event = AuditEvent.of(
            actor,
            "certificate.renew" if renews else "certificate.issue",
            f"{name}/{record.serial}",
            record.created_at,
            details,
        )

        def work(s: Transaction) -> None:
            if actor.confirm is not None:
                _confirm_token(
                    TokenRepository(s), actor.confirm, record.created_at, share_lock=True, batch=s
                )
            _refuse_if_revoked(AuthorityRepository(s), name, authority_fingerprint, batch=s)
            certs = CertificateRepository(s)
            certs.add(record, authority_id, crl_shard=crl_shard)
            if renews is not None:
                certs.set_successor(renews.serial, authority_id, record.serial)
            AuditRepository(s).add_later(event)

        self._group().run(work)

    def _group(self) -> GroupCommit:
        # Built on first use and again if the context's database was swapped (tests do); under
        # a lock, so that threads arriving together share one (and so one commit).
        with self._building:
            if self._writes is None or self._writes.db is not self.ctx.db:
                self._writes = GroupCommit(self.ctx.db)
            return self._writes


def confirm_in_store(db: Database, confirm: TokenConfirmation, now: dt.datetime) -> None:
    """Outside an issuance's transaction (a request refused before it): the same check, in a
    read transaction of its own."""
    with unit_of_work(db) as s:
        _confirm_token(TokenRepository(s), confirm, now, share_lock=False)


def _confirm_token(
    repo: TokenRepository,
    confirm: TokenConfirmation,
    now: dt.datetime,
    *,
    share_lock: bool,
    batch: Transaction | None = None,
) -> None:
    """The caller's token, accepted from a cache, must still be active as the store has it.
    ``share_lock``: a revocation of the token waits for this transaction (PostgreSQL), so a
    certificate commits before its token's revocation answers, or not at all. ``batch``: read
    once for all the jobs of the transaction that carry the same token."""

    def read() -> str:
        return repo.state(confirm.token_id, now, share_lock=share_lock)

    state = once(batch, ("token", confirm.token_id), read) if batch is not None else read()
    if state != "active":
        raise Unauthorized(f"bearer token {state}")
    confirm.confirmed = True


def _refuse_if_revoked(
    repo: AuthorityRepository, name: str, fingerprint: str, *, batch: Transaction
) -> None:
    """Inside an issuance's transaction: refuse when the issuing CA's certificate is revoked
    (read, and share-locked, once for the transaction's issuances from that CA)."""
    revoked = once(
        batch,
        ("authority", fingerprint),
        lambda: repo.revocation_of_certificate(fingerprint, share_lock=True),
    )
    if revoked is not None:
        at, reason = revoked
        raise Conflict(
            f"authority {name!r} was revoked ({reason}) at {at:%Y-%m-%d %H:%M:%S} UTC and "
            "issues no more certificates (rule: authority.revoked)",
            rule="authority.revoked",
        )
