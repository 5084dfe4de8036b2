"""A small HTTPS client on the standard library: one root of trust, bounded in every way.

Why not ``urllib`` or ``requests``: the client must trust exactly the bootstrapped root (never
the system store, which would let any public CA vouch for "our" server), must never follow a
redirect with a token in it, and must know whether a failed POST reached the server (a CSR
sent twice may be issued twice). ``http.client`` over an ``ssl.SSLContext`` says all of that.

Bounds: every connection has a timeout; an answer larger than ``MAX_ANSWER`` is refused;
retries are at most ``attempts`` with waits of at most ``max_wait`` seconds each, so one call
ends within about ``attempts * (timeout + max_wait)``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ca_service.client.errors import Unreachable, UsageError

MAX_ANSWER = 1 << 20  # a certificate chain is a few kB; a MiB is already generous
# A 503 or 429 says the request was not acted on: safe to send again, even a POST.
RETRY_ALWAYS = frozenset({429, 503})
# A proxy's 502/504 may hide a request the server did act on: only idempotent methods retry.
RETRY_IDEMPOTENT = frozenset({502, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise Unreachable(f"the server's answer ({self.status}) is not JSON") from None


@dataclass(frozen=True)
class Endpoint:
    """``https://host[:port][/prefix]`` taken apart once."""

    host: str
    port: int
    prefix: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://{host}{port}{self.prefix}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme != "https":
            raise UsageError(f"--server must be an https:// URL, not {url!r}")
        if not parts.hostname or parts.username or parts.password:
            raise UsageError(f"--server {url!r}: expected https://HOST[:PORT][/PATH]")
        if parts.query or parts.fragment:
            raise UsageError(f"--server {url!r}: no query or fragment, please")
        try:
            port = parts.port or 443
        except ValueError:
            raise UsageError(f"--server {url!r}: the port is not a number in 1-65535") from None
        return cls(parts.hostname, port, parts.path.rstrip("/"))


def verifying_context(root_pem: str) -> ssl.SSLContext:
    """TLS 1.2+, the server's name checked, and only ``root_pem`` trusted."""
    context = ssl.create_default_context(cadata=root_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def unverified_context() -> ssl.SSLContext:
    """For the bootstrap fetch only: whatever answers is judged by its fingerprint, not here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def retry_after(value: str | None, default: float, now: float | None = None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); ``default`` if none."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpsClient:
    """Requests to one server, verified by ``context``; see the module docstring for bounds."""

    def __init__(
        self,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.context = context
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_wait = max_wait
        self.sleep = sleep
        self.on_wait = on_wait

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send once, and again after a retryable failure; the last answer (any status) or
        ``Unreachable`` when no answer could be had."""
        method = method.upper()
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                answer = self._once(method, path, body, headers or {})
            except _Retryable as exc:
                if last:
                    raise Unreachable(f"cannot reach {self.endpoint.url}: {exc}") from None
                self._wait(2.0 ** (attempt - 1), f"{exc}", attempt)
                continue
            retryable = answer.status in RETRY_ALWAYS or (
                method in IDEMPOTENT and answer.status in RETRY_IDEMPOTENT
            )
            if not retryable or last:
                return answer
            delay = retry_after(answer.headers.get("retry-after"), 2.0 ** (attempt - 1))
            self._wait(delay, f"the server answered {answer.status}", attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def _wait(self, delay: float, why: str, attempt: int) -> None:
        delay = min(max(delay, 0.0), self.max_wait)
        if self.on_wait is not None:
            self.on_wait(f"{why}; retrying in {delay:.0f}s (attempt {attempt + 1}/{self.attempts})")
        self.sleep(delay)

    def _once(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        conn = http.client.HTTPSConnection(
            self.endpoint.host, self.endpoint.port, timeout=self.timeout, context=self.context
        )
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                raise Unreachable(
                    f"cannot verify {self.endpoint.url}: {exc.verify_message or exc.reason}"
                ) from None
            except ssl.SSLError as exc:
                raise Unreachable(f"TLS with {self.endpoint.url} failed: {exc.reason}") from None
            except OSError as exc:
                # Nothing was sent: safe to try again whatever the method.
                raise _Retryable(_describe(exc)) from None
            try:
                conn.request(method, self.endpoint.prefix + path, body=body, headers=dict(headers))
                resp = conn.getresponse()
                data = resp.read(MAX_ANSWER + 1)
            except (OSError, http.client.HTTPException) as exc:
                if method in IDEMPOTENT:
                    raise _Retryable(_describe(exc)) from None
                raise Unreachable(
                    f"the connection to {self.endpoint.url} failed after the request was sent "
                    f"({_describe(exc)}); it may have been acted on"
                ) from None
            if len(data) > MAX_ANSWER:
                raise Unreachable(f"the answer of {self.endpoint.url} is larger than 1 MiB")
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()


class _Retryable(Exception):
    """A failure that left the server untouched (or an idempotent request): try again."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
