"""Expiry warnings: a ``certificate.expiring`` event, once per certificate, for each valid
leaf whose notAfter is within ``webhook_expiry_days`` (run by every serving process's
scheduler, see ca_service/scheduler.py).

"Once" holds across workers and replicas because the store decides it: the warning is an audit
event (``certificate.expiring`` on ``<authority>/<serial>``) written under the lock of the
certificate's row, and a certificate whose event exists is skipped; the webhook is published
only after that event has committed. This part must never change a certificate, and never send
anything itself (notify.py does, in the background).
"""

from __future__ import annotations

import datetime as dt

from ca_service.core.context import Context
from ca_service.domain import Actor, AuditEvent, CertificateRecord
from ca_service.notify import EXPIRING
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import AuditRepository, CertificateRepository

ACTION = "certificate.expiring"
SCHEDULER = Actor("service:scheduler")
PAGE = 500
MAX_PAGES = 20  # at most 10,000 certificates looked at per run; the next run goes on
_ANY_ID = 2**62


class ExpiryWarnings:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def warn(self) -> int:
        """Send the due warnings not sent yet; returns how many were sent now."""
        settings = self.ctx.settings
        if not settings.webhook_urls:
            return 0
        now = self.ctx.clock.now()
        horizon = now + dt.timedelta(days=settings.webhook_expiry_days)
        sent = 0
        after: tuple[dt.datetime, int] | None = None
        for _ in range(MAX_PAGES):
            with unit_of_work(self.ctx.db) as s:
                page, after = CertificateRepository(s).renewal_candidates(
                    now, up_to_id=_ANY_ID, after=after, limit=PAGE
                )
                audit = AuditRepository(s)
                due = [
                    r
                    for r in page
                    if r.not_after <= horizon and not audit.exists(ACTION, _target(r))
                ]
            for record in due:
                if self._mark(record, now):
                    left = int((record.not_after - now).total_seconds())
                    self.ctx.events.publish(EXPIRING, record, expires_in_seconds=left)
                    sent += 1
            if after is None or (page and page[-1].not_after > horizon):
                break
        return sent

    def _mark(self, record: CertificateRecord, now: dt.datetime) -> bool:
        """Write the warning's audit event unless another process has: True if this one did."""
        with unit_of_work(self.ctx.db, write=True) as s:
            current = CertificateRepository(s).find_for_update(record.serial, record.authority)
            audit = AuditRepository(s)
            if current is None or audit.exists(ACTION, _target(record)):
                return False
            details = {"not_after": record.not_after.isoformat()}
            audit.add(AuditEvent.of(SCHEDULER, ACTION, _target(record), now, details))
        return True


def _target(record: CertificateRecord) -> str:
    return f"{record.authority}/{record.serial}"
