"""``ca-service keys``: the CA and OCSP responder keys of ``key_backend = database``."""

from __future__ import annotations

import click

from ca_service.cli.context import _database, _settings
from ca_service.cli.output import handle_errors
from ca_service.wiring import import_key_files_of


@click.group()
def keys() -> None:
    """CA and OCSP responder keys."""


@keys.command("import")
@handle_errors
def keys_import() -> None:
    """Copy the key files an older store made in data_dir/keys into the database.

    Every start does the same; run it on each node that has key files, so that the other
    replicas can sign with those keys. Idempotent; the files are left in place."""
    done = import_key_files_of(_settings(), _database())
    click.echo(f"imported {len(done.imported)} key(s) into the database")
    for key_file in done.missing:
        click.echo(f"not on this node: {key_file} (run this where that file is)", err=True)
