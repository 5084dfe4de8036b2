"""What every command takes from its click context: the settings (read once per run), the
database (closed when the command ends), the core, and the actor written into the audit log."""

from __future__ import annotations

import getpass
import os
from typing import Any

import click

from ca_service.config import Settings, load_settings
from ca_service.core.facade import Core
from ca_service.domain import Actor
from ca_service.errors import ConfigError
from ca_service.storage import migrate
from ca_service.storage.db import Database
from ca_service.wiring import build_authority, open_database


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(identity=f"cli:{user}")


def _settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if obj is None:
        obj = load_settings()
        ctx.find_root().obj = obj
    assert isinstance(obj, Settings)
    return obj


def _database() -> Database:
    """Open the database for this command; its connections are closed when the command ends."""
    db = open_database(_settings())
    click.get_current_context().call_on_close(db.dispose)
    return db


def _authority(*, migrate_first: bool = False) -> Core:
    settings = _settings()
    if settings.key_backend != "pkcs11":
        settings.require_passphrase()
    return build_authority(settings, db=_database(), apply_migrations=migrate_first)


def _require_schema(db: Any) -> None:
    if migrate.pending(db):
        raise ConfigError("the database schema is behind; run 'ca-service db upgrade'")
