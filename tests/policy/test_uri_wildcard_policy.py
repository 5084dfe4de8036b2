"""Issue 9 item 3: URIs are normalised before they are matched, and no wildcard covers a public
suffix. Pure policy tests (mutation testing runs these); via a real server: test_names_live.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca_service.crypto.names import normalize_uri, parse_name, uri_normal_form
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType, NameKind, SubjectName
from ca_service.errors import BadRequest, PolicyRejected
from ca_service.policy.check import AuthorityView, check
from ca_service.policy.names import (
    NameConstraintsSpec,
    is_public_suffix,
    matches_pattern,
    validate_pattern,
)
from ca_service.policy.profiles import load_profiles
from ca_service.tokens import Role, build_policy

NOW = dt.datetime(2031, 5, 1, tzinfo=dt.UTC)
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
VIEW = AuthorityView("default", NOW + dt.timedelta(days=900), NameConstraintsSpec(), "u", "u", None)
CI_URIS = CallerPolicy(allowed_names=("spiffe://cluster/ns/ci/*",))
# The reproductions: each got a certificate from a token allowed spiffe://cluster/ns/ci/*.
ESCAPES = [
    "spiffe://cluster/ns/ci/../admin/sa/root",
    "spiffe://cluster/ns/ci/%2e%2e/admin/sa/root",
    "spiffe://cluster/ns/ci/%2E%2E/admin/sa/root",
    "spiffe://cluster/ns/ci/.%2e/admin/sa/root",
    "spiffe://cluster/ns/ci/./sa/x",
    "spiffe://cluster/ns/ci/sa/..",
    "spiffe://cluster/ns/ci/sa%00root",
    "spiffe://cluster/ns/ci/%00",
    "https://id.example.test/ns/ci/a%2F..%2F..%2Fadmin",
    "https://id.example.test/ns/ci/a%5C..%5Cadmin",
]


def uri(value: str) -> SubjectName:
    return SubjectName(NameKind.URI, value)


# ---------------------------------------------------------------------------- normal form


@pytest.mark.parametrize("value", ESCAPES)
def test_dot_segments_and_nul_are_refused(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_name(f"uri:{value}")
    assert info.value.rule in ("uri.dot_segments", "name.unprintable")


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("SPIFFE://cluster/ns/ci/a", "spiffe://cluster/ns/ci/a"),
        ("spiffe://Cluster/ns/ci/a", "spiffe://cluster/ns/ci/a"),
        ("https://id.example.test/%7euser", "https://id.example.test/~user"),
        ("https://id.example.test/%41b", "https://id.example.test/Ab"),
        ("https://id.example.test/a%2fb", "https://id.example.test/a%2Fb"),
        ("https://id.example.test:/a", "https://id.example.test/a"),
        ("https://id.example.test:443/a", "https://id.example.test/a"),
        ("http://id.example.test:80/a", "http://id.example.test/a"),
        ("https://id.example.test:0443/a", "https://id.example.test/a"),
        ("https://id.example.test", "https://id.example.test/"),
        ("HTTP://ID.EXAMPLE.TEST:8080", "http://id.example.test:8080/"),
    ],
)
def test_a_non_normal_uri_is_refused_naming_its_normal_form(value: str, normal: str) -> None:
    assert uri_normal_form(value) == normal
    with pytest.raises(BadRequest) as info:
        normalize_uri(value)
    assert info.value.rule == "uri.normal_form" and repr(normal) in info.value.detail


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://cluster/ns/ci/sa/build",
        "spiffe://cluster",
        "https://id.example.test/alice",
        "https://id.example.test:8443/a%2Fb?x=1#f",
        "https://[2001:db8::1]:8443/x",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
        "mailto:ops@example.test",
        "https://id.example.test/a/b/",
    ],
)
def test_normal_uris_are_kept_exactly(value: str) -> None:
    assert normalize_uri(value) == value
    assert parse_name(f"uri:{value}") == uri(value)


@pytest.mark.parametrize(
    "value",
    [
        "https://id.example.test/a%zz",
        "https://id.example.test/a%4",
        "https://id.example.test/a<b>",
        "https://id.example.test/a b",
        "https://id.example.test/a\\b",
        "https://:443/a",
        "https://id.example.test:99999/",
        "https://id.example.test:x/",
        "https://[not-an-ip]/",
        "https://[::1]x/",
        "http://[::1",
        "http://[::1/x",
        "spiffe://cluster:8080/ns",
        "spiffe://user@cluster/ns",
        "spiffe://cluster/ns?q",
        "spiffe://cluster/ns#f",
        "spiffe://cluster/ns//a",
        "spiffe://cluster/ns/a%2Fb",
        "spiffe://clu_ster!/ns",
        "://no-scheme",
        "1http://a/",
        "noscheme",
        "https://id.example.test/\u00e9",
    ],
)
def test_malformed_uris_are_refused(value: str) -> None:
    with pytest.raises(BadRequest):
        uri_normal_form(value)


# ---------------------------------------------------------------------------- URI patterns


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("spiffe://cluster/ns/ci/sa/build", "spiffe://cluster/ns/ci/*", True),
        ("spiffe://cluster/ns/ci/", "spiffe://cluster/ns/ci/*", True),
        ("spiffe://cluster/ns/ci", "spiffe://cluster/ns/ci/*", False),
        ("spiffe://cluster/ns/ci-admin/sa/root", "spiffe://cluster/ns/ci/*", False),
        ("spiffe://cluster/ns/cj/x", "spiffe://cluster/ns/ci/*", False),
        ("spiffe://cluster/ns/ci/sa/build", "spiffe://cluster/ns/ci/sa/build", True),
        ("spiffe://cluster/ns/ci/sa/builds", "spiffe://cluster/ns/ci/sa/build", False),
        ("spiffe://cluster/ns/ci/sa/buil", "spiffe://cluster/ns/ci/sa/build", False),
        ("spiffe://cluster/ns/ci/sa/build", "spiffe://cluster/ns/ci/sa/build/*", False),
        ("spiffe://cluster/ns/ci/x", "spiffe://cluster/ns/ci*", False),
    ],
)
def test_uri_patterns(name: str, pattern: str, expected: bool) -> None:
    assert matches_pattern(uri(name), pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [
        ("SPIFFE://Cluster/ns/ci/*", "spiffe://cluster/ns/ci/*"),
        ("https://ID.example.test:443/%7eteam/*", "https://id.example.test/~team/*"),
        ("spiffe://cluster/ns/ci/sa/build", "spiffe://cluster/ns/ci/sa/build"),
    ],
)
def test_uri_patterns_are_stored_in_normal_form(pattern: str, normal: str) -> None:
    assert validate_pattern(pattern) == normal
    # A token made with the pattern in any spelling matches the normal URI.
    policy = build_policy(Role.ISSUER, names=[pattern])
    assert policy.allowed_names == (normal,)


@pytest.mark.parametrize(
    "pattern",
    [
        "spiffe://cluster/ns/ci*",
        "spiffe://cluster/*/sa",
        "spiffe://*",
        "spiffe://cluster/ns/../*",
        "spiffe://cluster/ns/%2e%2e/*",
        "spiffe://cluster/ns/%00/*",
    ],
)
def test_bad_uri_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(BadRequest):
        validate_pattern(pattern)


@pytest.mark.parametrize("value", ESCAPES[:6])
def test_the_policy_step_refuses_an_escape_even_if_it_was_never_parsed(value: str) -> None:
    """Only normal URIs reach policy through the parser; a raw one must not match a prefix
    that a dot segment leaves (matching works on text, so the text must be normal)."""
    normal = ["spiffe://cluster/ns/ci/x"]
    request = IssuanceRequest(PUBLIC_KEY, KeyType.ECDSA_P256, None, (uri(value),), "client")
    with pytest.raises((BadRequest, PolicyRejected)):
        check(request, load_profiles(None), VIEW, CI_URIS, NOW, 1)
    ok = IssuanceRequest(PUBLIC_KEY, KeyType.ECDSA_P256, None, (uri(normal[0]),), "client")
    assert check(ok, load_profiles(None), VIEW, CI_URIS, NOW, 1).names == (uri(normal[0]),)


# ---------------------------------------------------------------------------- public suffixes


@pytest.mark.parametrize(
    ("domain", "public"),
    [
        ("com", True),
        ("co.uk", True),
        ("localhost", True),
        ("test", True),
        ("github.io", True),
        ("example.com", False),
        ("example.co.uk", False),
        ("ci.example.test", False),
    ],
)
def test_public_suffixes(domain: str, public: bool) -> None:
    assert is_public_suffix(domain) is public


WILDCARDS = load_profiles({"server": {"allow_wildcards": True}})


@pytest.mark.parametrize("name", ["*.com", "*.co.uk", "*.localhost", "*.test", "*.github.io"])
def test_a_wildcard_on_a_public_suffix_is_refused_even_for_an_admin(name: str) -> None:
    request = IssuanceRequest(PUBLIC_KEY, KeyType.ECDSA_P256, None, (parse_name(name),))
    with pytest.raises(PolicyRejected) as info:
        check(request, WILDCARDS, VIEW, CallerPolicy.unrestricted(), NOW, 1)
    assert info.value.rule == "names.public_suffix_wildcard"


def test_a_wildcard_below_a_registrable_domain_stays_allowed() -> None:
    for name in ("*.example.com", "*.example.co.uk", "*.ci.example.test"):
        request = IssuanceRequest(PUBLIC_KEY, KeyType.ECDSA_P256, None, (parse_name(name),))
        template = check(request, WILDCARDS, VIEW, CallerPolicy.unrestricted(), NOW, 1)
        assert template.names[0].value == name


@pytest.mark.parametrize("pattern", ["*.com", "*.co.uk", "*.localhost", "*.COM."])
def test_a_token_pattern_on_a_public_suffix_is_refused(pattern: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_pattern(pattern)
    assert info.value.rule == "names.public_suffix_wildcard"
    assert validate_pattern("*.example.com") == "*.example.com"
