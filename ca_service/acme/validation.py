"""ACME challenge validation (RFC 8555 section 8, RFC 8737, RFC 8738) and the CAA check (RFC 8659).

Self-contained: it knows nothing of accounts, orders or the web routes; the ACME front end hands
it an identifier, a token and a key authorization and gets back nothing or a ``ValidationFailed``
naming the ACME error type. Every network or parse trouble becomes a ``ValidationFailed`` with one
safe line of detail, so a hostile or broken client can never make the server answer 500.

Every name is resolved through the configured resolver and every connection goes to an address
resolved here, never through the system resolver behind a library's back: the resolver setting is
what lets tests (and a split-horizon deployment) decide which addresses are validated, and redirects
are followed here, one hop at a time, so that each hop obeys the same rules (Boulder's way).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from OpenSSL import SSL

from ca_service.acme import caa

ACME_TLS_ALPN = b"acme-tls/1"
# RFC 8737 section 6.1: id-pe-acmeIdentifier.
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
CHALLENGE_PATH = "/.well-known/acme-challenge/"
USER_AGENT = "ca-service-acme-validator"
# Failures worth another attempt: the client may not have put the answer in place yet, or the
# network hiccuped. A wrong key authorization or a CAA refusal will not change by waiting.
TRANSIENT_TYPES = frozenset({"connection", "dns", "incorrectResponse"})
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class ValidationConfig:
    """How validation reaches the client's servers; every network step is bounded by these."""

    http01_port: int = 80
    tlsalpn01_port: int = 443
    # (host, port) of the DNS server for A/AAAA, TXT and CAA alike; None = the system's.
    resolver: tuple[str, int] | None = None
    # Issuer domain names that CAA "issue"/"issuewild" must name for us.
    caa_identities: tuple[str, ...] = ()
    timeout_seconds: float = 5.0  # per network operation (connect, read, DNS query)
    attempts: int = 3  # bounded retries of a failed validation
    retry_delay_seconds: float = 1.0
    max_body_bytes: int = 8192  # http-01 reads at most this much (the RFC body is tiny)
    max_redirects: int = 5


@dataclass(frozen=True)
class Identifier:
    """An ACME identifier: type "dns" (lower-case A-label, no "*.") or "ip" (address text)."""

    type: str
    value: str


class ValidationFailed(Exception):
    """A challenge or CAA check failed; ``acme_type`` is the ACME error type suffix.

    One of "connection", "unauthorized", "incorrectResponse", "dns", "caa", "tls",
    "rejectedIdentifier"; ``detail`` is one line safe to show to the client.
    """

    def __init__(self, acme_type: str, detail: str) -> None:
        super().__init__(detail)
        self.acme_type = acme_type
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    def __repr__(self) -> str:
        return f"ValidationFailed({self.acme_type!r}, {self.detail!r})"


def key_authorization_digest(key_authorization: str) -> bytes:
    """SHA-256 of the key authorization, the value dns-01 and tls-alpn-01 prove."""
    return hashlib.sha256(key_authorization.encode("utf-8")).digest()


def _dns01_value(key_authorization: str) -> str:
    digest = key_authorization_digest(key_authorization)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- identifiers -----------------------------------------------------------------------------


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _check_identifier(identifier: Identifier) -> IPAddress | None:
    """Refuse identifiers this module cannot safely validate; return the address of an IP one."""
    if identifier.type == "ip":
        try:
            return ipaddress.ip_address(identifier.value)
        except ValueError:
            raise ValidationFailed(
                "rejectedIdentifier", f"{identifier.value!r} is not an IP address"
            ) from None
    if identifier.type != "dns":
        raise ValidationFailed(
            "rejectedIdentifier", f"identifier type {identifier.type!r} is not supported"
        )
    value = identifier.value
    labels = value.split(".")
    # The front end normalises names; a value that is not a plain lower-case A-label here (a
    # wildcard, a trailing dot, an empty label) would make us validate a different name.
    if len(value) > 253 or len(labels) < 2 or not all(_DNS_LABEL.match(lb) for lb in labels):
        raise ValidationFailed(
            "rejectedIdentifier", f"{value!r} is not a lower-case DNS name in A-label form"
        )
    return None


# --- DNS -------------------------------------------------------------------------------------


