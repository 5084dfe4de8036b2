"""``ca-service token``: API tokens (create, list, revoke); a secret is printed once only."""

from __future__ import annotations

import datetime as dt

import click

from ca_service.cli.context import _actor, _authority
from ca_service.cli.output import handle_errors
from ca_service.policy import authorization
from ca_service.tokens import Role, TokenService, build_policy


@click.group()
def token() -> None:
    """API tokens: create, list, revoke."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. 'ci-builds'.")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option(
    "--names",
    multiple=True,
    help="Allowed name pattern (issuer): host, *.domain, CIDR, *@domain. Repeatable.",
)
@click.option("--profile", "profiles", multiple=True, help="Allowed profile. Repeatable.")
@click.option("--max-days", type=click.IntRange(1, None), help="Longest validity it may ask for.")
@click.option("--authority", "authorities", multiple=True, help="Allowed authority. Repeatable.")
@click.option("--allow-wildcards", is_flag=True)
@click.option(
    "--subject",
    "subjects",
    multiple=True,
    help="Allowed subject value besides a CN repeating a SAN (issuer): ATTR=glob, e.g. "
    "CN=build-*. Repeatable.",
)
@click.option(
    "--expires", type=click.IntRange(1, 3650), metavar="DAYS", help="Token lifetime in days."
)
@handle_errors
def token_create(
    name: str,
    role: str,
    names: tuple[str, ...],
    profiles: tuple[str, ...],
    max_days: int | None,
    authorities: tuple[str, ...],
    allow_wildcards: bool,
    subjects: tuple[str, ...],
    expires: int | None,
) -> None:
    """Create a token and print it once."""
    ca = _authority()
    r = Role(role)
    policy = build_policy(
        r,
        names=list(names) or None,
        profiles=list(profiles) or None,
        max_validity_days=max_days,
        authorities=list(authorities) or None,
        allow_wildcards=allow_wildcards,
        subjects=list(subjects) or None,
    )
    # The same decision as POST /api/v1/tokens: a token names only profiles and CAs that exist.
    authorization.check_token_targets(
        policy, ca.settings.profiles, {a.name for a in ca.list_authorities()}
    )
    expires_at = ca.clock.now() + dt.timedelta(days=expires) if expires else None
    plain, record = TokenService(ca.db).create(name, r, policy, _actor(), expires_at=expires_at)
    click.echo(plain)
    click.echo(
        f"token id {record.id}, role {record.role}"
        + (f", expires {record.expires_at:%Y-%m-%d}" if record.expires_at else ""),
        err=True,
    )


@token.command("list")
@handle_errors
def token_list() -> None:
    """List tokens (never their secrets)."""
    ca = _authority()
    now = ca.clock.now()
    for t in TokenService(ca.db).list():
        names = ",".join(t.policy.allowed_names or ()) or "-"
        click.echo(f"{t.id}  {t.role.value:7} {t.state(now):8} {t.name}  names={names}")


@token.command("revoke")
@click.argument("token_id")
@handle_errors
def token_revoke(token_id: str) -> None:
    """Revoke a token at once."""
    ca = _authority()
    TokenService(ca.db).revoke(token_id, _actor())
    click.echo(f"token {token_id} revoked")
