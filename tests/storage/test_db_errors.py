"""storage/db.py translates driver errors for every statement: the backstop behind the web edge.

A value the column type refuses is a BadRequest (PostgreSQL: NUL in text, an integer beyond 64
bits); a database that cannot be reached is Unavailable (503 in the API, exit code 3 in the CLI);
errors that mean a bug or a conflict are left as they are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ca_service.errors import BadRequest, Unavailable
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository

from ..live import free_port


def test_nul_in_text_is_a_bad_request_on_postgresql(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with pytest.raises(BadRequest), unit_of_work(db) as s:
            s.execute(sa.text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
        with pytest.raises(BadRequest), unit_of_work(db) as s:
            s.execute(sa.text("SELECT CAST(:v AS bigint)"), {"v": str(10**30)})
    finally:
        db.dispose()


def test_an_unreachable_postgresql_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    try:
        with pytest.raises(Unavailable) as caught, unit_of_work(db) as s:
            AuditRepository(s).list(limit=1)
        assert "unreachable" in caught.value.detail
        assert caught.value.retry_after >= 1
    finally:
        db.dispose()


def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'missing-dir' / 'ca.db'}")
    try:
        with pytest.raises(Unavailable), unit_of_work(db) as s:
            s.execute(sa.text("SELECT 1"))
    finally:
        db.dispose()


def test_integrity_errors_pass_unchanged(db_url: str) -> None:
    db = Database(db_url)
    try:
        with unit_of_work(db, write=True) as s:
            s.execute(sa.text("CREATE TABLE t_unique (v integer PRIMARY KEY)"))
            s.execute(sa.text("INSERT INTO t_unique VALUES (1)"))
        with pytest.raises(IntegrityError), unit_of_work(db, write=True) as s:
            s.execute(sa.text("INSERT INTO t_unique VALUES (1)"))
    finally:
        db.dispose()