def _resolver(config: ValidationConfig) -> dns.resolver.Resolver:
    """A fresh resolver per lookup: no cache, so a record the client just changed is seen."""
    if config.resolver is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ValidationFailed("dns", f"no system DNS resolver: {type(exc).__name__}") from None
    else:
        resolver = dns.resolver.Resolver(configure=False)
        host, port = config.resolver
        resolver.nameservers = [host]
        resolver.port = port
    resolver.timeout = config.timeout_seconds
    resolver.lifetime = config.timeout_seconds
    return resolver


def _query(name: str, rdtype: str, config: ValidationConfig) -> dns.resolver.Answer | None:
    """Records of ``rdtype`` at ``name``; None when the name or the type does not exist.

    SERVFAIL, timeouts and refusals raise a "dns" failure: the caller cannot tell "absent" from
    "hidden", and for CAA treating hidden as absent would let an attacker who can break DNS skip
    the check (fail closed).
    """
    resolver = _resolver(config)
    try:
        qname = dns.name.from_text(name)
        return resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.resolver.LifetimeTimeout:
        raise ValidationFailed(
            "dns", f"DNS {rdtype} query for {name} timed out after {config.timeout_seconds:g} s"
        ) from None
    except dns.resolver.NoNameservers:
        raise ValidationFailed(
            "dns", f"DNS {rdtype} query for {name} failed (SERVFAIL or refused)"
        ) from None
    except (dns.exception.DNSException, ValueError, OSError) as exc:
        raise ValidationFailed(
            "dns", f"DNS {rdtype} query for {name} failed: {type(exc).__name__}"
        ) from None


def _rrset(answer: dns.resolver.Answer | None) -> list[object]:
    if answer is None or answer.rrset is None:
        return []
    return list(answer.rrset)


def _resolve_addresses(name: str, config: ValidationConfig) -> list[str]:
    """AAAA then A addresses of ``name`` (Boulder tries IPv6 first and falls back to IPv4)."""
    addresses: list[str] = []
    failure: ValidationFailed | None = None
    for rdtype in ("AAAA", "A"):
        try:
            addresses.extend(str(r) for r in _rrset(_query(name, rdtype, config)))
        except ValidationFailed as exc:
            # One family failing is survivable if the other answers.
            failure = exc
    if not addresses:
        raise failure or ValidationFailed("dns", f"no A or AAAA record for {name}")
    return addresses


def _addresses_for(host: str, config: ValidationConfig) -> list[str]:
    """The addresses to connect to for a URL host: the literal IP, or the resolved name."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return _resolve_addresses(host, config)


# --- http-01 ---------------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address we resolved ourselves, whatever host name the URL and Host carry."""

    def __init__(self, address: str, port: int, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), timeout=self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS for a redirect hop; the certificate is not verified (as Boulder does).

    http-01 proves control by the content served, not by a certificate; a client that moved its
    site to HTTPS usually has no valid certificate yet, which is why it is asking us.
    """

    def __init__(self, address: str, port: int, timeout: float, server_name: str | None) -> None:
        super().__init__(address, port, timeout)
        self._server_name = server_name

    def connect(self) -> None:
        super().connect()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        assert self.sock is not None
        self.sock = context.wrap_socket(self.sock, server_hostname=self._server_name)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _http_get(
    url: str, host_header: str, config: ValidationConfig
) -> tuple[int, str | None, bytes]:
    """GET ``url`` once (no redirects): status, Location, and at most max_body_bytes + 1 bytes."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    addresses = _addresses_for(host, config)
    last_error = ""
    for address in addresses:
        conn: _PinnedHTTPConnection
        if scheme == "https":
            is_ip = _is_ip(host)
            conn = _PinnedHTTPSConnection(
                address, port, config.timeout_seconds, None if is_ip else host
            )
        else:
            conn = _PinnedHTTPConnection(address, port, config.timeout_seconds)
        try:
            try:
                conn.connect()
            except (OSError, ssl.SSLError) as exc:
                # Only a failed connection moves on to the next address; an answer is final.
                last_error = f"{_url_host(address)}:{port}: {_os_reason(exc)}"
                continue
            conn.request(
                "GET",
                path,
                headers={
                    "Host": host_header,
                    "User-Agent": USER_AGENT,
                    "Accept": "*/*",
                    "Connection": "close",
                },
            )
            response = conn.getresponse()
            body = response.read(config.max_body_bytes + 1)
            return response.status, response.getheader("Location"), body
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ValidationFailed(
                "connection", f"http-01: GET {url} failed: {_os_reason(exc)}"
            ) from None
        finally:
            conn.close()
    raise ValidationFailed("connection", f"http-01: GET {url}: could not connect ({last_error})")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _redirect_target(current: str, location: str, config: ValidationConfig) -> str:
    """The absolute URL of a redirect, if the rules allow following it."""
    try:
        target = urllib.parse.urljoin(current, location.strip())
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError:
        raise ValidationFailed(
            "connection", f"http-01: redirect from {current} to an invalid URL"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed(
            "connection",
            f"http-01: redirect from {current} to {target!r}: only http and https are followed",
        )
    if not parts.hostname:
        raise ValidationFailed("connection", f"http-01: redirect from {current} has no host")
    effective = port or (443 if parts.scheme == "https" else 80)
    allowed = {config.http01_port, config.tlsalpn01_port, 80, 443}
    if effective not in allowed:
        raise ValidationFailed(
            "connection",
            f"http-01: redirect from {current} to port {effective}: only ports "
            f"{', '.join(str(p) for p in sorted(allowed))} are followed",
        )
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed(
            "connection", f"http-01: redirect from {current} carries credentials"
        )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))


