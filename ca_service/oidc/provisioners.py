"""OIDC provisioners: validated when made (so a typo fails then, not at use), stored in the
database (every replica sees the same ones), deleted; each change audited."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ca_service.clock import Clock, SystemClock
from ca_service.domain import Actor, AuditEvent, ProvisionerRecord, Role
from ca_service.errors import BadRequest, Conflict, NotFound
from ca_service.oidc.names import check_template
from ca_service.policy import authorization
from ca_service.storage.db import Database, DuplicateRow, unit_of_work
from ca_service.storage.oidc import ProvisionerRepository
from ca_service.storage.repositories import AuditRepository

# A provisioner's name is part of the identity of every caller it admits,
# ``oidc:<provisioner>:<sub>``, so it holds no ':'.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CLAIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_PATTERNS = 64


@dataclass(frozen=True)
class Preset:
    """Known CI issuers: their issuer URL, and the claims one of which a provisioner must
    restrict. Without that, every repository on github.com (every project on gitlab.com) could
    present a token this provisioner accepts."""

    issuer: str | None
    must_restrict: tuple[str, ...]
    suggested: tuple[str, ...]


PRESETS: dict[str, Preset] = {
    "github-actions": Preset(
        issuer="https://token.actions.githubusercontent.com",
        must_restrict=("repository", "repository_owner", "repository_id", "repository_owner_id"),
        suggested=("repository", "ref", "environment", "job_workflow_ref"),
    ),
    "gitlab": Preset(
        issuer="https://gitlab.com",
        must_restrict=("project_path", "namespace_path", "project_id", "namespace_id"),
        suggested=("project_path", "ref", "ref_protected", "ref_type"),
    ),
}


@dataclass(frozen=True)
class ProvisionerSpec:
    """A provisioner as asked for (the API's body or the CLI's options), not yet checked."""

    name: str
    audience: str
    allowed_names: tuple[str, ...]
    issuer: str | None = None
    type: str = "oidc"
    jwks_uri: str | None = None
    claims: Mapping[str, Any] | None = None
    profiles: tuple[str, ...] | None = None
    max_validity_days: int | None = None
    authorities: tuple[str, ...] | None = None
    preset: str | None = None


def check_url(what: str, url: str, *, allow_http: bool) -> str:
    """An issuer or JWKS URL: https (http only with oidc_allow_http_issuers), a host, no
    query, fragment or credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise BadRequest(f"{what} {url[:200]!r} is not a URL") from None
    if parts.scheme != "https" and not (allow_http and parts.scheme == "http"):
        raise BadRequest(
            f"{what} {url!r} must be an https URL (rule: provisioner.https)",
            rule="provisioner.https",
        )
    if not host or parts.query or parts.fragment or parts.username or len(url) > 512:
        raise BadRequest(
            f"{what} {url!r} must be a URL with a host and no query, fragment or credentials, "
            "of at most 512 characters"
        )
    return url


