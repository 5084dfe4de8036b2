"""``ca-service db``: schema management (Alembic migrations shipped in the package)."""

from __future__ import annotations

import click

from ca_service.cli.context import _database
from ca_service.cli.output import handle_errors
from ca_service.storage import migrate

# ---------------------------------------------------------------------------- db


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply pending Alembic migrations."""
    applied = migrate.upgrade(_database())
    click.echo(
        f"applied {len(applied)} migration(s); schema is current"
        if applied
        else "schema is current"
    )
