"""Replay-Nonces (RFC 8555 section 6.5): issued without touching the store, used exactly once.

A nonce is ``expiry || random || MAC``, base64url, the MAC an HMAC-SHA256 under a key derived
from the CA passphrase, which every replica shares. Issuing one writes nothing, so the
unauthenticated newNonce (and the nonce on every answer) cannot fill the database; using one
checks the MAC and the expiry and then inserts it into the used-nonce table, whose primary key
refuses the second use wherever it is tried. Used nonces are kept only until they would have
expired, and swept a bounded batch at a time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import random
import secrets
import struct
from collections.abc import Callable
from hashlib import sha256

from ca_service.crypto.sealed import derive_key
from ca_service.storage.acme import NonceRepository
from ca_service.storage.db import Database, unit_of_work

_INFO = b"ca-service acme replay-nonce v1"
_RANDOM = 16
_MAC = 16
_LENGTH = 8 + _RANDOM + _MAC


def nonce_key(passphrase: bytes) -> bytes:
    """The MAC key of nonces: derived like every key made from the passphrase (crypto/sealed),
    for this purpose only."""
    return derive_key(passphrase, _INFO)


class Nonces:
    """``key``: the MAC key, or a function that makes it on first use (the CA passphrase is
    read only once ACME is used, so a service that never serves ACME does not need one)."""

    def __init__(
        self, db: Database, key: bytes | Callable[[], bytes], lifetime: dt.timedelta
    ) -> None:
        self._db = db
        self._key_source = key
        self._key: bytes | None = key if isinstance(key, bytes) else None
        self._lifetime = lifetime

    def _mac(self, body: bytes) -> bytes:
        if self._key is None:
            assert callable(self._key_source)
            self._key = self._key_source()
        return hmac.new(self._key, body, sha256).digest()[:_MAC]

    def issue(self, now: dt.datetime) -> str:
        expires = int((now + self._lifetime).timestamp())
        body = struct.pack(">Q", expires) + secrets.token_bytes(_RANDOM)
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode()

    def use(self, value: str, now: dt.datetime) -> bool:
        """True once for a nonce this service issued that has not expired; False otherwise."""
        if not isinstance(value, str) or len(value) > 64 or "=" in value:
            return False
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (ValueError, binascii.Error):
            return False
        if len(raw) != _LENGTH:
            return False
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return False
        (expires,) = struct.unpack(">Q", body[:8])
        expires_at = dt.datetime.fromtimestamp(expires, dt.UTC)
        if expires_at <= now:
            return False
        with unit_of_work(self._db, write=True) as s:
            repo = NonceRepository(s)
            fresh = repo.use(value, expires_at)
            if fresh and random.random() < 0.01:  # noqa: S311 (when to sweep, not a secret)
                repo.purge(now)
        return fresh
