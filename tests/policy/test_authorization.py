"""The authorization decisions, one place for every front end (issue 10, item 4).

Pure decisions over domain records: the live tests (test_api_authz.py, test_audit_refusals.py,
test_tls_mtls_renew.py) show the API and mutual TLS reach them; these pin each rule down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ca_service.config import MTLSRule
from ca_service.domain import CallerPolicy, CertificateRecord, CertStatus, Role, TokenRecord
from ca_service.errors import BadRequest, Forbidden
from ca_service.policy import authorization
from ca_service.policy.authorization import Renewal

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _token(token_id: str, role: Role) -> TokenRecord:
    return TokenRecord(token_id, token_id, role, CallerPolicy(), "cli:test", NOW, None, None)


def _certificate(
    requester: str, *, authority: str = "default", serial: str = "0a1b"
) -> CertificateRecord:
    return CertificateRecord(
        authority=authority,
        serial=serial,
        subject="CN=a.example.test",
        common_name="a.example.test",
        sans=("dns:a.example.test",),
        key_type="ecdsa-p256",
        profile="client",
        not_before=NOW,
        not_after=NOW + dt.timedelta(days=30),
        status=CertStatus.VALID,
        revoked_at=None,
        revocation_reason=None,
        fingerprint_sha256="00" * 32,
        der=b"",
        requester=requester,
        created_at=NOW,
    )


@dataclass(frozen=True)
class _Certificate:
    """A caller authenticated by a client certificate, as web/mtls.CertificatePrincipal is."""

    identity: str
    role: Role | None


ADMIN = _token("a" * 16, Role.ADMIN)
ISSUER = _token("b" * 16, Role.ISSUER)
OTHER_ISSUER = _token("c" * 16, Role.ISSUER)
READER = _token("d" * 16, Role.READER)


def _rule_of(call: Callable[[], object]) -> str | None:
    with pytest.raises((Forbidden, BadRequest)) as refused:
        call()
    return refused.value.rule


def test_roles_are_ordered_and_a_certificate_without_a_rule_has_none() -> None:
    authorization.check_role(ADMIN, Role.ISSUER)
    authorization.check_role(ISSUER, Role.ISSUER)
    authorization.check_role(ISSUER, Role.READER)
    for caller, needed in [(READER, Role.ISSUER), (ISSUER, Role.ADMIN)]:
        assert _rule_of(lambda: authorization.check_role(caller, needed)) == "caller.role"  # noqa: B023
    unmapped = _Certificate("cert:default/0a1b", None)
    assert _rule_of(lambda: authorization.check_role(unmapped, Role.READER)) == "caller.role"
    with pytest.raises(Forbidden, match=r"^this endpoint needs the admin role$"):
        authorization.check_role(ISSUER, Role.ADMIN)


def test_only_admin_and_reader_tokens_sign_in_to_the_ui() -> None:
    authorization.check_ui_sign_in(ADMIN)
    authorization.check_ui_sign_in(READER)
    assert _rule_of(lambda: authorization.check_ui_sign_in(ISSUER)) == "ui.role"
    unmapped = _Certificate("cert:default/0a1b", None)
    assert _rule_of(lambda: authorization.check_ui_sign_in(unmapped)) == "ui.role"
    with pytest.raises(Forbidden, match=r"^Issuer tokens cannot sign in to the admin UI; "):
        authorization.check_ui_sign_in(ISSUER)


def test_an_issuer_revokes_only_its_own_and_an_admin_any() -> None:
    mine = _certificate(ISSUER.identity)
    assert authorization.revokes_only_own(ISSUER) and authorization.revokes_only_own(READER)
    assert not authorization.revokes_only_own(ADMIN)
    authorization.check_may_revoke(ISSUER.identity, mine, own_only=True)
    authorization.check_may_revoke(ADMIN.identity, mine, own_only=False)

    def refused() -> None:
        authorization.check_may_revoke(OTHER_ISSUER.identity, mine, own_only=True)

    assert _rule_of(refused) == "caller.own_certificates"
    with pytest.raises(Forbidden) as forbidden:
        refused()
    assert forbidden.value.detail == "an issuer token may revoke only the certificates it issued"


def test_renewal_by_itself_an_admin_or_its_issuer_only() -> None:
    mine = _certificate(ISSUER.identity, authority="edge", serial="7f")
    itself = _Certificate(authorization.certificate_identity("edge", "7f"), None)
    assert itself.identity == "cert:edge/7f"
    assert authorization.check_may_renew(itself, mine) is Renewal.SELF
    # Mapped to a role by a rule, it still renews itself under the profile's limits only.
    assert authorization.check_may_renew(_Certificate(itself.identity, Role.ADMIN), mine) is (
        Renewal.SELF
    )
    assert authorization.check_may_renew(ADMIN, mine) is Renewal.CALLER
    assert authorization.check_may_renew(ISSUER, mine) is Renewal.CALLER
    for caller in (
        OTHER_ISSUER,
        READER,
        _token(ISSUER.id, Role.READER),  # the requester, no longer an issuer
        _Certificate("cert:edge/7e", None),  # another certificate of the same authority
        _Certificate("cert:other/7f", Role.ISSUER),  # the same serial of another authority
    ):
        refused = lambda: authorization.check_may_renew(caller, mine)  # noqa: E731, B023
        assert _rule_of(refused) == "caller.own_certificates", caller
    with pytest.raises(Forbidden) as forbidden:
        authorization.check_may_renew(READER, mine)
    assert forbidden.value.detail == (
        "a certificate may be renewed by itself over mutual TLS, an admin, "
        "or the issuer that issued it"
    )


def test_a_token_names_only_profiles_and_authorities_that_exist() -> None:
    profiles, authorities = {"server", "client"}, {"default", "edge"}
    grant = CallerPolicy(profiles=("server", "client"), authorities=("edge",))
    authorization.check_token_targets(grant, profiles, authorities)
    authorization.check_token_targets(CallerPolicy(), set(), set())
    with pytest.raises(BadRequest) as refused:
        authorization.check_token_targets(CallerPolicy(profiles=("nope",)), profiles, authorities)
    assert refused.value.rule == "token.unknown_profile"
    assert refused.value.detail == "unknown profile 'nope' (rule: token.unknown_profile)"
    with pytest.raises(BadRequest) as refused:
        authorization.check_token_targets(
            CallerPolicy(profiles=("server",), authorities=("default", "gone")),
            profiles,
            authorities,
        )
    assert refused.value.rule == "token.unknown_authority"
    assert refused.value.detail == "unknown authority 'gone' (rule: token.unknown_authority)"


def test_a_client_certificate_gets_its_rights_from_its_rule_or_none() -> None:
    assert authorization.certificate_rights(None) == (None, CallerPolicy())
    rule = MTLSRule(
        kind="san",
        value="*.ci.example.test",
        role="issuer",
        allowed_names=("*.build.example.test",),
        profiles=("server",),
        max_validity_days=7,
    )
    role, policy = authorization.certificate_rights(rule)
    assert role is Role.ISSUER
    assert policy == CallerPolicy(
        allowed_names=("*.build.example.test",), profiles=("server",), max_validity_days=7
    )
    every_field = MTLSRule(
        kind="san",
        value="*.ci.example.test",
        role="issuer",
        allowed_names=("*.build.example.test",),
        authorities=("edge",),
        allow_wildcards=True,
        allowed_subjects=("O=Build",),
    )
    assert authorization.certificate_rights(every_field) == (
        Role.ISSUER,
        CallerPolicy(
            allowed_names=("*.build.example.test",),
            authorities=("edge",),
            allow_wildcards=True,
            allowed_subjects=("O=Build",),
        ),
    )
    admin = MTLSRule(kind="profile", value="client", role="admin", issued_by="default")
    assert authorization.certificate_rights(admin) == (Role.ADMIN, CallerPolicy.unrestricted())


def test_a_grant_is_validated_when_it_is_made() -> None:
    assert authorization.build_policy(Role.ADMIN) == CallerPolicy.unrestricted()
    assert authorization.build_policy(Role.READER) == CallerPolicy()
    assert authorization.build_policy(
        Role.ISSUER,
        names=["*.a.example.test"],
        profiles=["client"],
        max_validity_days=1,
        authorities=["edge"],
        subjects=["O=Build"],
    ) == CallerPolicy(
        allowed_names=("*.a.example.test",),
        profiles=("client",),
        max_validity_days=1,
        authorities=("edge",),
        allowed_subjects=("O=Build",),
    )
    admin_detail = "admin tokens are unrestricted; a policy applies to issuer tokens"
    for field, value in [
        ("names", ["*.a.test"]),
        ("profiles", ["server"]),
        ("max_validity_days", 5),
        ("authorities", ["edge"]),
        ("subjects", ["O=Build"]),
    ]:
        with pytest.raises(BadRequest) as refused:
            authorization.build_policy(Role.ADMIN, **{field: value})  # type: ignore[arg-type]
        assert refused.value.detail == admin_detail, field
    with pytest.raises(BadRequest) as refused:
        authorization.build_policy(Role.ISSUER, profiles=["server"])
    assert refused.value.detail == "an issuer token needs at least one allowed name pattern"
    for days in (0, -1, True, 2.5):
        with pytest.raises(BadRequest) as refused:
            authorization.build_policy(
                Role.ISSUER,
                names=["*.a.test"],
                max_validity_days=days,  # type: ignore[arg-type]
            )
        assert refused.value.detail == "max_validity_days must be a positive integer", days
    # Wildcards are granted only when asked for.
    assert not authorization.build_policy(Role.ISSUER, names=["*.a.test"]).allow_wildcards


def test_provisioner_targets_name_their_own_rules() -> None:
    with pytest.raises(BadRequest) as info:
        authorization.check_token_targets(
            CallerPolicy(profiles=("nope",)), {"server"}, set(), kind="provisioner"
        )
    assert info.value.rule == "provisioner.unknown_profile"
    assert "provisioner.unknown_profile" in info.value.detail
    with pytest.raises(BadRequest) as info:
        authorization.check_token_targets(
            CallerPolicy(authorities=("nope",)), set(), {"default"}, kind="provisioner"
        )
    assert info.value.rule == "provisioner.unknown_authority"


@pytest.mark.parametrize("operation", ["issue", "renew"])
def test_an_oidc_caller_may_issue_and_renew(operation: str) -> None:
    authorization.check_oidc_operation(operation)


@pytest.mark.parametrize("operation", [None, "revoke", "list", "", "Issue"])
def test_an_oidc_caller_may_do_nothing_else(operation: str | None) -> None:
    with pytest.raises(Forbidden) as info:
        authorization.check_oidc_operation(operation)
    assert info.value.rule == "oidc.operation"
    # The caller reads this line: it says what an ID token may do, in its exact words.
    assert info.value.detail == "an OIDC ID token may only issue certificates and renew its own"
