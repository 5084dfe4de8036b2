"""Concurrent issuance and revocation against a 4-worker server, on SQLite and PostgreSQL.

Eight client threads issue and revoke at once for a bounded time and count. Afterwards: no
serial was handed out twice, every certificate answered is in the store, the CRL numbers each
thread saw after its own revocations strictly increase (and each such CRL already lists what
that thread revoked), and the last CRL lists every revoked serial. No timing is asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from ..conftest import live_server
from ..live import (
    LiveServer,
    create_token,
    fetch_crl,
    lint_crl_bytes,
    list_all,
)

THREADS = 8
MAX_OPS = 24  # per thread
DEADLINE_S = 15.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def busy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp(f"busy-{request.param}")
    with live_server(request.param, base, workers=4) as server:
        yield server


@dataclass
class Worker:
    index: int
    token: str
    issued: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    crl_numbers: list[int] = field(default_factory=list)
    crls: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _work(live: LiveServer, w: Worker, deadline: float) -> None:
    for op in range(MAX_OPS):
        if time.monotonic() > deadline:
            return
        name = f"w{w.index}-{op}.load.example.test"
        reply = live.request("POST", "/api/v1/certificates", token=w.token, body={"sans": [name]})
        if reply.status != 201:
            w.errors.append(f"issue {reply.status} {reply.body[:200]!r}")
            return
        w.issued.append(reply.json["serial"])
        if op % 2 == 1:  # revoke every second certificate, alternating which
            serial = w.issued[-1 - (op // 2) % 2]
            if serial in w.revoked:
                serial = w.issued[-1]
            rev = live.request(
                "POST",
                f"/api/v1/certificates/{serial}/revoke",
                token=w.token,
                body={"reason": "superseded"},
            )
            if rev.status != 200:
                w.errors.append(f"revoke {rev.status} {rev.body[:200]!r}")
                return
            w.revoked.append(serial)
            crl = live.request("GET", "/crl")
            if crl.status != 200:
                w.errors.append(f"crl {crl.status}")
                return
            parsed = x509.load_der_x509_crl(crl.body)
            w.crls.append(crl.body)
            w.crl_numbers.append(
                parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            )
            # Revoked before this fetch began: the CRL must already list it.
            if parsed.get_revoked_certificate_by_serial_number(int(serial, 16)) is None:
                w.errors.append(f"CRL {w.crl_numbers[-1]} lacks {serial} revoked before it")


def test_concurrent_issuance_and_revocation(busy: LiveServer, tmp_path: Path) -> None:
    live = busy
    workers = [
        Worker(
            i, create_token(live, "issuer", name=f"load-{i}", allowed_names=["*.example.test"])[0]
        )
        for i in range(THREADS)
    ]
    baseline = len(list_all(live, "/api/v1/certificates"))
    deadline = time.monotonic() + DEADLINE_S
    threads = [threading.Thread(target=_work, args=(live, w, deadline)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_S + 120)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"

    for w in workers:
        assert w.errors == [], (w.index, w.errors)
        assert w.issued and w.revoked
        assert w.crl_numbers == sorted(set(w.crl_numbers)), (w.index, w.crl_numbers)

    issued = [s for w in workers for s in w.issued]
    revoked = {s for w in workers for s in w.revoked}
    assert len(issued) == len(set(issued)), "a serial was handed out twice"

    # Every certificate answered is in the store, as answered.
    stored = list_all(live, "/api/v1/certificates")
    assert len(stored) == baseline + len(issued)
    by_serial = {c["serial"]: c for c in stored}
    for serial in issued:
        assert by_serial[serial]["status"] == ("revoked" if serial in revoked else "valid")
    for serial in issued[:: max(1, len(issued) // 20)]:  # and each can be fetched by serial
        one = live.request("GET", f"/api/v1/certificates/{serial}", token=live.admin_token)
        assert one.status == 200 and one.json["serial"] == serial

    # Every CRL a client saw passes pkilint; the last one lists every revoked serial.
    for body in {b for w in workers for b in w.crls}:
        assert lint_crl_bytes(body) == ""
    last = fetch_crl(live, "/crl")
    listed = {r.serial_number for r in last}
    assert {int(s, 16) for s in revoked} <= listed
    last_number = last.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert last_number >= max(n for w in workers for n in w.crl_numbers)
    assert "Traceback" not in live.log()
