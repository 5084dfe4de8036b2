"""The backup file: one compressed stream, encrypted and authenticated as a whole, in chunks.

Why a format of our own and not tar + an external ``age``/``gpg``: the archive is written while
rows are still being read (a million certificates never sit in memory or in a clear temporary
file), and a restore must refuse a wrong passphrase, a truncated copy or one altered byte
*before* it writes anything. Both need the encryption inside the stream, chunk by chunk.

Layout::

    MAGIC (19 bytes) || header length (4 bytes, big endian) || header (JSON, UTF-8)
    then frames: ciphertext length (4 bytes, big endian) || AES-256-GCM ciphertext and tag

- The header says what the file holds (format version, alembic revision, source database) and
  how its key is made (scrypt parameters and a random salt). It is readable without the key, so
  a restore can name a newer schema or a missing passphrase file, and it is authenticated: the
  whole header is the associated data of every frame, so an edited header fails like an edited
  frame.
- The key is scrypt(passphrase, salt) (n=2^15, r=8, p=1: about 0.1 s and 32 MiB once per
  file). A slow KDF, unlike the HKDF of crypto/sealed.py: a backup file travels (off-site
  storage, a ticket), so it is exactly what an offline guesser gets to try passphrases against.
  The salt is random per file, so every file has a key of its own.
- Because the key is unique per file, nonces are a counter (the STREAM construction of Hoang,
  Reyhanitabar, Rogaway and Vizar): 11 bytes of frame index and one byte that is 1 only on the
  last frame. Frames cannot be reordered, dropped, or cut off at a frame boundary unnoticed.
- scrypt also yields a 16-byte check value stored in the header, so a wrong passphrase is told
  apart from a damaged file. It reveals nothing the ciphertext does not already let one test.
- The plaintext is zlib-compressed before encryption (the rows are base64-heavy JSON lines).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import zlib
from collections.abc import Iterator
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"ca-service backup\n\x00"
FORMAT = 1
CHUNK_BYTES = 1 << 20
_TAG = 16
_MAX_HEADER = 64 * 1024
# Bounds on what a header may ask for, so a forged one cannot make the reader allocate
# gigabytes (scrypt memory is 128 * n * r bytes: at most 256 MiB here) or read frames of any
# size. The writer's own parameters (SCRYPT) are well inside them.
_MAX_SCRYPT_N = 1 << 18
_MAX_LINE = 256 * 1024 * 1024
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}


class ArchiveError(ValueError):
    """The file is not a backup, or it does not open: ``reason`` says which, in one line."""


class WrongPassphrase(ArchiveError):
    """The header's check value does not match the key made from the given passphrase."""


def _derive(passphrase: bytes, kdf: dict[str, Any]) -> tuple[bytes, bytes]:
    """(AES key, check value) for a header's KDF parameters."""
    try:
        salt = bytes.fromhex(kdf["salt"])
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    except (KeyError, TypeError, ValueError):
        raise ArchiveError("the backup header's key parameters are malformed") from None
    if kdf.get("name") != "scrypt" or not 2 <= n <= _MAX_SCRYPT_N or not 1 <= r <= 8:
        raise ArchiveError("the backup header asks for key parameters this version refuses")
    if not 1 <= p <= 4 or len(salt) < 16:
        raise ArchiveError("the backup header asks for key parameters this version refuses")
    out = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase)
    return out[:32], hashlib.sha256(b"ca-service backup check\x00" + out[32:]).digest()[:16]


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class ArchiveWriter:
    """Writes ``header`` and then whatever is passed to :meth:`write`, compressed and sealed.

    :meth:`close` must be called for the file to be valid: it writes the last frame, without
    which a reader reports a truncated file."""

    def __init__(self, out: IO[bytes], header: dict[str, Any], passphrase: bytes) -> None:
        kdf = {"name": "scrypt", "salt": os.urandom(16).hex(), **SCRYPT}
        key, check = _derive(passphrase, kdf)
        full = {**header, "format": FORMAT, "kdf": kdf, "check": check.hex()}
        body = json.dumps(full, sort_keys=True).encode()
        self._aad = MAGIC + struct.pack(">I", len(body)) + body
        out.write(self._aad)
        self._out = out
        self._aead = AESGCM(key)
        self._zip = zlib.compressobj(3)
        self._buffer = bytearray()
        self._index = 0
        self.written = len(self._aad)

    def write(self, data: bytes) -> None:
        self._buffer += self._zip.compress(data)
        while len(self._buffer) >= CHUNK_BYTES:
            self._frame(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]

    def close(self) -> None:
        self._buffer += self._zip.flush()
        while len(self._buffer) > CHUNK_BYTES:
            self._frame(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]
        self._frame(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _frame(self, plain: bytes, *, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index, last), plain, self._aad)
        self._out.write(struct.pack(">I", len(sealed)) + sealed)
        self._index += 1
        self.written += 4 + len(sealed)