def _claims(raw: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BadRequest("claims must map each claim name to a pattern or a list of patterns")
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _CLAIM.match(key):
            raise BadRequest(f"claim name {str(key)[:64]!r} is not a claim name")
        patterns = [value] if isinstance(value, str) else value
        if (
            not isinstance(patterns, list)
            or not 1 <= len(patterns) <= MAX_PATTERNS
            or not all(isinstance(p, str) and p and len(p) <= 512 for p in patterns)
        ):
            raise BadRequest(
                f"claim {key!r}: a pattern is a non-empty string, or a list of 1 to "
                f"{MAX_PATTERNS} of them"
            )
        out[key] = tuple(patterns)
    return out


def check_spec(
    spec: ProvisionerSpec,
    *,
    allow_http: bool,
    known_profiles: Collection[str],
    known_authorities: Collection[str],
) -> ProvisionerSpec:
    """The spec with the preset applied and every field checked; BadRequest naming the field."""
    if not _NAME.match(spec.name):
        raise BadRequest("a provisioner name is 1 to 64 of a-z 0-9 . _ -, starting alphanumeric")
    if spec.type != "oidc":
        raise BadRequest(f"unknown provisioner type {spec.type[:32]!r}; the one type is 'oidc'")
    preset = None
    if spec.preset is not None:
        preset = PRESETS.get(spec.preset)
        if preset is None:
            raise BadRequest(f"unknown preset {spec.preset[:32]!r}; known: {sorted(PRESETS)}")
    issuer = spec.issuer or (preset.issuer if preset else None)
    if not issuer:
        raise BadRequest("a provisioner needs an issuer")
    check_url("issuer", issuer, allow_http=allow_http)
    if spec.jwks_uri is not None:
        check_url("jwks_uri", spec.jwks_uri, allow_http=allow_http)
    if not isinstance(spec.audience, str) or not 1 <= len(spec.audience) <= 512:
        raise BadRequest("audience must be 1 to 512 characters")
    claims = _claims(spec.claims)
    if preset is not None and not any(c in claims for c in preset.must_restrict):
        raise BadRequest(
            f"the {spec.preset} preset needs a claim rule on one of "
            f"{list(preset.must_restrict)}; without it every project of the issuer could get "
            "these names (rule: provisioner.preset_claims)",
            rule="provisioner.preset_claims",
        )
    if not spec.allowed_names or len(spec.allowed_names) > MAX_PATTERNS:
        raise BadRequest(f"allowed_names needs 1 to {MAX_PATTERNS} patterns")
    allowed = tuple(check_template(p) for p in spec.allowed_names)
    policy = authorization.build_policy(
        Role.ISSUER,
        names=["x.invalid"],  # placeholders were checked above; the rest is the token rules
        profiles=list(spec.profiles) if spec.profiles else None,
        max_validity_days=spec.max_validity_days,
        authorities=list(spec.authorities) if spec.authorities else None,
    )
    authorization.check_token_targets(policy, known_profiles, known_authorities, kind="provisioner")
    return ProvisionerSpec(
        name=spec.name,
        audience=spec.audience,
        allowed_names=allowed,
        issuer=issuer,
        jwks_uri=spec.jwks_uri,
        claims=claims,
        profiles=policy.profiles,
        max_validity_days=policy.max_validity_days,
        authorities=policy.authorities,
        preset=spec.preset,
    )


class ProvisionerService:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()

    def create(
        self,
        spec: ProvisionerSpec,
        actor: Actor,
        *,
        allow_http: bool,
        known_profiles: Collection[str],
        known_authorities: Collection[str],
    ) -> ProvisionerRecord:
        checked = check_spec(
            spec,
            allow_http=allow_http,
            known_profiles=known_profiles,
            known_authorities=known_authorities,
        )
        assert checked.issuer is not None and checked.claims is not None
        now = self.clock.now()
        record = ProvisionerRecord(
            name=checked.name,
            type="oidc",
            issuer=checked.issuer,
            audience=checked.audience,
            jwks_uri=checked.jwks_uri,
            claims=dict(checked.claims),
            allowed_names=checked.allowed_names,
            profiles=checked.profiles,
            max_validity_days=checked.max_validity_days,
            authorities=checked.authorities,
            created_by=actor.identity,
            created_at=now,
        )
        try:
            with unit_of_work(self.db, write=True) as s:
                ProvisionerRepository(s).add(record)
                AuditRepository(s).add(
                    AuditEvent.of(
                        actor,
                        "provisioner.create",
                        f"provisioner:{record.name}",
                        now,
                        {
                            "issuer": record.issuer,
                            "audience": record.audience,
                            "claims": {k: list(v) for k, v in record.claims.items()},
                            "allowed_names": list(record.allowed_names),
                            "preset": checked.preset,
                        },
                    )
                )
        except DuplicateRow:
            raise Conflict(
                f"a provisioner named {record.name!r} exists (rule: provisioner.exists)",
                rule="provisioner.exists",
            ) from None
        return record

    def list(self) -> list[ProvisionerRecord]:
        with unit_of_work(self.db) as s:
            return ProvisionerRepository(s).all()

    def get(self, name: str) -> ProvisionerRecord:
        with unit_of_work(self.db) as s:
            found = ProvisionerRepository(s).get(name)
        if found is None:
            raise NotFound(f"no provisioner named {name[:64]!r}")
        return found

    def delete(self, name: str, actor: Actor) -> ProvisionerRecord:
        now = self.clock.now()
        with unit_of_work(self.db, write=True) as s:
            found = ProvisionerRepository(s).delete(name)
            if found is None:
                raise NotFound(f"no provisioner named {name[:64]!r}")
            AuditRepository(s).add(
                AuditEvent.of(actor, "provisioner.delete", f"provisioner:{name}", now)
            )
        return found
