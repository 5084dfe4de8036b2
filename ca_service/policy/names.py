"""Name matching: caller patterns (glob-like) and RFC 5280 name constraints of an authority.

Caller patterns, as written in token policies and config:
  ``host.example.test``       exactly that DNS name
  ``*.example.test``          any name one or more labels below example.test (not the apex)
  ``10.0.0.0/8``, ``::1``     IP addresses inside the network (or that one address)
  ``*@example.test``          any e-mail address at that domain; ``a@b.test`` exactly that one
  ``spiffe://cluster/ns/*``   URIs below that path (the pattern ends in ``/*``); else exactly

URI patterns and URI names are both in RFC 3986 normal form (URI names are refused otherwise),
so a prefix compares what a consumer resolves: ``/ns/ci/../admin`` never reaches here.

Subject patterns (``allowed_subjects``) are ``ATTR=value`` with ``*`` for any run of
characters, e.g. ``CN=build-*``; they are compared case-sensitively with one attribute value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.x509.oid import NameOID, ObjectIdentifier
from publicsuffixlist import PublicSuffixList

from ca_service.crypto.names import (
    normalize_dns,
    normalize_email,
    refuse_unprintable,
    uri_normal_form,
)
from ca_service.domain import NameKind, SubjectName
from ca_service.errors import BadRequest

# The public suffix list, ICANN and private sections, as shipped with the package: a wildcard
# on one of these (or on a bare TLD, which the list's default rule makes public) covers names
# of every registrant below it.
_PSL = PublicSuffixList()

# RFC 4514 section 3 short names (plus the usual extras) for the attributes a subject may hold.
SUBJECT_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}


def is_public_suffix(domain: str) -> bool:
    """Whether ``domain`` (A-labels) is a public suffix or a bare TLD."""
    return bool(_PSL.is_public(domain))


def _is_within(name: str, domain: str) -> bool:
    """RFC 5280 dNSName subtree match: the domain itself or any name below it."""
    return name == domain or name.endswith("." + domain)


def matches_pattern(name: SubjectName, pattern: str) -> bool:
    """Whether a normalised name matches one pattern as ``validate_pattern`` returns it (patterns
    are normalised once, when a token or rule is made, so matching compares normal forms)."""
    if name.kind is NameKind.IP:
        try:
            network = ipaddress.ip_network(pattern)
        except ValueError:
            return False
        address = ipaddress.ip_address(name.value)
        return address.version == network.version and address in network
    if name.kind is NameKind.URI:
        if pattern.endswith("/*"):
            return name.value.startswith(pattern[:-1])
        return name.value == pattern
    if name.kind is NameKind.EMAIL:
        if "@" not in pattern:
            return False
        local, _, domain = pattern.rpartition("@")
        _name_local, _, name_domain = name.value.rpartition("@")
        if local in ("*", ""):
            return name_domain == domain.lower()
        return name.value.lower() == pattern.lower()
    # DNS. A wildcard name "*.b.test" ends with ".b.test" too, so it needs "*.b.test" or a
    # pattern above it, never "a.b.test". Other kinds of pattern cannot end a DNS name.
    if pattern.startswith("*."):
        return name.value.endswith(pattern[1:])
    return name.value == pattern


def first_unmatched(names: Iterable[SubjectName], patterns: Sequence[str]) -> SubjectName | None:
    for name in names:
        if not any(matches_pattern(name, p) for p in patterns):
            return name
    return None


def validate_pattern(pattern: str) -> str:
    """Check a caller pattern when it is configured, so that a typo fails early."""
    text = pattern.strip()
    if not text:
        raise BadRequest("empty name pattern")
    if "://" in text:
        return _validate_uri_pattern(text)
    if "@" in text:
        local, _, domain = text.rpartition("@")
        if local:  # "*" or empty: any address at the domain; else one address, checked
            local = normalize_email(text).rpartition("@")[0]
        return f"{local}@{normalize_dns(domain)}"
    try:
        # An interface's network: "10.1.2.3/8" is written down as 10.0.0.0/8.
        return str(ipaddress.ip_interface(text).network)
    except ValueError:
        pass
    body = text[2:] if text.startswith("*.") else text
    if "*" in body:
        raise BadRequest(f"name pattern {text!r}: '*' may only be the whole leftmost label")
    normal = normalize_dns(body)
    if text.startswith("*."):
        if is_public_suffix(normal):
            raise BadRequest(
                f"name pattern {text!r} would allow every name below the public suffix {normal!r}",
                rule="names.public_suffix_wildcard",
            )
        return "*." + normal
    return normal


def _validate_uri_pattern(text: str) -> str:
    """The normal form of a URI pattern; '*' only as the whole last path segment, so that
    ``spiffe://cluster/ns/ci/*`` never matches ``spiffe://cluster/ns/ci-admin/...``."""
    below = text.endswith("/*")
    base = text[:-2] if below else text
    if "*" in base or "://" not in base:
        raise BadRequest(
            f"URI pattern {text!r}: write scheme://host[/path], with '*' only as the last path "
            "segment, after '/'"
        )
    normal = uri_normal_form(base)
    if not below:
        return normal
    return normal + ("*" if normal.endswith("/") else "/*")


