"""Claim rules: which token claims a provisioner requires, as glob patterns."""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ca_service.errors import Forbidden


def claim_text(value: Any) -> str | None:
    """A claim as text for matching and names: strings as they are, integers and booleans the
    way JSON writes them (GitLab sends ``ref_protected`` as "true", GitHub ``run_id`` as a
    string; some issuers send numbers); anything else (lists, objects, null) has no text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def check_claims(rules: Mapping[str, tuple[str, ...]], claims: Mapping[str, Any]) -> None:
    """Every configured claim must be present and match one of its patterns (case-sensitive
    globs: ``refs/heads/*`` must not match ``REFS/HEADS/x`` on an issuer that cares)."""
    for name, patterns in sorted(rules.items()):
        if name not in claims:
            raise Forbidden(
                f"the token has no {name!r} claim, which this provisioner requires "
                "(rule: oidc.claim_missing)",
                rule="oidc.claim_missing",
            )
        text = claim_text(claims[name])
        if text is None or not any(fnmatchcase(text, p) for p in patterns):
            shown = text if text is not None else type(claims[name]).__name__
            raise Forbidden(
                f"claim {name!r} = {shown[:100]!r} matches none of {list(patterns)} "
                "(rule: oidc.claim_mismatch)",
                rule="oidc.claim_mismatch",
            )
