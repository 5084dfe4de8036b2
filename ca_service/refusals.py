"""The one place refusals reach the audit log, for the HTTP API, the CLI and mutual TLS alike.

Two kinds of refusal, two ways of writing them down:

- A caller who is authenticated but refused (the wrong role, a certificate it did not issue, a
  policy rule): one event per refusal, naming the rule, written in a transaction of its own, so
  the refused action writes nothing else. The caller holds a credential that can be revoked, so
  every attempt is worth a line.
- A request that nobody is authenticated for (no token or a bad one, a client certificate that
  is revoked or refused in the TLS handshake): anyone can send these at any rate, and one row
  each let 2,000 requests write 2,000 rows. They are counted instead: one event per client
  address, claimed identity, minute and server process, written at the first failure (so a
  single attempt shows at once, with its request id) and then updated in place with the count,
  the reasons and the paths tried, at most once a second. A flood therefore costs the database
  one write a second per address and process, whatever its rate, and the log grows by at most
  MAX_BUCKETS + 1 events per minute and process.

Nobody is answered 429: a token is a 256-bit secret that no rate of guessing can find, a limit
kept per process would differ between workers, and one misbehaving client behind a shared NAT
address would lock out its neighbours. Limiting request rates is the reverse proxy's job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ca_service.domain import Actor, AuditEvent
from ca_service.errors import CAError, PolicyRejected, Unauthorized
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository

log = logging.getLogger("ca_service.refusals")

WINDOW_SECONDS = 60
FLUSH_SECONDS = 1.0
# Distinct (address, identity) pairs counted per minute and process; any further ones share one
# overflow event, so that a flood from many addresses cannot grow the log or the memory either.
MAX_BUCKETS = 1000
# Distinct reasons and paths kept in one counted event; further ones are counted as "(other)".
MAX_KEYS = 8
OVERFLOW = "*"
OTHER = "(other)"


@dataclass
class _Bucket:
    """The unauthenticated failures of one address and identity in one minute, in this process."""

    at: dt.datetime
    window: int
    identity: str
    client_address: str | None
    target: str
    request_id: str | None
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    event_id: int | None = None
    written: int = 0  # the count the stored event carries
    written_at: float = -1e9  # time.monotonic() of the last write or attempt

    def add(self, reason: str, target: str) -> None:
        self.count += 1
        _bump(self.reasons, reason[:200])
        _bump(self.targets, target[:255])

    def details(self) -> dict[str, Any]:
        start = dt.datetime.fromtimestamp(self.window * WINDOW_SECONDS, dt.UTC)
        return {
            "reason": next(iter(self.reasons)),
            "count": self.count,
            "window": start.isoformat().replace("+00:00", "Z"),
            "reasons": dict(self.reasons),
            "targets": dict(self.targets),
        }


def _bump(counts: dict[str, int], key: str) -> None:
    if key not in counts and len(counts) >= MAX_KEYS:
        key = OTHER
    counts[key] = counts.get(key, 0) + 1


class RefusalLog:
    """Audits refusals: each authenticated one as an event, unauthenticated ones counted."""

    def __init__(
        self,
        db: Database,
        now: Callable[[], dt.datetime],
        *,
        flush_seconds: float = FLUSH_SECONDS,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.db = db
        self.now = now
        self.flush_seconds = flush_seconds
        self.max_buckets = max_buckets
        self._buckets: dict[tuple[int, str | None, str], _Bucket] = {}
        self._lock = threading.Lock()  # the buckets in memory
        self._write_lock = threading.Lock()  # the counted events in the store, one writer
        self._timer: threading.Timer | None = None
        self._window = 0

    def record(
        self, actor: Actor, target: str, exc: CAError, *, attempted: str | None = None
    ) -> None:
        """Audit the refusal ``exc`` of ``actor`` once, however many layers see it pass.

        ``Unauthorized`` means nobody is authenticated: counted. Anything else is one event,
        ``policy.refused`` for a policy rule and ``auth.refused`` for an authorization."""
        if exc.audited:
            return
        exc.audited = True
        if isinstance(exc, Unauthorized):
            self.unauthenticated(
                actor.identity, target, exc.detail, actor.request_id, actor.client_address
            )
            return
        details: dict[str, Any] = {"rule": exc.rule, "reason": exc.detail[:200]}
        if attempted:
            details["attempted"] = attempted
        action = "policy.refused" if isinstance(exc, PolicyRejected) else "auth.refused"
        with unit_of_work(self.db, write=True) as s:
            AuditRepository(s).add(AuditEvent.of(actor, action, target, self.now(), details))

    def unauthenticated(
        self,
        identity: str,
        target: str,
        reason: str,
        request_id: str | None,
        client_address: str | None,
    ) -> None:
        """Count a refusal before anyone is authenticated (see the module's docstring)."""
        at = self.now()
        window = int(at.timestamp()) // WINDOW_SECONDS
        with self._lock:
            if window != self._window:
                self._window = window
                self._forget_closed(window)
            key = (window, client_address, identity)
            bucket = self._buckets.get(key)
            if bucket is None and len(self._buckets) >= self.max_buckets:
                key = (window, OVERFLOW, OVERFLOW)
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(at, window, key[2], key[1], target[:255], request_id)
                self._buckets[key] = bucket
            bucket.add(reason, target)
            # A new bucket is written at once; after that, at most one attempt per flush period
            # (claimed here, so concurrent requests do not queue behind one slow write).
            due = time.monotonic() - bucket.written_at >= self.flush_seconds
            if due:
                bucket.written_at = time.monotonic()
        if due:
            self._write_quietly(bucket)
        with self._lock:
            if bucket.count > bucket.written:
                self._flush_later()

    def flush(self) -> None:
        """Write every count not yet in the store (the timer calls this; so may a shutdown)."""
        with self._lock:
            self._timer = None
            pending = [b for b in self._buckets.values() if b.count > b.written]
        for bucket in pending:
            self._write_quietly(bucket)
        with self._lock:
            self._forget_closed(int(self.now().timestamp()) // WINDOW_SECONDS)
            if any(b.count > b.written for b in self._buckets.values()):
                self._flush_later()

    def _forget_closed(self, window: int) -> None:
        """Drop buckets of past minutes whose count is stored (the caller holds ``_lock``)."""
        for key in [k for k, b in self._buckets.items() if b.window < window]:
            if self._buckets[key].count == self._buckets[key].written:
                del self._buckets[key]

    def _write_quietly(self, bucket: _Bucket) -> None:
        """Store the bucket's event or its new count. A failure (the store is away) keeps the
        count in memory for the next try and never turns the refusal into an error."""
        try:
            self._write(bucket)
        except Exception as exc:
            log.warning("could not write the count of unauthenticated requests: %s", exc)

    def _write(self, bucket: _Bucket) -> None:
        # One writer at a time, so a slower write can never store an older count over a newer.
        with self._write_lock:
            with self._lock:
                if bucket.count == bucket.written:
                    return
                event_id, details, count = bucket.event_id, bucket.details(), bucket.count
            with unit_of_work(self.db, write=True) as s:
                repo = AuditRepository(s)
                if event_id is None:
                    event_id = repo.add(
                        AuditEvent(
                            at=bucket.at,
                            actor=bucket.identity[:255],
                            action="auth.refused",
                            target=bucket.target,
                            request_id=bucket.request_id,
                            client_address=bucket.client_address,
                            details=details,
                        )
                    )
                else:
                    repo.set_details(event_id, details)
            with self._lock:
                bucket.event_id, bucket.written = event_id, count
                bucket.written_at = time.monotonic()

    def _flush_later(self) -> None:
        """Make sure a flush runs within ``flush_seconds`` (the caller holds ``_lock``)."""
        if self._timer is not None:
            return
        timer = threading.Timer(self.flush_seconds, self.flush)
        timer.daemon = True
        timer.name = "audit-flush"
        self._timer = timer
        timer.start()