def validate_subject_pattern(pattern: str) -> str:
    """Check an ``allowed_subjects`` pattern (``CN=build-*``) when it is configured."""
    attribute, sep, value = pattern.strip().partition("=")
    attribute = attribute.strip().upper()
    if not sep or attribute not in SUBJECT_ATTRIBUTES or not value:
        raise BadRequest(
            f"subject pattern {pattern!r}: write ATTR=value with ATTR one of "
            f"{', '.join(SUBJECT_ATTRIBUTES)}, for example CN=build-*"
        )
    refuse_unprintable(value, f"subject pattern {pattern!r}")
    return f"{attribute}={value}"


def subject_value_allowed(oid: ObjectIdentifier, value: str, patterns: Iterable[str]) -> bool:
    """Whether one subject attribute value matches one of the ``ATTR=glob`` patterns."""
    for pattern in patterns:
        attribute, _, glob = pattern.partition("=")
        if SUBJECT_ATTRIBUTES.get(attribute) != oid:
            continue
        regex = ".*".join(re.escape(part) for part in glob.split("*"))
        if re.fullmatch(regex, value, flags=re.DOTALL):
            return True
    return False


@dataclass(frozen=True)
class NameConstraintsSpec:
    """The permitted and excluded subtrees written into an intermediate's nameConstraints."""

    permitted_dns: tuple[str, ...] = ()
    excluded_dns: tuple[str, ...] = ()
    permitted_ip: tuple[str, ...] = ()
    excluded_ip: tuple[str, ...] = ()
    permitted_email: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (
            self.permitted_dns
            or self.excluded_dns
            or self.permitted_ip
            or self.excluded_ip
            or self.permitted_email
        )

    def to_json(self) -> dict[str, list[str]]:
        return {
            "permitted_dns": list(self.permitted_dns),
            "excluded_dns": list(self.excluded_dns),
            "permitted_ip": list(self.permitted_ip),
            "excluded_ip": list(self.excluded_ip),
            "permitted_email": list(self.permitted_email),
        }

    @classmethod
    def from_json(cls, data: dict[str, list[str]] | None) -> NameConstraintsSpec:
        data = data or {}
        return cls(
            permitted_dns=tuple(data.get("permitted_dns", ())),
            excluded_dns=tuple(data.get("excluded_dns", ())),
            permitted_ip=tuple(data.get("permitted_ip", ())),
            excluded_ip=tuple(data.get("excluded_ip", ())),
            permitted_email=tuple(data.get("permitted_email", ())),
        )

    @classmethod
    def parse(
        cls,
        permitted: Iterable[str] = (),
        excluded: Iterable[str] = (),
    ) -> NameConstraintsSpec:
        """Sort user-written subtrees (``example.test``, ``10.0.0.0/8``, ``@example.test``)."""
        p_dns: list[str] = []
        p_ip: list[str] = []
        p_mail: list[str] = []
        e_dns: list[str] = []
        e_ip: list[str] = []
        for target_dns, target_ip, target_mail, items in (
            (p_dns, p_ip, p_mail, permitted),
            (e_dns, e_ip, None, excluded),
        ):
            for item in items:
                text = item.strip()
                if text.startswith("@"):
                    if target_mail is None:
                        raise BadRequest("excluded e-mail constraints are not supported")
                    target_mail.append(normalize_dns(text[1:]))
                    continue
                if "/" in text:
                    try:
                        target_ip.append(str(ipaddress.ip_network(text)))
                    except ValueError as exc:
                        raise BadRequest(f"name constraint {text!r}: {exc}") from None
                    continue
                if text.startswith("*"):
                    raise BadRequest(
                        f"name constraint {text!r}: write the domain itself (it covers subdomains)"
                    )
                target_dns.append(normalize_dns(text))
        return cls(tuple(p_dns), tuple(e_dns), tuple(p_ip), tuple(e_ip), tuple(p_mail))

    def violation(self, name: SubjectName) -> str | None:
        """Why ``name`` falls outside these constraints, or None when it is inside."""
        if name.kind is NameKind.DNS:
            # A wildcard "*.b.test" is within a subtree exactly when "b.test" is.
            value = name.value
            if any(_is_within(value, d) for d in self.excluded_dns):
                return f"{name} is in an excluded subtree"
            if self.permitted_dns and not any(_is_within(value, d) for d in self.permitted_dns):
                return f"{name} is outside the permitted DNS subtrees"
        elif name.kind is NameKind.IP:
            address = ipaddress.ip_address(name.value)
            nets = [ipaddress.ip_network(n) for n in self.excluded_ip]
            if any(address.version == n.version and address in n for n in nets):
                return f"{name} is in an excluded IP range"
            permitted = [ipaddress.ip_network(n) for n in self.permitted_ip]
            if permitted and not any(
                address.version == n.version and address in n for n in permitted
            ):
                return f"{name} is outside the permitted IP ranges"
        elif name.kind is NameKind.EMAIL:
            domain = name.value.rpartition("@")[2]
            if self.permitted_email and not any(
                _is_within(domain, d) for d in self.permitted_email
            ):
                return f"{name} is outside the permitted e-mail domains"
        return None
