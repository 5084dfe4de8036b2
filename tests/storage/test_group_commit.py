"""Group commit (storage/group_commit.py) on both databases, through the real store.

Batching is made deterministic where a test depends on it: a leader job takes the turn and its
work waits on an Event until every other job is queued behind it (read from the GroupCommit's
queue), so those jobs are one batch, in the order they were queued. Waits are bounded; nothing
asserts on time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from ca_service import metrics
from ca_service.core.facade import Core
from ca_service.domain import AuditEvent, CertificateRecord
from ca_service.errors import Conflict, Unavailable
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import Database, DuplicateRow, unit_of_work
from ca_service.storage.group_commit import GroupCommit
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
)

from ..conftest import ADMIN

ACTION = "test.group_commit"
JOIN_TIMEOUT = 60.0  # seconds: a bound on a hung test, never an expectation

Work = Callable[[Session], Any]


# ---------------------------------------------------------------- helpers


def _event(tag: str) -> AuditEvent:
    return AuditEvent.of(ADMIN, ACTION, tag, dt.datetime.now(dt.UTC))


def _insert(tag: str) -> Work:
    """A job that appends one audit row targeting ``tag`` and returns (tag, its id)."""

    def work(s: Session) -> tuple[str, int]:
        return tag, AuditRepository(s).add(_event(tag))

    return work


def _stored(db: Database) -> dict[str, list[int]]:
    """The ids of this module's audit rows by target, as committed."""
    rows: dict[str, list[int]] = {}
    with db.engine.connect() as conn:
        query = sa.text("SELECT target, id FROM audit_events WHERE action = :a ORDER BY id")
        for target, row_id in conn.execute(query, {"a": ACTION}):
            rows.setdefault(target, []).append(int(row_id))
    return rows


@dataclasses.dataclass
class Commits:
    writes: int = 0


@contextmanager
def counting_commits(db: Database) -> Iterator[Commits]:
    """The COMMITs of write transactions the engine performs meanwhile (reads commit too)."""
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


def _queued(gc: GroupCommit) -> int:
    with gc._queue_lock:
        return len(gc._queue)


def _queue_holds(gc: GroupCommit, n: int) -> Callable[[], bool]:
    return lambda: _queued(gc) == n


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {JOIN_TIMEOUT} s")
        time.sleep(0.002)


@dataclasses.dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    # What ``after`` found, in the caller's thread, right after run() returned.
    seen: Any = None


@dataclasses.dataclass
class BatchRun:
    leader: Outcome
    jobs: list[Outcome]
    # What ``while_open`` returned while the leader's transaction was open (its row inserted).
    while_open: Any = None


def run_queued_batch(
    gc: GroupCommit,
    works: Sequence[Work],
    *,
    after: Callable[[Any], Any] | None = None,
    while_open: Callable[[], Any] | None = None,
) -> BatchRun:
    """Run a leader job, then ``works`` from one thread each, queued in this order behind the
    leader while its work holds the turn: ``works`` are then committed as one batch (or as
    batches of gc.max_batch). ``after(value)`` runs in each caller's thread once run() has
    returned; ``while_open()`` runs here while the leader's row is inserted, uncommitted."""
    entered, release = threading.Event(), threading.Event()

    def leader_work(s: Session) -> tuple[str, int]:
        value = _insert("leader")(s)
        entered.set()
        if not release.wait(JOIN_TIMEOUT):
            raise AssertionError("the leader was never released")
        return value  # type: ignore[no-any-return]

    leader = Outcome()
    outcomes = [Outcome() for _ in works]

    def call(outcome: Outcome, work: Work) -> None:
        try:
            outcome.value = gc.run(work)
        except BaseException as exc:
            outcome.error = exc
            return
        if after is not None:
            outcome.seen = after(outcome.value)

    threads = [threading.Thread(target=call, args=(leader, leader_work), daemon=True)]
    threads[0].start()
    result = BatchRun(leader, outcomes)
    try:
        assert entered.wait(JOIN_TIMEOUT), "the leader's work never started"
        if while_open is not None:
            result.while_open = while_open()
        for n, (outcome, work) in enumerate(zip(outcomes, works, strict=True), start=1):
            thread = threading.Thread(target=call, args=(outcome, work), daemon=True)
            threads.append(thread)
            thread.start()
            _wait_until(_queue_holds(gc, n), f"job {n} to queue")
    finally:
        release.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a caller of run() never returned"
    return result


