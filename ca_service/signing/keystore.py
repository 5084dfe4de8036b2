"""CA private keys at rest: encrypted PKCS#8 files, mode 0600, never overwritten.

The database holds only the file's name. A future PKCS#11 keystore implements the same three
methods; nothing above this module touches key files.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ca_service.crypto.keys import SigningKey, encrypt_private_key, load_encrypted_private_key
from ca_service.errors import ConfigError, Conflict


class FileKeystore:
    def __init__(self, directory: Path, passphrase: bytes) -> None:
        self.directory = directory
        self._passphrase = passphrase
        self._cache: dict[str, SigningKey] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the passphrase, even in a debugger
        return f"FileKeystore({str(self.directory)!r})"

    def store(self, key_id: str, key: SigningKey) -> str:
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

    def load(self, key_file: str, what: str) -> SigningKey:
        with self._lock:
            cached = self._cache.get(key_file)
        if cached is not None:
            return cached
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
        """Undo a ``store`` whose database record could not be committed."""
        with self._lock:
            self._cache.pop(key_file, None)
        (self.directory / key_file).unlink(missing_ok=True)
