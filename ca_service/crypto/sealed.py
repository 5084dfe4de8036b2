"""Small secrets sealed at rest: AES-256-GCM under a key derived from the CA key passphrase.

Why: some secrets must be stored in a form the service can read back (an ACME External Account
Binding HMAC key has to be recomputed to verify a binding, so a hash will not do). Stored in
clear, a copy of the database alone (a backup, a replica, a dump attached to a ticket) would be
enough to bind new ACME accounts and so obtain certificates under the key's policy. Sealed with
a key derived from the CA key passphrase, which is never stored in the database, the copy alone
opens nothing: whoever can open it could already unlock the CA keys.

The format of a sealed value is ``version (1 byte) || nonce (12 bytes) || ciphertext || tag``:

- the key is HKDF-SHA256 of the passphrase with a fixed salt (the service has no per-install
  secret other than the passphrase to salt with) and an ``info`` naming the purpose, so a key
  derived for one purpose never opens the values of another;
- a fresh random 96-bit nonce per value, stored with it (random nonces under one key are safe
  far beyond the number of values we will ever seal);
- the caller's ``context`` (for EAB, the kid) and the version byte are authenticated as
  associated data, so a sealed value copied into another row, or relabelled with another
  version, fails to open instead of being accepted.

HKDF does not slow down guessing: the passphrase's own strength is what protects these values,
as it is what protects the CA keys.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ca_service.errors import ConfigError

VERSION = 1
NONCE_BYTES = 12
_TAG_BYTES = 16
# Fixed, public and versioned: it only separates this derivation from any other HKDF use of the
# same passphrase; the secret is the passphrase.
SALT = b"ca-service sealed secrets salt v1"


class SealError(ValueError):
    """A sealed value that does not open: another passphrase, another context, or altered bytes.

    Not a CAError: no caller's input can cause it; it means the store or the settings changed
    under the service, and whoever meets it decides how to report that."""


def derive_key(passphrase: bytes, info: bytes) -> bytes:
    """The 256-bit AES key for ``info``'s purpose (HKDF-SHA256, fixed salt)."""
    if not passphrase:
        raise ConfigError("no CA key passphrase: sealed secrets cannot be made or opened")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(passphrase)


class Sealer:
    """Seals and opens values for one purpose (``info``) under one passphrase.

    The key is derived once, on first use, so that a front end that only lists records never
    needs the passphrase."""

    def __init__(self, passphrase: bytes, info: bytes) -> None:
        self._passphrase = passphrase
        self._info = info
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(derive_key(self._passphrase, self._info))
        return self._aead

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """``plaintext`` encrypted and bound to ``context`` (e.g. the row's primary key)."""
        header = bytes([VERSION])
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._cipher().encrypt(nonce, plaintext, header + context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The plaintext of a value sealed for this purpose and ``context``; SealError if not."""
        if len(sealed) < 1 + NONCE_BYTES + _TAG_BYTES:
            raise SealError("the sealed value is truncated")
        if sealed[0] != VERSION:
            raise SealError(f"unknown sealed value version {sealed[0]}")
        header, nonce, body = sealed[:1], sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._cipher().decrypt(nonce, body, header + context)
        except InvalidTag:
            raise SealError(
                "the sealed value does not open: another passphrase, another row, or altered"
            ) from None
