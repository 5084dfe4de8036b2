"""Applying the Alembic migrations: the only way the schema is created or changed.

Replicas that start together all run ``upgrade`` at once (issue 14), so it is serialised:

- PostgreSQL: ``pg_advisory_xact_lock`` on a key made of this purpose and the schema's name,
  taken in the migration's own transaction. The second replica waits there; when the first
  commits, it reads the new ``alembic_version`` and has nothing left to do. DDL is
  transactional in PostgreSQL, so a replica killed half-way leaves nothing half-made.
- SQLite: the migration runs in a write transaction (BEGIN IMMEDIATE) behind the store's
  writer file lock. SQLite's own file lock already admits one writer at a time to a database
  file, and every process that can open the file shares it (SQLite does not work over network
  file systems, so there are no replicas on other hosts to coordinate); IMMEDIATE makes the
  second process wait for the lock instead of failing on a read that turns into a write.

``startup_lock`` serialises what a replica does once at first start (create the first CA and
admin token), under another key, so that two replicas on a fresh database make one of each.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from ca_service.errors import ConfigError
from ca_service.storage.db import Database

# The migrations ship inside the package, so an installed wheel (pip, pipx, a container) has
# them wherever site-packages is; nothing is looked up beside a source tree.
MIGRATIONS_PACKAGE = "ca_service.storage.migrations"


def _config() -> Config:
    location = resources.files(MIGRATIONS_PACKAGE)
    if not location.joinpath("env.py").is_file():
        raise ConfigError(f"migrations not found in {location}; this installation is incomplete")
    cfg = Config()
    # Alembic reads the scripts from disk: a zipped install would need extracting first, and
    # setuptools installs this package unzipped, so the path is the package's own directory.
    cfg.set_main_option("script_location", str(location))
    return cfg


# Advisory lock keys (the first of PostgreSQL's two int4 halves; the second is the schema's).
MIGRATION_LOCK = 0x63610001
STARTUP_LOCK = 0x63610002
_PG_KEY = "hashtext(current_schema())"


def lock_migrations(conn: Connection) -> None:
    """Hold the migration lock until ``conn``'s transaction ends (PostgreSQL; SQLite's writer
    lock does it there): a restore holds it too, so a replica that starts meanwhile waits."""
    if conn.dialect.name != "sqlite":
        conn.execute(text(f"SELECT pg_advisory_xact_lock(:k, {_PG_KEY})"), {"k": MIGRATION_LOCK})


def upgrade(db: Database, revision: str = "head") -> list[str]:
    """Apply pending migrations; replicas that do it at once take turns (see above). Returns
    the revisions this call applied (none when another replica had applied them first)."""
    cfg = _config()
    with db.write_lock(), db.write_engine.begin() as conn:
        lock_migrations(conn)
        waiting = _pending(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return waiting


@contextmanager
def startup_lock(db: Database) -> Iterator[None]:
    """Held while this process does the work of a first start, released after."""
    if db.is_sqlite:
        database = db.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        fd = os.open(database + ".startlock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock
        return
    with db.engine.connect() as conn:
        _pg_session_lock(conn, "lock")
        try:
            yield
        finally:
            _pg_session_lock(conn, "unlock")


def _pg_session_lock(conn: Connection, verb: str) -> None:
    conn.execute(text(f"SELECT pg_advisory_{verb}(:k, {_PG_KEY})"), {"k": STARTUP_LOCK})
    conn.commit()  # a session lock outlives the transaction; none is left open meanwhile


def pending(db: Database) -> list[str]:
    """Revisions not yet applied, oldest first."""
    with db.engine.connect() as conn:
        return _pending(conn)


def _pending(conn: Connection) -> list[str]:
    script = ScriptDirectory.from_config(_config())
    current = set(MigrationContext.configure(conn).get_current_heads())
    revisions = [r.revision for r in script.walk_revisions()]
    if not current:
        return list(reversed(revisions))
    out: list[str] = []
    for rev in script.walk_revisions():
        if rev.revision in current:
            break
        out.append(rev.revision)
    return list(reversed(out))


# ---------------------------------------------------------------------------- for restore


def upgrade_on(conn: Connection, revision: str = "head") -> None:
    """Migrate inside the caller's transaction (a restore creates the schema and loads the rows
    in one, so a failure leaves the database as empty as it found it)."""
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def head() -> str:
    """The newest revision this installation knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this installation's migrations (a newer one is not)."""
    script = ScriptDirectory.from_config(_config())
    return any(r.revision == revision for r in script.walk_revisions())


def current(conn: Connection) -> str | None:
    """The revision the database connected to is at (None: no schema yet)."""
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None
