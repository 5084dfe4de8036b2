"""``ca-service backup`` and ``ca-service restore``: the whole service in one encrypted file
(docs/backup.md). The work is core/backup.py's; this module reads options and passphrases and
prints progress on stderr, so stdout holds only the final summary."""

from __future__ import annotations

from pathlib import Path

import click

from ca_service.cli.context import _actor, _database, _settings
from ca_service.cli.output import handle_errors
from ca_service.config import Settings
from ca_service.core.backup import BACKUP_PASSPHRASE, CA_PASSPHRASE, write_backup
from ca_service.core.restore import DEFAULT_CRL_GAP, restore_backup
from ca_service.errors import ConfigError

PASSPHRASE_FILE = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt (or open) the backup with the passphrase in this file instead of the CA key "
    "passphrase, for a backup kept by other custodians than the CA's key holders.",
)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _passphrase(settings: Settings, path: Path | None) -> tuple[bytes, str]:
    """The passphrase the backup key is made from, and which one it is (for the header)."""
    if path is None:
        return settings.require_passphrase(), CA_PASSPHRASE
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    if len(data) < 16:
        raise ConfigError(f"the passphrase in {path} is shorter than 16 characters")
    return data, BACKUP_PASSPHRASE


@click.command("backup")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup file to write (never overwritten; it appears only when complete).",
)
@PASSPHRASE_FILE
@handle_errors
def backup(out: Path, passphrase_file: Path | None) -> None:
    """Write a consistent, encrypted backup of the running service: the store and the key
    files of the data directory."""
    settings = _settings()
    passphrase, source = _passphrase(settings, passphrase_file)
    summary = write_backup(
        settings,
        _database(),
        out,
        passphrase,
        key_source=source,
        actor=_actor(),
        progress=_progress,
    )
    rows = sum(summary.tables.values())
    click.echo(
        f"wrote {summary.path} ({summary.size} bytes): {summary.database} schema "
        f"{summary.revision}, {summary.tables.get('certificates', 0)} certificates, "
        f"{rows} rows in {len(summary.tables)} tables, {summary.files} file(s)"
    )


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@PASSPHRASE_FILE
@click.option(
    "--crl-number-gap",
    type=click.IntRange(0, 10**12),
    default=DEFAULT_CRL_GAP,
    show_default=True,
    help="Add this to every authority's CRL number, so CRLs the original signed after the "
    "backup are never numbered twice. 0 only if the original published none since.",
)
@handle_errors
def restore(file: Path, passphrase_file: Path | None, crl_number_gap: int) -> None:
    """Load a backup into an EMPTY data directory and an EMPTY database (CA_DATA_DIR,
    CA_DATABASE_URL); refuses, changing nothing, otherwise."""
    settings = _settings()
    passphrase, source = _passphrase(settings, passphrase_file)
    summary = restore_backup(
        settings,
        file,
        passphrase,
        key_source=source,
        actor=_actor(),
        progress=_progress,
        crl_gap=crl_number_gap,
    )
    click.echo(
        f"restored the backup of {summary.created_at} into {settings.data_dir}: "
        f"{summary.tables.get('certificates', 0)} certificates, "
        f"{sum(summary.tables.values())} rows, {summary.files} file(s); schema is current"
    )