def _value_of(outcome: Outcome) -> Any:
    assert outcome.error is None, repr(outcome.error)
    return outcome.value


# ---------------------------------------------------------------- batching


def _threads_x_rounds(gc: GroupCommit, attempt: int, threads_n: int, rounds: int) -> int:
    """``threads_n`` threads run ``rounds`` jobs each, every round started together; checks
    each value and row, returns the write COMMITs made."""
    barrier = threading.Barrier(threads_n, timeout=JOIN_TIMEOUT)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for r in range(rounds):
                tag = f"a{attempt}-t{t}-r{r}"
                barrier.wait()
                results[tag] = gc.run(_insert(tag))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    count_before, sum_before = _batch_sizes()
    with counting_commits(gc.db) as commits:
        pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads_n)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in pool), "a worker never finished"
    assert errors == []
    count_after, sum_after = _batch_sizes()

    jobs = threads_n * rounds
    assert len(results) == jobs
    stored = _stored(gc.db)
    for tag, value in results.items():
        assert value == (tag, stored[tag][0])  # its own value, its own row
        assert len(stored[tag]) == 1
    assert sum_after - sum_before == jobs  # every job committed exactly once
    assert count_after - count_before == commits.writes
    assert 1 <= commits.writes <= jobs
    return commits.writes


def test_many_threads_share_commits_and_each_gets_its_own_value(ca: Core) -> None:
    """16 threads x 5 jobs, each round started together (a Barrier): every job's value is its
    own, every row is stored once, and at least one attempt commits fewer times than jobs."""
    gc = GroupCommit(ca.db)
    writes = []
    for attempt in range(3):
        writes.append(_threads_x_rounds(gc, attempt, threads_n=16, rounds=5))
        if writes[-1] < 16 * 5:
            break
    assert min(writes) < 16 * 5, f"no attempt shared a commit between jobs: {writes}"


def test_jobs_queued_behind_a_commit_share_the_next_one(ca: Core) -> None:
    db, gc = ca.db, GroupCommit(ca.db)
    tags = [f"q{i}" for i in range(15)]
    count_before, sum_before = _batch_sizes()
    with counting_commits(db) as commits:
        run = run_queued_batch(gc, [_insert(t) for t in tags])
    stored = _stored(db)
    assert _value_of(run.leader) == ("leader", stored["leader"][0])
    for tag, outcome in zip(tags, run.jobs, strict=True):
        assert _value_of(outcome) == (tag, stored[tag][0])
    assert sorted(stored) == sorted([*tags, "leader"])
    # The leader's commit, then one for the 15 queued behind it.
    assert commits.writes == 2
    count_after, sum_after = _batch_sizes()
    assert (count_after - count_before, sum_after - sum_before) == (2, 16)


def test_a_batch_is_at_most_max_batch_jobs(ca: Core) -> None:
    db, gc = ca.db, GroupCommit(ca.db, max_batch=4)
    tags = [f"m{i}" for i in range(10)]
    with counting_commits(db) as commits:
        run = run_queued_batch(gc, [_insert(t) for t in tags])
    stored = _stored(db)
    for tag, outcome in zip(tags, run.jobs, strict=True):
        assert _value_of(outcome) == (tag, stored[tag][0])
    assert commits.writes == 1 + 3  # the leader, then 4 + 4 + 2


# ---------------------------------------------------------------- a job's own error


def test_a_refused_job_alone_gets_its_conflict_and_the_batch_commits(ca: Core) -> None:
    db, gc = ca.db, GroupCommit(ca.db)
    refusal = Conflict("refused by the test (rule: test.refused)", rule="test.refused")
    calls: Counter[str] = Counter()

    def counted(tag: str) -> Work:
        def work(s: Session) -> Any:
            calls[tag] += 1
            return _insert(tag)(s)

        return work

    def refused(s: Session) -> None:
        calls["refused"] += 1
        _insert("refused")(s)  # written, then refused: must not be stored
        raise refusal

    ok = [f"c{i}" for i in range(6)]
    works = [counted(t) for t in ok[:3]] + [refused] + [counted(t) for t in ok[3:]]
    with counting_commits(db) as commits:
        run = run_queued_batch(gc, works)
    outcomes = dict(zip([*ok[:3], "refused", *ok[3:]], run.jobs, strict=True))

    assert outcomes["refused"].error is refusal
    stored = _stored(db)
    assert "refused" not in stored
    for tag in ok:
        # Its value is from the run that committed (on PostgreSQL the rolled-back run's id,
        # taken from the sequence, is never reused).
        assert _value_of(outcomes[tag]) == (tag, stored[tag][0])
        assert len(stored[tag]) == 1
    # The jobs before the refused one were rolled back with it and ran again without it.
    assert [calls[t] for t in ok[:3]] == [2, 2, 2] and calls["refused"] == 1
    assert commits.writes == 2


