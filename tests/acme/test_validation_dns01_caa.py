"""dns-01 and CAA against a real loopback DNS server (and one that never answers)."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ca_service.acme import caa
from ca_service.acme.validation import (
    Identifier,
    ValidationConfig,
    ValidationFailed,
    check_caa,
    key_authorization_digest,
    validate,
    validate_dns01,
)

from .dns_server import LoopbackDNS

KEY_AUTH = "token-xyz.thumbprint-abc"
DIGEST_B64 = base64.urlsafe_b64encode(hashlib.sha256(KEY_AUTH.encode()).digest()).decode()
DNS01_VALUE = DIGEST_B64.rstrip("=")
NAME = Identifier("dns", "www.example.test")
US = "ca.example.test"


def _config(dns: LoopbackDNS, **kw: object) -> ValidationConfig:
    base: dict[str, object] = {
        "resolver": dns.resolver,
        "caa_identities": (US,),
        "timeout_seconds": 0.5,
        "attempts": 1,
        "retry_delay_seconds": 0.0,
    }
    base.update(kw)
    return ValidationConfig(**base)  # type: ignore[arg-type]


def _fails(call: Callable[[], None]) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        call()
    return info.value


def test_key_authorization_digest_is_sha256() -> None:
    assert key_authorization_digest(KEY_AUTH) == hashlib.sha256(KEY_AUTH.encode()).digest()
    assert len(DNS01_VALUE) == 43 and "=" not in DNS01_VALUE


# --- dns-01 -----------------------------------------------------------------------------------


def test_dns01_passes_when_any_record_matches(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", ["stale-value", DNS01_VALUE])
    validate_dns01(NAME, KEY_AUTH, _config(loopback_dns))


def test_dns01_wrong_value_is_unauthorized(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", ["stale-value", DIGEST_B64 + "x"])
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(loopback_dns)))
    assert exc.acme_type == "unauthorized" and "2 TXT record(s)" in exc.detail


def test_dns01_padded_value_is_not_accepted(loopback_dns: LoopbackDNS) -> None:
    # RFC 8555 section 8.4: base64url without padding; "=" makes it a different string.
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", [DNS01_VALUE + "="])
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(loopback_dns)))
    assert exc.acme_type == "unauthorized"


def test_dns01_no_record_is_a_dns_failure(loopback_dns: LoopbackDNS) -> None:
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(loopback_dns)))
    assert exc.acme_type == "dns"
    assert exc.detail == "dns-01: no TXT record at _acme-challenge.www.example.test"


def test_dns01_nxdomain_is_a_dns_failure(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json") as server:  # no default: NXDOMAIN
        exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(server)))
    assert exc.acme_type == "dns" and "no TXT record" in exc.detail


def test_dns01_record_at_the_name_itself_does_not_count(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("www.example.test", "TXT", [DNS01_VALUE])
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(loopback_dns)))
    assert exc.acme_type == "dns"


def test_dns01_wildcard_uses_the_base_name(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", [DNS01_VALUE])
    validate("dns-01", NAME, "", KEY_AUTH, wildcard=True, config=_config(loopback_dns))


def test_dns01_follows_a_cname(loopback_dns: LoopbackDNS) -> None:
    # The usual delegation: _acme-challenge is a CNAME into a zone the client's hook can write.
    loopback_dns.set("_acme-challenge.www.example.test", "CNAME", ["www.acme-zone.test"])
    loopback_dns.set("www.acme-zone.test", "TXT", [DNS01_VALUE])
    validate_dns01(NAME, KEY_AUTH, _config(loopback_dns))


def test_dns01_servfail_is_a_dns_failure(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "RCODE", ["SERVFAIL"])
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, _config(loopback_dns)))
    assert exc.acme_type == "dns" and "SERVFAIL" in exc.detail


def test_dns01_retries_until_the_record_appears(loopback_dns: LoopbackDNS) -> None:
    # The client's DNS update lands between two attempts: the "sleep" is when it happens.
    def sleep(_seconds: float) -> None:
        loopback_dns.add("_acme-challenge.www.example.test", "TXT", DNS01_VALUE)

    config = _config(loopback_dns, attempts=2)
    validate("dns-01", NAME, "", KEY_AUTH, wildcard=False, config=config, sleep=sleep)


# --- CAA --------------------------------------------------------------------------------------


def _caa(dns: LoopbackDNS, name: str, *records: str) -> None:
    dns.set(name, "CAA", list(records))


def test_caa_absent_allows(loopback_dns: LoopbackDNS) -> None:
    check_caa(NAME, False, _config(loopback_dns))
    check_caa(NAME, True, _config(loopback_dns))


def test_caa_naming_us_allows(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "other.example"', '0 issue "CA.Example.Test"')
    check_caa(NAME, False, _config(loopback_dns))


def test_caa_issue_with_parameters_allows(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test; policy=ev"')
    check_caa(NAME, False, _config(loopback_dns))


def test_caa_issue_semicolon_forbids_all(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue ";"')
    exc = _fails(lambda: check_caa(NAME, False, _config(loopback_dns)))
    assert exc.acme_type == "caa" and "CAA at www.example.test" in exc.detail


def test_caa_other_ca_only_forbids(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "letsencrypt.org"', '0 iodef "mailto:x@y"')
    exc = _fails(lambda: check_caa(NAME, False, _config(loopback_dns)))
    assert exc.acme_type == "caa"


def test_caa_without_configured_identities_forbids_when_records_exist(
    loopback_dns: LoopbackDNS,
) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test"')
    exc = _fails(lambda: check_caa(NAME, False, _config(loopback_dns, caa_identities=())))
    assert exc.acme_type == "caa"


def test_caa_only_iodef_allows(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 iodef "mailto:x@y"')
    check_caa(NAME, False, _config(loopback_dns))


def test_caa_issuewild_governs_wildcards(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test"', '0 issuewild ";"')
    config = _config(loopback_dns)
    check_caa(NAME, False, config)  # issuewild does not touch the plain name
    exc = _fails(lambda: check_caa(NAME, True, config))
    assert exc.acme_type == "caa" and "issuewild" in exc.detail
    # And the other way round: issue forbids, issuewild allows.
    _caa(loopback_dns, "www.example.test", '0 issue ";"', '0 issuewild "ca.example.test"')
    check_caa(NAME, True, config)
    assert _fails(lambda: check_caa(NAME, False, config)).acme_type == "caa"


def test_caa_wildcard_without_issuewild_uses_issue(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "other.example"')
    assert _fails(lambda: check_caa(NAME, True, _config(loopback_dns))).acme_type == "caa"
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test"')
    check_caa(NAME, True, _config(loopback_dns))


def test_caa_climbs_to_the_parent(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "example.test", '0 issue "other.example"')
    deep = Identifier("dns", "a.b.www.example.test")
    exc = _fails(lambda: check_caa(deep, False, _config(loopback_dns)))
    assert exc.acme_type == "caa" and "CAA at example.test" in exc.detail
    # The closest RRset wins: one at the name itself overrides the parent's.
    _caa(loopback_dns, "b.www.example.test", '0 issue "ca.example.test"')
    check_caa(deep, False, _config(loopback_dns))


def test_caa_climbs_to_the_tld(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "test", '0 issue ";"')
    assert _fails(lambda: check_caa(NAME, False, _config(loopback_dns))).acme_type == "caa"


def test_caa_critical_unknown_tag_forbids(loopback_dns: LoopbackDNS) -> None:
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test"', '128 tbs "unknown"')
    exc = _fails(lambda: check_caa(NAME, False, _config(loopback_dns)))
    assert exc.acme_type == "caa" and "critical" in exc.detail
    # The same unknown tag without the critical flag is ignored.
    _caa(loopback_dns, "www.example.test", '0 issue "ca.example.test"', '0 tbs "unknown"')
    check_caa(NAME, False, _config(loopback_dns))


def test_caa_servfail_fails_closed(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("example.test", "RCODE", ["SERVFAIL"])
    exc = _fails(lambda: check_caa(NAME, False, _config(loopback_dns)))
    assert exc.acme_type == "dns" and "CAA" in exc.detail and "example.test" in exc.detail


@pytest.fixture
def silent_resolver() -> Iterator[tuple[str, int]]:
    """A UDP port that is bound (so no ICMP refusal) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield ("127.0.0.1", sock.getsockname()[1])


