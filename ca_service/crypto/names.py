"""Parsing and normalising subject names: DNS (IDNs to A-labels), IP, e-mail and URI.

Every name is refused if it holds a character that does not print (controls, bidi and
zero-width marks, unassigned code points, line separators): such a name can read one way to a
person and match another way in software. URIs are accepted only in their RFC 3986 normal form,
so that a pattern compared with the text of a URI compares what every consumer resolves.
"""

from __future__ import annotations

import ipaddress
import re
import string
import unicodedata
from urllib.parse import unquote

import idna

from ca_service.domain import NameKind, SubjectName
from ca_service.errors import BadRequest

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_PREFIXES = {"dns": NameKind.DNS, "ip": NameKind.IP, "email": NameKind.EMAIL, "uri": NameKind.URI}

UNPRINTABLE_RULE = "name.unprintable"


def refuse_unprintable(value: str, what: str) -> None:
    """BadRequest when ``value`` holds a character that does not print.

    ``str.isprintable`` is false for Unicode categories Cc, Cf (bidi controls U+202A-U+202E,
    U+2066-U+2069, zero-width U+200B-U+200D, U+2060, U+FEFF), Co, Cs, Cn, Zl, Zp and every space
    but U+0020: exactly the characters that let a name look like another one.
    """
    for char in value:
        if not char.isprintable():
            code = f"U+{ord(char):04X}"
            label = unicodedata.name(char, unicodedata.category(char))
            raise BadRequest(
                f"{what} contains the non-printable character {code} ({label})",
                rule=UNPRINTABLE_RULE,
            )


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


# RFC 3986 section 2: unreserved characters are never percent-encoded in the normal form.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_URI_CHARS = _UNRESERVED | frozenset(":/?#[]@!$&'()*+,;=%")
_URI_PARTS = re.compile(r"^([^:/?#]+):(//([^/?#]*))?([^?#]*)(\?[^#]*)?(#.*)?$")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
# RFC 3986 section 6.2.3: a port that is the scheme's default is left out.
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SPIFFE_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def uri_normal_form(value: str) -> str:
    """The RFC 3986 section 6.2.2-6.2.3 normal form of ``value``, or BadRequest when a URI has
    none that is safe to compare: dot segments (plain or percent-encoded), encoded NUL or other
    controls, malformed escapes, characters outside the URI syntax."""
    refuse_unprintable(value.strip(" "), f"URI {value!r}")
    uri = value.strip()
    if not uri.isascii() or any(c.isspace() for c in uri):
        raise BadRequest(f"URI {value!r} must be ASCII without spaces (percent-encode it)")
    stray = sorted(set(uri) - _URI_CHARS)
    if stray:
        raise BadRequest(f"URI {value!r} contains {stray[0]!r}, which a URI may not hold unencoded")
    if _BAD_PERCENT.search(uri):
        raise BadRequest(f"URI {value!r} has a '%' that does not start a %XX escape")
    uri = _PERCENT.sub(lambda m: _normal_escape(m.group(1), value), uri)
    parts = _URI_PARTS.match(uri)
    if parts is None or not _SCHEME.match(parts.group(1).lower()):
        raise BadRequest(f"URI {value!r} needs a scheme (for example spiffe:// or https://)")
    scheme = parts.group(1).lower()
    authority = parts.group(3)
    path, query, fragment = parts.group(4), parts.group(5) or "", parts.group(6) or ""
    _refuse_dot_segments(path, value)
    if authority is None:
        return f"{scheme}:{path}{query}{fragment}"
    authority = _normal_authority(authority, scheme, value)
    if not path and scheme in ("http", "https"):
        path = "/"
    if scheme == "spiffe":
        _check_spiffe_id(authority, path, query + fragment, value)
    return f"{scheme}://{authority}{path}{query}{fragment}"


def _normal_escape(hex_digits: str, original: str) -> str:
    """Decode an escaped unreserved character; refuse an escaped control; upper-case the rest."""
    code = int(hex_digits, 16)
    if code < 0x20 or code == 0x7F:
        raise BadRequest(
            f"URI {original!r} encodes the control character %{hex_digits.upper()}",
            rule=UNPRINTABLE_RULE,
        )
    char = chr(code)
    return char if char in _UNRESERVED else f"%{hex_digits.upper()}"


def _refuse_dot_segments(path: str, original: str) -> None:
    """RFC 3986 section 5.2.4 would remove '.' and '..': the URI then names another path than
    the one a prefix pattern saw. Also refused behind an encoded slash, for consumers that
    decode %2F before they resolve."""
    plain = path.split("/")
    decoded = re.split(r"[/\\]", unquote(path))
    if any(segment in (".", "..") for segment in plain + decoded):
        raise BadRequest(
            f"URI {original!r} has a '.' or '..' path segment", rule="uri.dot_segments"
        )


def _normal_authority(authority: str, scheme: str, original: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, bracket, rest = hostport.partition("]")
        host += bracket
        if not bracket or (rest and not rest.startswith(":")):
            raise BadRequest(f"URI {original!r} is not a valid URI")
        port = rest[1:]
        try:
            ipaddress.ip_address(host[1:-1])
        except ValueError:
            raise BadRequest(f"URI {original!r} has an invalid IP literal") from None
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise BadRequest(f"URI {original!r} has an empty host")
    if "%" in host or "[" in host[1:] or "]" in host[:-1]:
        raise BadRequest(f"URI {original!r} has an invalid host")
    host = host.lower()
    if port:
        if not port.isdigit() or int(port) > 65535:
            raise BadRequest(f"URI {original!r} has an invalid port")
        port = "" if int(port) == _DEFAULT_PORTS.get(scheme) else str(int(port))
    return f"{userinfo}{at}{host}" + (f":{port}" if port else "")


def _check_spiffe_id(authority: str, path: str, rest: str, original: str) -> None:
    """The SPIFFE ID rules: a lower-case trust domain, segments of [A-Za-z0-9._-], no port,
    userinfo, query or fragment, no percent-encoding."""
    if not _SPIFFE_TRUST_DOMAIN.match(authority) or rest:
        raise BadRequest(f"URI {original!r} is not a valid SPIFFE ID")
    if path and not all(_SPIFFE_SEGMENT.match(s) for s in path[1:].split("/")):
        raise BadRequest(f"URI {original!r} is not a valid SPIFFE ID")


def normalize_uri(value: str) -> str:
    """A URI SAN exactly as sent, if that is its normal form; otherwise refused, naming the
    normal form, so the certificate holds the very text the caller asked for."""
    normal = uri_normal_form(value)
    if normal != value.strip():
        raise BadRequest(
            f"URI {value!r} is not in RFC 3986 normal form (section 6); send {normal!r}",
            rule="uri.normal_form",
        )
    return normal


def parse_name(value: str) -> SubjectName:
    """Parse 'dns:x', 'ip:x', 'email:x', 'uri:x', or guess the kind from the form."""
    if not isinstance(value, str):
        raise BadRequest("names must be strings")
    # Checked before strip(): U+0085, U+00A0, U+2028 and U+2029 count as white space there.
    refuse_unprintable(value.strip(" "), f"name {value!r}")
    text = value.strip()
    if not text:
        raise BadRequest("empty name")
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
    refuse_unprintable(value.strip(" "), f"{kind.value} name {value!r}")
    return SubjectName(kind, normalizers[kind](value))
