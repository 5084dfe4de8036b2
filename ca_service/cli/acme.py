"""``ca-service acme``: ACME administration. ``acme eab``: External Account Binding keys
(create, list, revoke); an HMAC key is printed once only, at creation.

The same service as POST/GET/DELETE /api/v1/acme/eab (ca_service.acme.eab.EABKeys) makes the
same decisions here; ``--json`` prints the API's EABKey records.
"""

from __future__ import annotations

import json
import shlex

import click

from ca_service import api_models
from ca_service.acme.eab import EABKeys
from ca_service.cli.context import _actor, _authority, _database, _require_schema, _settings
from ca_service.cli.output import handle_errors
from ca_service.clock import SystemClock
from ca_service.domain import EABKeyRecord


@click.group()
def acme() -> None:
    """ACME (RFC 8555) administration."""


@acme.group()
def eab() -> None:
    """External Account Binding keys: create, list, revoke."""


def _json(record: EABKeyRecord, hmac_key: str | None = None) -> str:
    return json.dumps(api_models.as_json(api_models.eab_key(record, hmac_key=hmac_key)), indent=2)


def _state(record: EABKeyRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "bound" if record.account_id is not None else "unused"


@eab.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'web-servers'.")
@click.option(
    "--allow",
    "allowed",
    multiple=True,
    required=True,
    metavar="PATTERN",
    help="Name pattern the bound account may order: host, *.domain, CIDR. Repeatable.",
)
@click.option("--profile", "profiles", multiple=True, help="Allowed profile. Repeatable.")
@click.option("--max-validity-days", type=int, help="Longest validity it may ask for.")
@click.option("--authority", "authorities", multiple=True, help="Allowed authority. Repeatable.")
@click.option("--allow-wildcards", is_flag=True, help="May order wildcards its patterns cover.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@handle_errors
def eab_create(
    name: str,
    allowed: tuple[str, ...],
    profiles: tuple[str, ...],
    max_validity_days: int | None,
    authorities: tuple[str, ...],
    allow_wildcards: bool,
    as_json: bool,
) -> None:
    """Create a key and print its kid and HMAC key once."""
    ca = _authority()
    record, hmac_key = EABKeys(ca.db, ca.clock, ca.settings.require_passphrase()).create(
        name=name,
        allowed_names=list(allowed),
        profiles=list(profiles) or None,
        max_validity_days=max_validity_days,
        authorities=list(authorities) or None,
        allow_wildcards=allow_wildcards,
        actor=_actor(),
        known_profiles=ca.settings.profiles,
        known_authorities={a.name for a in ca.list_authorities()},
    )
    # The default authority's directory, or that of the one authority the key is limited to.
    only = record.policy.authorities[0] if record.policy.authorities else None
    directory = ca.settings.public_url.rstrip("/") + (f"/acme/{only}" if only else "/acme")
    directory += "/directory"
    example = (
        f"certbot certonly --server {shlex.quote(directory)} --eab-kid {record.kid} "
        f"--eab-hmac-key {hmac_key} -d {shlex.quote(_example_name(record))}"
    )
    note = "The HMAC key is shown once only: it is stored encrypted and cannot be shown again."
    if as_json:
        click.echo(_json(record, hmac_key))
        click.echo(note, err=True)
        return
    click.echo(f"kid:      {record.kid}")
    click.echo(f"hmac key: {hmac_key}")
    click.echo(note)
    click.echo(f"example:  {example}")


def _example_name(record: EABKeyRecord) -> str:
    """A name for the certbot example: the first pattern, made concrete."""
    first = (record.policy.allowed_names or ("example.test",))[0]
    return "www." + first[2:] if first.startswith("*.") else first


@eab.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@handle_errors
def eab_list(as_json: bool) -> None:
    """List keys (never their HMAC keys)."""
    # Listing opens no sealed value, so it needs no CA key passphrase.
    db = _database()
    _require_schema(db)
    records = EABKeys(db, SystemClock(), _settings().key_passphrase or b"").list()
    if as_json:
        listed = [api_models.as_json(api_models.eab_key(r)) for r in records]
        click.echo(json.dumps(listed, indent=2))
        return
    if not records:
        click.echo("no EAB keys")
        return
    for r in records:
        names = ",".join(r.policy.allowed_names or ()) or "-"
        account = f"  account={r.account_id}" if r.account_id else ""
        click.echo(f"{r.kid}  {_state(r):7} {r.name}  names={names}{account}")


@eab.command("revoke")
@click.argument("kid")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@handle_errors
def eab_revoke(kid: str, as_json: bool) -> None:
    """Revoke a key: it binds no more accounts (one it bound stays)."""
    db = _database()
    _require_schema(db)
    record = EABKeys(db, SystemClock(), _settings().key_passphrase or b"").revoke(kid, _actor())
    if as_json:
        click.echo(_json(record))
        return
    click.echo(f"EAB key {record.kid} revoked")