def _fresh(record: CertificateRecord) -> CertificateRecord:
    return dataclasses.replace(
        record,
        serial=serial_hex(secrets.randbits(126) | 1 << 126),  # stored as normalized: no 0 lead
        fingerprint_sha256=secrets.token_hex(32),
    )


def test_a_serial_collision_is_that_jobs_duplicate_row_alone(ca: Core) -> None:
    db, gc = ca.db, GroupCommit(ca.db)
    existing = ca.issue_with_new_key(ADMIN, common_name="dup.example.test").record
    with unit_of_work(db) as s:
        authority_id = AuthorityRepository(s).id_of(existing.authority)

    def store(tag: str, record: CertificateRecord) -> Work:
        def work(s: Session) -> tuple[str, str]:
            AuditRepository(s).add(_event(tag))
            CertificateRepository(s).add(record, authority_id)
            return tag, record.serial

        return work

    fresh = [_fresh(existing) for _ in range(5)]
    collision = dataclasses.replace(_fresh(existing), serial=existing.serial)
    tags = ["d0", "d1", "d2", "dup", "d3", "d4"]
    works = [store(t, r) for t, r in zip(tags, [*fresh[:3], collision, *fresh[3:]], strict=True)]
    run = run_queued_batch(gc, works)
    outcomes = dict(zip(tags, run.jobs, strict=True))

    assert isinstance(outcomes["dup"].error, DuplicateRow)
    stored = _stored(db)
    assert "dup" not in stored
    certs_of = {r.serial: ca.get_certificate(r.serial, existing.authority) for r in fresh}
    for tag, record in zip(["d0", "d1", "d2", "d3", "d4"], fresh, strict=True):
        assert _value_of(outcomes[tag]) == (tag, record.serial)
        assert len(stored[tag]) == 1
        assert certs_of[record.serial].fingerprint_sha256 == record.fingerprint_sha256
    # The existing certificate is untouched and alone under its serial.
    with unit_of_work(db) as s:
        same = [r.fingerprint_sha256 for r in CertificateRepository(s).find(existing.serial)]
    assert same == [existing.fingerprint_sha256]


def test_several_own_errors_in_one_batch_each_go_to_their_job(ca: Core) -> None:
    db, gc = ca.db, GroupCommit(ca.db)
    refusal = Conflict("no (rule: test.refused)", rule="test.refused")
    first = gc.run(_insert("first"))  # the id the duplicate_id job reuses

    def refused(s: Session) -> None:
        _insert("refused")(s)
        raise refusal

    def duplicate_id(s: Session) -> None:
        _insert("dup")(s)
        s.execute(
            sa.text(
                "INSERT INTO audit_events (id, at, actor, action, target) "
                "VALUES (:id, :at, 'test', :a, 'dup-id')"
            ),
            {"id": first[1], "at": dt.datetime.now(dt.UTC), "a": ACTION},
        )

    tags = ["e0", "refused", "e1", "dup", "e2"]
    works = [_insert("e0"), refused, _insert("e1"), duplicate_id, _insert("e2")]
    run = run_queued_batch(gc, works)
    outcomes = dict(zip(tags, run.jobs, strict=True))
    assert outcomes["refused"].error is refusal
    assert isinstance(outcomes["dup"].error, DuplicateRow)
    stored = _stored(db)
    assert sorted(stored) == ["e0", "e1", "e2", "first", "leader"]
    for tag in ("e0", "e1", "e2"):
        assert _value_of(outcomes[tag]) == (tag, stored[tag][0])


# ---------------------------------------------------------------- the store's failure


def _operational() -> BaseException:
    return sa_exc.OperationalError("COMMIT", {}, Exception("the disk went away"))


def _unavailable() -> BaseException:
    return Unavailable("the database is unreachable or refused the operation: gone")


