"""Group commit: the concurrent write transactions of one process share one durable commit.

Every issuance must be on disk (SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit``)
before its certificate is returned. One transaction per request makes the commit, and on SQLite
the wait for the single writer lock, the cost of each certificate: under load the profile showed
most of a request's time there (bench/PROFILES.md). Here the requests that arrive while a commit
is in flight queue up, and the next thread to get the turn (the "combiner") runs all their work
in one transaction and commits once for all of them; each caller is answered only after that
commit, with its own result or its own error.

A job whose own work raises (a refusal, a serial collision, a bug) does not sink the batch:
the transaction is rolled back, the job gets its error, and the others run again without it in
a fresh transaction, so a job's work must be safe to run twice (it only executes statements
and builds values; nothing leaves the process before the commit). An error of the store itself
(the database went away, a statement or the commit failed in the driver) is every job's error:
none of them committed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from ca_service import metrics
from ca_service.errors import Unavailable
from ca_service.storage.db import Database, DuplicateRow, StoreError, unit_of_work

T = TypeVar("T")
V = TypeVar("V")
# What a job's work is given: the batch's session, for the repositories. The core names it by
# this alias and never reaches the toolkit itself (tests/core/test_core_shape.py).
Transaction = Session

# Enough to absorb every request thread of a worker at once; a longer queue waits one commit.
MAX_BATCH = 64
# Keys of Session.info: what the jobs of one transaction attempt share (fresh for each attempt).
_ONCE, _LATER = "ca_group_once", "ca_group_later"


def once(session: Session, key: Hashable, compute: Callable[[], V]) -> V:
    """``compute()`` once per transaction for a check that every job of a batch makes alike
    (the same token, the same issuing CA): its answer holds for the whole transaction, whose
    locks it took. An error is not kept: each job that asks gets its own."""
    memo: dict[Hashable, Any] = session.info.setdefault(_ONCE, {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]  # type: ignore[no-any-return]


def insert_later(session: Session, statement: Executable, params: dict[str, Any]) -> None:
    """An INSERT sent with the batch's other rows of the same statement (one executemany) just
    before the commit; outside a GroupCommit's transaction, sent at once. For rows nobody reads
    back within the transaction."""
    later: dict[tuple[Executable, frozenset[str]], list[dict[str, Any]]] | None
    later = session.info.get(_LATER)
    if later is None:
        session.connection().execute(statement, params)
        return
    later.setdefault((statement, frozenset(params)), []).append(params)


class _Job(Generic[T]):
    __slots__ = ("done", "error", "value", "work")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None


class _JobFailed(Exception):
    """Unwinds the batch's transaction when one job's own work raised."""

    def __init__(self, job: _Job[object]) -> None:
        self.job = job


class _Ambiguous(Exception):
    """The batch's deferred rows broke a unique constraint: whose row is not known."""


def _belongs_to_the_job(exc: BaseException) -> bool:
    """A failure of the store (the driver's errors, and Unavailable, which db.py makes of a
    lost or refused connection) is every job's: their transaction is gone. A broken unique
    constraint, a refusal, or any other error of the job's own code is that job's alone."""
    if isinstance(exc, DuplicateRow):
        return True
    return not isinstance(exc, StoreError | Unavailable)


class GroupCommit:
    """Runs write work in shared transactions; one per Database and process."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: deque[_Job[object]] = deque()
        self._queue_lock = threading.Lock()
        # Waiters sleep on this until their job is done or nobody is combining; each batch's
        # end wakes them all, so a caller whose job committed returns at once instead of
        # queueing for a lock behind the next batch.
        self._changed = threading.Condition(self._queue_lock)
        self._combining = False
        # Held by the combiner while it takes a batch and commits it.
        self._turn = threading.Lock()

    def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction and return its value once that has committed."""
        job: _Job[T] = _Job(work)
        with self._changed:
            self._queue.append(job)  # type: ignore[arg-type]
            while not job.done:
                if self._combining:
                    self._changed.wait()
                    continue
                self._combining = True
                self._changed.release()
                try:
                    self._combine()
                finally:
                    self._changed.acquire()
                    self._combining = False
                    self._changed.notify_all()
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[return-value]

    def _combine(self) -> None:
        with self._turn:
            with self._queue_lock:
                count = min(self.max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
            self._commit(batch)

    def _commit(self, batch: list[_Job[object]]) -> None:
        pending = batch
        while pending:
            try:
                with unit_of_work(self.db, write=True) as session:
                    later: dict[tuple[Executable, frozenset[str]], list[dict[str, Any]]] = {}
                    session.info[_LATER] = later
                    for job in pending:
                        try:
                            job.value = job.work(session)
                        except BaseException as exc:
                            if not _belongs_to_the_job(exc):
                                raise
                            job.error = exc
                            raise _JobFailed(job) from exc
                    _send_later(session, later, pending)
            except _Ambiguous:
                # One transaction per job tells whose row it was; rare (a serial collision).
                for job in pending:
                    self._commit([job])
                return
            except _JobFailed as failed:
                failed.job.done = True
                pending = [j for j in pending if j is not failed.job]
                for job in pending:
                    job.value = None
                continue
            except BaseException as exc:
                for job in pending:
                    job.error, job.done = exc, True
                return
            metrics.GROUP_COMMIT_SIZE.observe(len(pending))
            for job in pending:
                job.done = True
            return


def _send_later(
    session: Session,
    later: dict[tuple[Executable, frozenset[str]], list[dict[str, Any]]],
    pending: list[_Job[object]],
) -> None:
    """The deferred rows, one executemany per statement; a broken unique constraint is the
    job's when there is one job, else the batch is retried one job per transaction."""
    connection = session.connection()
    for (statement, _keys), rows in later.items():
        try:
            connection.execute(statement, rows)
        except DuplicateRow as exc:
            if len(pending) > 1:
                raise _Ambiguous from exc
            pending[0].error = exc
            raise _JobFailed(pending[0]) from exc
