"""Issue item 7: revocation (all RFC 5280 reasons, hold and release), CRL numbering under
concurrency, CRL content over time, and CRLs checked by pkilint and openssl."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.clock import FixedClock
from ca_service.core.facade import Core
from ca_service.domain import CertStatus, RevocationReason
from ca_service.errors import Conflict
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import AuditRepository

from ..conftest import ADMIN, PASSPHRASE, run
from ..helpers import chain_files, crl_worker, lint_crl, openssl_verify, reopen, write


def _crl(ca: Core) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(ca.generate_crl().der)


def _listed(crl: x509.CertificateRevocationList, serial: str) -> x509.RevokedCertificate | None:
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16))


def _issue(ca: Core, name: str, **kwargs: object) -> str:
    return ca.issue_with_new_key(ADMIN, common_name=name, **kwargs).record.serial  # type: ignore[arg-type]


def _crl_pem(path: Path, crl: x509.CertificateRevocationList) -> Path:
    return write(path, crl.public_bytes(serialization.Encoding.PEM))


def test_every_reason_listed_and_crl_lints_and_verifies(
    ca: Core, tmp_path: Path, openssl: str
) -> None:
    serials = {
        reason: _issue(ca, f"{reason.value.lower()}.example.test") for reason in RevocationReason
    }
    for reason, serial in serials.items():
        record = ca.revoke(serial, reason, ADMIN)
        assert record.status is CertStatus.REVOKED and record.revocation_reason is reason
    crl = _crl(ca)
    for reason, serial in serials.items():
        entry = _listed(crl, serial)
        assert entry is not None
        try:
            code = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            code = None
        # RFC 5280 5.3.1: "unspecified" is expressed by leaving the reason code out.
        assert code == (None if reason is RevocationReason.UNSPECIFIED else reason.flag)
    inter = ca.authority_certificate()
    assert crl.issuer == inter.subject
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=24)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    path = _crl_pem(tmp_path / "crl.pem", crl)
    assert lint_crl(path) == ""
    _, inter_path = chain_files(ca, tmp_path)
    result = run(
        [openssl, "crl", "-in", str(path), "-CAfile", str(inter_path), "-noout", "-verify"]
    )
    assert result.returncode == 0 and "verify OK" in result.stdout + result.stderr
    with unit_of_work(ca.db) as s:
        assert len(AuditRepository(s).list(action="certificate.revoke")) == len(serials)


def test_same_reason_is_a_no_op_other_reason_conflicts(ca: Core) -> None:
    serial = _issue(ca, "twice.example.test")
    first = ca.revoke(serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    again = ca.revoke(serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    assert (
        again.revoked_at == first.revoked_at and again.revocation_reason is first.revocation_reason
    )
    with pytest.raises(Conflict, match="already revoked"):
        ca.revoke(serial, RevocationReason.SUPERSEDED, ADMIN)
    with pytest.raises(Conflict, match="already revoked"):
        ca.revoke(serial, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    assert ca.get_certificate(serial).revocation_reason is RevocationReason.KEY_COMPROMISE
    with unit_of_work(ca.db) as s:
        assert len(AuditRepository(s).list(action="certificate.revoke")) == 1
    with pytest.raises(Conflict, match="not on hold"):
        ca.release_hold(serial, ADMIN)


def test_hold_release_and_hold_to_permanent(ca: Core) -> None:
    held = _issue(ca, "held.example.test")
    kept = _issue(ca, "kept.example.test")
    ca.revoke(held, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    ca.revoke(kept, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    assert ca.revoke(held, RevocationReason.CERTIFICATE_HOLD, ADMIN).status is CertStatus.REVOKED
    crl = _crl(ca)
    entry = _listed(crl, held)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.certificate_hold
    )
    released = ca.release_hold(held, ADMIN)
    assert released.status is CertStatus.VALID and released.revoked_at is None
    assert released.revocation_reason is None
    after = _crl(ca)
    assert _listed(after, held) is None  # removeFromCRL: it leaves the next CRL
    assert _listed(after, kept) is not None
    # A hold may become a permanent revocation; that one cannot be released.
    final = ca.revoke(kept, RevocationReason.KEY_COMPROMISE, ADMIN)
    assert final.revocation_reason is RevocationReason.KEY_COMPROMISE
    with pytest.raises(Conflict):
        ca.release_hold(kept, ADMIN)
    entry = _listed(_crl(ca), kept)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


def test_crl_numbers_strictly_increase(ca: Core) -> None:
    numbers = [ca.generate_crl().number for _ in range(5)]
    assert numbers == sorted(set(numbers)) and len(numbers) == 5
    crl_numbers = [
        x509.load_der_x509_crl(ca.generate_crl().der)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        for _ in range(2)
    ]
    assert crl_numbers[0] > numbers[-1] and crl_numbers[1] == crl_numbers[0] + 1


def test_crl_numbers_unique_under_threads(ca: Core) -> None:
    """Eight threads, each with its own Core (own engine), as separate workers."""
    workers = [reopen(ca) for _ in range(8)]
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(workers))

    def work(worker: Core) -> None:
        try:
            start.wait()
            got = [worker.generate_crl().number for _ in range(5)]
            with lock:
                results.extend(got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.db.dispose()
    assert errors == []
    assert len(results) == 40 and len(set(results)) == 40
    # The stored CRL is the highest-numbered one, whoever finished last.
    assert ca.current_crl().number == max(results)


def test_crl_numbers_unique_across_processes(ca: Core) -> None:
    args = (str(ca.settings.data_dir), ca.settings.resolved_database_url, PASSPHRASE.decode(), 4)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        batches = pool.map(crl_worker, [args] * 3)
    numbers = [n for batch in batches for n in batch]
    for batch in batches:
        assert batch == sorted(batch)  # within one process, strictly increasing
    assert len(numbers) == 12 and len(set(numbers)) == 12
    assert ca.generate_crl().number > max(numbers)


def test_only_unexpired_revoked_certificates_are_listed(ca: Core) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    start = clock.now()
    ca.clock = clock
    short = _issue(ca, "short.example.test", validity_days=1)
    long = _issue(ca, "long.example.test", validity_days=30)
    valid = _issue(ca, "valid.example.test", validity_days=30)
    ca.revoke(short, RevocationReason.KEY_COMPROMISE, ADMIN)
    ca.revoke(long, RevocationReason.KEY_COMPROMISE, ADMIN)
    now_crl = _crl(ca)
    assert _listed(now_crl, short) and _listed(now_crl, long) and not _listed(now_crl, valid)
    assert now_crl.last_update_utc == start
    clock.advance(dt.timedelta(days=2))
    later = _crl(ca)
    assert _listed(later, short) is None
    assert _listed(later, long) is not None
    assert later.last_update_utc == start + dt.timedelta(days=2)


def test_current_crl_is_reused_until_half_life(ca: Core) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca.clock = clock
    first = ca.generate_crl()
    assert ca.current_crl().number == first.number
    clock.advance(dt.timedelta(hours=11))
    assert ca.current_crl().number == first.number
    clock.advance(dt.timedelta(hours=2))
    assert ca.current_crl().number == first.number + 1


def test_openssl_crl_check_rejects_revoked_accepts_good(
    ca: Core, tmp_path: Path, openssl: str
) -> None:
    good = ca.issue_with_new_key(ADMIN, common_name="good.example.test")
    bad = ca.issue_with_new_key(ADMIN, common_name="bad.example.test")
    ca.revoke(bad.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    root, inter = chain_files(ca, tmp_path)
    crl = _crl_pem(tmp_path / "crl.pem", _crl(ca))
    checks = ("-crl_check", "-CRLfile", str(crl))
    good_path = write(tmp_path / "good.pem", good.certificate_pem)
    bad_path = write(tmp_path / "bad.pem", bad.certificate_pem)
    rc, out = openssl_verify(openssl, root, good_path, inter, *checks)
    assert rc == 0 and "OK" in out, out
    rc, out = openssl_verify(openssl, root, bad_path, inter, *checks)
    assert rc != 0 and "certificate revoked" in out, out
