"""Bulk-load the certificate store with SQL: millions of rows in seconds, not hours of issuance.

Rows are realistic in shape and size: the DER is a real certificate of the authority with its
20-octet serial patched to the row's random 159-bit serial (so DER length, serial and fingerprint
agree and stay unique), names and dates vary per row. The signature of a patched DER no longer
verifies; nothing that reads the store in a benchmark verifies stored certificates.

SQLite is loaded with the stdlib driver, PostgreSQL with COPY; both write exactly the columns the
Alembic schema has, in the formats SQLAlchemy reads back (checked by the smoke test through the
product's own repository).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.common import ADMIN, LEAF_NAMES, leaf_csr_pem
from ca_service.core.facade import Core
from ca_service.signing.serials import serial_hex

COLUMNS = (
    "authority_id",
    "serial",
    "subject",
    "common_name",
    "sans",
    "key_type",
    "profile",
    "not_before",
    "not_after",
    "status",
    "revoked_at",
    "revocation_reason",
    "fingerprint_sha256",
    "der",
    "requester",
    "created_at",
)
# A mix like a real CA's: many without a reason (unspecified is left out of the CRL entry).
REASONS = (None, None, None, None, "keyCompromise", "keyCompromise", "keyCompromise",
           "superseded", "superseded", "cessationOfOperation")  # fmt: skip
SERIAL_OCTETS = 20


@dataclass
class Population:
    """What was loaded, and a sample to query for (names and serials that really exist)."""

    authority_id: int
    template_der: bytes
    serial_offset: int
    rows: int = 0
    sample_names: list[str] = field(default_factory=list)
    sample_serials: list[str] = field(default_factory=list)
    seconds: float = 0.0


def prepare(ca: Core) -> Population:
    """Issue real certificates until one has a 20-octet serial; it becomes the row template."""
    name = ca.default_authority()
    csr = leaf_csr_pem()
    for _ in range(64):
        issued = ca.issue_from_csr(csr, ADMIN)
        cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        raw = cert.serial_number.to_bytes(SERIAL_OCTETS, "big")
        if raw[0] != 0 and raw[0] < 0x80:
            der = cert.public_bytes(serialization.Encoding.DER)
            offset = der.find(b"\x02\x14" + raw)
            if offset > 0 and der.find(b"\x02\x14" + raw, offset + 1) < 0:
                break
    else:  # pragma: no cover - 64 misses in a row has odds below 2**-400
        raise RuntimeError("no issued certificate had a 20-octet serial")
    with ca.db.engine.connect() as conn:
        from sqlalchemy import text

        authority_id = conn.execute(
            text("select id from authorities where name = :n"), {"n": name}
        ).scalar_one()
    return Population(int(authority_id), der, offset + 2)


# A generator of ``count`` rows in COLUMNS order: (population, count, revoked, now, rng).
RowMaker = Callable[[Population, int, bool, dt.datetime, random.Random], Iterator[tuple[Any, ...]]]


def random_serial_der(pop: Population) -> tuple[int, bytes]:
    """A fresh 159-bit serial and the template DER patched to carry it."""
    # Exactly 159 bits: the top bit of 20 octets is clear, the next one set.
    serial = secrets.randbits(158) | (1 << 158)
    end = pop.serial_offset + SERIAL_OCTETS
    return serial, pop.template_der[: pop.serial_offset] + serial.to_bytes(
        SERIAL_OCTETS, "big"
    ) + pop.template_der[end:]


def random_host(rng: random.Random) -> str:
    return f"h{rng.getrandbits(40):010x}.svc{rng.randrange(1000)}.example.test"


def _rows(
    pop: Population, count: int, revoked: bool, now: dt.datetime, rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    not_before = now - dt.timedelta(days=10)
    not_after = now + dt.timedelta(days=80)
    for _ in range(count):
        serial, der = random_serial_der(pop)
        host = random_host(rng)
        revoked_at = now - dt.timedelta(seconds=rng.randrange(1, 300 * 86400)) if revoked else None
        yield (
            pop.authority_id,
            serial_hex(serial),
            f"CN={host}",
            host,
            f" dns:{host} dns:{LEAF_NAMES[1]} ",
            "ecdsa-p256",
            "server",
            not_before,
            not_after,
            "revoked" if revoked else "valid",
            revoked_at,
            rng.choice(REASONS) if revoked else None,
            hashlib.sha256(der).hexdigest(),
            der,
            "bench:populate",
            not_before,
        )


def _sample(pop: Population, row: tuple[Any, ...]) -> None:
    if len(pop.sample_names) < 2000:
        pop.sample_names.append(row[3])
        pop.sample_serials.append(row[1])


def _sqlite_time(value: dt.datetime | None) -> str | None:
    # The format SQLAlchemy's SQLite DateTime writes and parses (UTC, no offset).
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")


def load(
    pop: Population,
    db_url: str,
    count: int,
    *,
    revoked: bool,
    deadline: float,
    batch: int = 20_000,
    rows: RowMaker = _rows,
) -> int:
    """Insert up to ``count`` rows, stopping at the first batch boundary past ``deadline``.

    Returns the rows really inserted: a slow disk shortens the population, and the report says
    so, instead of stretching the run. ``rows`` makes them (default: the CRL scenario's shape).
    """
    rng = random.Random(secrets.randbits(64))  # noqa: S311 (names and dates, not keys)
    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    done = 0
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        # Constant column names and placeholders only; every value is a bound parameter.
        sql = f"insert into certificates ({', '.join(COLUMNS)}) values ({', '.join('?' * 16)})"  # noqa: S608
        try:
            while done < count and time.monotonic() < deadline:
                n = min(batch, count - done)
                values = []
                for row in rows(pop, n, revoked, now, rng):
                    _sample(pop, row)
                    values.append(
                        (*row[:7], _sqlite_time(row[7]), _sqlite_time(row[8]), row[9],
                         _sqlite_time(row[10]), *row[11:15], _sqlite_time(row[15]))
                    )  # fmt: skip
                conn.execute("BEGIN")
                conn.executemany(sql, values)
                conn.execute("COMMIT")
                done += n
        finally:
            conn.close()
    else:
        conninfo = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, autocommit=False) as conn:
            while done < count and time.monotonic() < deadline:
                n = min(batch, count - done)
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY certificates ({', '.join(COLUMNS)}) FROM STDIN") as copy,
                ):
                    for row in rows(pop, n, revoked, now, rng):
                        _sample(pop, row)
                        copy.write_row(row)
                conn.commit()
                done += n
            # Autovacuum would analyze a table this changed within a minute; do it now so the
            # planner's choice does not depend on when the measurement happens to start.
            conn.autocommit = True
            conn.execute("ANALYZE certificates")
    pop.rows += done
    pop.seconds += time.perf_counter() - start
    return done
