"""CRLs are republished before nextUpdate without anyone fetching them.

On SQLite and PostgreSQL (the `ca` fixture): CRL numbers, the published CRLs and the revocation
that a failed re-sign must not undo all live in the store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time

import pytest
from cryptography import x509

from ca_service.clock import FixedClock
from ca_service.core.facade import Core
from ca_service.domain import RevocationReason
from ca_service.scheduler import start_crl_refresher
from ca_service.signing.signer import FileKeySigner
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import CRLRepository

from ..conftest import ADMIN
from ..helpers import make_key


def test_refresh_republishes_each_crl_at_half_life(ca: Core) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca.clock = clock
    first = ca.refresh_crls()
    assert set(first) == {"default", "default-root"}
    assert ca.refresh_crls() == first  # still fresh: nothing signed
    clock.advance(dt.timedelta(hours=ca.settings.crl_next_update_hours) / 2)
    second = ca.refresh_crls()
    assert all(second[name] > first[name] for name in first)
    stored = ca.current_crl("default")
    assert stored is not None and stored.this_update == clock.now()


def test_background_refresher_runs_and_stops(ca: Core) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca.clock = clock
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


def test_large_crls_are_re_signed_in_the_background_after_a_revocation(
    ca: Core,
) -> None:
    issued = ca.issue_with_new_key(ADMIN, common_name="bg.example.test")
    before = ca.generate_crl("default").number
    ca.publish_crls_in_background(0)  # every CRL counts as large
    ca.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with unit_of_work(ca.db) as s:
            latest = CRLRepository(s).latest("default")
        if latest is not None and latest.number > before:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no new CRL within 20 s of the revocation")
    crl = x509.load_der_x509_crl(latest.der)
    assert crl.get_revoked_certificate_by_serial_number(int(issued.record.serial, 16))


def test_a_failed_crl_after_a_revocation_does_not_undo_or_fail_it(
    ca: Core, caplog: pytest.LogCaptureFixture
) -> None:
    issued = ca.issue_with_new_key(ADMIN, common_name="keep.example.test")
    before = ca.generate_crl("default").number
    # Make the CRL impossible to sign: the authority's key file disappears from the keystore
    # cache and the disk. The revocation must still commit and report success.
    loaded = ca._registry.load("default")
    wrong = FileKeySigner(loaded.certificate, make_key("rsa2048"), loaded.signer.key_type)
    ca._registry._loaded["default"] = dataclasses.replace(loaded, signer=wrong)
    with caplog.at_level(logging.ERROR, logger="ca_service.core"):
        record = ca.revoke(issued.record.serial, RevocationReason.SUPERSEDED, ADMIN)
    assert record.status.value == "revoked"
    assert ca.get_certificate(issued.record.serial).revocation_reason is RevocationReason.SUPERSEDED
    # The re-sign was attempted and failed (the signature check refused the wrong key), was
    # logged with its cause, and published nothing: the stored CRL is still the one from before.
    [failed] = [r for r in caplog.records if "not re-signed after a revocation" in r.message]
    assert failed.exc_info is not None and failed.levelno == logging.ERROR
    assert "does not verify" in str(failed.exc_info[1])
    with unit_of_work(ca.db) as s:
        header = CRLRepository(s).latest_header("default")
    assert header is not None and header[0] == before


def test_a_job_failing_the_same_way_is_logged_once_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that is down makes every tick fail alike: one line, not one per tick."""
    from ca_service import scheduler
    from ca_service.errors import Unavailable

    runs = {"n": 0}
    done = threading.Event()

    def job() -> None:
        runs["n"] += 1
        if runs["n"] <= 20:
            raise Unavailable("the database is unreachable")
        if runs["n"] == 21:
            return
        done.set()

    caplog.set_level(logging.INFO, logger="ca_service.scheduler")
    stop = scheduler._every(0.005, "test-job", "test upkeep", job)
    try:
        assert done.wait(20), "the job did not run 22 times"
    finally:
        stop.set()
    failures = [r for r in caplog.records if "test upkeep failed" in r.getMessage()]
    assert len(failures) == 1 and "unreachable" in failures[0].getMessage()
    assert not failures[0].exc_info  # a CAError: one line, no traceback
    assert [r.getMessage() for r in caplog.records if "works again" in r.getMessage()] == [
        "test upkeep works again"
    ]