def test_caa_timeout_fails_closed(silent_resolver: tuple[str, int]) -> None:
    config = ValidationConfig(resolver=silent_resolver, caa_identities=(US,), timeout_seconds=0.3)
    exc = _fails(lambda: check_caa(NAME, False, config))
    assert exc.acme_type == "dns" and "timed out" in exc.detail


def test_validate_fails_closed_when_caa_cannot_be_read(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", [DNS01_VALUE])
    loopback_dns.set("www.example.test", "RCODE", ["SERVFAIL"])
    config = _config(loopback_dns)
    exc = _fails(lambda: validate("dns-01", NAME, "", KEY_AUTH, wildcard=False, config=config))
    assert exc.acme_type == "dns" and "CAA" in exc.detail


def test_caa_is_not_checked_for_ip_identifiers(silent_resolver: tuple[str, int]) -> None:
    config = ValidationConfig(resolver=silent_resolver, timeout_seconds=0.3)
    check_caa(Identifier("ip", "127.0.0.1"), False, config)  # returns without any query


def test_caa_validationmethods_and_accounturi(loopback_dns: LoopbackDNS) -> None:
    acct = "https://ca.example.test/acme/acct/1"
    _caa(
        loopback_dns,
        "www.example.test",
        f'0 issue "ca.example.test; validationmethods=dns-01; accounturi={acct}"',
    )
    config = _config(loopback_dns)
    check_caa(NAME, False, config, challenge_type="dns-01", account_uri=acct)
    for method, account in [("http-01", acct), ("dns-01", acct + "2"), ("dns-01", None)]:
        exc = _fails(
            lambda m=method, a=account: check_caa(  # type: ignore[misc]
                NAME, False, config, challenge_type=m, account_uri=a
            )
        )
        assert exc.acme_type == "caa"


# --- the pure CAA rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "issuer", "parameters"),
    [
        ("ca.example.test", "ca.example.test", {}),
        ("  CA.example.test.  ", "ca.example.test", {}),
        (";", "", {}),
        ("", "", {}),
        ("ca.example.test; a=b;  c = d ;", "ca.example.test", {"a": "b", "c": "d"}),
    ],
)
def test_parse_issue_value(value: str, issuer: str, parameters: dict[str, str]) -> None:
    parsed = caa.parse_issue_value(value)
    assert parsed is not None and parsed.issuer == issuer and parsed.parameters == parameters


