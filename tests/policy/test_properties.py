"""Issue item 9, by property: the request parsers and the policy step fail only in the ways they
promise (BadRequest / PolicyRejected), and policy answers agree with an independent oracle."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ca_service.crypto.csr import parse_csr
from ca_service.crypto.names import parse_name
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType, NameKind, SubjectName
from ca_service.errors import BadRequest, PolicyRejected
from ca_service.policy.check import AuthorityView, check
from ca_service.policy.names import NameConstraintsSpec
from ca_service.policy.profiles import DEFAULT_PROFILES

from ..helpers import csr_der, csr_pem

FAST = settings(max_examples=150, deadline=None)
NOW = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
VALID_DER = csr_der(ec.generate_private_key(ec.SECP256R1()), "prop.example.test", ["a.test"])
VALID_PEM = csr_pem(ec.generate_private_key(ec.SECP256R1()), "prop.example.test")

# ---------------------------------------------------------------------------- parsers

name_text = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(
            ["dns:", "ip:", "email:", "uri:", "DNS:", "http://", "spiffe://", "*.", ""]
        ),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    ),
    st.builds(
        "{}@{}".format,
        st.text(max_size=20),
        st.text(max_size=30),
    ),
)


@FAST
@given(name_text)
@example("http://[")
@example("uri:https://[::1")
@example("email:a@b\u200d.test")
def test_parse_name_only_bad_request(text: str) -> None:
    try:
        name = parse_name(text)
    except BadRequest as exc:
        assert exc.detail
        return
    assert isinstance(name, SubjectName)
    assert name.value.isascii()
    # Normalisation is stable: the stored form parses back to itself.
    assert parse_name(str(name)) == name


@FAST
@given(st.binary(max_size=600))
def test_parse_csr_random_bytes_only_bad_request(data: bytes) -> None:
    try:
        parse_csr(data)
    except BadRequest:
        return
    raise AssertionError("random bytes were accepted as a CSR")


# The version INTEGER of CertificationRequestInfo: 02 01 00, the first INTEGER in the DER.
VERSION_BYTE = VALID_DER.index(b"\x02\x01\x00") + 2


@FAST
@given(
    st.sampled_from([VALID_DER, VALID_PEM]),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")), max_size=4
    ),
)
# Version 1 instead of 0: cryptography raised InvalidVersion, which is not a ValueError.
@example(VALID_DER, [(VERSION_BYTE, 1, "x")])
def test_parse_csr_mutated_only_bad_request(base: bytes, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(base)
    for position, value, op in edits:
        i = position % (len(data) + 1)
        if op == "x" and i < len(data):
            data[i] ^= value or 1
        elif op == "i":
            data.insert(i, value)
        elif op == "d":
            del data[i:]
    try:
        parsed = parse_csr(bytes(data))
    except BadRequest:
        return
    assert parsed.key_type is KeyType.ECDSA_P256


# ---------------------------------------------------------------------------- policy vs oracle

LABELS = ["a", "b", "dev", "example", "test"]
dns_names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
wildcard_names = dns_names.map(lambda n: "*." + n)
ips = st.integers(0, 255).map(lambda i: f"10.0.{i}.{i % 7}") | st.sampled_from(
    ["192.168.1.1", "10.9.9.9", "2001:db8::1"]
)
patterns = st.one_of(
    dns_names, dns_names.map(lambda n: "*." + n), st.sampled_from(["10.0.0.0/24", "10.0.0.0/8"])
)


def oracle_matches(name: SubjectName, pattern: str) -> bool:
    if name.kind is NameKind.IP:
        if "/" not in pattern:
            return False
        return ipaddress.ip_address(name.value) in ipaddress.ip_network(pattern)
    if "/" in pattern:
        return False
    labels, plabels = name.value.split("."), pattern.split(".")
    if plabels[0] == "*":
        suffix = plabels[1:]
        return len(labels) > len(suffix) and labels[-len(suffix) :] == suffix
    return labels == plabels


def within(value: str, domain: str) -> bool:
    return value == domain or value.endswith("." + domain)


def view(constraints: NameConstraintsSpec = NameConstraintsSpec()) -> AuthorityView:  # noqa: B008
    return AuthorityView("default", NOW + dt.timedelta(days=900), constraints, "u", "u", None)


def make_request(names: list[str], days: int | None, profile: str) -> IssuanceRequest:
    return IssuanceRequest(
        public_key=PUBLIC_KEY,
        key_type=KeyType.ECDSA_P256,
        common_name=None,
        names=tuple(parse_name(n) for n in names),
        profile=profile,
        validity_days=days,
    )


@FAST
@given(
    names=st.lists(dns_names | wildcard_names | ips, min_size=1, max_size=4),
    allowed=st.lists(patterns, min_size=1, max_size=3),
    days=st.none() | st.integers(-2, 500),
    profile=st.sampled_from(["server", "client", "peer"]),
    wildcards=st.booleans(),
)
def test_policy_caller_patterns_agree_with_oracle(
    names: list[str], allowed: list[str], days: int | None, profile: str, wildcards: bool
) -> None:
    caller = CallerPolicy(allowed_names=tuple(allowed), allow_wildcards=wildcards)
    request = make_request(names, days, profile)
    inside = all(any(oracle_matches(n, p) for p in allowed) for n in request.names)
    try:
        template = check(request, DEFAULT_PROFILES, view(), caller, NOW, 1)
    except PolicyRejected as exc:
        assert exc.rule
        if exc.rule == "caller.allowed_names":
            assert not inside
        elif exc.rule == "profile.max_validity":
            assert days is not None and days > 397
        else:
            assert exc.rule == "profile.wildcards"
            assert any(n.value.startswith("*.") for n in request.names)
        return
    except BadRequest:
        assert days is not None and days < 1
        return
    assert inside
    assert all(any(oracle_matches(n, p) for p in allowed) for n in template.names)
    assert not any(n.value.startswith("*.") for n in template.names)
    assert template.not_after - NOW <= dt.timedelta(days=397)
    assert template.not_before < NOW


@FAST
@given(
    names=st.lists(dns_names | ips, min_size=1, max_size=4),
    permitted=st.lists(dns_names, max_size=2),
    excluded=st.lists(dns_names, max_size=2),
)
def test_policy_name_constraints_agree_with_oracle(
    names: list[str], permitted: list[str], excluded: list[str]
) -> None:
    spec = NameConstraintsSpec.parse(permitted, excluded)
    request = make_request(names, None, "server")

    def allowed(n: SubjectName) -> bool:
        if n.kind is not NameKind.DNS:
            return True
        if any(within(n.value, d) for d in excluded):
            return False
        return not permitted or any(within(n.value, d) for d in permitted)

    expected = all(allowed(n) for n in request.names)
    try:
        check(request, DEFAULT_PROFILES, view(spec), CallerPolicy.unrestricted(), NOW, 1)
    except PolicyRejected as exc:
        assert exc.rule == "authority.name_constraints"
        assert not expected
        return
    assert expected
