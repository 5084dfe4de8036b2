"""The RFC 8555 section 7.1.6 state machines, as data.

Every status change of an account, order, authorization or challenge is asked here first
(``require``), then made in the store as a compare-and-set from the same ``from`` states, so
that a move the RFC does not draw is refused even when two requests race. "expired" is
reached by time, not by a request: it is drawn here too so that readers may apply it.
"""

from __future__ import annotations

from collections.abc import Mapping

ACCOUNT: Mapping[str, frozenset[str]] = {
    "valid": frozenset({"deactivated", "revoked"}),
    "deactivated": frozenset(),
    "revoked": frozenset(),
}

ORDER: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"ready", "invalid"}),
    "ready": frozenset({"processing", "invalid"}),
    "processing": frozenset({"valid", "invalid"}),
    "valid": frozenset(),
    "invalid": frozenset(),
}

# The RFC's figure joins pending's own line to the one below valid, so a pending
# authorization may also be revoked, deactivated or expire without ever being valid.
AUTHORIZATION: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"valid", "invalid", "expired", "deactivated", "revoked"}),
    "valid": frozenset({"expired", "deactivated", "revoked"}),
    "invalid": frozenset(),
    "expired": frozenset(),
    "deactivated": frozenset(),
    "revoked": frozenset(),
}

CHALLENGE: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"processing"}),
    "processing": frozenset({"valid", "invalid"}),
    "valid": frozenset(),
    "invalid": frozenset(),
}

MACHINES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "account": ACCOUNT,
    "order": ORDER,
    "authorization": AUTHORIZATION,
    "challenge": CHALLENGE,
}


class IllegalTransition(Exception):
    """A move the RFC does not allow (a programming or race outcome, answered as a 4xx)."""


def allowed(machine: str, current: str, new: str) -> bool:
    return new in MACHINES[machine].get(current, frozenset())


def sources(machine: str, new: str) -> frozenset[str]:
    """Every state ``new`` may be reached from: the WHERE of the store's compare-and-set."""
    return frozenset(s for s, targets in MACHINES[machine].items() if new in targets)


def require(machine: str, current: str, new: str) -> None:
    if not allowed(machine, current, new):
        raise IllegalTransition(f"{machine} cannot go from {current} to {new}")
