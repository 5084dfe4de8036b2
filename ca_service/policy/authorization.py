"""Who may do what: every authorization decision of the service, made here once for every
front end (the HTTP API, the CLI, mutual TLS; next ACME and OIDC).

A front end turns its credential into a caller (a token record, a client certificate's
principal, the local operator) and asks here before it acts; each decision returns, or raises
the refusal (``Forbidden``, or ``BadRequest`` for a grant that names nothing) with the ``rule``
it broke. The decisions are pure: no I/O, no Flask, no SQL, so that two front ends cannot come
to different answers by reading different state. The refusal reaches the audit log where it is
raised, through ca_service.refusals.RefusalLog, once: web/auth.require for a request's
refusals, the core's refusal guard for those raised inside the core.

What a caller may put in a certificate (names, profiles, validity) is policy/check.py's
business; this module decides which caller may act at all, on what, and with which grant.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Protocol

from ca_service.domain import CallerPolicy, CertificateRecord, Role
from ca_service.errors import BadRequest, Forbidden
from ca_service.policy.names import validate_pattern, validate_subject_pattern


class Caller(Protocol):
    """What a decision needs of an authenticated caller (a token or a client certificate)."""

    @property
    def identity(self) -> str: ...

    @property
    def role(self) -> Role | None: ...


def check_role(caller: Caller, needed: Role) -> None:
    """Roles are ordered (admin > issuer > reader); a certificate no rule maps has no role."""
    if caller.role is None or not caller.role.allows(needed):
        raise Forbidden(f"this endpoint needs the {needed.value} role", rule="caller.role")


# Who may sign in to the admin web UI: the people who look (reader) and revoke (admin). An
# issuer token belongs to a pipeline; a session would hand its holder a browser view of every
# certificate and keep working after the pipeline's job is done.
UI_ROLES = frozenset({Role.ADMIN, Role.READER})


def check_ui_sign_in(caller: Caller) -> None:
    """Only admin and reader tokens open a UI session (what each may then do: check_role)."""
    if caller.role not in UI_ROLES:
        raise Forbidden(
            "Issuer tokens cannot sign in to the admin UI; use an admin or reader token.",
            rule="ui.role",
        )


def revokes_only_own(caller: Caller) -> bool:
    """Whether ``caller`` may revoke only the certificates it requested: all but admins."""
    return caller.role is not Role.ADMIN


def check_may_revoke(actor_identity: str, record: CertificateRecord, *, own_only: bool) -> None:
    """An issuer revokes only what it requested (``own_only``, see ``revokes_only_own``):
    otherwise one leaked issuer token could revoke every certificate of the CA."""
    if own_only and record.requester != actor_identity:
        raise Forbidden(
            "an issuer token may revoke only the certificates it issued",
            rule="caller.own_certificates",
        )


def certificate_identity(authority: str, serial: str) -> str:
    """The identity of a caller authenticated by the certificate ``authority``/``serial``."""
    return f"cert:{authority}/{serial}"


class Renewal(enum.Enum):
    """Whose limits a permitted renewal is issued under."""

    # The certificate renews itself over mutual TLS, whatever role a rule maps it to: the core
    # keeps its names, profile and authority, so only the profile's limits apply.
    SELF = "self"
    # An admin, or the issuer that requested it: the caller's own policy applies.
    CALLER = "caller"


def check_may_renew(caller: Caller, record: CertificateRecord) -> Renewal:
    """A certificate may be renewed by itself over mutual TLS, an admin, or its issuer.

    Being the certificate is told by identity: a client certificate's principal is named
    ``certificate_identity`` of its own record, and no token identity has that form."""
    if caller.identity == certificate_identity(record.authority, record.serial):
        return Renewal.SELF
    if caller.role is Role.ADMIN or (
        caller.role is Role.ISSUER and record.requester == caller.identity
    ):
        return Renewal.CALLER
    raise Forbidden(
        "a certificate may be renewed by itself over mutual TLS, an admin, "
        "or the issuer that issued it",
        rule="caller.own_certificates",
    )


def build_policy(
    role: Role,
    *,
    names: list[str] | None = None,
    profiles: list[str] | None = None,
    max_validity_days: int | None = None,
    authorities: list[str] | None = None,
    allow_wildcards: bool = False,
    subjects: list[str] | None = None,
) -> CallerPolicy:
    """Validate a grant (a token's policy, an ``[[mtls]]`` rule's) when it is made, so that a
    typo fails then and not at use."""
    if role is Role.ADMIN:
        if names or profiles or max_validity_days or authorities or subjects:
            raise BadRequest("admin tokens are unrestricted; a policy applies to issuer tokens")
        return CallerPolicy.unrestricted()
    if role is Role.ISSUER and not names:
        raise BadRequest("an issuer token needs at least one allowed name pattern")
    if max_validity_days is not None and (
        isinstance(max_validity_days, bool)
        or not isinstance(max_validity_days, int)
        or max_validity_days < 1
    ):
        raise BadRequest("max_validity_days must be a positive integer")
    return CallerPolicy(
        allowed_names=tuple(validate_pattern(n) for n in names) if names else None,
        profiles=tuple(profiles) if profiles else None,
        max_validity_days=max_validity_days,
        authorities=tuple(authorities) if authorities else None,
        allow_wildcards=allow_wildcards,
        allowed_subjects=tuple(validate_subject_pattern(p) for p in subjects) if subjects else None,
    )


def check_token_targets(
    policy: CallerPolicy,
    known_profiles: Collection[str],
    known_authorities: Collection[str],
    *,
    kind: str = "token",
) -> None:
    """A new token (or OIDC provisioner: ``kind``) may name only profiles and authorities that
    exist: one naming a typo would be stored, shown as restricted, and refuse every issuance
    it was made for."""
    for profile in policy.profiles or ():
        if profile not in known_profiles:
            raise BadRequest(
                f"unknown profile {profile!r} (rule: {kind}.unknown_profile)",
                rule=f"{kind}.unknown_profile",
            )
    for name in policy.authorities or ():
        if name not in known_authorities:
            raise BadRequest(
                f"unknown authority {name!r} (rule: {kind}.unknown_authority)",
                rule=f"{kind}.unknown_authority",
            )


# The only endpoints a caller authenticated by an OIDC ID token may call: a pipeline's token
# proves which job runs, not that it may read the CA's records or manage it.
OIDC_OPERATIONS = frozenset({"issue", "renew"})


def check_oidc_operation(operation: str | None) -> None:
    """An OIDC principal may issue and renew (its own certificates, ``check_may_renew``),
    nothing else."""
    if operation not in OIDC_OPERATIONS:
        raise Forbidden(
            "an OIDC ID token may only issue certificates and renew its own",
            rule="oidc.operation",
        )


class Grant(Protocol):
    """What an ``[[mtls]]`` rule (ca_service.config.MTLSRule) grants the certificates it
    matches; a protocol, so that policy does not depend on the settings loader above it."""

    @property
    def role(self) -> str: ...
    @property
    def allowed_names(self) -> tuple[str, ...] | None: ...
    @property
    def profiles(self) -> tuple[str, ...] | None: ...
    @property
    def max_validity_days(self) -> int | None: ...
    @property
    def authorities(self) -> tuple[str, ...] | None: ...
    @property
    def allow_wildcards(self) -> bool: ...
    @property
    def allowed_subjects(self) -> tuple[str, ...] | None: ...


def certificate_rights(rule: Grant | None) -> tuple[Role | None, CallerPolicy]:
    """The role and policy a client certificate gets from the first ``[[mtls]]`` rule it
    matches; with none, no role and no policy: it may only renew itself (``check_may_renew``)."""
    if rule is None:
        return None, CallerPolicy()
    role = Role(rule.role)
    policy = build_policy(
        role,
        names=list(rule.allowed_names) if rule.allowed_names else None,
        profiles=list(rule.profiles) if rule.profiles else None,
        max_validity_days=rule.max_validity_days,
        authorities=list(rule.authorities) if rule.authorities else None,
        allow_wildcards=rule.allow_wildcards,
        subjects=list(rule.allowed_subjects) if rule.allowed_subjects else None,
    )
    return role, policy


def check_acme_may_revoke(
    account_identity: str | None,
    record: CertificateRecord,
    *,
    signed_by_certificate_key: bool,
    authorized_for_all_names: bool,
) -> None:
    """RFC 8555 section 7.6: a certificate is revoked over ACME by the account that ordered
    it, by an account holding valid authorizations for every one of its names, or by a
    request signed with the certificate's own key (whoever holds it may kill it)."""
    if signed_by_certificate_key:
        return
    if account_identity is not None and (
        record.requester == account_identity or authorized_for_all_names
    ):
        return
    raise Forbidden(
        "this account neither ordered the certificate nor holds authorizations for all of "
        "its names; sign with the certificate's key instead",
        rule="acme.revoke_not_authorized",
    )
