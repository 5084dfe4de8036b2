"""Pre-signed OCSP answers (RFC 5019, as CFSSL's ``ocsprefresh`` and Boulder do): a nonce-less
answer for one certificate is signed once, kept in the store for every replica, refreshed before
its nextUpdate, and served from each worker's memory without a query or a signature.

What keeps a cached answer honest, since replicas share only the database:

- the store's answer carries the status it states (``state``); a reader serves it only while the
  certificate still has that status, read in the same query, so a stale row is re-signed;
- each status change raises its authority's counter (``ocsp_stamps``) in its own transaction;
  every process reads the counters at most every STORE_RECHECK_SECONDS and an entry is served
  only while its authority's counter is the one read *before* the entry's row was fetched, so a
  revocation anywhere stops every worker's "good" within about half a second;
- a change made by this process drops all of its entries at once (``status_changed``).

Only answers for certificates the store holds are kept: an unknown serial is signed fresh, so
nobody can fill the store or the memory with answers for serials that do not exist. It must never
sign by itself (signing/ocsp.py does, with the responder the OCSP service picks) and never serve
a kept "good" past the stamp bound once the store says the certificate is revoked.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ca_service.core.context import STORE_RECHECK_SECONDS, Context
from ca_service.crypto.ocsp_wire import CertRef, SingleAnswer, cert_ref
from ca_service.domain import CertStatus, PresignedAnswer, SerialStatus
from ca_service.signing.ocsp import OCSPSigner, sign_response
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import unit_of_work
from ca_service.storage.ocsp_repository import OCSPRepository

MEMORY_LIMIT = 100_000  # entries per process (a request of one certificate is ~100 bytes)
REFRESH_BATCH = 200  # answers re-signed per scheduler tick and process


@dataclass(frozen=True)
class Served:
    """An answer ready for the wire, with its HTTP caching headers worked out once."""

    der: bytes
    label: str  # the metrics label: "good" or "revoked"
    this_update: dt.datetime
    next_update: dt.datetime
    etag: str
    last_modified: str
    expires: str


@dataclass(frozen=True)
class _Entry:
    authority: str
    stamp: int
    epoch: int
    refresh_at: dt.datetime
    served: Served


def state_of(status: SerialStatus) -> str:
    """The status an answer states, as kept beside it and compared with the store's."""
    if status.status is not CertStatus.REVOKED:
        return "good"
    assert status.revoked_at is not None
    reason = status.reason.value if status.reason is not None else "-"
    return f"revoked {status.revoked_at.isoformat()} {reason}"


def served(answer: PresignedAnswer) -> Served:
    return Served(
        answer.der,
        "good" if answer.state == "good" else "revoked",
        answer.this_update,
        answer.next_update,
        '"' + hashlib.sha256(answer.der).hexdigest()[:32] + '"',
        email.utils.format_datetime(answer.this_update, usegmt=True),
        email.utils.format_datetime(answer.next_update, usegmt=True),
    )


