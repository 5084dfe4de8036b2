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

import contextlib
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
from ca_service.signing.crl import entry_der
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
    "crl_entry",
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
        reason = rng.choice(REASONS) if revoked else None
        hex_serial = serial_hex(serial)
        yield (
            pop.authority_id,
            hex_serial,
            f"CN={host}",
            host,
            f" dns:{host} dns:{LEAF_NAMES[1]} ",
            "ecdsa-p256",
            "server",
            not_before,
            not_after,
            "revoked" if revoked else "valid",
            revoked_at,
            reason,
            # As a revocation stores it (migration 0013).
            entry_der(hex_serial, revoked_at, reason) if revoked_at else None,
            hashlib.sha256(der).hexdigest(),
            der,
            "bench:populate",
            not_before,
        )


def _sample(pop: Population, row: tuple[Any, ...]) -> None:
    if len(pop.sample_names) < 2000:
        pop.sample_names.append(row[3])
        pop.sample_serials.append(row[1])


@contextlib.contextmanager
def indexes_off(db_url: str) -> Iterator[dict[str, Any]]:
    """During a bulk fill: the certificates table without its secondary indexes and with the
    name-search index not kept row by row, all rebuilt from the rows when the fill ends.

    The fill is setup, not a measured figure. Since migration 0005 and the admin UI's indexes
    (about a dozen secondary indexes, and on SQLite an FTS5 trigram index kept by triggers, on
    PostgreSQL two GIN trigram indexes), inserting row by row ran at a third of the speed of the
    rows themselves, and a full run's 1M store no longer filled within its budget. Unique and
    primary-key indexes stay (they check the rows as they come). Whatever the schema holds is
    read from the database itself (sqlite_master, pg_indexes) and written back verbatim, with
    PostgreSQL's per-column statistics targets; the lookups measured afterwards run on these
    rebuilt indexes. Yields a dict that gets ``rebuild_s`` and ``dropped`` (names).
    """
    info: dict[str, Any] = {"dropped": [], "rebuild_s": 0.0}
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            objects = conn.execute(
                "select type, name, sql from sqlite_master where tbl_name = 'certificates'"
                " and sql is not null and (type = 'trigger' or (type = 'index'"
                " and upper(sql) not like 'CREATE UNIQUE%'))"
            ).fetchall()
            # External-content FTS5 tables over certificates (migration 0005's name index).
            fts = [
                name
                for (name, sql) in conn.execute(
                    "select name, sql from sqlite_master where type = 'table'"
                    " and sql like 'CREATE VIRTUAL TABLE%'"
                    " and sql like '%content=''certificates''%'"
                )
            ]
            for kind, name, _sql in objects:
                conn.execute(f'DROP {kind.upper()} "{name}"')
            conn.commit()
            info["dropped"] = [name for _k, name, _s in objects]
            yield info
        finally:
            t0 = time.perf_counter()
            for kind, _name, sql in objects:
                if kind == "index":
                    conn.execute(sql)
            for name in fts:  # index every row (what the migration does), then keep it again
                # The table's name as sqlite_master holds it, not input.
                conn.execute(f'INSERT INTO "{name}"("{name}") VALUES (\'rebuild\')')  # noqa: S608
                # The index now holds every row: its mark (migration 0012) says so, or the next
                # catch-up would index the fill's rows a second time.
                if conn.execute(
                    "select 1 from sqlite_master where name = ?", (f"{name}_upto",)
                ).fetchone():
                    conn.execute(
                        f'UPDATE "{name}_upto" SET last_id ='  # noqa: S608 (as above)
                        " (SELECT coalesce(max(id), 0) FROM certificates)"
                    )
            for kind, _name, sql in objects:
                if kind == "trigger":
                    conn.execute(sql)
            conn.commit()
            # What the rebuild wrote is folded back too, as after the fill (see load).
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            info["rebuild_s"] = round(time.perf_counter() - t0, 2)
        return
    conninfo = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as pg:
        pg.execute("SET lock_timeout = '60s'")  # a server on this store is idle during the fill
        rows = pg.execute(
            "select c.relname, pg_get_indexdef(i.indexrelid) from pg_index i"
            " join pg_class c on c.oid = i.indexrelid"
            " where i.indrelid = 'certificates'::regclass"
            " and not i.indisunique and not i.indisprimary"
        ).fetchall()
        stats = pg.execute(
            "select c.relname, a.attnum, a.attstattarget from pg_index i"
            " join pg_class c on c.oid = i.indexrelid"
            " join pg_attribute a on a.attrelid = i.indexrelid"
            " where i.indrelid = 'certificates'::regclass and a.attstattarget >= 0"
        ).fetchall()
        try:
            for name, _ddl in rows:
                pg.execute(f'DROP INDEX "{name}"')
            info["dropped"] = [name for name, _ddl in rows]
            yield info
        finally:
            t0 = time.perf_counter()
            pg.execute("SET maintenance_work_mem = '256MB'")  # this session only
            for _name, ddl in rows:
                pg.execute(ddl)
            for name, attnum, target in stats:
                pg.execute(f'ALTER INDEX "{name}" ALTER COLUMN {int(attnum)} '
                           f"SET STATISTICS {int(target)}")  # fmt: skip
            t1 = time.perf_counter()
            # Expression indexes get their statistics from ANALYZE once they exist again.
            pg.execute("ANALYZE certificates")
            info["analyze_s"] = round(time.perf_counter() - t1, 2)
            info["rebuild_s"] = round(time.perf_counter() - t0, 2)


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
        marks = ", ".join("?" * len(COLUMNS))
        sql = f"insert into certificates ({', '.join(COLUMNS)}) values ({marks})"  # noqa: S608
        try:
            while done < count and time.monotonic() < deadline:
                n = min(batch, count - done)
                values = []
                for row in rows(pop, n, revoked, now, rng):
                    _sample(pop, row)
                    values.append(
                        (*row[:7], _sqlite_time(row[7]), _sqlite_time(row[8]), row[9],
                         _sqlite_time(row[10]), *row[11:16], _sqlite_time(row[16]))
                    )  # fmt: skip
                conn.execute("BEGIN")
                conn.executemany(sql, values)
                conn.execute("COMMIT")
                done += n
            # A service writing these rows itself would have checkpointed its WAL every 1,000
            # pages as it went; a fill with synchronous=OFF leaves it all in the WAL (150 MB at
            # 1M), and the first measured writes would pay for folding it back (p99 53 ms
            # against 18 ms after this, in-process issuance at 1M).
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    else:
        conninfo = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, autocommit=False) as pg:
            while done < count and time.monotonic() < deadline:
                n = min(batch, count - done)
                with (
                    pg.cursor() as cur,
                    cur.copy(f"COPY certificates ({', '.join(COLUMNS)}) FROM STDIN") as copy,
                ):
                    for row in rows(pop, n, revoked, now, rng):
                        _sample(pop, row)
                        copy.write_row(row)
                pg.commit()
                done += n
            # What autovacuum does within a minute of a million inserts (PostgreSQL 13+ vacuums
            # insert-only tables too): the planner's statistics, and the visibility map that
            # lets a covering index be read alone. Left to chance, the measurement depends on
            # whether autovacuum got there first: the 1M CRL read every heap row (1.26 s of
            # its 2.65 s in the full run of 4a9be0c, bench/PROFILES.md).
            pg.autocommit = True
            pg.execute("VACUUM (ANALYZE) certificates")
    pop.rows += done
    pop.seconds += time.perf_counter() - start
    return done
