"""Allowed-name patterns with ``{claim}`` placeholders, filled from a token's claims.

A claim value is attacker-influenced text (a branch name, a repository name), so it never
reaches a name as it is: each becomes one DNS label. Lowercase; every character outside
``[a-z0-9-]`` becomes ``-``; runs of ``-`` collapse; ``-`` is stripped at both ends. A value
with nothing left, or longer than 63 characters once mapped, is refused (rule
``oidc.claim_label``) rather than truncated: two long branch names that share their first 63
characters would otherwise get the same certificate name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ca_service.errors import BadRequest, Forbidden
from ca_service.oidc.claims import claim_text
from ca_service.policy.names import validate_pattern

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]{0,63})\}")
_LABEL_INVALID = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")
MAX_LABEL = 63


def placeholders(pattern: str) -> list[str]:
    """The claims ``pattern`` names; BadRequest (rule ``provisioner.placeholder``) for a
    brace that is not part of a ``{claim}``, or a placeholder outside a DNS name pattern."""
    rest = _PLACEHOLDER.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise BadRequest(
            f"allowed name {pattern!r}: braces must enclose a claim name, as in "
            "{repository_owner} (rule: provisioner.placeholder)",
            rule="provisioner.placeholder",
        )
    found = _PLACEHOLDER.findall(pattern)
    if found and ("@" in pattern or "://" in pattern or "/" in pattern or ":" in pattern):
        raise BadRequest(
            f"allowed name {pattern!r}: placeholders may be used in DNS names only "
            "(rule: provisioner.placeholder)",
            rule="provisioner.placeholder",
        )
    return found


def check_template(pattern: str) -> str:
    """Validate an allowed-name pattern when a provisioner is made: its placeholders, and the
    pattern itself with each placeholder standing for a plain label."""
    names = placeholders(pattern)
    sample = _PLACEHOLDER.sub("x", pattern)
    checked = validate_pattern(sample)
    if not names:
        return checked
    return pattern.strip()


def dns_label(claim: str, value: Any) -> str:
    """The claim ``value`` as one DNS label, or Forbidden (rule ``oidc.claim_label``)."""
    text = claim_text(value)
    if text is None or not text:
        raise Forbidden(
            f"claim {claim!r} is not a non-empty string or number, so it cannot become a "
            "DNS label (rule: oidc.claim_label)",
            rule="oidc.claim_label",
        )
    label = _DASHES.sub("-", _LABEL_INVALID.sub("-", text.lower())).strip("-")
    if not label:
        raise Forbidden(
            f"claim {claim!r} = {text[:100]!r} has no letter or digit left as a DNS label "
            "(rule: oidc.claim_label)",
            rule="oidc.claim_label",
        )
    if len(label) > MAX_LABEL:
        raise Forbidden(
            f"claim {claim!r} = {text[:100]!r} is longer than {MAX_LABEL} characters as a "
            "DNS label (rule: oidc.claim_label)",
            rule="oidc.claim_label",
        )
    return label


def fill(pattern: str, claims: Mapping[str, Any]) -> str:
    """``pattern`` with each ``{claim}`` replaced by its DNS label, checked as a name pattern
    again (a filled label may still make an invalid name, e.g. a name too long)."""

    def label(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in claims:
            raise Forbidden(
                f"allowed name {pattern!r} needs the claim {name!r}, which the token lacks "
                "(rule: oidc.claim_label)",
                rule="oidc.claim_label",
            )
        return dns_label(name, claims[name])

    filled = _PLACEHOLDER.sub(label, pattern)
    try:
        return validate_pattern(filled)
    except BadRequest as exc:
        raise Forbidden(
            f"allowed name {pattern!r} filled from the token is not a valid name: {exc.detail} "
            "(rule: oidc.claim_label)",
            rule="oidc.claim_label",
        ) from None
