"""A replica in a process of its own, for the races of tests/core/test_replica_coordination.py.

Run by multiprocessing's spawn start method, so it imports only what a replica needs: a core on
its own data directory and the shared database, on a clock the test fixes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography.x509 import ocsp

from ca_service.clock import FixedClock
from ca_service.config import Settings
from ca_service.wiring import build_authority

PASSPHRASE = b"test-passphrase-not-secret"  # tests/conftest.py's


def race(
    url: str,
    data_dir: str,
    at: dt.datetime,
    rounds: int,
    ocsp_request: bytes,
    barrier: Any,
    results: Any,
) -> None:
    """Refresh the CRL at half-life, then sign ``rounds`` CRLs, then answer one OCSP request
    past the responder's rotation time, each step started together with the other replica."""
    settings = Settings(
        data_dir=Path(data_dir),
        database_url=url,
        key_passphrase=PASSPHRASE,
        public_url="http://127.0.0.1:8000",
    )
    core = build_authority(settings, clock=FixedClock(at))
    try:
        core.load_keys()
        barrier.wait(timeout=90)
        refreshed = core.current_crl("default")
        assert refreshed is not None
        barrier.wait(timeout=90)
        numbers = [core.generate_crl("default").number for _ in range(rounds)]
        barrier.wait(timeout=90)
        answer = ocsp.load_der_ocsp_response(core.answer_ocsp(ocsp_request).der)
        signer = answer.certificates[0].serial_number
        results.put((refreshed.number, numbers, signer, answer.certificate_status.name))
    finally:
        core.db.dispose()
