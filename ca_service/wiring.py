"""The composition root: the one place that picks concrete classes and connects them."""

from __future__ import annotations

from contextlib import AbstractContextManager

from ca_service.clock import Clock, SystemClock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.errors import ConfigError
from ca_service.signing.keystore import DatabaseKeystore, FileKeystore, Keystore
from ca_service.signing.pkcs11 import Pkcs11Keystore
from ca_service.storage import migrate
from ca_service.storage.db import Database
from ca_service.storage.keys import DatabaseKeyBlobs, KeyImport, import_key_files


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
    clock = clock or SystemClock()
    prepare_data_dir(settings)
    database = db or open_database(settings)
    try:
        keystore = open_keystore(settings, database, clock)
        if apply_migrations:
            migrate.upgrade(database)
        else:
            waiting = migrate.pending(database)
            if waiting:
                raise ConfigError(
                    f"the database schema is behind ({len(waiting)} migration(s) pending); "
                    "run 'ca-service db upgrade'"
                )
        if isinstance(keystore, DatabaseKeystore):
            import_keys(database, keystore, clock)
    except BaseException:
        if db is None:  # opened here: closed here, or its connections outlive the failure
            database.dispose()
        raise
    return Core(settings, database, keystore, clock)


def first_start_lock(db: Database) -> AbstractContextManager[None]:
    """Held by ``serve`` while it makes the first CA and admin token, so that replicas started
    together on an empty database make one of each (storage.migrate.startup_lock)."""
    return migrate.startup_lock(db)


def import_keys(db: Database, keystore: DatabaseKeystore, clock: Clock) -> KeyImport:
    """Copy the key files an older store names from this node's data_dir/keys into the
    database (at every start, and ``ca-service keys import``)."""
    return import_key_files(db, keystore.import_file, clock.now())


def import_key_files_of(settings: Settings, db: Database) -> KeyImport:
    """``ca-service keys import``: the same copy as at start, on its own."""
    if settings.key_backend != "database":
        raise ConfigError(
            f"key_backend = {settings.key_backend}: keys are imported into the database only "
            "with key_backend = database"
        )
    if migrate.pending(db):
        raise ConfigError("the database schema is behind; run 'ca-service db upgrade'")
    clock = SystemClock()
    keystore = open_keystore(settings, db, clock)
    assert isinstance(keystore, DatabaseKeystore)
    return import_keys(db, keystore, clock)


def open_keystore(settings: Settings, db: Database, clock: Clock) -> Keystore:
    """The keystore ``key_backend`` names. Only its settings are checked here; the token is
    opened when the first key is loaded (``Core.load_keys`` at start), in the process that
    uses it (a gunicorn worker opens its own session after the fork)."""
    keys_dir = settings.data_dir / "keys"
    if settings.key_backend == "database":
        blobs = DatabaseKeyBlobs(db, clock.now)
        return DatabaseKeystore(blobs, settings.require_passphrase(), keys_dir)
    if settings.key_backend == "file":
        return FileKeystore(keys_dir, settings.require_passphrase())
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
