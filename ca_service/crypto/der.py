"""A minimal DER writer for the one structure too large for a builder: a CRL's entry list.

`cryptography`'s CRL builder makes a Python object per revoked certificate; at a million entries
that alone costs seconds and hundreds of megabytes. The few DER forms a CRL entry needs (INTEGER,
UTCTime/GeneralizedTime, a fixed reasonCode extension) are written here directly, and the tests
check the result byte for byte against `cryptography`'s own encoding of the same CRL.
"""

from __future__ import annotations

import datetime as dt


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def integer(value: int) -> bytes:
    """A non-negative INTEGER (serials, versions, CRL numbers are never negative here)."""
    if value < 0:
        raise ValueError("negative INTEGER")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # room for a clear sign bit
    if len(body) > 1 and body[0] == 0 and body[1] < 0x80:
        body = body[1:]
    return tlv(0x02, body)


def time_value(value: dt.datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, always in UTC."""
    utc = value.astimezone(dt.UTC) if value.tzinfo else value
    if utc.year < 2050:
        return tlv(0x17, utc.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, utc.strftime("%Y%m%d%H%M%SZ").encode())


def time_from_digits(digits: str) -> bytes:
    """The same from 'YYYYMMDDHHMMSS' (UTC), the form the store yields a revocation time in."""
    if digits < "2050":
        return b"\x17\x0d" + digits[2:14].encode() + b"Z"
    return b"\x18\x0f" + digits[:14].encode() + b"Z"


def bit_string(data: bytes) -> bytes:
    return tlv(0x03, b"\x00" + data)


def explicit(tag_number: int, content: bytes) -> bytes:
    return tlv(0xA0 | tag_number, content)
