"""Issue 9 item 11: the policy code's contract, pinned down where mutation testing found it loose
(tests/MUTATION.md). Each test states a behaviour a user sees: the exact refusal a caller reads,
the boundaries of each limit, every field of an approved template, every profile key. All pure
and in-process, so that `mutmut run` can afford to run them for every mutant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_service.crypto.names import parse_name
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType, NameKind, SubjectName
from ca_service.errors import BadRequest, CAError, ConfigError, PolicyRejected
from ca_service.policy.check import (
    BACKDATE,
    MAX_COMMON_NAME,
    MAX_NAMES,
    AuthorityView,
    check,
    leaf_key_usages,
    responder_template,
)
from ca_service.policy.names import (
    NameConstraintsSpec,
    matches_pattern,
    subject_value_allowed,
    validate_pattern,
    validate_subject_pattern,
)
from ca_service.policy.profiles import (
    ALL_KEY_TYPES,
    DEFAULT_PROFILES,
    Profile,
    load_profiles,
    profile_from_mapping,
)

NOW = dt.datetime(2031, 5, 1, 8, 0, tzinfo=dt.UTC)
EC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
CI = CallerPolicy(allowed_names=("*.ci.example.test",))
ADMIN = CallerPolicy.unrestricted()


def view(
    constraints: NameConstraintsSpec | None = None, not_after: dt.datetime | None = None
) -> AuthorityView:
    return AuthorityView(
        name="issuing",
        not_after=not_after or NOW + dt.timedelta(days=900),
        constraints=constraints or NameConstraintsSpec(),
        crl_url="http://ca.test/ca/issuing/crl",
        ca_issuers_url="http://ca.test/ca/issuing/ca.cer",
        ocsp_url="http://ca.test/ocsp",
    )


def req(
    *names: str,
    cn: str | None = None,
    profile: str = "server",
    days: int | None = None,
    key_type: KeyType = KeyType.ECDSA_P256,
) -> IssuanceRequest:
    public_key = RSA_KEY if key_type is KeyType.RSA_2048 else EC_KEY
    return IssuanceRequest(
        public_key=public_key,
        key_type=key_type,
        common_name=cn,
        names=tuple(parse_name(n) for n in names),
        profile=profile,
        validity_days=days,
    )


def run(
    request: IssuanceRequest,
    caller: CallerPolicy = ADMIN,
    authority: AuthorityView | None = None,
    profiles: Any = None,
) -> Any:
    return check(request, profiles or DEFAULT_PROFILES, authority or view(), caller, NOW, 4242)


def detail_of(action: Callable[[], object]) -> str:
    with pytest.raises(CAError) as info:
        action()
    return info.value.detail


# ---------------------------------------------------------------------------- what a caller reads

WILDCARD_PROFILES = load_profiles({"server": {"allow_wildcards": True}})
CONSTRAINED = NameConstraintsSpec.parse(["example.test"], ["secret.example.test"])

REFUSALS: list[tuple[str, Callable[[], object], str]] = [
    (
        "profile.unknown",
        lambda: run(req("a.example.test", profile="nope")),
        "unknown profile 'nope'; known: client, peer, server (rule: profile.unknown)",
    ),
    (
        "caller.profiles",
        lambda: run(req("a.example.test"), CallerPolicy(profiles=("client",))),
        "profile 'server' is not allowed (rule: caller.profiles)",
    ),
    (
        "caller.authorities",
        lambda: run(req("a.example.test"), CallerPolicy(authorities=("other",))),
        "authority 'issuing' is not allowed (rule: caller.authorities)",
    ),
    (
        "profile.key_types",
        lambda: run(
            req("a.example.test", key_type=KeyType.RSA_2048),
            profiles=load_profiles({"server": {"key_types": ["ed25519"]}}),
        ),
        "key type rsa-2048 is not allowed by profile 'server' (rule: profile.key_types)",
    ),
    (
        "cn.length",
        lambda: run(req(cn="a" * 65, profile="client")),
        "the common name is longer than 64 characters",
    ),
    (
        "subject.common_name",
        lambda: run(req(cn="Ops Team")),
        "the common name 'Ops Team' is not a DNS name or IP address (rule: subject.common_name)",
    ),
    (
        "names.max",
        lambda: run(req(*(f"h{i}.example.test" for i in range(101)))),
        "more than 100 names (rule: names.max)",
    ),
    (
        "subject.empty",
        lambda: run(req(profile="client")),
        "the request names no subject (rule: subject.empty)",
    ),
    (
        "profile.require_dns_or_ip",
        lambda: run(req("email:a@example.test", profile="peer")),
        "profile 'peer' needs at least one DNS name or IP address "
        "(rule: profile.require_dns_or_ip)",
    ),
    (
        "profile.wildcards",
        lambda: run(req("*.a.example.test")),
        "wildcard name '*.a.example.test' is not allowed (rule: profile.wildcards)",
    ),
    (
        "caller.wildcards",
        lambda: run(req("*.a.example.test"), CallerPolicy(), profiles=WILDCARD_PROFILES),
        "wildcard name '*.a.example.test' is not allowed (rule: caller.wildcards)",
    ),
    (
        "names.public_suffix_wildcard",
        lambda: run(req("*.co.uk"), profiles=WILDCARD_PROFILES),
        "wildcard name '*.co.uk' covers a public suffix or a top-level domain "
        "(rule: names.public_suffix_wildcard)",
    ),
    (
        "authority.name_constraints",
        lambda: run(req("a.secret.example.test"), authority=view(CONSTRAINED)),
        "dns:a.secret.example.test is in an excluded subtree (rule: authority.name_constraints)",
    ),
    (
        "caller.allowed_names",
        lambda: run(req("www.bank.example"), CI),
        "dns:www.bank.example is outside the names this caller may request "
        "(rule: caller.allowed_names)",
    ),
    (
        "caller.allowed_subjects",
        lambda: run(req("a.ci.example.test", cn="Ops, Team", profile="client"), CI),
        "subject 'CN=Ops\\\\, Team' is outside the subjects this caller may request "
        "(rule: caller.allowed_subjects)",
    ),
    (
        "validity.positive",
        lambda: run(req("a.example.test", days=0)),
        "validity_days must be a positive whole number",
    ),
    (
        "profile.max_validity",
        lambda: run(req("a.example.test", days=398)),
        "validity of 398 days exceeds the 397 days of profile 'server' "
        "(rule: profile.max_validity)",
    ),
    (
        "caller.max_validity",
        lambda: run(req("a.example.test", days=31), CallerPolicy(max_validity_days=30)),
        "validity of 31 days exceeds this caller's 30 days (rule: caller.max_validity)",
    ),
    (
        "authority.expired",
        lambda: run(req("a.example.test"), authority=view(not_after=NOW)),
        "authority 'issuing' has expired (rule: authority.expired)",
    ),
    (
        "cn.unprintable",
        lambda: run(req("a.example.test", cn="a\u200bb", profile="client")),
        "the common name contains the non-printable character U+200B (ZERO WIDTH SPACE)",
    ),
    (
        "san.unprintable",
        lambda: run(
            IssuanceRequest(
                EC_KEY, KeyType.ECDSA_P256, None, (SubjectName(NameKind.DNS, "a\u2060.test"),)
            )
        ),
        "the name 'dns:a\\u2060.test' contains the non-printable character U+2060 (WORD JOINER)",
    ),
    (
        "pattern.empty",
        lambda: validate_pattern("  "),
        "empty name pattern",
    ),
    (
        "pattern.public_suffix",
        lambda: validate_pattern("*.co.uk"),
        "name pattern '*.co.uk' would allow every name below the public suffix 'co.uk'",
    ),
    (
        "pattern.uri",
        lambda: validate_pattern("https://id.example.test/*/x"),
        "URI pattern 'https://id.example.test/*/x': write scheme://host[/path], with '*' only "
        "as the last path segment, after '/'",
    ),
    (
        "pattern.subject",
        lambda: validate_subject_pattern("build-*"),
        "subject pattern 'build-*': write ATTR=value with ATTR one of CN, O, OU, C, ST, L, "
        "STREET, DC, UID, SERIALNUMBER, for example CN=build-*",
    ),
    (
        "pattern.subject.unprintable",
        lambda: validate_subject_pattern("CN=a\u202eb"),
        "subject pattern 'CN=a\\u202eb' contains the non-printable character U+202E "
        "(RIGHT-TO-LEFT OVERRIDE)",
    ),
    (
        "constraint.ip",
        lambda: NameConstraintsSpec.parse(["10.0.0.1/8"]),
        "name constraint '10.0.0.1/8': 10.0.0.1/8 has host bits set",
    ),
    (
        "constraint.wildcard",
        lambda: NameConstraintsSpec.parse(["*.example.test"]),
        "name constraint '*.example.test': write the domain itself (it covers subdomains)",
    ),
    (
        "constraint.excluded_email",
        lambda: NameConstraintsSpec.parse([], ["@example.test"]),
        "excluded e-mail constraints are not supported",
    ),
]


@pytest.mark.parametrize(
    ("action", "expected"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_reads_exactly(action: Callable[[], object], expected: str) -> None:
    assert detail_of(action) == expected


# ---------------------------------------------------------------------------- limits, boundaries


def test_limits_hold_at_their_boundaries() -> None:
    assert run(req(cn="a" * MAX_COMMON_NAME, profile="client")).common_name == "a" * 64
    many = run(req(*(f"h{i}.example.test" for i in range(MAX_NAMES))))
    assert len(many.names) == 100
    one_day = run(req("a.example.test", days=1))
    assert one_day.not_after == NOW + dt.timedelta(days=1)
    assert run(req("a.example.test", days=397)).not_after == NOW + dt.timedelta(days=397)


@pytest.mark.parametrize("days", [True, False, 1.5, "3", -1])
def test_validity_days_must_be_a_whole_positive_number(days: Any) -> None:
    with pytest.raises(BadRequest):
        run(req("a.example.test", days=days))


def test_an_approved_template_carries_every_decided_field() -> None:
    template = run(req("a.example.test", "10.0.0.1", cn="a.example.test", days=30))
    authority = view()
    assert template.authority == "issuing"
    assert template.serial == 4242
    assert template.public_key == EC_KEY
    assert template.key_type is KeyType.ECDSA_P256
    assert template.profile == "server"
    assert template.crl_url == authority.crl_url
    assert template.ca_issuers_url == authority.ca_issuers_url
    assert template.ocsp_url == authority.ocsp_url
    assert template.not_before == NOW - BACKDATE
    assert template.not_after == NOW + dt.timedelta(days=30)
    assert template.key_usages == ("digital_signature",)
    assert template.ocsp_nocheck is False
    rsa_template = run(req("a.example.test", key_type=KeyType.RSA_2048))
    assert rsa_template.key_usages == ("digital_signature", "key_encipherment")
    assert rsa_template.public_key == RSA_KEY


@pytest.mark.parametrize("key_type", list(KeyType))
def test_key_usages_by_key_type(key_type: KeyType) -> None:
    rsa_types = (KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096)
    expected = (
        ("digital_signature", "key_encipherment")
        if key_type in rsa_types
        else ("digital_signature",)
    )
    assert leaf_key_usages(key_type) == expected


def test_the_subject_check_looks_at_every_pattern_and_the_attribute_type() -> None:
    caller = CallerPolicy(allowed_names=("*.ci.example.test",), allowed_subjects=("CN=svc",))
    template = run(req("a.ci.example.test", cn="svc", profile="client"), caller)
    assert template.subject.rfc4514_string() == "CN=svc"
    # An O= pattern allows no CN of the same text.
    only_o = CallerPolicy(allowed_names=("*.ci.example.test",), allowed_subjects=("O=svc",))
    with pytest.raises(PolicyRejected):
        run(req("a.ci.example.test", cn="svc", profile="client"), only_o)


# ---------------------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("email:ops@example.test", "@example.test", True),
        ("email:ops@example.test", "*@example.test", True),
        ("email:ops@other.test", "@example.test", False),
        ("email:Ops@example.test", "ops@example.test", True),
        ("email:ops@example.test", "OPS@EXAMPLE.TEST", True),
        ("email:ops@example.test", "dev@example.test", False),
        ("email:ops@example.test", "*@Example.Test", True),
        ("*.a.example.test", "*.example.test", True),
        ("*.example.test", "*.example.test", True),
        ("*.example.test", "a.example.test", False),
        ("*.example.test", "*.a.example.test", False),
        ("example.test", "*.example.test", False),
        ("xexample.test", "*.example.test", False),
        ("10.1.2.3", "10.1.2.3/8", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "10.1.2.3/32", True),
        ("10.1.2.3", "10.1.2.4/32", False),
        ("::ffff:10.0.0.1", "10.0.0.0/8", False),
        ("10.0.0.1", "::/0", False),
        ("10.0.0.1", "not-an-ip", False),
        ("a.example.test", "10.0.0.0/8", False),
        ("a.example.test", "a.example.test", True),
    ],
)
def test_matches_pattern_edges(name: str, pattern: str, expected: bool) -> None:
    assert matches_pattern(parse_name(name), pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [
        ("*@Example.Test", "*@example.test"),
        ("@Example.Test", "@example.test"),
        ("Ops@Example.Test", "Ops@example.test"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("Host.Example.Test.", "host.example.test"),
        ("*.Example.Test", "*.example.test"),
        ("https://id.example.test/*", "https://id.example.test/*"),
        ("https://ID.example.test", "https://id.example.test/"),
        ("spiffe://cluster/*", "spiffe://cluster/*"),
    ],
)
def test_validate_pattern_normal_forms(pattern: str, normal: str) -> None:
    assert validate_pattern(pattern) == normal


@pytest.mark.parametrize("bad", ["a b@example.test", ".ops@example.test", "*@exa mple.test"])
def test_validate_pattern_refuses_bad_email_patterns(bad: str) -> None:
    with pytest.raises(BadRequest):
        validate_pattern(bad)


def test_subject_patterns_split_at_the_first_equals_sign() -> None:
    assert validate_subject_pattern("CN=a=b") == "CN=a=b"
    # The value holds '=' and still matches; every pattern is tried, of the right type only.
    assert subject_value_allowed(NameOID.COMMON_NAME, "a=b", ["CN=a=b"])
    assert subject_value_allowed(NameOID.COMMON_NAME, "y", ["O=x", "CN=y"])
    assert not subject_value_allowed(NameOID.COMMON_NAME, "y", ["O=y"])


# ---------------------------------------------------------------------------- name constraints


def test_name_constraints_sort_each_kind() -> None:
    spec = NameConstraintsSpec.parse(
        ["@Mail.Example.Test", "Example.Test", "10.0.0.0/8", "@b.test", "2001:db8::/32"],
        ["Secret.Example.Test", "10.66.0.0/16", "bad.example.test"],
    )
    assert spec.permitted_email == ("mail.example.test", "b.test")
    assert spec.permitted_dns == ("example.test",)
    assert spec.permitted_ip == ("10.0.0.0/8", "2001:db8::/32")
    assert spec.excluded_dns == ("secret.example.test", "bad.example.test")
    assert spec.excluded_ip == ("10.66.0.0/16",)
    assert not spec.empty
    for single in (
        NameConstraintsSpec(permitted_dns=("a",)),
        NameConstraintsSpec(excluded_dns=("a",)),
        NameConstraintsSpec(permitted_ip=("10.0.0.0/8",)),
        NameConstraintsSpec(excluded_ip=("10.0.0.0/8",)),
        NameConstraintsSpec(permitted_email=("a",)),
    ):
        assert not single.empty
        assert NameConstraintsSpec.from_json(single.to_json()) == single


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("email:x@example.test", None),
        ("email:x@mail.example.test", None),
        ("email:x@example.org", "email:x@example.org is outside the permitted e-mail domains"),
        ("*.example.test", None),
        ("*.secret.example.test", "dns:*.secret.example.test is in an excluded subtree"),
        ("example.org", "dns:example.org is outside the permitted DNS subtrees"),
        ("10.1.1.1", None),
        ("10.66.1.1", "ip:10.66.1.1 is in an excluded IP range"),
        ("192.168.1.1", "ip:192.168.1.1 is outside the permitted IP ranges"),
        ("2001:db8::1", "ip:2001:db8::1 is outside the permitted IP ranges"),
        ("uri:https://anything.test/", None),
    ],
)
def test_name_constraint_violations_read_exactly(name: str, why: str | None) -> None:
    spec = NameConstraintsSpec.parse(
        ["example.test", "10.0.0.0/8", "@example.test"], ["secret.example.test", "10.66.0.0/16"]
    )
    assert spec.violation(parse_name(name)) == why


def test_excluded_ip_ranges_alone_do_not_restrict_other_versions() -> None:
    spec = NameConstraintsSpec.parse([], ["10.0.0.0/8"])
    assert spec.violation(parse_name("::a00:1")) is None
    assert spec.violation(parse_name("10.0.0.1")) == "ip:10.0.0.1 is in an excluded IP range"


# ---------------------------------------------------------------------------- profiles


def test_a_new_profile_takes_the_documented_defaults() -> None:
    custom = load_profiles({"custom": {"extended_key_usages": ["clientAuth"]}})["custom"]
    assert custom == Profile(
        name="custom",
        extended_key_usages=("clientAuth",),
        default_validity_days=90,
        max_validity_days=397,
        key_types=ALL_KEY_TYPES,
        require_dns_or_ip=False,
        allow_wildcards=False,
    )


def test_an_overridden_profile_keeps_what_it_does_not_name() -> None:
    server = load_profiles({"server": {"max_validity_days": 30, "default_validity_days": 30}})[
        "server"
    ]
    assert server.name == "server"
    assert server.extended_key_usages == ("serverAuth",)
    assert server.require_dns_or_ip is True
    assert (server.default_validity_days, server.max_validity_days) == (30, 30)
    base = Profile("b", ("serverAuth",), 10, 20, require_dns_or_ip=True, allow_wildcards=True)
    kept = profile_from_mapping("b2", {}, base)
    assert kept == Profile("b2", ("serverAuth",), 10, 20, ALL_KEY_TYPES, True, True)
    changed = profile_from_mapping(
        "b3",
        {"require_dns_or_ip": False, "allow_wildcards": False, "key_types": ["rsa-2048"]},
        base,
    )
    assert (changed.require_dns_or_ip, changed.allow_wildcards) == (False, False)
    assert changed.key_types == (KeyType.RSA_2048,)
    assert changed.eku_oids == base.eku_oids


PROFILE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"server": {"colour": 1}}, "profile 'server': unknown keys ['colour']"),
    ({"custom": {"max_validity_days": 3}}, "profile 'custom': extended_key_usages is required"),
    (
        {"custom": {"extended_key_usages": ["codeSigning"]}},
        "profile 'custom': unknown EKU 'codeSigning'; use ['clientAuth', 'serverAuth']",
    ),
    (
        {"custom": {"extended_key_usages": []}},
        "profile 'custom': at least one extended key usage is required",
    ),
    ({"server": {"key_types": ["dsa"]}}, "profile 'server': unknown key type 'dsa'; use one of: "
     "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519"),
    (
        {"server": {"default_validity_days": 0}},
        "profile 'server': default_validity_days must be a positive integer",
    ),
    (
        {"server": {"max_validity_days": True}},
        "profile 'server': max_validity_days must be a positive integer",
    ),
    (
        {"server": {"max_validity_days": "30"}},
        "profile 'server': max_validity_days must be a positive integer",
    ),
    (
        {"server": {"default_validity_days": 31, "max_validity_days": 30}},
        "profile 'server': default_validity_days exceeds max_validity_days",
    ),
    ({"server": ["not", "a", "table"]}, "profile 'server' must be a table"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), PROFILE_ERRORS)
def test_profile_errors_read_exactly(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_profiles(raw)
    assert info.value.detail == message


def test_profile_limits_at_their_boundaries() -> None:
    one = load_profiles({"server": {"default_validity_days": 1, "max_validity_days": 1}})
    assert (one["server"].default_validity_days, one["server"].max_validity_days) == (1, 1)
    assert load_profiles(None) == DEFAULT_PROFILES


# ---------------------------------------------------------------------------- OCSP responders


def test_a_responder_template_is_ocsp_signing_only_and_short_lived() -> None:
    authority = view(not_after=NOW + dt.timedelta(days=3))
    week = dt.timedelta(days=7)
    template = responder_template(authority, EC_KEY, KeyType.ECDSA_P256, NOW, 77, week)
    assert template.authority == "issuing" and template.serial == 77
    assert template.common_name == "issuing OCSP Responder"
    assert template.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "issuing OCSP Responder")]
    )
    assert template.names == ()
    assert template.public_key == EC_KEY and template.key_type is KeyType.ECDSA_P256
    assert template.profile == "ocsp-responder"
    assert template.not_before == NOW - BACKDATE
    assert template.not_after == authority.not_after  # capped by the authority's own end
    assert template.extended_key_usages == (ExtendedKeyUsageOID.OCSP_SIGNING,)
    assert template.crl_url == authority.crl_url
    assert template.ca_issuers_url == authority.ca_issuers_url
    assert template.ocsp_url is None
    assert template.key_usages == ("digital_signature",)
    assert template.ocsp_nocheck is True
    short = responder_template(view(), EC_KEY, KeyType.ECDSA_P256, NOW, 1, week)
    assert short.not_after == NOW + week
    expired = view(not_after=NOW)
    message = detail_of(
        lambda: responder_template(expired, EC_KEY, KeyType.ECDSA_P256, NOW, 1, week)
    )
    assert message == "authority 'issuing' has expired (rule: authority.expired)"
    assert responder_template(
        view(not_after=NOW + dt.timedelta(seconds=1)), EC_KEY, KeyType.ECDSA_P256, NOW, 1, week
    ).not_after == NOW + dt.timedelta(seconds=1)
