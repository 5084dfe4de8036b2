"""The backup file format (crypto/archive.py): what goes in comes out, and any change to the
file, a whole frame dropped, moved or repeated included, is refused."""

from __future__ import annotations

import io
import json
import os
import struct

import pytest

from ca_service.crypto import archive
from ca_service.crypto.archive import ArchiveError, ArchiveReader, ArchiveWriter, WrongPassphrase

PASSPHRASE = b"archive test passphrase"


def _written(lines: list[bytes]) -> bytes:
    out = io.BytesIO()
    writer = ArchiveWriter(out, {"alembic_revision": "0008"}, PASSPHRASE)
    for line in lines:
        writer.write(line + b"\n")
    writer.close()
    return out.getvalue()


def _frames(data: bytes) -> tuple[bytes, list[bytes]]:
    """(magic + header, [each frame with its length prefix])."""
    (length,) = struct.unpack(">I", data[len(archive.MAGIC) : len(archive.MAGIC) + 4])
    start = len(archive.MAGIC) + 4 + length
    head, frames, at = data[:start], [], start
    while at < len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        frames.append(data[at : at + 4 + size])
        at += 4 + size
    return head, frames


def _read(data: bytes, passphrase: bytes = PASSPHRASE) -> list[bytes]:
    return list(ArchiveReader(io.BytesIO(data), passphrase).lines())


@pytest.fixture(scope="module")
def big() -> tuple[list[bytes], bytes]:
    """Incompressible lines over several 1 MiB frames."""
    lines = [os.urandom(3000).hex().encode() for _ in range(1200)]
    return lines, _written(lines)


def test_lines_come_back_in_order_across_frames(big: tuple[list[bytes], bytes]) -> None:
    lines, data = big
    _, frames = _frames(data)
    assert len(frames) >= 3
    assert _read(data) == lines
    reader = ArchiveReader(io.BytesIO(data), PASSPHRASE)
    assert reader.header["alembic_revision"] == "0008"
    assert reader.header["kdf"]["name"] == "scrypt"
    assert reader.verify() == len(frames)
    assert _read(_written([])) == []


CHANGES = {
    "last frame dropped": lambda head, f, data: head + b"".join(f[:-1]),
    "middle frame dropped": lambda head, f, data: head + b"".join(f[:2] + f[3:]),
    "two frames swapped": lambda head, f, data: head + b"".join([f[1], f[0], *f[2:]]),
    "a frame repeated": lambda head, f, data: head + b"".join([f[0], *f]),
    "cut inside a frame": lambda head, f, data: data[: len(head) + len(f[0]) + 100],
    "a byte flipped": lambda head, f, data: data[:-50] + bytes([data[-50] ^ 0x80]) + data[-49:],
    "a frame appended": lambda head, f, data: data + b"\x00\x00\x00\x10" + b"x" * 16,
    "no frame at all": lambda head, f, data: head,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_dropped_moved_or_repeated_frames_and_cut_files_are_refused(
    big: tuple[list[bytes], bytes], change: str
) -> None:
    _, data = big
    head, frames = _frames(data)
    bad = CHANGES[change](head, frames, data)
    assert bad != data
    with pytest.raises(ArchiveError, match=r"damaged|truncated|altered"):
        ArchiveReader(io.BytesIO(bad), PASSPHRASE).verify()


def test_the_header_is_authenticated_and_bounded() -> None:
    data = _written([b"row"])
    edited = data.replace(b'"alembic_revision": "0008"', b'"alembic_revision": "0007"')
    assert edited != data
    with pytest.raises(ArchiveError, match="does not authenticate"):
        ArchiveReader(io.BytesIO(edited), PASSPHRASE).verify()
    # A forged header asking for a huge scrypt is refused before any key is derived.
    head_len = struct.unpack(">I", data[len(archive.MAGIC) : len(archive.MAGIC) + 4])[0]
    header = json.loads(data[len(archive.MAGIC) + 4 : len(archive.MAGIC) + 4 + head_len])
    header["kdf"]["n"] = 1 << 24
    body = json.dumps(header).encode()
    forged = archive.MAGIC + struct.pack(">I", len(body)) + body
    with pytest.raises(ArchiveError, match="refuses"):
        ArchiveReader(io.BytesIO(forged), PASSPHRASE)
    with pytest.raises(ArchiveError, match="not a ca-service backup"):
        ArchiveReader(io.BytesIO(b"PK\x03\x04 a zip file"), PASSPHRASE)


def test_a_wrong_passphrase_is_told_apart_from_damage() -> None:
    data = _written([b"row"])
    with pytest.raises(WrongPassphrase):
        ArchiveReader(io.BytesIO(data), b"another passphrase")
    assert _read(data) == [b"row"]
