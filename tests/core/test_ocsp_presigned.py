"""Pre-signed OCSP answers (issue 15 item 2), in process, on SQLite and PostgreSQL: two cores on
one database stand for two replicas that share only it.

What must hold: a nonce-less answer is signed once and then the same bytes are served by every
replica until the certificate's status changes; a status change is seen at once where it was
made and within a second elsewhere; an answer kept in the store that no longer states the
certificate's status is never served; the scheduler re-signs answers past half their life
before their nextUpdate, and one replica's refresh leaves nothing for the next; nonce requests
are signed fresh with the nonce echoed; unknown serials are answered unknown.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca_service.clock import FixedClock
from ca_service.core.facade import Core
from ca_service.domain import CertStatus, RevocationReason
from ca_service.scheduler import start_ocsp_refresher
from ca_service.wiring import build_authority

from ..conftest import ADMIN, make_settings, new_ca
from ..helpers import ocsp_answer, ocsp_request_for

SEEN_WITHIN = 1.0  # seconds: issue 15's bound for a revocation to reach every worker


@pytest.fixture
def pair(tmp_path: Path, db_url: str) -> Iterator[tuple[Core, Core]]:
    """Two replicas on one database, each with a data directory of its own."""
    a = new_ca(make_settings(tmp_path / "a", db_url))
    b = build_authority(make_settings(tmp_path / "b", db_url))
    b.load_keys()
    yield a, b
    a.db.dispose()
    b.db.dispose()


def _leaf(ca: Core, name: str) -> x509.Certificate:
    issued = ca.issue_with_new_key(ADMIN, common_name=f"{name}.presigned.example.test")
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def _within(seconds: float, probe: Core, request: bytes, wanted: str) -> str:
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        status = ocsp_answer(probe.answer_ocsp(request).der)[0]
        if status == wanted or time.monotonic() >= deadline:
            return status
        time.sleep(0.05)
    return status


def _kept_states(ca: Core) -> list[str]:
    with ca.db.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT state FROM ocsp_presigned")).scalars())


def _kept_rows(ca: Core) -> int:
    return len(_kept_states(ca))


def test_one_signature_serves_every_replica_until_the_status_changes(
    pair: tuple[Core, Core],
) -> None:
    a, b = pair
    leaf = _leaf(a, "same")
    request = ocsp_request_for(leaf, a.authority_certificate())
    first = a.answer_ocsp(request)
    assert ocsp_answer(first.der)[0] == "good"
    assert first.served is not None and first.served.etag.startswith('"')
    assert [a.answer_ocsp(request).der for _ in range(3)] == [first.der] * 3
    assert b.answer_ocsp(request).der == first.der  # B reads A's answer from the store
    assert _kept_rows(a) == 1

    a.revoke(f"{leaf.serial_number:x}", RevocationReason.CERTIFICATE_HOLD, ADMIN)
    on_hold = a.answer_ocsp(request).der  # at once where the change was made
    assert ocsp_answer(on_hold)[0] == "revoked" and on_hold != first.der
    assert _within(SEEN_WITHIN, b, request, "revoked") == "revoked"
    assert b.answer_ocsp(request).der == on_hold

    a.release_hold(f"{leaf.serial_number:x}", ADMIN)
    released = a.answer_ocsp(request).der
    assert ocsp_answer(released)[0] == "good" and released not in (first.der, on_hold)
    assert _within(SEEN_WITHIN, b, request, "good") == "good"
    assert _kept_rows(a) == 1  # replaced in place, not one row per status


def test_a_status_change_re_signs_the_kept_answer_before_anyone_asks(
    pair: tuple[Core, Core],
) -> None:
    a, b = pair
    leaf = _leaf(a, "eager")
    request = ocsp_request_for(leaf, a.authority_certificate())
    assert ocsp_answer(b.answer_ocsp(request).der)[0] == "good"
    assert _kept_states(a) == ["good"]
    a.revoke(f"{leaf.serial_number:x}", RevocationReason.KEY_COMPROMISE, ADMIN)
    [state] = _kept_states(a)
    assert state.startswith("revoked ") and state.endswith(" keyCompromise")


def test_a_kept_answer_that_no_longer_states_the_status_is_never_served(
    pair: tuple[Core, Core], tmp_path: Path, db_url: str
) -> None:
    """The race the state column is for: a replica stores "good" just after a revocation
    committed (made here by writing the revocation under the kept row). A replica starting cold
    reads the row with the certificate's status, sees they differ and signs "revoked"."""
    a, b = pair
    leaf = _leaf(a, "stale")
    request = ocsp_request_for(leaf, a.authority_certificate())
    assert ocsp_answer(b.answer_ocsp(request).der)[0] == "good"
    with a.db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE certificates SET status = :s, revoked_at = :t, revocation_reason = :r "
                "WHERE serial = :serial"
            ),
            {"s": CertStatus.REVOKED.value, "t": a.clock.now(),
             "r": RevocationReason.KEY_COMPROMISE.value, "serial": f"{leaf.serial_number:x}"},
        )  # fmt: skip
    assert _kept_states(a) == ["good"]  # the stale row is there
    c = build_authority(make_settings(tmp_path / "c", db_url))
    try:
        c.load_keys()
        answer = ocsp.load_der_ocsp_response(c.answer_ocsp(request).der)
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason is x509.ReasonFlags.key_compromise
        assert _kept_states(a)[0].startswith("revoked ")  # and it was replaced
    finally:
        c.db.dispose()


