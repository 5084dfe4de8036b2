"""Engines and the unit of work: one transaction per request or command, committed by the caller."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session

from ca_service import metrics
from ca_service.errors import BadRequest, Unavailable

# The store's error types under the store's names, so that the layers above catch them without
# importing the driver's toolkit: DuplicateRow is a unique constraint broken at commit (the core
# retries a serial collision), StoreError any other failure of the store that was not translated
# into a CAError below.
DuplicateRow = sa_exc.IntegrityError
StoreError = sa_exc.SQLAlchemyError

log = logging.getLogger(__name__)


class Database:
    """Two faces of one pool: ``engine`` for reads and ``write_engine`` for write transactions.

    On SQLite a write transaction must start with BEGIN IMMEDIATE: a deferred transaction that
    upgrades from read to write fails at once with "database is locked" under concurrent writers,
    whatever the busy timeout. PostgreSQL needs no such care.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            # No pre-ping: it is a round trip on every checkout (a third of an issuance's time
            # in the profile). Connections are recycled hourly instead, and a dropped one fails
            # that one request, which the client may retry.
            kwargs.update(pool_size=8, max_overflow=8, pool_recycle=3600)
        self.engine: Engine = create_engine(url, **kwargs)
        event.listen(self.engine, "handle_error", _translate_driver_error)
        _count_pool(self.engine)
        self._lock_path: Path | None = None
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            database = self.engine.url.database
            if database and database != ":memory:":
                self._lock_path = Path(database + ".writelock")
                if not self.engine.url.query.get("uri"):
                    _make_private(database)
        self.write_engine: Engine = self.engine.execution_options(ca_write=True)
        self._thread_lock = threading.RLock()
        self._lock_file: tuple[int, int] | None = None  # (pid, fd)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """On SQLite, queue writers in the kernel rather than in SQLite's busy handler.

        SQLite makes a blocked writer sleep and retry with growing naps (up to 100 ms), so under
        load most of an issuance was spent asleep with the lock already free. An flock on a file
        beside the database wakes the next writer the moment the lock is released; the thread
        lock orders the threads of this process, which share one open file.
        """
        if self._lock_path is None:
            yield
            return
        with self._thread_lock:
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_fd(self) -> int:
        pid = os.getpid()
        if self._lock_file is None or self._lock_file[0] != pid:  # opened anew after a fork
            assert self._lock_path is not None
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_file = (pid, fd)
        return self._lock_file[1]


def _make_private(database: str) -> None:
    """Create the SQLite file as 0600 before SQLite does, and tighten one made readable earlier.

    SQLite creates a missing database with 0644 (less the umask), and gives its -wal and -shm
    files the mode of the main file: so the main file's mode, set here once, decides all three.
    The database holds token hashes, the audit log and every certificate's owner; like the keys,
    it is for the service's user alone. A zero-length file is a valid, empty SQLite database.
    """
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for path in (database, database + "-wal", database + "-shm"):
            _tighten(path)
        return
    except OSError:
        return  # no such directory, or not ours: SQLite's own open gives the error
    os.close(fd)


def _tighten(path: str) -> None:
    """Drop group and other access from a file of ours (one made before ca-service did this)."""
    try:
        st = os.stat(path)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != os.geteuid() or not mode & 0o077:
            return
        os.chmod(path, mode & 0o700)
    except OSError:
        return  # gone meanwhile, or not ours to change
    log.warning("%s was open to other users (mode %04o); now %04o", path, mode, mode & 0o700)


def _translate_driver_error(ctx: ExceptionContext) -> None:
    """Turn the driver errors a caller can cause or wait out into domain errors, for every
    statement, connect and commit of the engine (SQLAlchemy still invalidates a dropped
    connection and, on a disconnect, the pool first).

    - A lost or refused connection, or any other OperationalError (server shutting down,
      SQLite busy past its timeout, a deadlock, a cancelled statement): ``Unavailable``, so that
      a database restart reads "retry shortly" (503), not "internal error".
    - A DataError (a value the column type refuses: NUL in PostgreSQL text, a number out of
      range): ``BadRequest``. The web edge refuses such input first; this is the backstop.

    Errors that mean a bug or a conflict (IntegrityError, ProgrammingError) pass unchanged.
    """
    original = ctx.sqlalchemy_exception
    reason = _first_line(ctx.original_exception)
    if ctx.is_disconnect or isinstance(original, sa_exc.OperationalError):
        metrics.database_error("unavailable")
        raise Unavailable(f"the database is unreachable or refused the operation: {reason}")
    if isinstance(original, sa_exc.DataError):
        metrics.database_error("data")
        raise BadRequest("a value in the request cannot be stored (out of range or not text)")
    # A serial collision the core retries is an IntegrityError too; counted, not translated.
    metrics.database_error("integrity" if isinstance(original, sa_exc.IntegrityError) else "other")


def _count_pool(engine: Engine) -> None:
    """The pool's size and its connections in use, for the metrics (summed over workers)."""
    size = getattr(engine.pool, "size", None)
    if callable(size):
        metrics.DB_POOL_SIZE.inc(size())

    @event.listens_for(engine, "checkout")
    def _out(*_: Any) -> None:
        metrics.DB_POOL_CHECKED_OUT.inc()

    @event.listens_for(engine, "checkin")
    def _in(*_: Any) -> None:
        metrics.DB_POOL_CHECKED_OUT.dec()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("ca_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextmanager
def unit_of_work(db: Database, *, write: bool = False) -> Iterator[Session]:
    """Yield a session in one transaction; commit on success, roll back on any exception."""
    if not write:
        with Session(db.engine, expire_on_commit=False) as session, session.begin():
            yield session
        return
    with (
        db.write_lock(),
        Session(db.write_engine, expire_on_commit=False) as session,
        session.begin(),
    ):
        yield session
