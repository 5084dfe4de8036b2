"""The bulk fill with the secondary indexes off (bench.populate.indexes_off): the schema after
it is the schema before, and the rows loaded during the fill are found by the name search and
listed by the CRL query, on both databases."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.common import ADMIN, database_url, leaf_csr_pem, new_ca, pg_reachable
from bench.populate import indexes_off, load, prepare
from ca_service.domain import CertificateFilter, KeyType
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import CertificateRepository

SCHEMA = {
    "sqlite": "select type, name, sql from sqlite_master where tbl_name = 'certificates'"
    " or name like 'certificate_names%' order by type, name",
    "postgresql": "select c.relname, pg_get_indexdef(i.indexrelid), a.attnum, a.attstattarget"
    " from pg_index i join pg_class c on c.oid = i.indexrelid"
    " join pg_attribute a on a.attrelid = i.indexrelid"
    " where i.indrelid = 'certificates'::regclass order by 1, 3",
}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fill_without_indexes_rebuilds_them(kind: str, tmp_path: Path) -> None:
    if kind == "postgresql" and (why := pg_reachable()):
        pytest.skip(f"PostgreSQL: {why}")
    with database_url(kind, tmp_path) as url:
        ca = new_ca(tmp_path / "data", url, KeyType.ECDSA_P256)
        try:
            pop = prepare(ca)
            with ca.db.engine.connect() as conn:
                before = conn.execute(sa.text(SCHEMA[kind])).all()
            with indexes_off(url) as info:
                with ca.db.engine.connect() as conn:
                    during = conn.execute(sa.text(SCHEMA[kind])).all()
                got = load(pop, url, 500, revoked=True, deadline=float("inf"), batch=200)
            assert got == 500
            assert info["dropped"] and info["rebuild_s"] >= 0
            assert len(during) < len(before)  # the indexes really were off
            with ca.db.engine.connect() as conn:
                after = conn.execute(sa.text(SCHEMA[kind])).all()
            assert after == before
            now = dt.datetime.now(dt.UTC)
            with unit_of_work(ca.db) as s:
                repo = CertificateRepository(s)
                # A name loaded while the name index was off is found through it.
                records, _ = repo.list(CertificateFilter(name=pop.sample_names[-1]), now)
                assert [r.common_name for r in records] == [pop.sample_names[-1]]
            crl = ca.generate_crl(ca.default_authority())
            assert crl.der
            # The triggers are back: a row inserted now is indexed as the service would do.
            issued = ca.issue_from_csr(leaf_csr_pem(), ADMIN)
            with unit_of_work(ca.db) as s:
                records, _ = CertificateRepository(s).list(
                    CertificateFilter(name="www.example.test"), now
                )
            assert issued.record.serial in {r.serial for r in records}
            if kind == "sqlite":
                # The rebuild indexed the fill's rows and moved the mark past them: the catch-up
                # indexes the one issued since, and FTS5 finds the index equal to the table.
                assert ca.catalog.index_names() == 1
                with ca.db.write_engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            "INSERT INTO certificate_names(certificate_names, rank)"
                            " VALUES ('integrity-check', 1)"
                        )
                    )
        finally:
            ca.db.dispose()
