"""The composition root: the one place that picks concrete classes and connects them."""

from __future__ import annotations

from ca_service.clock import Clock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.errors import ConfigError
from ca_service.signing.keystore import FileKeystore
from ca_service.storage import migrate
from ca_service.storage.db import Database


def prepare_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(
            f"cannot create data directory {settings.data_dir}: {exc.strerror}"
        ) from None


def open_database(settings: Settings) -> Database:
    if settings.database_url is None:
        prepare_data_dir(settings)
    return Database(settings.resolved_database_url)


def build_authority(
    settings: Settings,
    *,
    db: Database | None = None,
    clock: Clock | None = None,
    apply_migrations: bool = False,
) -> Core:
    """Wire the core. With ``apply_migrations`` pending migrations run first (init, serve);
    otherwise a schema that is behind stops the command with a hint."""
    passphrase = settings.require_passphrase()
    prepare_data_dir(settings)
    database = db or open_database(settings)
    if apply_migrations:
        migrate.upgrade(database)
    else:
        waiting = migrate.pending(database)
        if waiting:
            raise ConfigError(
                f"the database schema is behind ({len(waiting)} migration(s) pending); "
                "run 'ca-service db upgrade'"
            )
    keystore = FileKeystore(settings.data_dir / "keys", passphrase)
    return Core(settings, database, keystore, clock)
