"""The composition root: the one place that picks concrete classes and connects them."""

from __future__ import annotations

from ca_service.clock import Clock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.errors import ConfigError
from ca_service.notify import from_settings as webhooks_from_settings
from ca_service.signing.keystore import FileKeystore, Keystore
from ca_service.signing.pkcs11 import Pkcs11Keystore
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
    keystore = open_keystore(settings)
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
    return Core(settings, database, keystore, clock, events=webhooks_from_settings(settings))


def open_keystore(settings: Settings) -> Keystore:
    """The keystore ``key_backend`` names. Only its settings are checked here; the token is
    opened when the first key is loaded (``Core.load_keys`` at start), in the process that
    uses it (a gunicorn worker opens its own session after the fork)."""
    if settings.key_backend != "pkcs11":
        return FileKeystore(settings.data_dir / "keys", settings.require_passphrase())
    if not settings.pkcs11_module:
        raise ConfigError(
            "key_backend = pkcs11 needs pkcs11_module, the path of the token's PKCS#11 library"
        )
    if not settings.pkcs11_token_label:
        raise ConfigError("key_backend = pkcs11 needs pkcs11_token_label, the token's label")
    return Pkcs11Keystore(settings.pkcs11_module, settings.pkcs11_token_label, pkcs11_pin(settings))


def pkcs11_pin(settings: Settings) -> bytes:
    """The user PIN: CA_PKCS11_PIN(_FILE) from the environment, else ``pkcs11_pin_file``."""
    if settings.pkcs11_pin:
        return settings.pkcs11_pin
    path = settings.pkcs11_pin_file
    if path is None:
        raise ConfigError(
            "no PKCS#11 PIN: set CA_PKCS11_PIN or CA_PKCS11_PIN_FILE, or pkcs11_pin_file"
        )
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read pkcs11_pin_file {path}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"pkcs11_pin_file {path} is empty")
    return data