def validate_http01(
    identifier: Identifier, token: str, key_authorization: str, config: ValidationConfig
) -> None:
    """GET the key authorization from the identifier's port 80 (or the configured port)."""
    address = _check_identifier(identifier)
    host = identifier.value if address is None else str(address)
    host_header = _url_host(host)
    port = "" if config.http01_port == 80 else f":{config.http01_port}"
    safe_token = urllib.parse.quote(token, safe="-_")
    url = f"http://{host_header}{port}{CHALLENGE_PATH}{safe_token}"
    first_url = url
    for hop in range(config.max_redirects + 1):
        status, location, body = _http_get(url, host_header, config)
        if status in (301, 302, 303, 307, 308):
            if location is None:
                raise ValidationFailed(
                    "incorrectResponse", f"http-01: GET {url} returned {status} without Location"
                )
            if hop == config.max_redirects:
                raise ValidationFailed(
                    "connection",
                    f"http-01: GET {first_url}: more than {config.max_redirects} redirects",
                )
            url = _redirect_target(url, location, config)
            parts = urllib.parse.urlsplit(url)
            host_header = parts.netloc
            continue
        if status != 200:
            raise ValidationFailed("incorrectResponse", f"http-01: GET {url} returned {status}")
        if len(body) > config.max_body_bytes:
            raise ValidationFailed(
                "incorrectResponse",
                f"http-01: GET {url} returned more than {config.max_body_bytes} bytes",
            )
        # RFC 8555 section 8.3: the client may serve trailing whitespace (a newline) after it.
        if body.rstrip() != key_authorization.encode("utf-8"):
            raise ValidationFailed(
                "unauthorized",
                f"http-01: GET {url} returned a body that is not the key authorization",
            )
        return
    raise AssertionError("unreachable")  # pragma: no cover


# --- dns-01 ----------------------------------------------------------------------------------


def validate_dns01(
    identifier: Identifier, key_authorization: str, config: ValidationConfig
) -> None:
    """Look for the digest of the key authorization in TXT at ``_acme-challenge.<name>``."""
    if _check_identifier(identifier) is not None:
        raise ValidationFailed(
            "rejectedIdentifier", "dns-01 cannot validate an IP address (RFC 8738)"
        )
    name = f"_acme-challenge.{identifier.value}"
    records = _rrset(_query(name, "TXT", config))
    if not records:
        raise ValidationFailed("dns", f"dns-01: no TXT record at {name}")
    expected = _dns01_value(key_authorization).encode("ascii")
    for record in records:
        strings = getattr(record, "strings", ())
        if b"".join(strings) == expected:
            return
    raise ValidationFailed(
        "unauthorized",
        f"dns-01: {len(records)} TXT record(s) at {name}, none is the key authorization digest",
    )


# --- tls-alpn-01 -----------------------------------------------------------------------------


def _tls_handshake(conn: SSL.Connection, sock: socket.socket, timeout: float) -> None:
    """Handshake within ``timeout``: pyOpenSSL on a socket with a timeout raises Want* errors."""
    deadline = time.monotonic() + timeout
    for _ in range(10_000):  # bounded even if select kept waking without progress
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            wait_read, wait_write = [sock], []
        except SSL.WantWriteError:
            wait_read, wait_write = [], [sock]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(wait_read, wait_write, [], remaining)):
            raise TimeoutError
    raise TimeoutError


