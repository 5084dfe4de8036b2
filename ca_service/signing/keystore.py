"""CA private keys at rest, and the Signers made of them: the only way a key reaches use.

``Keystore`` is what the core asks to make, adopt, load and remove keys by the name the store
keeps (the ``key_file`` column), getting back public keys and Signers, never a private key.
``FileKeystore`` keeps encrypted PKCS#8 files, mode 0600, never overwritten, and the column
holds the file's name; ``signing.pkcs11.Pkcs11Keystore`` keeps keys that never leave a
PKCS#11 token, and the column holds a ``pkcs11:`` URI. wiring.py picks one (``key_backend``).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca_service.crypto.keys import (
    SigningKey,
    encrypt_private_key,
    generate_private_key,
    key_type_of,
    load_any_private_key,
    load_encrypted_private_key,
    public_key_matches,
)
from ca_service.domain import KeyType
from ca_service.errors import BadRequest, ConfigError, Conflict
from ca_service.signing.issuer import sign_root
from ca_service.signing.signer import FileKeySigner, Signer


@dataclass(frozen=True)
class NewKey:
    """A key pair just made and stored: its file name (for the database) and its public key."""

    key_file: str
    public_key: CertificatePublicKeyTypes


class Keystore(Protocol):
    """Where CA keys live; every method names a key by the text the store keeps for it."""

    def generate(self, key_id: str, key_type: KeyType) -> NewKey:
        """A new key pair of ``key_type``, stored under a new name made from ``key_id``."""
        ...

    def existing(
        self, reference: str, key_type: KeyType, certificate: x509.Certificate | None = None
    ) -> NewKey:
        """Adopt a key that is in the store already (a token key made at a key ceremony); with
        ``certificate``, it must be that certificate's key."""
        ...

    def adopt(
        self, key_id: str, data: bytes, passphrase: bytes | None, certificate: x509.Certificate
    ) -> str:
        """Store an imported key file that must be ``certificate``'s."""
        ...

    def sign_root(
        self,
        key_file: str,
        key_type: KeyType,
        subject: x509.Name,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        """The self-signed root certificate of the stored key ``key_file``."""
        ...

    def signer(
        self, key_file: str, certificate: x509.Certificate, key_type: KeyType, what: str
    ) -> Signer:
        """The Signer of ``certificate``; refuses a stored key that is not the certificate's."""
        ...

    def remove(self, key_file: str) -> None:
        """Undo a ``generate`` or ``adopt`` whose database record could not be committed."""
        ...


class FileKeystore:
    def __init__(self, directory: Path, passphrase: bytes) -> None:
        self.directory = directory
        self._passphrase = passphrase
        self._cache: dict[str, SigningKey] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the passphrase, even in a debugger
        return f"FileKeystore({str(self.directory)!r})"

    def generate(self, key_id: str, key_type: KeyType) -> NewKey:
        """Make a key pair and store it under a new file named for ``key_id``."""
        key = generate_private_key(key_type)
        return NewKey(self._store(key_id, key), key.public_key())

    def existing(
        self, reference: str, key_type: KeyType, certificate: x509.Certificate | None = None
    ) -> NewKey:
        """Keys by label or id are token keys: refused with the file backend."""
        raise BadRequest("adopting a key by label or id needs key_backend = pkcs11")

    def adopt(
        self, key_id: str, data: bytes, passphrase: bytes | None, certificate: x509.Certificate
    ) -> str:
        """Store an imported key (PEM or DER, encrypted or not) that must be ``certificate``'s."""
        key = load_any_private_key(data, passphrase, "imported CA key")
        if not public_key_matches(key, certificate.public_key()):
            raise BadRequest("the private key does not belong to the certificate")
        key_type_of(certificate.public_key())  # refuses a key type this service cannot use
        return self._store(key_id, key)

    def sign_root(
        self,
        key_file: str,
        key_type: KeyType,
        subject: x509.Name,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        """The self-signed root certificate of the stored key ``key_file``."""
        key = self._load(key_file, f"root key {key_file!r}")
        return sign_root(key, key_type, subject, serial, not_before, not_after)

    def signer(
        self, key_file: str, certificate: x509.Certificate, key_type: KeyType, what: str
    ) -> FileKeySigner:
        """The Signer of ``certificate`` with the stored key ``key_file``; refuses a key file
        that is not the certificate's (a file swapped or restored from elsewhere)."""
        key = self._load(key_file, what)
        if not public_key_matches(key, certificate.public_key()):
            raise ConfigError(f"{what}: the key file does not match its certificate")
        return FileKeySigner(certificate, key, key_type)

    def _store(self, key_id: str, key: SigningKey) -> str:
        """Write a new key file; refuses to replace one that exists."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        path = self.directory / f"{key_id}.key.pem"
        data = encrypt_private_key(key, self._passphrase)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise Conflict(
                f"a key file for {key_id!r} exists already; not overwriting it"
            ) from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with self._lock:
            self._cache[path.name] = key
        return path.name

    def _load(self, key_file: str, what: str) -> SigningKey:
        with self._lock:
            cached = self._cache.get(key_file)
        if cached is not None:
            return cached
        if key_file.startswith("pkcs11:"):
            raise ConfigError(
                f"{what}: its key is in a PKCS#11 token ({key_file}) but key_backend = file; "
                "set key_backend = pkcs11 and the token's settings"
            )
        path = self.directory / key_file
        if path.parent != self.directory:
            raise ConfigError(f"{what}: key file name {key_file!r} is not a plain file name")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read key file {path}: {exc.strerror}") from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{what}: key file {path} is readable by others (mode {mode:o})")
        key = load_encrypted_private_key(data, self._passphrase, what)
        with self._lock:
            self._cache[key_file] = key
        return key

    def remove(self, key_file: str) -> None:
        """Undo a ``generate`` or ``adopt`` whose database record could not be committed."""
        with self._lock:
            self._cache.pop(key_file, None)
        (self.directory / key_file).unlink(missing_ok=True)