def test_answers_are_refreshed_before_their_next_update_once_across_replicas(
    pair: tuple[Core, Core],
) -> None:
    a, b = pair
    t0 = a.clock.now().replace(microsecond=0)
    a.clock = FixedClock(t0)
    b.clock = FixedClock(t0)
    leaves = [_leaf(a, f"refresh{i}") for i in range(3)]
    requests = [ocsp_request_for(leaf, a.authority_certificate()) for leaf in leaves]
    before = [a.answer_ocsp(r).der for r in requests]
    assert a.refresh_ocsp() == 0  # nothing is due yet

    validity = dt.timedelta(minutes=a.settings.ocsp_next_update_minutes)
    later = t0 + validity * 0.6  # past half the life, before the nextUpdate
    a.clock = FixedClock(later)
    b.clock = FixedClock(later)
    assert a.refresh_ocsp() == 3
    assert b.refresh_ocsp() == 0  # A's refresh left nothing for B to re-sign
    after = [b.answer_ocsp(r).der for r in requests]
    for old, new in zip(before, after, strict=True):
        assert new != old
        fresh = ocsp.load_der_ocsp_response(new)
        assert fresh.this_update_utc == later
        assert fresh.next_update_utc == later + validity
        assert fresh.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert [a.answer_ocsp(r).der for r in requests] == after
    # Once the certificates have expired, their answers are not kept current any more.
    a.clock = FixedClock(leaves[0].not_valid_after_utc + dt.timedelta(days=1))
    assert a.refresh_ocsp() == 0


def test_nonce_requests_are_signed_fresh_with_the_nonce_echoed(pair: tuple[Core, Core]) -> None:
    a, _ = pair
    leaf = _leaf(a, "nonce")
    issuer = a.authority_certificate()
    answers = []
    for _ in range(2):
        nonce = os.urandom(16)
        builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        der = a.answer_ocsp(builder.build().public_bytes(serialization.Encoding.DER)).der
        answer = ocsp.load_der_ocsp_response(der)
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        answers.append(der)
    assert answers[0] != answers[1]
    assert _kept_rows(a) == 0  # nothing kept for nonce requests


def test_an_unknown_serial_is_unknown_and_not_kept(pair: tuple[Core, Core]) -> None:
    a, _ = pair
    issuer = a.authority_certificate()
    leaf = _leaf(a, "known")
    known = ocsp.load_der_ocsp_request(ocsp_request_for(leaf, issuer))
    sha1 = hashes.SHA1()  # noqa: S303 (RFC 5019 CertIDs are SHA-1)
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        known.issuer_name_hash, known.issuer_key_hash, leaf.serial_number + 1, sha1
    )
    request = builder.build().public_bytes(serialization.Encoding.DER)
    for _ in range(2):
        assert ocsp_answer(a.answer_ocsp(request).der)[0] == "unknown"
    assert _kept_rows(a) == 0


def test_malformed_requests_are_still_malformed(pair: tuple[Core, Core]) -> None:
    a, _ = pair
    for data in (b"", b"\x30\x03\x02\x01\x00", b"not der at all"):
        answer = ocsp.load_der_ocsp_response(a.answer_ocsp(data).der)
        assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_the_background_refresher_re_signs_due_answers_and_stops(pair: tuple[Core, Core]) -> None:
    a, _ = pair
    clock = FixedClock(a.clock.now())
    a.clock = clock
    request = ocsp_request_for(_leaf(a, "background"), a.authority_certificate())
    before = a.answer_ocsp(request).der
    clock.advance(dt.timedelta(minutes=a.settings.ocsp_next_update_minutes) * 0.6)
    stop = start_ocsp_refresher(a, interval=0.05)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _kept_ders(a) == [before]:
            time.sleep(0.05)
    finally:
        stop.set()
        # The thread ends before the fixture disposes the engine: a refresh still running then
        # would open a connection on the new pool that nobody closes (a ResourceWarning later).
        for thread in threading.enumerate():
            if thread.name == "ocsp-refresher":
                thread.join(timeout=20)
                assert not thread.is_alive()
    [kept] = _kept_ders(a)
    assert kept != before
    assert ocsp.load_der_ocsp_response(kept).this_update_utc == clock.now().replace(microsecond=0)


def _kept_ders(ca: Core) -> list[bytes]:
    with ca.db.engine.connect() as conn:
        return [bytes(d) for d in conn.execute(sa.text("SELECT der FROM ocsp_presigned")).scalars()]
