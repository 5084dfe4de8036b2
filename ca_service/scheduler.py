"""Background upkeep inside a serving process: CRLs republished before their nextUpdate,
certificate.expiring webhooks sent for the leaves about to expire, and the name search index
kept up with the writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ca_service.core.facade import Core
from ca_service.errors import CAError

log = logging.getLogger("ca_service.scheduler")

CRL_CHECK_SECONDS = 60.0
OCSP_REFRESH_SECONDS = 30.0
# The SQLite name index's tail (storage/name_index.py) holds about this long of writes; one
# tick indexes at most this many rows (0.3-0.5 s of work), so that a bulk load in SQL under a
# running server is not indexed row batch by row batch as fast as it arrives.
NAME_INDEX_SECONDS = 1.0
NAME_INDEX_MAX_ROWS = 20_000


def start_crl_refresher(ca: Core, interval: float = CRL_CHECK_SECONDS) -> threading.Event:
    """Check every ``interval`` seconds that each CRL is current; set the returned event to stop.

    Every serving process runs one; they need no coordination, because a CRL is regenerated only
    when half its life is gone and the generation itself is ordered by the store.
    """
    return _every(interval, "crl-refresher", "CRL refresh", ca.refresh_crls)


def start_ocsp_refresher(ca: Core, interval: float = OCSP_REFRESH_SECONDS) -> threading.Event:
    """Every ``interval`` seconds, re-sign a bounded batch of the pre-signed OCSP answers past
    half their life, so they are current before their nextUpdate even for certificates nobody
    asks about; set the returned event to stop. Replicas share the work (locked rows)."""

    def refresh() -> None:
        done = ca.refresh_ocsp()
        if done:
            log.info("re-signed %d pre-signed OCSP answer(s)", done)

    return _every(interval, "ocsp-refresher", "OCSP refresh", refresh)


def start_name_indexer(ca: Core, interval: float = NAME_INDEX_SECONDS) -> threading.Event:
    """Every ``interval`` seconds, index the names written since, off the requests that wrote
    them; set the returned event to stop. Workers doing it at once index each row once."""
    return _every(
        interval,
        "name-indexer",
        "name index upkeep",
        lambda: ca.catalog.index_names(max_rows=NAME_INDEX_MAX_ROWS),
    )


def start_expiry_warner(ca: Core, interval: float) -> threading.Event:
    """Every ``interval`` seconds, send the due certificate.expiring events (Core.warn_expiring:
    once per certificate, whichever process gets there first); set the returned event to stop.
    The first run comes one interval after start, so that workers booting together spread."""

    def warn() -> None:
        sent = ca.warn_expiring()
        if sent:
            log.info("sent %d certificate.expiring event(s)", sent)

    return _every(interval, "expiry-warner", "expiry warnings", warn)


# A job failing the same way again is logged once per this many seconds (with how many times
# it failed meanwhile): a store down for an hour would otherwise put 3,600 lines per worker
# in the log from the name indexer alone.
REPEAT_LOG_SECONDS = 60.0


def _every(interval: float, name: str, what: str, job: Callable[[], object]) -> threading.Event:
    """Run ``job`` in a daemon thread every ``interval`` seconds until the event is set; a
    failure is logged and the job runs again at the next interval. The same failure again is
    logged at most once per REPEAT_LOG_SECONDS, and a recovery once."""
    stop = threading.Event()

    def loop() -> None:
        last: str | None = None  # the failure last logged
        logged_at, since = 0.0, 0
        while not stop.wait(interval):
            try:
                job()
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                if text == last and now - logged_at < REPEAT_LOG_SECONDS:
                    since += 1
                    continue
                again = f" (failed {since} more time(s) since it was last logged)" if since else ""
                if isinstance(exc, CAError):
                    log.error("%s failed (retrying): %s%s", what, exc, again)
                else:
                    log.exception("%s failed (retrying)%s", what, again)
                last, logged_at, since = text, now, 0
            else:
                if last is not None:
                    log.info("%s works again", what)
                last, since = None, 0

    threading.Thread(target=loop, name=name, daemon=True).start()
    return stop
