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
import contextlib
import hashlib
import http.client
import ipaddress
import re
import select
import socket
import ssl
import threading
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
MAX_REDIRECT_PATH = 2000  # Boulder's bound on a redirect target's path
MAX_DETAIL = 400
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
        # Details quote what the peer sent (URLs, names): keep them one printable, bounded line.
        detail = "".join(c if c.isprintable() else "?" for c in detail)
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
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


def _is_dns_name(value: str) -> bool:
    """A lower-case LDH name of two labels or more (underscores allowed, as in DNS itself)."""
    labels = value.split(".")
    return len(value) <= 253 and len(labels) >= 2 and all(_DNS_LABEL.match(lb) for lb in labels)


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
    # The front end normalises names; a value that is not a plain lower-case A-label here (a
    # wildcard, a trailing dot, an empty label) would make us validate a different name.
    if not _is_dns_name(value):
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
    try:
        resolver = _resolver(config)  # a bad resolver host is a ValueError here
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
    """The addresses to try for ``name``, in order: its first AAAA, then its first A.

    Boulder's policy: IPv6 first with one fallback to IPv4, so a name with many dead addresses
    costs at most two connection timeouts, and a broken IPv6 setup does not block validation.
    """
    addresses: list[str] = []
    failure: ValidationFailed | None = None
    for rdtype in ("AAAA", "A"):
        try:
            found = [str(r) for r in _rrset(_query(name, rdtype, config))]
        except ValidationFailed as exc:
            # One family failing is survivable if the other answers.
            failure = exc
            continue
        addresses.extend(found[:1])
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


def _short(url: str) -> str:
    """A URL for a failure detail: redirect targets come from the peer and may be long."""
    return url if len(url) <= 160 else url[:157] + "..."


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
            return _exchange(conn, url, path, host_header, config)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ValidationFailed(
                "connection", f"http-01: GET {_short(url)} failed: {_os_reason(exc)}"
            ) from None
        finally:
            conn.close()
    raise ValidationFailed(
        "connection", f"http-01: GET {_short(url)}: could not connect ({last_error})"
    )


def _exchange(
    conn: _PinnedHTTPConnection, url: str, path: str, host_header: str, config: ValidationConfig
) -> tuple[int, str | None, bytes]:
    """Send the GET and read the answer, all of it within one timeout.

    The socket timeout bounds each read, not their sum: a peer that drips a byte just under the
    timeout would hold a validator for hours over an 8 KB body. A watchdog shuts the socket at
    the deadline, which ends any read in progress.
    """
    expired = threading.Event()

    def abort() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(config.timeout_seconds, abort)
    watchdog.daemon = True
    watchdog.start()
    try:
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
    except (OSError, http.client.HTTPException, ValueError):
        if expired.is_set():
            raise TimeoutError from None
        raise
    finally:
        watchdog.cancel()
    if expired.is_set():
        raise TimeoutError
    return response.status, response.getheader("Location"), body


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


def _redirect_target(
    current: str, location: str, identifier: Identifier, config: ValidationConfig
) -> str:
    """The absolute URL of a redirect, if the rules allow following it (else "connection").

    The rules are Boulder's: http or https only, only the ports validation itself uses (80/443 or
    the configured ones), a host that is a DNS name (an IP literal only for that very IP
    identifier), no credentials, a bounded path.
    """
    try:
        target = urllib.parse.urljoin(current, location.strip())
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError:
        raise ValidationFailed(
            "connection", f"http-01: redirect from {_short(current)} to an invalid URL"
        ) from None
    where = f"http-01: redirect from {_short(current)} to {_short(target)}"
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed("connection", f"{where}: only http and https are followed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValidationFailed("connection", f"{where}: no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("connection", f"{where}: credentials in a URL are not followed")
    effective = port or (443 if parts.scheme == "https" else 80)
    allowed = {config.http01_port, config.tlsalpn01_port, 80, 443}
    if effective not in allowed:
        raise ValidationFailed(
            "connection",
            f"http-01: redirect from {_short(current)} to port {effective}: only ports "
            f"{', '.join(str(p) for p in sorted(allowed))} are followed",
        )
    if _is_ip(host):
        # An address literal would skip our resolver; for an IP identifier its own address is
        # what validation reaches anyway.
        if identifier.type != "ip" or ipaddress.ip_address(host) != ipaddress.ip_address(
            identifier.value
        ):
            raise ValidationFailed(
                "connection", f"{where}: only DNS names are followed, not IP addresses"
            )
    elif host.endswith(".well-known"):
        raise ValidationFailed(
            "connection", f"{where}: the host ends in .well-known (a '/' missing in the redirect?)"
        )
    elif not _is_dns_name(host):
        raise ValidationFailed("connection", f"{where}: the host is not a valid DNS name")
    if len(parts.path) + len(parts.query) > MAX_REDIRECT_PATH:
        raise ValidationFailed("connection", f"{where}: the path is too long")
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
    seen = [url]
    for hop in range(config.max_redirects + 1):
        status, location, body = _http_get(url, host_header, config)
        if status == 303 or (300 <= status < 400 and location is not None):
            # CA/B Forum BRs 3.2.2.4.19 allow following 301, 302, 307 and 308 only.
            if status not in (301, 302, 307, 308):
                raise ValidationFailed(
                    "connection",
                    f"http-01: GET {_short(url)} returned {status}: redirect not followed",
                )
            assert location is not None
            if hop == config.max_redirects:
                raise ValidationFailed(
                    "connection",
                    f"http-01: GET {seen[0]}: more than {config.max_redirects} redirects",
                )
            url = _redirect_target(url, location, identifier, config)
            if url in seen:
                raise ValidationFailed("connection", f"http-01: redirect loop at {_short(url)}")
            seen.append(url)
            host_header = urllib.parse.urlsplit(url).netloc
            continue
        if status != 200:
            raise ValidationFailed(
                "incorrectResponse", f"http-01: GET {_short(url)} returned {status}"
            )
        if len(body) > config.max_body_bytes:
            raise ValidationFailed(
                "incorrectResponse",
                f"http-01: GET {_short(url)} returned more than {config.max_body_bytes} bytes",
            )
        # RFC 8555 section 8.3: the client may serve trailing whitespace (a newline) after it.
        if body.rstrip() != key_authorization.encode("utf-8"):
            raise ValidationFailed(
                "unauthorized",
                f"http-01: GET {_short(url)} returned a body that is not the key authorization",
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
        try:
            _check_alpn_certificate(cert, identifier, address, key_authorization)
        except ValueError:  # cryptography refuses malformed or duplicate extensions
            raise ValidationFailed(
                "unauthorized", "tls-alpn-01: the validation certificate is malformed"
            ) from None
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
