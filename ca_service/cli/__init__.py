"""The ``ca-service`` command line: one click group, its commands in one module per concern.

The commands call the core (through ``ca_service.wiring``) and never import the web layer;
``output`` is the one place that decides how results and failures are printed. The console
script is ``ca_service.cli:main``.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ca_service.cli.acme import acme
from ca_service.cli.authorities import authorities, authority_group, init, set_default
from ca_service.cli.backup import backup, restore
from ca_service.cli.certificates import crl, export, issue, list_, release_hold, renew, revoke, show
from ca_service.cli.db import db
from ca_service.cli.keys import keys
from ca_service.cli.provisioners import provisioner
from ca_service.cli.request import request
from ca_service.cli.serve import serve
from ca_service.cli.tls import probe
from ca_service.cli.tokens import token
from ca_service.cli.trust import trust


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ca-service")
def cli() -> None:
    """ca-service: a self-hosted certificate authority.

    Settings come from CA_* environment variables (see config/ca-service.example.toml); the CA
    keys are encrypted with CA_KEY_PASSPHRASE or the file named by CA_KEY_PASSPHRASE_FILE, or
    kept in a PKCS#11 token with CA_KEY_BACKEND=pkcs11 (docs/key-ceremony.md).
    """
    logging.basicConfig(level=os.environ.get("CA_LOG_LEVEL", "WARNING").upper())


for _command in (
    init,
    authorities,
    authority_group,
    set_default,
    issue,
    renew,
    list_,
    show,
    revoke,
    release_hold,
    crl,
    export,
    serve,
    token,
    acme,
    provisioner,
    db,
    keys,
    probe,
    trust,
    request,
    backup,
    restore,
):
    cli.add_command(_command)


def main() -> None:
    try:
        cli.main(prog_name="ca-service", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["cli", "main"]
