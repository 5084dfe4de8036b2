"""A serial is found through the unique (authority_id, serial) index (migration 0014).

The serial's own index was a second random-keyed index that every issuance wrote into; at 1M
stored each such index costs a read and, after a checkpoint, a full page image per certificate
(bench/PROFILES.md, "Issuance with 1M stored, PostgreSQL"). These tests hold the lookup that
replaced it to the unique index on both databases, and its answers to what they were.
"""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa

from ca_service.core.facade import Core
from ca_service.errors import NotFound
from ca_service.storage.models import CertificateRow

from ..conftest import ADMIN


@pytest.fixture
def two(two_hierarchies: Core) -> Core:
    return two_hierarchies


def _serial_statement(ca: Core, serial: str) -> tuple[str, object]:
    """The SQL and parameters that ``get_certificate(serial)`` sends for its lookup."""
    seen: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        if "FROM certificates" in str(args[2]) and serial in str(args[3]):
            seen.append((str(args[2]), args[3]))

    engines = {ca.db.engine, ca.db.write_engine}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        ca.get_certificate(serial)
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", capture)
    assert seen, "no lookup of the serial was sent"
    return seen[-1]


def _copies(conn: sa.Connection, serial: str, count: int) -> None:
    columns = [c.name for c in CertificateRow.__table__.columns if c.name != "id"]
    fresh = {
        "serial": "substr(md5(g::text) || md5(g::text || 's'), 1, 40)",
        "fingerprint_sha256": "md5(g::text) || md5(g::text || 'f')",
    }
    values = ", ".join(fresh.get(c, c) for c in columns)
    conn.exec_driver_sql(
        f"INSERT INTO certificates ({', '.join(columns)}) SELECT {values}"  # noqa: S608
        " FROM certificates, generate_series(1, %(n)s) AS g WHERE serial = %(serial)s",
        {"n": count, "serial": serial},
    )
    conn.exec_driver_sql("ANALYZE certificates")
    conn.exec_driver_sql("ANALYZE authorities")


def test_the_serial_has_no_index_of_its_own(ca: Core) -> None:
    with warnings.catch_warnings():
        # SQLite's expression indexes (migration 0011) cannot be reflected; they are not asked.
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        indexes = sa.inspect(ca.db.engine).get_indexes("certificates")
    assert not [i["name"] for i in indexes if i["column_names"] == ["serial"]]


def test_a_serial_alone_is_looked_up_through_the_unique_index(two: Core) -> None:
    serial = two.issue_with_new_key(ADMIN, common_name="plan.serial.example.test").record.serial
    statement, params = _serial_statement(two, serial)
    with two.db.engine.connect() as conn:
        if two.db.is_sqlite:
            plan = " | ".join(
                str(r[3])
                for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)  # type: ignore[arg-type]
            )
            assert "(authority_id=? AND serial=?)" in plan, plan
            assert "SCAN certificates" not in plan, plan
        else:
            # PostgreSQL plans from its statistics: give it a table worth an index (20,000 copies
            # of the row under fresh serials and fingerprints) and the statistics of it.
            _copies(conn, serial, 20_000)
            plan = " | ".join(
                str(r[0])
                for r in conn.exec_driver_sql("EXPLAIN " + statement, params)  # type: ignore[arg-type]
            )
            assert "uq_certificates_authority_serial" in plan, plan
            # Probed with an authority's id, not walked whole for the serial alone.
            assert "((authority_id = " in plan, plan


def test_a_serial_is_found_under_whichever_authority_issued_it(two: Core) -> None:
    mine = two.issue_with_new_key(ADMIN, common_name="a.example.test").record
    theirs = two.issue_with_new_key(ADMIN, common_name="b.example.test", authority="other").record
    assert two.get_certificate(mine.serial).authority == "default"
    assert two.get_certificate(theirs.serial).authority == "other"
    assert two.get_certificate(theirs.serial, "other").serial == theirs.serial
    with pytest.raises(NotFound):
        two.get_certificate(theirs.serial, "default")
    with pytest.raises(NotFound):
        two.get_certificate("7f" * 16)
