"""Issue item 5: the pure policy step, with no key store and no database."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca_service.crypto.names import parse_name
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType, NameKind
from ca_service.errors import BadRequest, ConfigError, PolicyRejected
from ca_service.policy.check import BACKDATE, AuthorityView, check
from ca_service.policy.names import NameConstraintsSpec, matches_pattern, validate_pattern
from ca_service.policy.profiles import DEFAULT_PROFILES, load_profiles

NOW = dt.datetime(2031, 5, 1, 8, 0, tzinfo=dt.UTC)
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
CALLER = CallerPolicy(allowed_names=("*.dev.example.test", "10.0.0.0/8"))


def authority(
    constraints: NameConstraintsSpec | None = None, not_after: dt.datetime | None = None
) -> AuthorityView:
    return AuthorityView(
        name="default",
        not_after=not_after or NOW + dt.timedelta(days=1000),
        constraints=constraints or NameConstraintsSpec(),
        crl_url="http://ca.test/ca/default/crl",
        ca_issuers_url="http://ca.test/ca/default/ca.cer",
        ocsp_url="http://ca.test/ocsp",
    )


def request(
    *names: str,
    cn: str | None = None,
    profile: str = "server",
    days: int | None = None,
    key_type: KeyType = KeyType.ECDSA_P256,
) -> IssuanceRequest:
    return IssuanceRequest(
        public_key=PUBLIC_KEY,
        key_type=key_type,
        common_name=cn,
        names=tuple(parse_name(n) for n in names),
        profile=profile,
        validity_days=days,
    )


def run_check(
    req: IssuanceRequest,
    caller: CallerPolicy = CALLER,
    view: AuthorityView | None = None,
    profiles: object = None,
):  # type: ignore[no-untyped-def]
    return check(req, profiles or DEFAULT_PROFILES, view or authority(), caller, NOW, 12345)


def rule_of(req: IssuanceRequest, **kwargs: object) -> str:
    with pytest.raises(PolicyRejected) as info:
        run_check(req, **kwargs)  # type: ignore[arg-type]
    assert info.value.rule and f"(rule: {info.value.rule})" in str(info.value)
    return info.value.rule


# ---------------------------------------------------------------------------- caller patterns


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("a.dev.example.test", "*.dev.example.test", True),
        ("a.b.dev.example.test", "*.dev.example.test", True),
        ("dev.example.test", "*.dev.example.test", False),
        ("adev.example.test", "*.dev.example.test", False),
        ("A.Dev.Example.Test", "*.dev.example.test", True),
        ("host.example.test", "host.example.test", True),
        ("other.example.test", "host.example.test", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("11.0.0.1", "10.0.0.0/8", False),
        ("::ffff:10.0.0.1", "10.0.0.0/8", False),
        ("2001:db8::5", "2001:db8::/32", True),
        ("email:ops@example.test", "*@example.test", True),
        ("email:ops@sub.example.test", "*@example.test", False),
        ("email:ops@example.test", "ops@example.test", True),
        ("email:dev@example.test", "ops@example.test", False),
        ("uri:spiffe://cluster/ns/a", "spiffe://cluster/*", True),
        ("uri:spiffe://other/ns/a", "spiffe://cluster/*", False),
        ("10.1.2.3", "*.dev.example.test", False),
        ("a.dev.example.test", "10.0.0.0/8", False),
    ],
)
def test_matches_pattern(name: str, pattern: str, expected: bool) -> None:
    assert matches_pattern(parse_name(name), pattern) is expected


def test_caller_allowed_names_approve_inside() -> None:
    template = run_check(request("api.dev.example.test", "10.20.30.40", cn="api.dev.example.test"))
    assert [str(n) for n in template.names] == ["dns:api.dev.example.test", "ip:10.20.30.40"]


@pytest.mark.parametrize(
    "names",
    [
        ("prod.example.test",),
        ("api.dev.example.test", "192.168.1.1"),
        ("dev.example.test",),
        ("api.dev.example.test", "email:ops@dev.example.test"),
    ],
)
def test_caller_allowed_names_refuse_outside(names: tuple[str, ...]) -> None:
    assert rule_of(request(*names)) == "caller.allowed_names"


def test_common_name_counts_as_a_name_for_caller_policy() -> None:
    # The CN is copied into the SAN, so it must pass the same patterns.
    assert rule_of(request("a.dev.example.test", cn="evil.example.test")) == "caller.allowed_names"


# ---------------------------------------------------------------------------- wildcards


def test_wildcard_refused_by_default_profiles() -> None:
    assert rule_of(request("*.dev.example.test")) == "profile.wildcards"


def test_wildcard_needs_profile_and_caller() -> None:
    profiles = load_profiles({"server": {"allow_wildcards": True}})
    strict = CallerPolicy(allowed_names=("*.dev.example.test",), allow_wildcards=False)
    assert rule_of(request("*.dev.example.test"), profiles=profiles, caller=strict) == (
        "caller.wildcards"
    )
    loose = CallerPolicy(allowed_names=("*.dev.example.test",), allow_wildcards=True)
    template = run_check(request("*.dev.example.test"), caller=loose, profiles=profiles)
    assert template.names[0].value == "*.dev.example.test"
    # A wildcard one level above the allowed pattern covers names the caller may not have.
    assert rule_of(request("*.example.test"), caller=loose, profiles=profiles) == (
        "caller.allowed_names"
    )


# ---------------------------------------------------------------------------- name constraints


CONSTRAINED = NameConstraintsSpec.parse(
    ["example.test", "10.0.0.0/8", "@example.test"], ["secret.example.test", "10.66.0.0/16"]
)


@pytest.mark.parametrize(
    "names",
    [("a.example.test",), ("example.test",), ("10.1.1.1",), ("email:x@mail.example.test",)],
)
def test_name_constraints_permit(names: tuple[str, ...]) -> None:
    unrestricted = CallerPolicy.unrestricted()
    template = run_check(
        request(*names, cn="a.example.test"), caller=unrestricted, view=authority(CONSTRAINED)
    )
    assert template.names


@pytest.mark.parametrize(
    "name",
    [
        "example.org",
        "notexample.test",
        "x.secret.example.test",
        "secret.example.test",
        "192.168.0.1",
        "10.66.1.1",
        "email:x@example.org",
    ],
)
def test_name_constraints_refuse(name: str) -> None:
    req = request(name, cn="a.example.test")
    view = authority(CONSTRAINED)
    assert rule_of(req, caller=CallerPolicy.unrestricted(), view=view) == (
        "authority.name_constraints"
    )


@pytest.mark.parametrize("bad", ["*.example.test", "10.0.0.1/8", "exa mple.test", "10.0.0.0/33"])
def test_name_constraint_syntax_refused(bad: str) -> None:
    with pytest.raises(BadRequest):
        NameConstraintsSpec.parse([bad])


def test_name_constraints_round_trip_json() -> None:
    assert NameConstraintsSpec.from_json(CONSTRAINED.to_json()) == CONSTRAINED
    assert NameConstraintsSpec.from_json(None).empty


# ---------------------------------------------------------------------------- validity


def test_validity_default_backdate_and_profile_cap() -> None:
    template = run_check(request("a.dev.example.test"))
    assert template.not_before == NOW - BACKDATE == NOW - dt.timedelta(seconds=60)
    assert template.not_after == NOW + dt.timedelta(days=90)
    assert rule_of(request("a.dev.example.test", days=398)) == "profile.max_validity"
    assert run_check(request("a.dev.example.test", days=397)).not_after == NOW + dt.timedelta(
        days=397
    )


def test_validity_caller_cap_and_authority_end() -> None:
    short = CallerPolicy(allowed_names=("*.dev.example.test",), max_validity_days=30)
    assert run_check(request("a.dev.example.test"), caller=short).not_after == (
        NOW + dt.timedelta(days=30)
    )
    assert rule_of(request("a.dev.example.test", days=31), caller=short) == "caller.max_validity"
    ending = authority(not_after=NOW + dt.timedelta(days=10))
    assert run_check(request("a.dev.example.test"), view=ending).not_after == ending.not_after
    assert rule_of(request("a.dev.example.test"), view=authority(not_after=NOW)) == (
        "authority.expired"
    )


@pytest.mark.parametrize("days", [0, -5])
def test_validity_must_be_positive(days: int) -> None:
    with pytest.raises(BadRequest):
        run_check(request("a.dev.example.test", days=days))


# ---------------------------------------------------------------------------- profiles, key types


def test_key_types_capped_by_profile() -> None:
    profiles = load_profiles({"server": {"key_types": ["ecdsa-p384", "ed25519"]}})
    req = request("a.dev.example.test", key_type=KeyType.ECDSA_P256)
    assert rule_of(req, profiles=profiles) == "profile.key_types"
    ok = request("a.dev.example.test", key_type=KeyType.ED25519)
    assert run_check(ok, profiles=profiles).key_type is KeyType.ED25519


def test_profile_ekus() -> None:
    names = ("a.dev.example.test",)
    for profile, ekus in {"server": 1, "client": 1, "peer": 2}.items():
        template = run_check(request(*names, profile=profile))
        assert len(template.extended_key_usages) == ekus
        assert template.profile == profile


@pytest.mark.parametrize(
    ("req", "caller", "rule"),
    [
        (request("a.dev.example.test", profile="nope"), CALLER, "profile.unknown"),
        (
            request("a.dev.example.test", profile="peer"),
            CallerPolicy(profiles=("server",)),
            "caller.profiles",
        ),
        (request("a.dev.example.test"), CallerPolicy(authorities=("other",)), "caller.authorities"),
        (request(cn="Just A Display Name"), CallerPolicy(), "subject.common_name"),
        (request("email:a@dev.example.test"), CallerPolicy(), "profile.require_dns_or_ip"),
        (request(profile="client"), CallerPolicy(), "subject.empty"),
        (request(*(f"h{i}.dev.example.test" for i in range(101))), CALLER, "names.max"),
    ],
)
def test_refusal_names_the_rule(req: IssuanceRequest, caller: CallerPolicy, rule: str) -> None:
    assert rule_of(req, caller=caller) == rule


def test_client_profile_accepts_display_name_and_email() -> None:
    template = run_check(
        request("email:alice@example.test", cn="Alice Example", profile="client"),
        caller=CallerPolicy(),
    )
    assert template.common_name == "Alice Example"
    assert [n.kind for n in template.names] == [NameKind.EMAIL]


@pytest.mark.parametrize("cn", ["x" * 65, "bad\x00cn"])
def test_bad_common_names(cn: str) -> None:
    with pytest.raises(BadRequest):
        run_check(request("a.dev.example.test", cn=cn, profile="client"), caller=CallerPolicy())


def test_check_is_pure_same_inputs_same_template() -> None:
    req = request("a.dev.example.test", "10.1.1.1", cn="a.dev.example.test")
    assert run_check(req) == run_check(req)


def test_bad_profile_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_profiles({"server": {"max_validity_days": 10, "default_validity_days": 20}})
    with pytest.raises(ConfigError):
        load_profiles({"custom": {"extended_key_usages": ["codeSigning"]}})


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [("*.Dev.Example.Test", "*.dev.example.test"), ("10.1.2.3/8", "10.0.0.0/8")],
)
def test_validate_pattern(pattern: str, normal: str) -> None:
    assert validate_pattern(pattern) == normal
    with pytest.raises(BadRequest):
        validate_pattern("  ")


@pytest.mark.parametrize("pattern", ["*.*.example.test", "a.*.example.test", "*example.test"])
def test_pattern_with_inner_wildcard_is_refused(pattern: str) -> None:
    with pytest.raises(BadRequest, match="leftmost label"):
        validate_pattern(pattern)
