"""Concurrent issuances through one Core share commits (core/issued_records.py over
storage/group_commit.py), and each is still answered alone: its own serial, its own stored
record and audit event, its own refusal. Both databases; waits are bounded, nothing is timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import event

from ca_service import metrics
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import IssuedCertificate, RevocationReason
from ca_service.errors import Conflict
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository

from ..conftest import ADMIN
from ..helpers import count_rows, csr_pem, make_key

JOIN_TIMEOUT = 120.0  # seconds: a bound on a hung test, never an expectation


@dataclass
class Commits:
    writes: int = 0


@contextmanager
def counting_commits(db: Database) -> Iterator[Commits]:
    """The COMMITs of write transactions the engine performs meanwhile."""
    seen = Commits()

    def on_commit(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("ca_write"):
            seen.writes += 1

    event.listen(db.engine, "commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(db.engine, "commit", on_commit)


def _batch_sizes() -> tuple[float, float]:
    """GROUP_COMMIT_SIZE's (count, sum) so far: commits made, and jobs they committed."""
    values = {s.name: s.value for m in metrics.GROUP_COMMIT_SIZE.collect() for s in m.samples}
    return values["ca_db_group_commit_size_count"], values["ca_db_group_commit_size_sum"]


@dataclass
class Call:
    issued: IssuedCertificate | None = None
    error: BaseException | None = None


def _run_threads(calls: list[Callable[[], IssuedCertificate]], barrier: bool = True) -> list[Call]:
    """Each call in a thread of its own, all released together by a Barrier."""
    start = threading.Barrier(len(calls), timeout=JOIN_TIMEOUT) if barrier else None
    results = [Call() for _ in calls]

    def run(result: Call, call: Callable[[], IssuedCertificate]) -> None:
        try:
            if start is not None:
                start.wait()
            result.issued = call()
        except BaseException as exc:
            result.error = exc

    threads = [
        threading.Thread(target=run, args=(r, c), daemon=True)
        for r, c in zip(results, calls, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "an issuance never returned"
    return results


def _issue_call(ca: Core, i: int, tag: str, authority: str | None = None) -> Callable[[], Any]:
    """Every other call from a CSR (its key made here, beforehand), the others with a new key."""
    name = f"{tag}-{i}.example.test"
    if i % 2:
        return lambda: ca.issue_with_new_key(ADMIN, common_name=name, authority=authority)
    csr = csr_pem(make_key("p256"), name, [name])
    return lambda: ca.issue_from_csr(csr, ADMIN, authority=authority)


def _assert_stored(ca: Core, issued: IssuedCertificate) -> None:
    """Its certificate and its certificate.issue event are committed, as returned."""
    record = issued.record
    stored = ca.get_certificate(record.serial, record.authority)
    assert stored.der == record.der
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert stored.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    with unit_of_work(ca.db) as s:
        assert AuditRepository(s).exists("certificate.issue", f"{record.authority}/{record.serial}")


def test_concurrent_issuances_share_commits_and_each_is_stored(ca: Core) -> None:
    ca.issue_with_new_key(ADMIN, common_name="warm.example.test")  # caches and the group built
    jobs = 24
    writes: list[int] = []
    serials: set[str] = set()
    for attempt in range(3):
        calls = [_issue_call(ca, i, f"a{attempt}") for i in range(jobs)]
        count_before, sum_before = _batch_sizes()
        with counting_commits(ca.db) as commits:
            results = _run_threads(calls)
        count_after, sum_after = _batch_sizes()
        assert [r.error for r in results] == [None] * jobs
        issued = [r.issued for r in results if r.issued is not None]
        assert len({i.record.serial for i in issued} | serials) == len(serials) + jobs
        serials |= {i.record.serial for i in issued}
        for one in issued:
            _assert_stored(ca, one)
        # Every issuance was committed once, by a group commit; those are the write commits.
        assert sum_after - sum_before == jobs
        assert count_after - count_before == commits.writes
        writes.append(commits.writes)
        if commits.writes < jobs:
            break
    assert min(writes) < jobs, f"no attempt shared a commit between issuances: {writes}"


def _queued(ca: Core) -> int:
    group = ca._issuance.records._group()
    with group._queue_lock:
        return len(group._queue)


def test_revoked_authority_is_refused_inside_a_batch_the_others_commit(ca: Core) -> None:
    """Issuances from a revoked authority and from a valid one are queued into one batch
    (the test holds the group's turn until all of them wait): the revoked authority's fail with
    Conflict, rule authority.revoked, and store nothing; the others are committed together."""
    ca.create_hierarchy(HierarchySpec(name="second"), ADMIN)
    ca.load_keys()
    before = ca.issue_with_new_key(
        ADMIN, common_name="before.second.example.test", authority="second"
    )
    assert before.record.authority == "second"
    ca.issue_with_new_key(ADMIN, common_name="warm.example.test")
    ca.revoke_authority("second", RevocationReason.CA_COMPROMISE, ADMIN)

    refused_n, valid_n = 2, 6
    calls = [_issue_call(ca, i, "second", "second") for i in range(refused_n)]
    calls += [_issue_call(ca, i, "default") for i in range(valid_n)]
    certificates_before = count_rows(ca.db, "certificates")
    count_before, sum_before = _batch_sizes()

    group = ca._issuance.records._group()
    results: list[Call] = []
    with group._turn:  # every issuance signs, then queues behind this
        done = threading.Thread(target=lambda: results.extend(_run_threads(calls, False)))
        done.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while _queued(ca) < len(calls) and time.monotonic() < deadline and done.is_alive():
            time.sleep(0.005)
        assert _queued(ca) == len(calls), "the issuances did not all queue"
    done.join(JOIN_TIMEOUT)
    assert not done.is_alive()

    for refused in results[:refused_n]:
        assert isinstance(refused.error, Conflict), repr(refused.error)
        assert refused.error.rule == "authority.revoked"
    valid = [r.issued for r in results[refused_n:]]
    assert [r.error for r in results[refused_n:]] == [None] * valid_n
    assert len({v.record.serial for v in valid if v is not None}) == valid_n
    for one in valid:
        assert one is not None and one.record.authority == "default"
        _assert_stored(ca, one)
    assert count_rows(ca.db, "certificates") == certificates_before + valid_n
    # One commit for the six: the refused two shared their batch and were left out of it.
    assert _batch_sizes() == (count_before + 1, sum_before + valid_n)
    with unit_of_work(ca.db) as s:
        issued_events = AuditRepository(s).list(action="certificate.issue", limit=1000)
    second = [e.target for e in issued_events if (e.target or "").startswith("second/")]
    assert second == [f"second/{before.record.serial}"]
