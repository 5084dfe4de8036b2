"""Parsing and normalising subject names: DNS (IDNs to A-labels), IP, e-mail and URI."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import idna

from ca_service.domain import NameKind, SubjectName
from ca_service.errors import BadRequest

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_PREFIXES = {"dns": NameKind.DNS, "ip": NameKind.IP, "email": NameKind.EMAIL, "uri": NameKind.URI}


def normalize_dns(value: str) -> str:
    """Lower-case A-label form of a host name; a wildcard only as the whole leftmost label."""
    name = value.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise BadRequest("empty DNS name")
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    if "*" in body:
        raise BadRequest(f"DNS name {value!r}: a wildcard may only be the whole leftmost label")
    if not body.isascii():
        try:
            body = idna.encode(body, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise BadRequest(
                f"DNS name {value!r} is not a valid internationalised name: {exc}"
            ) from None
    body = body.lower()
    labels = body.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise BadRequest(f"DNS name {value!r} has an invalid label {label!r}")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise BadRequest(f"DNS name {value!r} has an invalid A-label {label!r}") from None
    result = ("*." if wildcard else "") + body
    if len(result) > 253:
        raise BadRequest(f"DNS name {value[:40]!r}... is longer than 253 characters")
    return result


def normalize_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise BadRequest(f"{value!r} is not an IP address") from None


def normalize_email(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    if not sep or not local:
        raise BadRequest(f"{value!r} is not an e-mail address")
    if not local.isascii():
        raise BadRequest(f"e-mail address {value!r}: non-ASCII local parts are not supported")
    if not _LOCAL_PART.match(local) or local.startswith(".") or ".." in local:
        raise BadRequest(f"e-mail address {value!r} has an invalid local part")
    if domain.startswith("*"):
        raise BadRequest(f"e-mail address {value!r} may not contain a wildcard")
    return f"{local}@{normalize_dns(domain)}"


def normalize_uri(value: str) -> str:
    uri = value.strip()
    if not uri.isascii() or any(c.isspace() for c in uri):
        raise BadRequest(f"URI {value!r} must be ASCII without spaces (percent-encode it)")
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed IPv6 literal "http://[::1"
        raise BadRequest(f"URI {value!r} is not a valid URI") from None
    if not parts.scheme or not re.match(r"^[a-z][a-z0-9+.-]*$", parts.scheme, re.I):
        raise BadRequest(f"URI {value!r} needs a scheme (for example spiffe:// or https://)")
    if parts.netloc:
        host = parts.hostname or ""
        if not host:
            raise BadRequest(f"URI {value!r} has an empty host")
    return uri


def parse_name(value: str) -> SubjectName:
    """Parse 'dns:x', 'ip:x', 'email:x', 'uri:x', or guess the kind from the form."""
    if not isinstance(value, str):
        raise BadRequest("names must be strings")
    text = value.strip()
    if not text:
        raise BadRequest("empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadRequest("names may not contain control characters")
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in _PREFIXES and not rest.startswith("//"):
        return make_name(_PREFIXES[prefix.lower()], rest)
    if "://" in text:
        return make_name(NameKind.URI, text)
    try:
        ipaddress.ip_address(text)
        return make_name(NameKind.IP, text)
    except ValueError:
        pass
    if "@" in text:
        return make_name(NameKind.EMAIL, text)
    return make_name(NameKind.DNS, text)


def make_name(kind: NameKind, value: str) -> SubjectName:
    normalizers = {
        NameKind.DNS: normalize_dns,
        NameKind.IP: normalize_ip,
        NameKind.EMAIL: normalize_email,
        NameKind.URI: normalize_uri,
    }
    return SubjectName(kind, normalizers[kind](value))
