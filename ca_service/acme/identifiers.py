"""ACME identifiers: parsed from an order, normalised as the core normalises names, and held
against a CSR at finalize.

A name reaches the core's policy in one normal form (lower-case A-label, canonical IP text),
so an order for ``Foo.EXAMPLE.test`` and a CSR for ``foo.example.test`` are the same name, and
``xn--`` tricks cannot make two spellings of one name pass two different checks.
"""

from __future__ import annotations

from typing import Any

from ca_service.acme.problems import ACMEProblem, Subproblem
from ca_service.crypto.csr import ParsedCSR
from ca_service.crypto.names import parse_name
from ca_service.domain import ACMEIdentifier, NameKind
from ca_service.errors import CAError

MAX_IDENTIFIERS = 100


def parse_identifiers(raw: Any) -> tuple[ACMEIdentifier, ...]:
    """An order's ``identifiers``, normalised and de-duplicated; every bad one is reported."""
    if not isinstance(raw, list) or not raw:
        raise ACMEProblem("malformed", "identifiers must be a non-empty list")
    if len(raw) > MAX_IDENTIFIERS:
        raise ACMEProblem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers per order")
    found: list[ACMEIdentifier] = []
    problems: list[Subproblem] = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or set(item) - {"type", "value"}
            or not isinstance(item.get("type"), str)
            or not isinstance(item.get("value"), str)
        ):
            raise ACMEProblem("malformed", 'each identifier is {"type": ..., "value": ...}')
        kind, value = item["type"], item["value"]
        shown = {"type": kind, "value": value[:255]}
        if kind not in ("dns", "ip"):
            problems.append(
                Subproblem(
                    "unsupportedIdentifier", f"identifier type {kind!r} is not supported", shown
                )
            )
            continue
        try:
            found.append(normalise(kind, value))
        except CAError as exc:
            problems.append(Subproblem("rejectedIdentifier", exc.detail, shown))
    if problems:
        raise compound(problems)
    return tuple(dict.fromkeys(found))


def normalise(kind: str, value: str) -> ACMEIdentifier:
    wildcard = kind == "dns" and value.startswith("*.")
    name = parse_name(f"{kind}:{value}")
    if kind == "ip" and name.kind is not NameKind.IP:
        raise ACMEProblem("malformed", f"{value!r} is not an IP address")
    if kind == "dns" and name.kind is not NameKind.DNS:
        raise ACMEProblem("malformed", f"{value!r} is not a DNS name (IP addresses are type ip)")
    text = name.value
    if wildcard and not text.startswith("*."):
        text = "*." + text
    return ACMEIdentifier(kind, text)


def compound(problems: list[Subproblem]) -> ACMEProblem:
    """One problem for one failure, ``compound`` with subproblems for several (RFC 8555 6.7.1)."""
    if len(problems) == 1:
        only = problems[0]
        return ACMEProblem(only.type, only.detail, subproblems=tuple(problems))
    return ACMEProblem(
        "compound",
        f"{len(problems)} identifiers were refused; see subproblems",
        subproblems=tuple(problems),
    )


def check_csr_matches(csr: ParsedCSR, identifiers: tuple[ACMEIdentifier, ...]) -> None:
    """RFC 8555 section 7.4: the CSR names exactly the order's identifiers (the CN, if any,
    being one of them), or the order cannot be finalized with it."""
    wanted = {(i.type, i.value) for i in identifiers}
    asked = set()
    for name in csr.names:
        if name.kind not in (NameKind.DNS, NameKind.IP):
            raise ACMEProblem("badCSR", f"the CSR asks for {name}, which no order can hold")
        asked.add((name.kind.value, name.value))
    if csr.common_name:
        try:
            cn = parse_name(csr.common_name)
        except CAError:
            raise ACMEProblem("badCSR", "the CSR's common name is not one of the order's") from None
        if (cn.kind.value, cn.value) not in wanted:
            raise ACMEProblem("badCSR", "the CSR's common name is not one of the order's names")
        asked.add((cn.kind.value, cn.value))
    if asked != wanted:
        missing = sorted(v for _, v in wanted - asked)
        extra = sorted(v for _, v in asked - wanted)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("not in the order: " + ", ".join(extra))
        raise ACMEProblem("badCSR", "the CSR's names differ from the order's: " + "; ".join(parts))
