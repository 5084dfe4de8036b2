"""Issue 9 item 8: what ca-service leaves on disk is private to its user, and one instance never
touches a path that another instance shares.

The SQLite database and its -wal and -shm files were 0644 (SQLite's default less the umask), and
gunicorn's control socket was ``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``
for every instance of a user: a second server took it over, and stopping either removed it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ca_service.storage.db import Database, unit_of_work

from ..conftest import drop_pg_schema, make_pg_schema
from ..live import CA_SERVICE, LiveServer, start_server

# The usual umask, under which SQLite's own default would give 0644.
UMASK = 0o022


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _sqlite_files(db_file: Path) -> dict[str, int]:
    return {
        p.name: mode(p)
        for p in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm"))
        if p.exists()
    }


def test_cli_init_makes_a_private_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(CA_DATA_DIR=str(data), CA_KEY_PASSPHRASE="files-test-passphrase")
    proc = subprocess.run(
        [CA_SERVICE, "init"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=UMASK,
    )
    assert proc.returncode == 0, proc.stderr
    assert mode(data) == 0o700
    assert mode(data / "ca.db") == 0o600
    # The keys are in the database (issue 14): no key file at all, private or not.
    assert not (data / "keys").exists()


def test_sqlite_wal_and_shm_share_the_private_mode(tmp_path: Path) -> None:
    """While a connection is open the -wal and -shm files exist; they take the main file's mode."""
    db_file = tmp_path / "ca.db"
    with umask(UMASK):
        db = Database(f"sqlite:///{db_file}")
        try:
            with unit_of_work(db, write=True) as session:
                session.connection().exec_driver_sql("CREATE TABLE t (x INTEGER)")
                session.connection().exec_driver_sql("INSERT INTO t VALUES (1)")
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT x FROM t").scalar() == 1
                files = _sqlite_files(db_file)
        finally:
            db.dispose()
    assert files == {"ca.db": 0o600, "ca.db-wal": 0o600, "ca.db-shm": 0o600}


def test_a_database_made_readable_before_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store created by an older ca-service (0644) is private once ca-service opens it."""
    db_file = tmp_path / "ca.db"
    with umask(UMASK):
        conn = sqlite3.connect(db_file)
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.commit()
        conn.close()
    os.chmod(db_file, 0o644)
    with caplog.at_level(logging.WARNING, logger="ca_service.storage.db"):
        db = Database(f"sqlite:///{db_file}")
    db.dispose()
    assert mode(db_file) == 0o600
    assert "0644" in caplog.text and "0600" in caplog.text


def test_live_server_database_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db_file = data / "ca.db"
    with umask(UMASK):
        server = start_server(data, f"sqlite:///{db_file}", workers=1)
    try:
        reply = server.request("GET", "/api/v1/certificates", token=server.admin_token)
        assert reply.status == 200
        files = _sqlite_files(db_file)
    finally:
        assert server.stop() == 0
    assert files == {"ca.db": 0o600, "ca.db-wal": 0o600, "ca.db-shm": 0o600}
    assert not (data / "keys").exists()


def _everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _sockets_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]


def test_two_servers_share_no_control_socket(tmp_path: Path) -> None:
    """Two instances of one user (SQLite and PostgreSQL, their own data directories), with HOME
    and XDG_RUNTIME_DIR pointing where gunicorn would put its shared control socket."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    url, schema = make_pg_schema()
    servers: list[LiveServer] = []
    try:
        first = start_server(
            tmp_path / "a" / "data", f"sqlite:///{tmp_path / 'a.db'}", workers=1, extra_env=env
        )
        servers.append(first)
        second = start_server(tmp_path / "b" / "data", url, workers=1, extra_env=env)
        servers.append(second)
        shared = {"home": _everything_under(home), "run": _everything_under(runtime)}
        assert shared == {"home": [], "run": []}
        assert first.stop() == 0
        # The other instance is untouched and still answers; the shared places stay empty.
        assert second.request("GET", "/healthz").status == 200
        assert {"home": _everything_under(home), "run": _everything_under(runtime)} == shared
        assert _sockets_under(tmp_path) == []
        assert second.stop() == 0
    finally:
        for server in servers:
            server.stop()
        drop_pg_schema(schema)
    assert _sockets_under(tmp_path) == []
