"""Issue 14, item 4: replicas that start together migrate one fresh database safely.

Several real ``ca-service db upgrade`` processes start at once on an empty PostgreSQL schema (or
SQLite file); every one succeeds and the schema is at head, made once. Without the advisory
lock two of them ran the same CREATE TABLE and one failed on PostgreSQL's catalog.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from ca_service.storage import migrate
from ca_service.storage.db import Database
from ca_service.wiring import first_start_lock

from ..conftest import database
from ..live import CA_SERVICE

PROCESSES = 3


def _upgrade_all_at_once(url: str, base: Path) -> list[subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(CA_DATABASE_URL=url, CA_DATA_DIR=str(base / "data"))
    procs = [
        subprocess.Popen(
            [CA_SERVICE, "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    deadline = time.monotonic() + 120
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_upgrades_on_a_fresh_database_all_succeed(
    backend: str, tmp_path: Path
) -> None:
    (head,) = ScriptDirectory.from_config(migrate._config()).get_heads()
    with database(backend, tmp_path) as url:
        results = _upgrade_all_at_once(url, tmp_path)
        for result in results:
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr
        # One of them applied every migration; the others found the schema current.
        applied = [r.stdout for r in results if "applied" in r.stdout]
        assert len(applied) == 1, [r.stdout for r in results]
        db = Database(url)
        try:
            assert migrate.pending(db) == []
            with db.engine.connect() as conn:
                versions = conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                assert [v for (v,) in versions] == [head]
                assert "key_blobs" in sa.inspect(conn).get_table_names()
        finally:
            db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_first_start_lock_admits_one_replica_at_a_time(backend: str, tmp_path: Path) -> None:
    """``serve`` makes the first CA and admin token under this lock: a second holder (another
    connection, as another replica's) gets it only after the first lets go."""
    with database(backend, tmp_path) as url:
        first, second = Database(url), Database(url)
        order: list[str] = []
        try:
            with first_start_lock(first):

                def other() -> None:
                    with first_start_lock(second):
                        order.append("second")

                thread = threading.Thread(target=other)
                thread.start()
                time.sleep(0.3)  # time for the other to try, and wait
                order.append("first")
            thread.join(timeout=30)
            assert not thread.is_alive()
            assert order == ["first", "second"]
        finally:
            first.dispose()
            second.dispose()
