"""Background upkeep inside a serving process: CRLs republished before their nextUpdate."""

from __future__ import annotations

import logging
import threading

from ca_service.core.facade import Core
from ca_service.errors import CAError

log = logging.getLogger("ca_service.scheduler")

CRL_CHECK_SECONDS = 60.0


def start_crl_refresher(ca: Core, interval: float = CRL_CHECK_SECONDS) -> threading.Event:
    """Check every ``interval`` seconds that each CRL is current; set the returned event to stop.

    Every serving process runs one; they need no coordination, because a CRL is regenerated only
    when half its life is gone and the generation itself is ordered by the store.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                ca.refresh_crls()
            except CAError as exc:
                log.error("CRL refresh failed (retrying): %s", exc)
            except Exception:
                log.exception("CRL refresh failed (retrying)")

    threading.Thread(target=loop, name="crl-refresher", daemon=True).start()
    return stop