def _fetch_alpn_certificate(
    address: str, server_name: str, config: ValidationConfig
) -> x509.Certificate:
    """Handshake with ALPN acme-tls/1 and SNI ``server_name``; return the leaf certificate."""
    context = SSL.Context(SSL.TLS_METHOD)
    # RFC 8737 section 4: TLS 1.2 or later.
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_alpn_protos([ACME_TLS_ALPN])
    # No chain validation: the validation certificate is self-signed by design; what is checked
    # is its SAN and acmeIdentifier extension.
    context.set_verify(SSL.VERIFY_NONE)
    where = f"{_url_host(address)}:{config.tlsalpn01_port}"
    try:
        sock = socket.create_connection(
            (address, config.tlsalpn01_port), timeout=config.timeout_seconds
        )
    except OSError as exc:
        raise ValidationFailed(
            "connection", f"tls-alpn-01: connecting to {where}: {_os_reason(exc)}"
        ) from None
    try:
        conn = SSL.Connection(context, sock)
        conn.set_tlsext_host_name(server_name.encode("ascii"))
        conn.set_connect_state()
        try:
            _tls_handshake(conn, sock, config.timeout_seconds)
        except (TimeoutError, OSError) as exc:
            raise ValidationFailed(
                "connection", f"tls-alpn-01: TLS handshake with {where}: {_os_reason(exc)}"
            ) from None
        except SSL.Error:
            raise ValidationFailed(
                "tls", f"tls-alpn-01: TLS handshake with {where} failed"
            ) from None
        if conn.get_alpn_proto_negotiated() != ACME_TLS_ALPN:
            raise ValidationFailed(
                "tls", f"tls-alpn-01: {where} did not negotiate the acme-tls/1 protocol"
            )
        peer = conn.get_peer_certificate(as_cryptography=True)
        if peer is None:
            raise ValidationFailed("tls", f"tls-alpn-01: {where} sent no certificate")
        return peer
    finally:
        sock.close()


def _check_alpn_certificate(
    cert: x509.Certificate,
    identifier: Identifier,
    address: IPAddress | None,
    key_authorization: str,
) -> None:
    """RFC 8737 section 3: exactly one SAN, the identifier; a critical acmeIdentifier digest."""
    what = "tls-alpn-01: the validation certificate"
    try:
        names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise ValidationFailed("unauthorized", f"{what} has no subjectAltName") from None
    if len(names) != 1:
        raise ValidationFailed(
            "unauthorized", f"{what} has {len(names)} subjectAltNames, not exactly one"
        )
    name = names[0]
    if address is None:
        ok = isinstance(name, x509.DNSName) and name.value.lower() == identifier.value
    else:
        ok = isinstance(name, x509.IPAddress) and name.value == address
    if not ok:
        raise ValidationFailed("unauthorized", f"{what}'s subjectAltName is not {identifier.value}")
    try:
        ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        raise ValidationFailed("unauthorized", f"{what} has no acmeIdentifier extension") from None
    if not ext.critical:
        raise ValidationFailed("unauthorized", f"{what}'s acmeIdentifier extension is not critical")
    raw = getattr(ext.value, "value", b"")
    # extnValue is the DER of Authorization ::= OCTET STRING (SIZE (32)): tag 04, length 32.
    if raw != b"\x04\x20" + key_authorization_digest(key_authorization):
        raise ValidationFailed(
            "unauthorized",
            f"{what}'s acmeIdentifier is not the SHA-256 digest of the key authorization",
        )


def validate_tlsalpn01(
    identifier: Identifier, key_authorization: str, config: ValidationConfig
) -> None:
    """Check the acme-tls/1 certificate served at the identifier (RFC 8737, RFC 8738 section 6)."""
    address = _check_identifier(identifier)
    if address is None:
        server_name = identifier.value
        addresses = _resolve_addresses(identifier.value, config)
    else:
        # RFC 8738 section 6: SNI carries the reverse-DNS name, since SNI cannot carry an IP.
        server_name = address.reverse_pointer
        addresses = [str(address)]
    failure: ValidationFailed | None = None
    for candidate in addresses:
        try:
            cert = _fetch_alpn_certificate(candidate, server_name, config)
        except ValidationFailed as exc:
            if exc.acme_type != "connection":
                raise
            failure = exc  # could not connect: try the next address
            continue
        _check_alpn_certificate(cert, identifier, address, key_authorization)
        return
    assert failure is not None
    raise failure


