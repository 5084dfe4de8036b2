"""Claim rules and claim-filled names, in process (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from ca_service.errors import BadRequest, Forbidden
from ca_service.oidc.claims import check_claims, claim_text
from ca_service.oidc.names import check_template, dns_label, fill, placeholders


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("Octo-Org", "octo-org"),
        ("octo/repo", "octo-repo"),
        ("refs/heads/feature__X", "refs-heads-feature-x"),
        ("--a..b--", "a-b"),
        (12345, "12345"),
        (True, "true"),
        ("ab\u00e9cd", "ab-cd"),
        ("x" * 63, "x" * 63),
    ],
)
def test_dns_label_maps_values(value: Any, label: str) -> None:
    assert dns_label("c", value) == label


@pytest.mark.parametrize("value", ["", "///", "___", None, ["a"], {"a": 1}, 1.5, "x" * 64])
def test_dns_label_refuses_what_cannot_be_a_label(value: Any) -> None:
    with pytest.raises(Forbidden) as info:
        dns_label("c", value)
    assert info.value.rule == "oidc.claim_label"
    assert "'c'" in info.value.detail


def test_fill_builds_names_from_claims() -> None:
    claims = {"repository_owner": "Octo_Org", "run_id": "77"}
    pattern = "{repository_owner}-{run_id}.ci.example.test"
    assert fill(pattern, claims) == "octo-org-77.ci.example.test"
    assert fill("*.{run_id}.ci.example.test", claims) == "*.77.ci.example.test"


def test_fill_refuses_a_missing_claim_and_an_invalid_result() -> None:
    with pytest.raises(Forbidden) as info:
        fill("{nope}.example.test", {})
    assert info.value.rule == "oidc.claim_label" and "nope" in info.value.detail
    # Four 63-character labels make a name longer than 253 characters.
    long = {"a": "a" * 63}
    with pytest.raises(Forbidden) as info:
        fill("{a}.{a}.{a}.{a}.example.test", long)
    assert info.value.rule == "oidc.claim_label"


@pytest.mark.parametrize(
    "pattern",
    ["{", "}.example.test", "{a.example.test", "{}.example.test", "{a b}.example.test"],
)
def test_templates_with_stray_braces_are_refused(pattern: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_template(pattern)
    assert info.value.rule == "provisioner.placeholder"


@pytest.mark.parametrize("pattern", ["{user}@example.test", "https://{repo}.example.test/"])
def test_placeholders_only_in_dns_names(pattern: str) -> None:
    with pytest.raises(BadRequest) as info:
        placeholders(pattern)
    assert info.value.rule == "provisioner.placeholder"


def test_templates_are_checked_as_patterns() -> None:
    assert check_template("{repo}.ci.example.test") == "{repo}.ci.example.test"
    assert check_template("Build.Example.Test") == "build.example.test"
    with pytest.raises(BadRequest):
        check_template("a*b.{repo}.example.test")
    with pytest.raises(BadRequest):
        check_template("*.com")


def test_claims_all_must_match() -> None:
    rules = {"repository": ("octo/*",), "ref": ("refs/heads/main", "refs/tags/v*")}
    check_claims(rules, {"repository": "octo/app", "ref": "refs/tags/v1"})
    with pytest.raises(Forbidden) as info:
        check_claims(rules, {"repository": "evil/app", "ref": "refs/heads/main"})
    assert info.value.rule == "oidc.claim_mismatch" and "repository" in info.value.detail
    with pytest.raises(Forbidden) as info:
        check_claims(rules, {"repository": "octo/app"})
    assert info.value.rule == "oidc.claim_missing" and "ref" in info.value.detail


def test_claims_match_case_sensitively_and_only_text() -> None:
    with pytest.raises(Forbidden):
        check_claims({"ref": ("refs/heads/*",)}, {"ref": "REFS/HEADS/main"})
    with pytest.raises(Forbidden):
        check_claims({"groups": ("*",)}, {"groups": ["admins"]})
    check_claims({"ref_protected": ("true",)}, {"ref_protected": True})
    assert claim_text(None) is None and claim_text(3) == "3"
