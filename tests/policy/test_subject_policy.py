"""Issue 9 item 2: every subject value and every SAN is checked against the caller's policy, in
every profile; non-printable characters are refused in every name, for every caller.

Pure and in-process (mutation testing runs these); the same reproductions through a real server
and the CLI are in test_names_live.py.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.crypto.csr import parse_csr
from ca_service.crypto.names import parse_name
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType, NameKind, SubjectName
from ca_service.errors import BadRequest, PolicyRejected
from ca_service.policy.check import AuthorityView, check
from ca_service.policy.names import (
    NameConstraintsSpec,
    subject_value_allowed,
    validate_subject_pattern,
)
from ca_service.policy.profiles import DEFAULT_PROFILES
from ca_service.tokens import Role, build_policy, policy_from_json, policy_to_json

from ..helpers import make_key

NOW = dt.datetime(2031, 5, 1, 8, 0, tzinfo=dt.UTC)
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
CI = CallerPolicy(allowed_names=("*.ci.example.test",))
VIEW = AuthorityView("default", NOW + dt.timedelta(days=900), NameConstraintsSpec(), "u", "u", None)
# The names the issue quotes as issued to a restricted issuer (with a SAN inside its policy).
HOSTILE_CNS = [
    "Ops Team",
    "system:kube-controller-manager",
    "evil.example.test\u200e",
    "\u202etset.elpmaxe.live",
]
# One of each class the issue lists: C0/C1 controls, bidi embeddings and isolates, zero-width
# characters, a line separator, private use, an unassigned code point, a no-break space.
UNPRINTABLE = [
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u2060",
    "\ufeff",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
    "\u2028",
    "\u2029",
    "\ue000",
    "\U000e0001",
    "\u0378",
    "\u00a0",
]


def req(*names: str, cn: str | None = None, profile: str = "client") -> IssuanceRequest:
    return IssuanceRequest(
        public_key=PUBLIC_KEY,
        key_type=KeyType.ECDSA_P256,
        common_name=cn,
        names=tuple(parse_name(n) for n in names),
        profile=profile,
    )


def approve(request: IssuanceRequest, caller: CallerPolicy = CI):  # type: ignore[no-untyped-def]
    return check(request, DEFAULT_PROFILES, VIEW, caller, NOW, 7)


def refusal(request: IssuanceRequest, caller: CallerPolicy = CI) -> PolicyRejected:
    with pytest.raises(PolicyRejected) as info:
        approve(request, caller)
    return info.value


# ---------------------------------------------------------------------------- subject values


@pytest.mark.parametrize("cn", HOSTILE_CNS[:2])
@pytest.mark.parametrize("profile", ["client", "server", "peer"])
def test_a_restricted_caller_gets_no_subject_outside_its_policy(cn: str, profile: str) -> None:
    """The reproduction: SAN inside `*.ci.example.test`, CN a display name. Refused by name in
    every profile (server and peer refuse a CN that is not a host name even earlier)."""
    exc = refusal(req("build.ci.example.test", cn=cn, profile=profile))
    expected = "caller.allowed_subjects" if profile == "client" else "subject.common_name"
    assert exc.rule == expected
    assert "(rule: " in exc.detail


def test_the_refusal_names_the_subject_value() -> None:
    exc = refusal(req("build.ci.example.test", cn="Ops Team"))
    assert "CN=Ops Team" in exc.detail and exc.rule == "caller.allowed_subjects"


def test_a_cn_that_repeats_a_checked_san_needs_no_subject_pattern() -> None:
    caller = CallerPolicy(allowed_names=("*.ci.example.test", "*@ci.example.test"))
    template = approve(req("email:ops@ci.example.test", cn="a.ci.example.test"), caller)
    assert template.common_name == "a.ci.example.test"
    assert [str(n) for n in template.names] == [
        "dns:a.ci.example.test",
        "email:ops@ci.example.test",
    ]
    template = approve(req("email:ops@ci.example.test", cn="ops@ci.example.test"), caller)
    assert template.common_name == "ops@ci.example.test"
    # The same text in the CN without the SAN repeats nothing: it needs a subject pattern.
    exc = refusal(req("a.ci.example.test", cn="ops@ci.example.test"), caller)
    assert exc.rule == "caller.allowed_subjects"


def test_a_host_name_cn_outside_the_policy_is_refused_as_a_name() -> None:
    assert refusal(req("a.ci.example.test", cn="www.bank.example")).rule == "caller.allowed_names"


def test_allowed_subjects_let_a_restricted_caller_name_a_subject() -> None:
    caller = CallerPolicy(allowed_names=("*.ci.example.test",), allowed_subjects=("CN=build-*",))
    template = approve(req("x.ci.example.test", cn="build-42"), caller)
    assert template.subject.rfc4514_string() == "CN=build-42"
    assert template.common_name == "build-42"
    # No SAN at all: a subject-only client certificate, still inside the pattern.
    assert approve(req(cn="build-7"), caller).names == ()
    for cn in ("Ops Team", "xbuild-42", "Build-42", "build"):
        assert refusal(req("x.ci.example.test", cn=cn), caller).rule == "caller.allowed_subjects"


def test_allowed_subjects_alone_restrict_the_subject() -> None:
    caller = CallerPolicy(allowed_subjects=("CN=svc-*",))
    assert approve(req(cn="svc-a"), caller).common_name == "svc-a"
    assert refusal(req(cn="root"), caller).rule == "caller.allowed_subjects"


@pytest.mark.parametrize("cn", ["Ops Team", "system:kube-controller-manager", "Bob"])
def test_unrestricted_callers_keep_display_names(cn: str) -> None:
    for caller in (CallerPolicy.unrestricted(), CallerPolicy()):
        assert approve(req(cn=cn), caller).common_name == cn


def test_a_person_name_cn_stays_as_given_with_no_derived_san() -> None:
    """Today `Bob` became CN=bob with DNS:bob."""
    template = approve(req("email:bob@example.test", cn="Bob"), CallerPolicy.unrestricted())
    assert template.common_name == "Bob"
    assert template.subject.rfc4514_string() == "CN=Bob"
    assert [str(n) for n in template.names] == ["email:bob@example.test"]
    only_cn = approve(req(cn="Bob"), CallerPolicy.unrestricted())
    assert only_cn.names == () and only_cn.common_name == "Bob"


def test_a_dotted_or_ip_cn_is_still_a_name_in_the_client_profile() -> None:
    template = approve(req(cn="A.CI.Example.Test"))
    assert template.common_name == "a.ci.example.test"
    assert [str(n) for n in template.names] == ["dns:a.ci.example.test"]
    ip = approve(req(cn="10.1.2.3"), CallerPolicy.unrestricted())
    assert [str(n) for n in ip.names] == ["ip:10.1.2.3"]


def test_a_single_label_cn_is_a_host_name_where_the_profile_needs_one() -> None:
    template = approve(req(cn="Localhost", profile="server"), CallerPolicy.unrestricted())
    assert template.common_name == "localhost"
    assert [str(n) for n in template.names] == ["dns:localhost"]


def test_every_subject_attribute_of_the_template_was_checked() -> None:
    """Whatever the request sets ends up in the subject only if the caller may have it: the
    check runs over the final subject, so a CSR's other attributes never reach the certificate
    unchecked (today they are dropped: the subject is the CN alone)."""
    key = make_key("p256")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "a.ci.example.test"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bank"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Admins"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    parsed = parse_csr(csr.public_bytes(serialization.Encoding.PEM))
    request = IssuanceRequest(
        parsed.public_key, parsed.key_type, parsed.common_name, parsed.names, "client"
    )
    template = approve(request)
    for attribute in template.subject:
        assert attribute.oid == NameOID.COMMON_NAME
        assert attribute.value in {n.value for n in template.names}


# ---------------------------------------------------------------------------- non-printables


@pytest.mark.parametrize("char", UNPRINTABLE)
@pytest.mark.parametrize("caller", [CallerPolicy.unrestricted(), CI], ids=["admin", "issuer"])
def test_unprintable_characters_are_refused_in_the_common_name(
    char: str, caller: CallerPolicy
) -> None:
    for cn in (f"Ops{char}Team", f"a.ci.example.test{char}", f"{char}a.ci.example.test"):
        with pytest.raises(BadRequest) as info:
            approve(req("b.ci.example.test", cn=cn), caller)
        assert info.value.rule == "name.unprintable"
        assert f"U+{ord(char):04X}" in info.value.detail


@pytest.mark.parametrize("char", UNPRINTABLE)
@pytest.mark.parametrize(
    "template",
    [
        "dns:a{}b.example.test",
        "a.example.test{}",
        "email:ops{}@example.test",
        "email:ops@exa{}mple.test",
        "uri:spiffe://cluster/ns/{}ci",
        "uri:https://id.example.test/{}",
        "ip:10.0.0.1{}",
    ],
)
def test_unprintable_characters_are_refused_in_every_san(char: str, template: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_name(template.format(char))
    assert info.value.rule == "name.unprintable"


@pytest.mark.parametrize("cn", HOSTILE_CNS[2:])
def test_bidi_and_invisible_marks_are_refused_for_an_admin_too(cn: str) -> None:
    with pytest.raises(BadRequest) as info:
        approve(req("a.ci.example.test", cn=cn, profile="server"), CallerPolicy.unrestricted())
    assert info.value.rule == "name.unprintable"


def test_the_policy_step_refuses_an_unprintable_san_built_without_the_parser() -> None:
    """Policy does not trust its input to have been parsed: every SAN value is checked."""
    request = IssuanceRequest(
        PUBLIC_KEY, KeyType.ECDSA_P256, None, (SubjectName(NameKind.DNS, "a.example.test\u200b"),)
    )
    with pytest.raises(BadRequest) as info:
        approve(request, CallerPolicy.unrestricted())
    assert info.value.rule == "name.unprintable"


def test_a_space_and_printable_unicode_stay_allowed_in_display_names() -> None:
    for cn in ("Ops Team", "Jürgen Müller", "運用チーム"):
        assert approve(req(cn=cn), CallerPolicy.unrestricted()).common_name == cn


# ---------------------------------------------------------------------------- patterns, tokens


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [("CN=build-*", "CN=build-*"), ("cn=Ops Team", "CN=Ops Team"), (" ou =x", "OU=x")],
)
def test_subject_patterns_are_validated_and_normalised(pattern: str, normal: str) -> None:
    assert validate_subject_pattern(pattern) == normal


@pytest.mark.parametrize("bad", ["build-*", "XX=a", "CN=", "=a", "CN=a\u202eb", ""])
def test_bad_subject_patterns_are_refused(bad: str) -> None:
    with pytest.raises(BadRequest):
        validate_subject_pattern(bad)


@pytest.mark.parametrize(
    ("value", "patterns", "expected"),
    [
        ("build-1", ["CN=build-*"], True),
        ("build-", ["CN=build-*"], True),
        ("abuild-1", ["CN=build-*"], False),
        ("build-1", ["O=build-*"], False),
        ("a.b", ["CN=a?b"], False),
        ("a?b", ["CN=a?b"], True),
        ("a.b", ["CN=a.b"], True),
        ("axb", ["CN=a.b"], False),
        ("x-mid-y", ["CN=x-*-y"], True),
        ("x-mid-z", ["CN=x-*-y"], False),
        ("line\nbreak", ["CN=line*"], True),
        ("ops", ["CN=dev", "CN=ops"], True),
        ("ops", [], False),
    ],
)
def test_subject_value_matching(value: str, patterns: list[str], expected: bool) -> None:
    assert subject_value_allowed(NameOID.COMMON_NAME, value, patterns) is expected


def test_token_policy_keeps_allowed_subjects_through_json() -> None:
    policy = build_policy(Role.ISSUER, names=["*.ci.example.test"], subjects=["cn=build-*"])
    assert policy.allowed_subjects == ("CN=build-*",)
    stored = json.loads(json.dumps(policy_to_json(policy)))
    assert stored["allowed_subjects"] == ["CN=build-*"]
    assert policy_from_json(stored, Role.ISSUER) == policy
    plain = build_policy(Role.ISSUER, names=["*.ci.example.test"])
    assert policy_from_json(policy_to_json(plain), Role.ISSUER).allowed_subjects is None
    with pytest.raises(BadRequest, match="unrestricted"):
        build_policy(Role.ADMIN, subjects=["CN=x"])