# --- CAA -------------------------------------------------------------------------------------


def _caa_records(answer: dns.resolver.Answer | None) -> list[caa.CAARecord]:
    records = []
    for rdata in _rrset(answer):
        if getattr(rdata, "rdtype", None) != dns.rdatatype.CAA:
            continue  # a CNAME in the chain, not a CAA record
        tag = getattr(rdata, "tag", b"")
        value = getattr(rdata, "value", b"")
        records.append(
            caa.CAARecord(
                int(getattr(rdata, "flags", 0)),
                tag.decode("ascii", "replace"),
                value.decode("utf-8", "replace"),
            )
        )
    return records


def check_caa(
    identifier: Identifier,
    wildcard: bool,
    config: ValidationConfig,
    *,
    challenge_type: str | None = None,
    account_uri: str | None = None,
) -> None:
    """Refuse unless the closest CAA RRset (climbing to, not including, the root) allows us.

    ``challenge_type``/``account_uri`` feed RFC 8657's validationmethods/accounturi
    parameters; left None, a record restricted by them does not authorize us.
    """
    if _check_identifier(identifier) is not None:
        return  # RFC 8738 defines no CAA for IP addresses.
    labels = identifier.value.split(".")
    for start in range(len(labels)):
        name = ".".join(labels[start:])
        records = _caa_records(_query(name, "CAA", config))
        if not records:
            continue
        reason = caa.refusal(
            records,
            wildcard=wildcard,
            identities=config.caa_identities,
            challenge_type=challenge_type,
            account_uri=account_uri,
        )
        if reason is not None:
            raise ValidationFailed("caa", f"CAA at {name} forbids issuance: {reason}")
        return


# --- dispatch --------------------------------------------------------------------------------

CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")


def _attempt(
    challenge_type: str,
    identifier: Identifier,
    token: str,
    key_authorization: str,
    config: ValidationConfig,
) -> None:
    if challenge_type == "http-01":
        validate_http01(identifier, token, key_authorization, config)
    elif challenge_type == "dns-01":
        validate_dns01(identifier, key_authorization, config)
    else:
        validate_tlsalpn01(identifier, key_authorization, config)


def _guarded(call: Callable[[], None], label: str) -> None:
    """Run ``call``; any parse or network error it leaks becomes a ValidationFailed."""
    try:
        call()
    except ValidationFailed:
        raise
    except (
        OSError,
        ssl.SSLError,
        SSL.Error,
        dns.exception.DNSException,
        ValueError,
        UnicodeError,
        http.client.HTTPException,
    ) as exc:
        raise ValidationFailed("connection", f"{label}: {type(exc).__name__}") from None


def validate(
    challenge_type: str,
    identifier: Identifier,
    token: str,
    key_authorization: str,
    *,
    wildcard: bool,
    config: ValidationConfig,
    sleep: Callable[[float], None] = time.sleep,
    account_uri: str | None = None,
) -> None:
    """Validate one challenge with bounded retries, then check CAA for DNS names.

    Retries only failures that waiting may cure (``TRANSIENT_TYPES``); raises the last failure.
    """
    if challenge_type not in CHALLENGE_TYPES:
        raise ValidationFailed(
            "rejectedIdentifier", f"unsupported challenge type {challenge_type!r}"
        )
    address = _check_identifier(identifier)
    if address is not None and challenge_type == "dns-01":
        raise ValidationFailed(
            "rejectedIdentifier", "dns-01 cannot validate an IP address (RFC 8738)"
        )
    if wildcard and (address is not None or challenge_type != "dns-01"):
        raise ValidationFailed(
            "rejectedIdentifier", "a wildcard name can only be validated by dns-01"
        )
    attempts = max(1, config.attempts)
    for attempt in range(1, attempts + 1):
        try:
            _guarded(
                lambda: _attempt(challenge_type, identifier, token, key_authorization, config),
                challenge_type,
            )
            break
        except ValidationFailed as exc:
            if exc.acme_type not in TRANSIENT_TYPES or attempt == attempts:
                raise
        sleep(config.retry_delay_seconds)
    if address is None:
        _guarded(
            lambda: check_caa(
                identifier,
                wildcard,
                config,
                challenge_type=challenge_type,
                account_uri=account_uri,
            ),
            "CAA",
        )
