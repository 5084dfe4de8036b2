"""Issue 9 items 2 and 3, by property: whatever text a caller sends, an approved certificate holds
only printable names, a restricted caller's subject is one its policy covers, and a URI that
matches a prefix pattern resolves below that prefix for any consumer. Checked against oracles
written independently of the code (posixpath for dot segments, fnmatch for subject globs)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import posixpath
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ca_service.crypto.names import parse_name
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType
from ca_service.errors import BadRequest, PolicyRejected
from ca_service.policy.check import AuthorityView, check
from ca_service.policy.names import NameConstraintsSpec, matches_pattern
from ca_service.policy.profiles import DEFAULT_PROFILES

FAST = settings(max_examples=200, deadline=None)
NOW = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
VIEW = AuthorityView("default", NOW + dt.timedelta(days=900), NameConstraintsSpec(), "u", "u", None)
SUBJECT_PATTERNS = ["CN=build-*", "CN=Ops Team", "CN=*-bot"]

common_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["build-", "Ops Team", "x-bot", "a.ci.example.test", "Bob", "10.0.0.1"]
    ).flatmap(
        lambda base: st.builds(
            lambda pre, post: pre + base + post, st.text(max_size=3), st.text(max_size=3)
        )
    ),
)


def oracle_subject_allowed(value: str, patterns: list[str]) -> bool:
    """fnmatch with its other metacharacters escaped: '*' alone is a wildcard."""
    for pattern in patterns:
        glob = pattern.removeprefix("CN=").replace("[", "[[]").replace("?", "[?]")
        if fnmatch.fnmatchcase(value, glob):
            return True
    return False


@FAST
@given(
    cn=common_names,
    profile=st.sampled_from(["client", "server", "peer"]),
    subjects=st.none() | st.lists(st.sampled_from(SUBJECT_PATTERNS), max_size=2),
    restricted=st.booleans(),
)
@example(cn="Ops Team\u200e", profile="client", subjects=["CN=Ops Team*"], restricted=True)
@example(cn="\u202etset.elpmaxe.live", profile="client", subjects=None, restricted=False)
def test_approved_subjects_are_printable_and_covered_by_the_policy(
    cn: str, profile: str, subjects: list[str] | None, restricted: bool
) -> None:
    caller = CallerPolicy(
        allowed_names=("*.ci.example.test",) if restricted else None,
        allowed_subjects=tuple(subjects) if subjects is not None else None,
    )
    request = IssuanceRequest(
        PUBLIC_KEY, KeyType.ECDSA_P256, cn, (parse_name("b.ci.example.test"),), profile
    )
    try:
        template = check(request, DEFAULT_PROFILES, VIEW, caller, NOW, 1)
    except (BadRequest, PolicyRejected):
        return
    sans = {n.value for n in template.names}
    for attribute in template.subject:
        value = attribute.value
        assert isinstance(value, str) and value.isprintable()
        if caller.restricts_names:
            assert value in sans or oracle_subject_allowed(value, subjects or [])
    assert all(n.value.isprintable() for n in template.names)


segments = st.sampled_from(
    ["ci", "sa", "admin", "..", ".", "%2e", "%2E%2e", ".%2e", "%2F", "%2f..%2f", "%00", "a%41", "~"]
)


@FAST
@given(st.lists(segments, min_size=1, max_size=5))
@example(["..", "admin", "sa", "root"])
@example(["%2e%2e", "admin"])
@example(["a%2F..%2F..%2Fadmin"])
def test_a_uri_matching_a_prefix_resolves_below_it(parts: list[str]) -> None:
    text = "spiffe://cluster/ns/ci/" + "/".join(parts)
    try:
        name = parse_name(f"uri:{text}")
    except BadRequest:
        return
    assert name.value == text  # kept exactly as sent, since only normal forms are accepted
    if not matches_pattern(name, "spiffe://cluster/ns/ci/*"):
        return
    path = urlsplit(name.value).path
    for decoded in (path, unquote(path)):
        assert "\x00" not in decoded
        assert posixpath.normpath(decoded).startswith("/ns/ci/")
