"""CRLs are republished before nextUpdate without anyone fetching them."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from ca_service.clock import FixedClock
from ca_service.scheduler import start_crl_refresher
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import CRLRepository

from .helpers import module_ca


def test_refresh_republishes_each_crl_at_half_life(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca = module_ca(tmp_path, clock=clock)
    first = ca.refresh_crls()
    assert set(first) == {"default", "default-root"}
    assert ca.refresh_crls() == first  # still fresh: nothing signed
    clock.advance(dt.timedelta(hours=ca.settings.crl_next_update_hours) / 2)
    second = ca.refresh_crls()
    assert all(second[name] > first[name] for name in first)
    stored = ca.current_crl("default")
    assert stored is not None and stored.this_update == clock.now()


def test_background_refresher_runs_and_stops(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca = module_ca(tmp_path, clock=clock)
    before = ca.refresh_crls()["default"]
    clock.advance(dt.timedelta(hours=ca.settings.crl_next_update_hours))
    stop = start_crl_refresher(ca, interval=0.05)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Read the store only: current_crl() would itself make the CRL the test waits for.
            with unit_of_work(ca.db) as s:
                header = CRLRepository(s).latest_header("default")
            if header is not None and header[0] > before:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the refresher did not publish a new CRL within 20 s")
    finally:
        stop.set()