@pytest.mark.parametrize("value", ["ca example", "ca.example.test; novalue", "ca.example; =x"])
def test_malformed_issue_values_authorize_nobody(value: str) -> None:
    assert caa.parse_issue_value(value) is None
    record = caa.CAARecord(0, "issue", value)
    assert caa.refusal([record], wildcard=False, identities=("ca.example", "ca")) is not None


def test_tags_are_case_insensitive() -> None:
    records = [caa.CAARecord(0, "ISSUE", "ca.example.test")]
    assert caa.refusal(records, wildcard=False, identities=(US,)) is None
    records = [caa.CAARecord(128, "IssueWild", ";")]
    assert caa.refusal(records, wildcard=True, identities=(US,)) is not None


def test_validate_wildcard_checks_issuewild(loopback_dns: LoopbackDNS) -> None:
    loopback_dns.set("_acme-challenge.www.example.test", "TXT", [DNS01_VALUE])
    loopback_dns.set("example.test", "CAA", ['0 issue "ca.example.test"', '0 issuewild ";"'])
    config = _config(loopback_dns)
    validate("dns-01", NAME, "", KEY_AUTH, wildcard=False, config=config)
    exc = _fails(lambda: validate("dns-01", NAME, "", KEY_AUTH, wildcard=True, config=config))
    assert exc.acme_type == "caa" and "issuewild" in exc.detail


def test_a_resolver_that_is_not_an_address_is_a_dns_failure() -> None:
    config = ValidationConfig(resolver=("not an address", 53), timeout_seconds=0.3)
    exc = _fails(lambda: validate_dns01(NAME, KEY_AUTH, config))
    assert exc.acme_type == "dns"
