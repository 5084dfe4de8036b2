"""Applying the Alembic migrations: the only way the schema is created or changed."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

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


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = _config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def pending(db: Database) -> list[str]:
    """Revisions not yet applied, oldest first."""
    script = ScriptDirectory.from_config(_config())
    with db.engine.connect() as conn:
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
