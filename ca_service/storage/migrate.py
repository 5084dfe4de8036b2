"""Applying the Alembic migrations: the only way the schema is created or changed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ca_service.errors import ConfigError
from ca_service.storage.db import Database

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise ConfigError(
            f"migrations not found at {MIGRATIONS_DIR}; install ca-service from its source "
            "tree (pip install -e .)"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
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
