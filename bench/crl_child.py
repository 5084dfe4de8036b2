"""Run ``Core.generate_crl`` once in a fresh process and print figures as JSON.

A process of its own so that peak RSS (VmHWM) belongs to CRL generation alone and not to the
bench's own population work. Usage: ``python -m bench.crl_child DB_URL DATA_DIR [--breakdown]``.
With ``--breakdown`` the phases (rows, entry DER, signature and check) are timed again one by one
after the peak was read, to point at the cause when the target is missed.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _breakdown(ca: Any, name: str) -> dict[str, float]:
    """The phases of ``generate_crl`` timed one by one: the stored entries joined by the
    database, the rows without one (revoked before migration 0013) encoded from their columns,
    and the whole sign_crl (signature + the parse-and-verify check); storing the CRL is the
    rest of ``seconds``."""
    from ca_service.signing import crl as crl_module
    from ca_service.storage.db import unit_of_work
    from ca_service.storage.repositories import CertificateRepository

    now = dt.datetime.now(dt.UTC)
    loaded = ca._registry.load(name)
    t0 = time.perf_counter()
    with unit_of_work(ca.db) as s:
        repo = CertificateRepository(s)
        count, missing, joined = repo.stored_crl_entries(loaded.authority_id, now)
        t1 = time.perf_counter()
        rows = list(repo.revoked_rows(loaded.authority_id, now, without_entry=True))
    crl_module._entries(rows)
    t2 = time.perf_counter()
    crl_module.sign_crl(
        loaded.signer, 1, now, now + dt.timedelta(hours=1), rows, stored=[joined],
        stored_count=count,
    )  # fmt: skip
    t3 = time.perf_counter()
    return {
        "query_s": round(t1 - t0, 3),
        "missing_rows": missing,
        "entry_objects_s": round(t2 - t1, 3),  # rows without a stored entry, encoded
        "builder_s": 0.0,
        "sign_encode_s": round((t3 - t2) - (t2 - t1), 3),
    }


def main(argv: list[str]) -> int:
    from bench.common import open_ca

    db_url, data_dir = argv[0], Path(argv[1])
    ca = open_ca(data_dir, db_url)
    name = ca.default_authority()
    rss_before = _status_kib("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    stored = ca.generate_crl(name)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _status_kib("VmHWM")
    crl = x509.load_der_x509_crl(stored.der)
    out: dict[str, Any] = {
        "seconds": round(seconds, 3),
        # CPU of this process (all its threads; not the database server's): on a machine shared
        # with other work, wall time measures the neighbours as much as the CRL.
        "cpu_s": round(cpu, 3),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_minus_before_mib": round((peak - rss_before) / 1024, 1),
        "crl_bytes": len(stored.der),
        "entries": len(crl),
        "number": stored.number,
    }
    if "--breakdown" in argv:
        # The phases follow the product's internals, which are being rewritten: a breakdown that
        # no longer fits the code is reported as such and does not lose the end-to-end figures.
        try:
            out["breakdown"] = _breakdown(ca, name)
        except Exception as exc:
            out["breakdown"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    ca.db.dispose()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
