"""CAA evaluation (RFC 8659, with RFC 8657's parameters): does a found CAA RRset authorize us?

Pure functions over already-fetched records, so the rules can be tested without a network; the
tree climbing and the DNS lookups live in ``validation.check_caa``.
"""

from __future__ import annotations

from dataclasses import dataclass

# The tags RFC 8659 defines. A critical record with any other tag means the domain owner relies on
# a rule we do not implement, and RFC 8659 section 4.1 says a CA must then not issue.
KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef"})
CRITICAL_FLAG = 128


@dataclass(frozen=True)
class CAARecord:
    """One CAA resource record: the flags octet, the tag, and the raw value."""

    flags: int
    tag: str
    value: str


@dataclass(frozen=True)
class IssueValue:
    """An issue/issuewild value split into its issuer domain name and parameters."""

    issuer: str  # lower-case, no trailing dot; "" means "no CA is authorized by this record"
    parameters: dict[str, str]


def parse_issue_value(value: str) -> IssueValue | None:
    """Split ``issuer-domain-name *(";" tag=value)``; None when malformed.

    A malformed value authorizes nobody (RFC 8659 section 4.2: the CA treats it as not naming
    itself), so the caller need not tell "malformed" from "someone else".
    """
    head, _, rest = value.partition(";")
    issuer = head.strip().lower().rstrip(".")
    if any(c.isspace() for c in issuer):
        return None
    parameters: dict[str, str] = {}
    for part in rest.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or not key or not key.isalnum():
            return None
        parameters[key] = val.strip()
    return IssueValue(issuer, parameters)


def refusal(
    records: list[CAARecord],
    *,
    wildcard: bool,
    identities: tuple[str, ...],
    challenge_type: str | None = None,
    account_uri: str | None = None,
) -> str | None:
    """Return why this non-empty CAA RRset forbids issuance by us, or None when it authorizes us.

    ``challenge_type``/``account_uri`` are matched against RFC 8657's ``validationmethods`` and
    ``accounturi`` parameters. When the caller cannot say (None), a record that carries such a
    restriction does not authorize us: ignoring it would let any account or method through a
    limit the domain owner set on purpose (fail closed).
    """
    for record in records:
        tag = record.tag.lower()
        if record.flags & CRITICAL_FLAG and tag not in KNOWN_TAGS:
            return f"CAA record with the critical flag and an unknown tag {record.tag!r}"
    wanted = {i.lower().rstrip(".") for i in identities}
    issuewild = [r for r in records if r.tag.lower() == "issuewild"]
    # RFC 8659 section 4.3: for a wildcard, issuewild (when present) replaces issue entirely.
    relevant = (
        issuewild if wildcard and issuewild else [r for r in records if r.tag.lower() == "issue"]
    )
    kind = "issuewild" if wildcard and issuewild else "issue"
    if not relevant:
        # Only iodef (or only issuewild for a non-wildcard name): no restriction on issue.
        return None
    for record in relevant:
        parsed = parse_issue_value(record.value)
        if parsed is None or not parsed.issuer or parsed.issuer not in wanted:
            continue
        methods = parsed.parameters.get("validationmethods")
        if methods is not None and (
            challenge_type is None or challenge_type not in methods.split(",")
        ):
            continue
        uri = parsed.parameters.get("accounturi")
        if uri is not None and (account_uri is None or uri != account_uri):
            continue
        return None
    return f"CAA {kind} records do not name this CA ({', '.join(sorted(wanted)) or 'none'})"
