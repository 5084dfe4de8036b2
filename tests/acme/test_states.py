"""The RFC 8555 section 7.1.6 state machines (ca_service/acme/states.py): every drawn edge is
allowed, every other pair refused, ``sources`` is the exact inverse, and the RFC's own facts
hold as written there."""

from __future__ import annotations

import itertools

import pytest

from ca_service.acme import states
from ca_service.acme.states import IllegalTransition

MACHINES = sorted(states.MACHINES)

# The figures of section 7.1.6, transcribed edge by edge (independently of states.py).
RFC_EDGES: dict[str, set[tuple[str, str]]] = {
    "account": {("valid", "deactivated"), ("valid", "revoked")},
    "order": {
        ("pending", "ready"),
        ("ready", "processing"),
        ("processing", "valid"),
        ("pending", "invalid"),
        ("ready", "invalid"),
        ("processing", "invalid"),
    },
    "authorization": {
        ("pending", "valid"),
        ("pending", "invalid"),
        # pending's line joins the bar under valid that fans out to these three
        ("pending", "revoked"),
        ("pending", "deactivated"),
        ("pending", "expired"),
        ("valid", "revoked"),
        ("valid", "deactivated"),
        ("valid", "expired"),
    },
    "challenge": {("pending", "processing"), ("processing", "valid"), ("processing", "invalid")},
}
RFC_STATES = {
    "account": {"valid", "deactivated", "revoked"},
    "order": {"pending", "ready", "processing", "valid", "invalid"},
    "authorization": {"pending", "valid", "invalid", "revoked", "deactivated", "expired"},
    "challenge": {"pending", "processing", "valid", "invalid"},
}


def edges(machine: str) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in states.MACHINES[machine].items() for b in targets}


def final_states(machine: str) -> set[str]:
    return {s for s, targets in states.MACHINES[machine].items() if not targets}


def test_the_machines_are_the_rfcs() -> None:
    assert set(states.MACHINES) == set(RFC_EDGES)
    for machine in MACHINES:
        assert set(states.MACHINES[machine]) == RFC_STATES[machine], machine
        assert edges(machine) == RFC_EDGES[machine], machine


@pytest.mark.parametrize("machine", MACHINES)
def test_every_drawn_edge_is_allowed(machine: str) -> None:
    drawn = edges(machine)
    assert drawn, machine
    for current, new in drawn:
        assert states.allowed(machine, current, new), (current, new)
        states.require(machine, current, new)  # does not raise


@pytest.mark.parametrize("machine", MACHINES)
def test_every_other_pair_is_refused(machine: str) -> None:
    names = list(states.MACHINES[machine])
    drawn = edges(machine)
    refused = [(a, b) for a, b in itertools.product(names, repeat=2) if (a, b) not in drawn]
    # Self-loops and every move out of a final state are among them.
    assert {(s, s) for s in names} <= set(refused)
    assert {(f, s) for f in final_states(machine) for s in names} <= set(refused)
    for current, new in refused:
        assert not states.allowed(machine, current, new), (current, new)
        with pytest.raises(IllegalTransition, match=f"{machine} cannot go from {current} to {new}"):
            states.require(machine, current, new)


@pytest.mark.parametrize("machine", MACHINES)
def test_unknown_states_are_refused(machine: str) -> None:
    known = next(iter(states.MACHINES[machine]))
    for current, new in [("nonsense", known), (known, "nonsense"), ("", ""), ("VALID", "revoked")]:
        assert not states.allowed(machine, current, new)
        with pytest.raises(IllegalTransition):
            states.require(machine, current, new)


@pytest.mark.parametrize("machine", MACHINES)
def test_sources_is_exactly_the_inverse(machine: str) -> None:
    drawn = edges(machine)
    for new in states.MACHINES[machine]:
        expected = frozenset(a for a, b in drawn if b == new)
        assert states.sources(machine, new) == expected, new
        for source in states.sources(machine, new):
            states.require(machine, source, new)
    # Initial states are reached from nowhere; so is a state that does not exist.
    assert states.sources(machine, "nonsense") == frozenset()


def test_an_order_goes_pending_ready_processing_valid() -> None:
    path = ["pending", "ready", "processing", "valid"]
    for current, new in itertools.pairwise(path):
        states.require("order", current, new)
    for skipped in [("pending", "processing"), ("pending", "valid"), ("ready", "valid")]:
        with pytest.raises(IllegalTransition):
            states.require("order", *skipped)
    # Any stage may fail; nothing leaves valid or invalid.
    assert states.sources("order", "invalid") == {"pending", "ready", "processing"}
    assert final_states("order") == {"valid", "invalid"}
    for new in ["pending", "ready", "processing", "invalid"]:
        with pytest.raises(IllegalTransition):
            states.require("order", "valid", new)
    assert states.sources("order", "valid") == {"processing"}
    assert states.sources("order", "pending") == frozenset()


def test_a_valid_authorization_can_expire_be_deactivated_or_revoked() -> None:
    assert states.MACHINES["authorization"]["valid"] == {"expired", "deactivated", "revoked"}
    for new in ["expired", "deactivated", "revoked"]:
        states.require("authorization", "valid", new)
    with pytest.raises(IllegalTransition):
        states.require("authorization", "valid", "invalid")
    with pytest.raises(IllegalTransition):
        states.require("authorization", "valid", "pending")
    assert final_states("authorization") == {"invalid", "expired", "deactivated", "revoked"}
    assert states.sources("authorization", "valid") == {"pending"}


def test_a_challenge_goes_pending_processing_then_valid_or_invalid_and_never_back() -> None:
    states.require("challenge", "pending", "processing")
    states.require("challenge", "processing", "valid")
    states.require("challenge", "processing", "invalid")
    never = [
        ("pending", "valid"),  # no result without a validation attempt
        ("pending", "invalid"),
        ("processing", "pending"),
        ("valid", "processing"),
        ("valid", "pending"),
        ("invalid", "processing"),
        ("invalid", "pending"),
        ("valid", "invalid"),
        ("invalid", "valid"),
    ]
    for current, new in never:
        with pytest.raises(IllegalTransition):
            states.require("challenge", current, new)
    assert final_states("challenge") == {"valid", "invalid"}


def test_an_account_leaves_valid_only_for_good() -> None:
    assert states.MACHINES["account"]["valid"] == {"deactivated", "revoked"}
    assert final_states("account") == {"deactivated", "revoked"}
    with pytest.raises(IllegalTransition):
        states.require("account", "deactivated", "valid")
    with pytest.raises(IllegalTransition):
        states.require("account", "revoked", "deactivated")


def test_an_unknown_machine_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        states.allowed("certificate", "valid", "revoked")
    with pytest.raises(KeyError):
        states.sources("certificate", "revoked")
