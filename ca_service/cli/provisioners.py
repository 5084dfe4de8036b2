"""``ca-service provisioner``: OIDC provisioners (create, list, delete), with the same checks as
POST /api/v1/provisioners (ca_service.oidc.provisioners)."""

from __future__ import annotations

import json

import click

from ca_service import api_models
from ca_service.cli.context import _actor, _authority, _database, _require_schema, _settings
from ca_service.cli.output import handle_errors
from ca_service.domain import ProvisionerRecord
from ca_service.errors import BadRequest
from ca_service.oidc.provisioners import PRESETS, ProvisionerService, ProvisionerSpec


@click.group()
def provisioner() -> None:
    """OIDC provisioners: which CI pipelines' ID tokens may get which certificates."""


def _claims(pairs: tuple[str, ...]) -> dict[str, list[str]]:
    """``KEY=PATTERN`` options; a key given again adds a pattern (any of them may match)."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, pattern = pair.partition("=")
        if not sep or not key or not pattern:
            raise BadRequest(f"--claim {pair!r}: expected KEY=PATTERN, e.g. repository=octo/app")
        out.setdefault(key, []).append(pattern)
    return out


def _show(record: ProvisionerRecord) -> None:
    click.echo(f"{record.name}: {record.type} issuer={record.issuer} audience={record.audience}")
    for key, patterns in sorted(record.claims.items()):
        click.echo(f"  claim {key}: {' | '.join(patterns)}")
    click.echo(f"  names: {', '.join(record.allowed_names)}")
    if record.profiles:
        click.echo(f"  profiles: {', '.join(record.profiles)}")
    if record.max_validity_days:
        click.echo(f"  max validity: {record.max_validity_days} days")
    if record.authorities:
        click.echo(f"  authorities: {', '.join(record.authorities)}")


@provisioner.command("create")
@click.argument("name")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Fills the issuer.")
@click.option("--issuer", help="The issuer URL (https); with --preset gitlab, a self-hosted one.")
@click.option("--audience", required=True, help="The aud the tokens must carry.")
@click.option("--jwks-uri", help="Else discovered from <issuer>/.well-known/openid-configuration.")
@click.option(
    "--claim",
    "claims",
    multiple=True,
    metavar="KEY=PATTERN",
    help="A claim rule (glob); repeat a key for alternatives. Every key must match.",
)
@click.option(
    "--allow",
    "allowed",
    multiple=True,
    required=True,
    metavar="PATTERN",
    help="Allowed name pattern, may use {claim} placeholders, e.g. "
    "'{repository_owner}-{run_id}.ci.example.test'. Repeatable.",
)
@click.option("--profile", "profiles", multiple=True, help="Allowed profile. Repeatable.")
@click.option("--max-validity-days", type=click.IntRange(1, None))
@click.option("--authority", "authorities", multiple=True, help="Allowed authority. Repeatable.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def provisioner_create(
    name: str,
    preset: str | None,
    issuer: str | None,
    audience: str,
    jwks_uri: str | None,
    claims: tuple[str, ...],
    allowed: tuple[str, ...],
    profiles: tuple[str, ...],
    max_validity_days: int | None,
    authorities: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a provisioner (explicit options win over the preset's)."""
    ca = _authority()
    spec = ProvisionerSpec(
        name=name,
        preset=preset,
        issuer=issuer,
        audience=audience,
        jwks_uri=jwks_uri,
        claims=_claims(claims),
        allowed_names=allowed,
        profiles=profiles or None,
        max_validity_days=max_validity_days,
        authorities=authorities or None,
    )
    record = ProvisionerService(ca.db).create(
        spec,
        _actor(),
        allow_http=ca.settings.oidc_allow_http_issuers,
        known_profiles=ca.settings.profiles,
        known_authorities={a.name for a in ca.list_authorities()},
    )
    if as_json:
        click.echo(json.dumps(api_models.as_json(api_models.provisioner(record)), indent=2))
        return
    _show(record)
    if preset is not None:
        suggested = [c for c in PRESETS[preset].suggested if c not in record.claims]
        if suggested:
            click.echo(f"  (the {preset} preset also suggests rules on: {', '.join(suggested)})")


def _service() -> ProvisionerService:
    _settings()
    db = _database()
    _require_schema(db)
    return ProvisionerService(db)


@provisioner.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def provisioner_list(as_json: bool) -> None:
    """List the provisioners (needs no CA key passphrase)."""
    records = _service().list()
    if as_json:
        listed = [api_models.as_json(api_models.provisioner(r)) for r in records]
        click.echo(json.dumps(listed, indent=2))
        return
    for record in records:
        _show(record)


@provisioner.command("delete")
@click.argument("name")
@handle_errors
def provisioner_delete(name: str) -> None:
    """Delete a provisioner: its tokens are refused from then on."""
    _service().delete(name, _actor())
    click.echo(f"provisioner {name} deleted")
