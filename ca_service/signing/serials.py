"""Certificate serial numbers."""

from __future__ import annotations

import secrets

SERIAL_BITS = 159


def random_serial() -> int:
    """A positive serial of up to 159 random bits from the OS CSPRNG.

    159 bits keep the DER INTEGER within RFC 5280's 20 octets without a sign octet, and give far
    more than the 64 bits of entropy the Baseline Requirements ask for. Values below 2**64 are
    drawn again so that every serial has at least 64 significant bits.
    """
    while True:
        value = secrets.randbits(SERIAL_BITS)
        if value >= 1 << 64:
            return value


def serial_hex(serial: int) -> str:
    return format(serial, "x").rjust(2, "0") if serial else "00"


def parse_serial(text: str) -> int:
    """Accept hex with or without colons or a 0x prefix, as users copy it from openssl."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or len(cleaned) > 42 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"{text!r} is not a hexadecimal serial number")
    return int(cleaned, 16)
