"""Each issuer's signing keys (its JWKS), per process, thread-safe.

Found through the issuer's discovery document (``<issuer>/.well-known/openid-configuration``)
unless the provisioner names a ``jwks_uri``; fetched with bounded timeouts and a bounded body,
cached ``oidc_jwks_cache_seconds``. A token naming a ``kid`` the cached set lacks (the issuer
rotated its keys) refetches the set, at most once per ``oidc_jwks_refetch_seconds`` and issuer
(per process): otherwise anyone could make every request cost a fetch from the issuer by
sending made-up kids. A failed fetch is rate-limited the same way and answered 503.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from ca_service.errors import Unauthorized, Unavailable

MAX_BODY = 256 * 1024
TIMEOUT_SECONDS = 5.0
# Asymmetric signing keys only: an "oct" (HMAC) key in a JWKS is never a verification key here.
USABLE_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})

Fetch = Callable[[str], Any]


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp)."""

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError("redirect to a URL that is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HTTPOnlyRedirects())


def fetch_json(url: str) -> Any:
    """GET ``url`` (http or https only), at most MAX_BODY bytes, as JSON; Unavailable on any
    failure, with a reason that names the URL but echoes nothing the peer sent."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise Unavailable(f"cannot fetch {url!r}: not an http(s) URL", rule="oidc.jwks_fetch")
    req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with _OPENER.open(req, timeout=TIMEOUT_SECONDS) as resp:
            body = resp.read(MAX_BODY + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise Unavailable(
            f"cannot fetch {url}: {str(reason)[:100]}", rule="oidc.jwks_fetch"
        ) from None
    if len(body) > MAX_BODY:
        raise Unavailable(f"{url} answered more than {MAX_BODY} bytes", rule="oidc.jwks_fetch")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Unavailable(f"{url} did not answer JSON", rule="oidc.jwks_fetch") from None


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    unnamed: list[jwt.PyJWK] = field(default_factory=list)
    fetched_at: float | None = None  # time.monotonic() of the last successful fetch
    attempted_at: float | None = None  # of the last attempt, successful or not
    failure: str | None = None


class JWKSCache:
    """The keys of every issuer this process has seen a token from."""

    def __init__(
        self,
        *,
        cache_seconds: float,
        refetch_seconds: float,
        allow_http: bool,
        fetch: Fetch = fetch_json,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.allow_http = allow_http
        self.fetch = fetch
        self.monotonic = monotonic
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self._lock = threading.Lock()

    def key(self, issuer: str, jwks_uri: str | None, kid: str | None) -> jwt.PyJWK:
        """The issuer's key ``kid`` (without a kid: its only key), or Unauthorized."""
        with self._lock:
            entry = self._entries.setdefault((issuer, jwks_uri), _Entry())
        with entry.lock:
            now = self.monotonic()
            if entry.fetched_at is None or now - entry.fetched_at >= self.cache_seconds:
                self._refresh(entry, issuer, jwks_uri, now, stale_ok=entry.fetched_at is not None)
            found = self._pick(entry, kid)
            if found is None and (
                entry.attempted_at is None or now - entry.attempted_at >= self.refetch_seconds
            ):
                # An unknown kid: the issuer may have rotated its keys since the last fetch.
                self._refresh(entry, issuer, jwks_uri, now, stale_ok=True)
                found = self._pick(entry, kid)
        if found is None:
            raise Unauthorized(
                f"the token's key id {str(kid)[:64]!r} is not in the issuer's JWKS "
                "(rule: oidc.unknown_kid)",
                rule="oidc.unknown_kid",
            )
        return found

    @staticmethod
    def _pick(entry: _Entry, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return entry.keys.get(kid)
        every = [*entry.keys.values(), *entry.unnamed]
        return every[0] if len(every) == 1 else None

    def _refresh(
        self, entry: _Entry, issuer: str, jwks_uri: str | None, now: float, *, stale_ok: bool
    ) -> None:
        """Fetch the set again, unless an attempt failed within the refetch window (then the
        failure is answered again, or the stale keys are used when ``stale_ok``)."""
        if (
            entry.failure is not None
            and entry.attempted_at is not None
            and now - entry.attempted_at < self.refetch_seconds
        ):
            if stale_ok:
                return
            raise Unavailable(entry.failure, rule="oidc.jwks_fetch")
        entry.attempted_at = now
        try:
            keys, unnamed = self._load(issuer, jwks_uri)
        except Unavailable as exc:
            entry.failure = exc.detail
            if stale_ok:
                return
            raise
        entry.keys, entry.unnamed = keys, unnamed
        entry.fetched_at, entry.failure = now, None

    def _load(
        self, issuer: str, jwks_uri: str | None
    ) -> tuple[dict[str, jwt.PyJWK], list[jwt.PyJWK]]:
        uri = jwks_uri or self._discover(issuer)
        self._check_scheme(uri)
        data = self.fetch(uri)
        raw = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise Unavailable(f"{uri} is not a JWK set", rule="oidc.jwks_fetch")
        usable = [k for k in raw if isinstance(k, dict) and k.get("kty") in USABLE_KEY_TYPES]
        usable = [k for k in usable if k.get("use") in (None, "sig")]
        try:
            parsed = jwt.PyJWKSet(usable).keys if usable else []
        except jwt.PyJWKSetError:
            parsed = []
        if not parsed:
            raise Unavailable(f"{uri} holds no usable signing key", rule="oidc.jwks_fetch")
        keys = {k.key_id: k for k in parsed if k.key_id is not None}
        return keys, [k for k in parsed if k.key_id is None]

    def _discover(self, issuer: str) -> str:
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        data = self.fetch(url)
        uri = data.get("jwks_uri") if isinstance(data, dict) else None
        if not isinstance(uri, str) or not uri:
            raise Unavailable(f"{url} names no jwks_uri", rule="oidc.jwks_fetch")
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the same issuer.
        if data.get("issuer") != issuer:
            raise Unavailable(f"{url} is for another issuer", rule="oidc.jwks_fetch")
        return uri

    def _check_scheme(self, uri: str) -> None:
        scheme = urllib.parse.urlsplit(uri).scheme
        if scheme != "https" and not (self.allow_http and scheme == "http"):
            raise Unavailable(f"jwks_uri {uri!r} is not https", rule="oidc.jwks_fetch")