def read_header(source: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    """The header (not yet authenticated: only a frame that opens proves it) and its bytes."""
    magic = source.read(len(MAGIC))
    if magic != MAGIC:
        raise ArchiveError("not a ca-service backup file (no backup header)")
    raw_length = source.read(4)
    if len(raw_length) != 4:
        raise ArchiveError("the backup file is truncated (in its header)")
    (length,) = struct.unpack(">I", raw_length)
    if length > _MAX_HEADER:
        raise ArchiveError("the backup header is malformed (too long)")
    body = source.read(length)
    if len(body) != length:
        raise ArchiveError("the backup file is truncated (in its header)")
    try:
        header = json.loads(body)
    except ValueError:
        raise ArchiveError("the backup header is malformed (not JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("kdf"), dict):
        raise ArchiveError("the backup header is malformed")
    if header.get("format") != FORMAT:
        raise ArchiveError(
            f"backup format {header.get('format')!r} is not one this version reads ({FORMAT})"
        )
    return header, magic + raw_length + body


class ArchiveReader:
    """Opens a backup written by :class:`ArchiveWriter`; every byte it yields is authenticated.

    A wrong passphrase raises :class:`WrongPassphrase` here, before any frame is read; a
    damaged, reordered or truncated frame raises :class:`ArchiveError` when it is reached, so
    a caller that must not act on a bad file reads it once with :meth:`verify` first."""

    def __init__(self, source: IO[bytes], passphrase: bytes) -> None:
        self.header, self._aad = read_header(source)
        key, check = _derive(passphrase, self.header["kdf"])
        stored = self.header.get("check")
        if not isinstance(stored, str) or not hmac.compare_digest(stored, check.hex()):
            raise WrongPassphrase("wrong passphrase for this backup file")
        self._source = source
        self._aead = AESGCM(key)
        self._start = source.tell()

    def _frames(self) -> Iterator[bytes]:
        self._source.seek(self._start)
        index = 0
        pending = self._read_frame(index)
        if pending is None:
            raise ArchiveError("the backup file is truncated (no data after the header)")
        while pending is not None:
            following = self._read_frame(index + 1)
            last = following is None
            try:
                yield self._aead.decrypt(_nonce(index, last), pending, self._aad)
            except InvalidTag:
                where = "its last part" if last else f"part {index + 1}"
                raise ArchiveError(
                    f"the backup file is damaged, truncated or was altered ({where} does not "
                    "authenticate)"
                ) from None
            if last:
                return
            pending, index = following, index + 1

    def _read_frame(self, index: int) -> bytes | None:
        raw = self._source.read(4)
        if not raw:
            return None
        if len(raw) != 4:
            raise ArchiveError(f"the backup file is truncated (in part {index + 1})")
        (length,) = struct.unpack(">I", raw)
        if not _TAG <= length <= CHUNK_BYTES + _TAG:
            raise ArchiveError(f"the backup file is damaged (part {index + 1} has a bad length)")
        data = self._source.read(length)
        if len(data) != length:
            raise ArchiveError(f"the backup file is truncated (in part {index + 1})")
        return data

    def verify(self) -> int:
        """Authenticate every frame without keeping anything; the number of frames."""
        return sum(1 for _ in self._frames())

    def lines(self) -> Iterator[bytes]:
        """The decompressed plaintext, line by line (each without its newline). Memory stays
        bounded: each frame is inflated a slice at a time, and a line may be at most 256 MiB."""
        unzip = zlib.decompressobj()
        rest = b""
        for frame in self._frames():
            data = frame
            while data:
                rest += unzip.decompress(data, CHUNK_BYTES)
                data = unzip.unconsumed_tail
                *complete, rest = rest.split(b"\n")
                yield from complete
                if len(rest) > _MAX_LINE:
                    raise ArchiveError("the backup holds a record larger than this version reads")
        rest += unzip.flush()
        if not unzip.eof:
            raise ArchiveError("the backup's compressed stream is incomplete")
        if rest:
            yield rest
