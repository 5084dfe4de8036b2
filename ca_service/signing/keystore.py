"""CA private keys at rest, and the Signers made of them: the only way a key reaches use.

``Keystore`` is what the core asks to make, adopt, load and remove keys by the name the store
keeps (the ``key_file`` column), getting back public keys and Signers, never a private key.
Three backends, which wiring.py picks (``key_backend``):

- ``DatabaseKeystore`` (the default): the passphrase-encrypted PKCS#8 PEM in the database, the
  column holding ``db:<name>``. Every replica of one database reads the same keys, so a node
  keeps nothing another node needs (issue 14); a key file an older store names is still read,
  and copied in by ``import_file`` at start.
- ``FileKeystore``: the same PEM as files in data_dir/keys, mode 0600, never overwritten; the
  column holds the file's name. Per node: for a single node whose keys must stay out of the
  database and its backups.
- ``signing.pkcs11.Pkcs11Keystore``: keys that never leave a PKCS#11 token, the column holding
  a ``pkcs11:`` URI; every replica reaches the same token.

Decrypted keys are kept in memory by reference: a reference is never reused for another key.
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


DB_PREFIX = "db:"
PKCS11_PREFIX = "pkcs11:"


class KeyBlobs(Protocol):
    """Where ``DatabaseKeystore`` keeps its encrypted blobs (storage.keys.DatabaseKeyBlobs):
    a small protocol, so that signing/ never holds a database session."""

    def get(self, name: str) -> bytes | None:
        """The blob stored as ``name``, or None."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Store a new blob; Conflict if ``name`` is taken."""
        ...

    def delete(self, name: str) -> None:
        """Remove a blob (a key whose record was never committed)."""
        ...


class _EncryptedKeystore:
    """What both software backends share: keys made and adopted here, encrypted with the
    passphrase as PKCS#8 PEM before they are written anywhere, checked against their
    certificate when loaded. Subclasses say where the PEM goes (``_write``, ``_read``)."""

    backend = ""  # the key_backend value, for messages

    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = passphrase
        self._cache: dict[str, SigningKey] = {}
        self._lock = threading.Lock()

    def generate(self, key_id: str, key_type: KeyType) -> NewKey:
        """Make a key pair and store it under a new name made from ``key_id``."""
        key = generate_private_key(key_type)
        return NewKey(self._store(key_id, key), key.public_key())

    def existing(
        self, reference: str, key_type: KeyType, certificate: x509.Certificate | None = None
    ) -> NewKey:
        """Keys by label or id are token keys: refused by a software backend."""
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
        """The Signer of ``certificate`` with the stored key ``key_file``; refuses a key that
        is not the certificate's (a file swapped or restored from elsewhere)."""
        key = self._load(key_file, what)
        if not public_key_matches(key, certificate.public_key()):
            with self._lock:  # not kept: the right key may be put back while we run
                self._cache.pop(key_file, None)
            raise ConfigError(f"{what}: the stored key does not match its certificate")
        return FileKeySigner(certificate, key, key_type)

    def remove(self, key_file: str) -> None:
        """Undo a ``generate`` or ``adopt`` whose database record could not be committed."""
        with self._lock:
            self._cache.pop(key_file, None)
        self._delete(key_file)

    def _store(self, key_id: str, key: SigningKey) -> str:
        reference = self._write(key_id, encrypt_private_key(key, self._passphrase))
        with self._lock:
            self._cache[reference] = key
        return reference

    def _load(self, key_file: str, what: str) -> SigningKey:
        with self._lock:
            cached = self._cache.get(key_file)
        if cached is not None:
            return cached
        if key_file.startswith(PKCS11_PREFIX):
            raise ConfigError(
                f"{what}: its key is in a PKCS#11 token ({key_file}) but key_backend = "
                f"{self.backend}; set key_backend = pkcs11 and the token's settings"
            )
        key = load_encrypted_private_key(self._read(key_file, what), self._passphrase, what)
        with self._lock:
            self._cache[key_file] = key
        return key

    def _write(self, key_id: str, data: bytes) -> str:
        raise NotImplementedError

    def _read(self, key_file: str, what: str) -> bytes:
        raise NotImplementedError

    def _delete(self, key_file: str) -> None:
        raise NotImplementedError


class FileKeystore(_EncryptedKeystore):
    """Encrypted key files in one node's ``data_dir/keys`` (mode 0600, never overwritten)."""

    backend = "file"

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        super().__init__(passphrase)
        self.directory = directory

    def __repr__(self) -> str:  # never show the passphrase, even in a debugger
        return f"FileKeystore({str(self.directory)!r})"

    def _write(self, key_id: str, data: bytes) -> str:
        """Write a new key file; refuses to replace one that exists."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        path = self.directory / f"{key_id}.key.pem"
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
        return path.name

    def _read(self, key_file: str, what: str) -> bytes:
        return self.read_pem(key_file, what)

    def read_pem(self, key_file: str, what: str) -> bytes:
        """The encrypted PEM of the key file ``key_file``, refused if others can read it."""
        if key_file.startswith(DB_PREFIX):
            raise ConfigError(
                f"{what}: its key is in the database ({key_file}) but key_backend = file; "
                "set key_backend = database"
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
        return data

    def _delete(self, key_file: str) -> None:
        (self.directory / key_file).unlink(missing_ok=True)


class DatabaseKeystore(_EncryptedKeystore):
    """Encrypted keys in the database, through ``blobs``; key files an older store still names
    are read from ``legacy_directory`` (this node's data_dir/keys) until imported."""

    backend = "database"

    def __init__(self, blobs: KeyBlobs, passphrase: bytes, legacy_directory: Path) -> None:
        super().__init__(passphrase)
        self._blobs = blobs
        self._files = FileKeystore(legacy_directory, passphrase)

    def __repr__(self) -> str:  # never show the passphrase, even in a debugger
        return f"DatabaseKeystore({self._blobs!r})"

    def import_file(self, key_file: str) -> bytes | None:
        """The encrypted bytes of an older store's key file, unchanged, once checked to open
        with the passphrase; None when this node does not have the file."""
        if not (self._files.directory / key_file).is_file():
            return None
        data = self._files.read_pem(key_file, f"key file {key_file}")
        load_encrypted_private_key(data, self._passphrase, f"key file {key_file}")
        return data

    def _write(self, key_id: str, data: bytes) -> str:
        self._blobs.put(key_id, data)
        return DB_PREFIX + key_id

    def _read(self, key_file: str, what: str) -> bytes:
        if not key_file.startswith(DB_PREFIX):
            try:
                return self._files.read_pem(key_file, what)
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc.detail}; keys live in the database now: run 'ca-service keys "
                    "import' on the node whose data_dir/keys holds this file"
                ) from None
        data = self._blobs.get(key_file[len(DB_PREFIX) :])
        if data is None:
            raise ConfigError(f"{what}: no key {key_file} in the database")
        return data

    def _delete(self, key_file: str) -> None:
        if key_file.startswith(DB_PREFIX):
            self._blobs.delete(key_file[len(DB_PREFIX) :])
