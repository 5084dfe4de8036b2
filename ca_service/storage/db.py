"""Engines and the unit of work: one transaction per request or command, committed by the caller."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session


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
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.write_engine: Engine = self.engine.execution_options(ca_write=True)

    def dispose(self) -> None:
        self.engine.dispose()


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
    engine = db.write_engine if write else db.engine
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