class PresignedAnswers:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._memory: dict[bytes, _Entry] = {}
        self._stamps: dict[str, int] = {}
        self._checked = -1e9  # time.monotonic() of the last read of the stamps
        self._epoch = 0  # raised by a status change made in this process
        self._poll = threading.Lock()

    # ------------------------------------------------------------------------- the fast path

    def lookup(self, request_der: bytes) -> Served | None:
        """The kept answer to exactly these request bytes, if it is still current: one dict
        lookup, and a read of a few rows every STORE_RECHECK_SECONDS."""
        entry = self._memory.get(request_der)
        if entry is None:
            return None
        stamps = self._current_stamps()
        if (
            entry.epoch != self._epoch
            or stamps.get(entry.authority, 0) != entry.stamp
            or self.ctx.clock.now() >= entry.refresh_at
        ):
            return None
        return entry.served

    def status_changed(self) -> None:
        """A status change committed by this process: its answers are dropped now, not at the
        next read of the stamps."""
        self._epoch += 1
        self._checked = -1e9

    def _current_stamps(self) -> dict[str, int]:
        if time.monotonic() - self._checked < STORE_RECHECK_SECONDS:
            return self._stamps
        # One thread reads; the others serve what was read last meanwhile.
        if not self._poll.acquire(blocking=False):
            return self._stamps
        try:
            checked = time.monotonic()
            with unit_of_work(self.ctx.db) as s:
                self._stamps = OCSPRepository(s).stamps()
            self._checked = checked
        finally:
            self._poll.release()
        return self._stamps

    # ------------------------------------------------------------------------- the slow path

    def answer(
        self,
        authority: str,
        ref: CertRef,
        request_der: bytes,
        responder: Callable[[], tuple[str, OCSPSigner]],
    ) -> Served | None:
        """The kept answer for ``ref``, signed and kept first if none is current; None when
        ``authority`` never issued the serial (the caller answers unknown, signed fresh)."""
        # Read before the row: a change committed after this read raises the stamp and so
        # retires the entry made below, even if the row was read before that change.
        epoch = self._epoch
        stamp = self._current_stamps().get(authority, 0)
        serial = serial_hex(ref.serial)
        with unit_of_work(self.ctx.db) as s:
            status, kept = OCSPRepository(s).presigned(authority, serial, ref.der)
        if status is None:
            return None
        responder_serial, signer = responder()
        now = self.ctx.clock.now()
        state = state_of(status)
        if not _current(kept, state, responder_serial, now):
            fresh = self._sign(authority, ref, status, responder_serial, signer, now)
            with unit_of_work(self.ctx.db, write=True) as s:
                OCSPRepository(s).store_presigned(fresh, kept.der if kept is not None else None)
            with unit_of_work(self.ctx.db) as s:
                status, kept = OCSPRepository(s).presigned(authority, serial, ref.der)
            # Another process's answer may have won the race: serve the one the store keeps,
            # so that every worker sends the same bytes, unless it is not true (any more).
            if status is None or not _current(kept, state_of(status), responder_serial, now):
                kept = fresh
        assert kept is not None
        entry = _Entry(authority, stamp, epoch, kept.refresh_at, served(kept))
        if len(self._memory) >= MEMORY_LIMIT:
            self._memory.clear()
        self._memory[request_der] = entry
        return entry.served

    def _sign(
        self,
        authority: str,
        ref: CertRef,
        status: SerialStatus,
        responder_serial: str,
        signer: OCSPSigner,
        now: dt.datetime,
    ) -> PresignedAnswer:
        validity = dt.timedelta(minutes=self.ctx.settings.ocsp_next_update_minutes)
        next_update = now + validity
        if status.status is CertStatus.REVOKED:
            single = SingleAnswer(
                ref, "revoked", now, next_update, status.revoked_at, status.reason
            )
        else:
            single = SingleAnswer(ref, "good", now, next_update)
        der = sign_response(signer, [single], now, None)
        return PresignedAnswer(
            authority,
            serial_hex(ref.serial),
            ref.der,
            state_of(status),
            responder_serial,
            der,
            now,
            next_update,
            now + validity / 2,
        )

    def resign(
        self, authority: str, serial: str, responder: Callable[[], tuple[str, OCSPSigner]]
    ) -> int:
        """After a status change: the certificate's kept answers signed again with the new
        status, so the store holds the new answer before anyone asks; returns how many. None
        kept (nobody asked yet): nothing is signed, and no responder is made for it."""
        with unit_of_work(self.ctx.db) as s:
            if not OCSPRepository(s).kept_of(authority, serial):
                return 0
        responder_serial, signer = responder()  # may issue one, in a transaction of its own
        now = self.ctx.clock.now()
        with unit_of_work(self.ctx.db, write=True) as s:
            repo = OCSPRepository(s)
            kept = repo.kept_of(authority, serial)
            for old, status in kept:
                ref = cert_ref(old.cert_id)
                fresh = self._sign(authority, ref, status, responder_serial, signer, now)
                repo.store_presigned(fresh, old.der)
        return len(kept)

    # --------------------------------------------------------------------------- the refresh

    def refresh(
        self,
        responder: Callable[[str], tuple[str, OCSPSigner]],
        limit: int = REFRESH_BATCH,
    ) -> int:
        """Re-sign up to ``limit`` kept answers whose half-life has passed, before their
        nextUpdate; returns how many. The rows are locked (PostgreSQL: skipping those another
        replica is re-signing), so replicas share the work."""
        now = self.ctx.clock.now()
        with unit_of_work(self.ctx.db) as s:
            peek = OCSPRepository(s).due_presigned(now, limit, lock=False)
        if not peek:
            return 0
        # The responders first: finding one may issue it, in a transaction of its own.
        signers = {kept.authority: responder(kept.authority) for kept, _ in peek}
        done = 0
        with unit_of_work(self.ctx.db, write=True) as s:
            repo = OCSPRepository(s)
            for kept, status in repo.due_presigned(now, limit, lock=True):
                if kept.authority not in signers:
                    continue  # due since the peek; the next tick takes it
                responder_serial, signer = signers[kept.authority]
                ref = cert_ref(kept.cert_id)
                fresh = self._sign(kept.authority, ref, status, responder_serial, signer, now)
                repo.store_presigned(fresh, kept.der)
                done += 1
        return done


def _current(
    kept: PresignedAnswer | None, state: str, responder_serial: str, now: dt.datetime
) -> bool:
    return (
        kept is not None
        and kept.state == state
        and kept.responder_serial == responder_serial
        and now < kept.refresh_at
    )