@pytest.mark.parametrize(
    "failure", [_operational, _unavailable], ids=["OperationalError", "Unavailable"]
)
def test_a_store_failure_is_every_jobs_error_and_nothing_is_stored(
    ca: Core, failure: Callable[[], BaseException]
) -> None:
    db, gc = ca.db, GroupCommit(ca.db)
    broken = failure()

    def fails(s: Session) -> None:
        _insert("fails")(s)
        raise broken

    works = [_insert("f0"), _insert("f1"), fails, _insert("f2")]
    count_before, sum_before = _batch_sizes()
    run = run_queued_batch(gc, works)
    assert all(_is_or_wraps(o.error, broken) for o in run.jobs), [o.error for o in run.jobs]
    stored = _stored(db)
    assert sorted(stored) == ["leader"]  # all or nothing: none of the batch's rows
    assert _batch_sizes() == (count_before + 1, sum_before + 1)  # the leader's commit only

    # The GroupCommit still works afterwards, alone and in a batch.
    assert gc.run(_insert("after")) == ("after", _stored(db)["after"][0])
    again = run_queued_batch(gc, [_insert("g0"), _insert("g1")])
    stored = _stored(db)
    assert [_value_of(o) for o in again.jobs] == [("g0", stored["g0"][0]), ("g1", stored["g1"][0])]
    assert "fails" not in stored and "f0" not in stored


def _is_or_wraps(error: BaseException | None, original: BaseException) -> bool:
    """``error`` is ``original``, or raised from it (each caller may get an error of its own)."""
    while error is not None:
        if error is original:
            return True
        error = error.__cause__
    return False


def test_a_driver_error_in_one_jobs_statement_is_every_jobs_unavailable(ca: Core) -> None:
    """A statement the driver fails inside a job (the engine translates it into Unavailable)
    means the transaction is gone: every job of the batch gets the error, none is stored."""
    db, gc = ca.db, GroupCommit(ca.db)

    def fails(s: Session) -> None:
        _insert("fails")(s)
        if db.is_sqlite:  # sqlite3 reports a missing table as an OperationalError
            s.execute(sa.text("SELECT * FROM no_such_table"))
        else:  # a cancelled statement (QueryCanceled) is an OperationalError
            s.execute(sa.text("SET LOCAL statement_timeout = 1"))
            s.execute(sa.text("SELECT pg_sleep(5)"))

    run = run_queued_batch(gc, [_insert("u0"), fails, _insert("u1")])
    assert all(isinstance(o.error, Unavailable) for o in run.jobs), [o.error for o in run.jobs]
    assert sorted(_stored(db)) == ["leader"]


def test_a_bug_in_one_jobs_code_is_that_jobs_error_alone(ca: Core) -> None:
    """An error of a job's own code that is not the store's (here a TypeError) fails that
    request only: the others of its batch commit without it."""
    db, gc = ca.db, GroupCommit(ca.db)

    def buggy(s: Session) -> None:
        _insert("buggy")(s)
        raise TypeError("a bug in one job")

    tags = ["b0", "buggy", "b1"]
    run = run_queued_batch(gc, [_insert("b0"), buggy, _insert("b1")])
    outcomes = dict(zip(tags, run.jobs, strict=True))
    assert isinstance(outcomes["buggy"].error, TypeError)
    stored = _stored(db)
    assert sorted(stored) == ["b0", "b1", "leader"]
    for tag in ("b0", "b1"):
        assert _value_of(outcomes[tag]) == (tag, stored[tag][0])


# ---------------------------------------------------------------- durability before return


def test_run_returns_only_after_the_commit(ca: Core) -> None:
    """A separate engine on the same URL sees each caller's row as soon as run() returns, and
    sees nothing of a transaction still open (so the check can fail)."""
    db, gc = ca.db, GroupCommit(ca.db)
    other = sa.create_engine(db.url)
    try:

        def visible(value: Any) -> int:
            tag, _ = value
            with other.connect() as conn:
                query = sa.text(
                    "SELECT count(*) FROM audit_events WHERE action = :a AND target = :t"
                )
                return int(conn.execute(query, {"a": ACTION, "t": tag}).scalar_one())

        tags = [f"v{i}" for i in range(8)]
        run = run_queued_batch(
            gc,
            [_insert(t) for t in tags],
            after=visible,
            while_open=lambda: visible(("leader", 0)),
        )
        assert run.while_open == 0  # the leader's row, inserted but not committed
        assert run.leader.error is None and run.leader.seen == 1
        assert [o.seen for o in run.jobs] == [1] * len(tags)
        assert [o.error for o in run.jobs] == [None] * len(tags)
    finally:
        other.dispose()
