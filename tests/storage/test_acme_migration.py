"""Migration 0006 (the ACME tables) on SQLite and the real PostgreSQL: it upgrades from 0005,
downgrades back to exactly the 0005 schema, upgrades again, and the models describe what it
builds. The whole-schema comparison at head is tests/storage/test_store.py's
test_schema_comes_only_from_migrations; here it is shown to see the ACME tables at all."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ca_service.storage import migrate
from ca_service.storage.acme import NonceRepository
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.models import Base, include_object

ACME_TABLES = {
    "acme_accounts",
    "acme_eab_keys",
    "acme_nonces",
    "acme_orders",
    "acme_authorizations",
    "acme_challenges",
}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def downgrade(db: Database, revision: str) -> None:
    cfg = migrate._config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def version(db: Database) -> str | None:
    with db.engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def schema(db: Database) -> dict[str, Any]:
    """Every table with its columns, keys and indexes, as the database itself reports them."""
    out: dict[str, Any] = {}
    with db.engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in sorted(inspector.get_table_names()):
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"])
                    for f in inspector.get_foreign_keys(table)
                ),
                "unique": sorted(
                    (u["name"] or "", tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"] or "", tuple(str(c) for c in i["column_names"]), i["unique"])
                    for i in inspector.get_indexes(table)
                ),
            }
    return out


def model_diff(db: Database, tables: frozenset[str] | set[str] | None = None) -> list[Any]:
    """What the models have that the database has not (or the reverse); with ``tables``, only
    for those tables: at revision 0006 the models of later migrations are not there yet."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        if not include_object(obj, name, type_, reflected, other):
            return False
        if tables is None:
            return True
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in tables

    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include})
        return list(compare_metadata(context, Base.metadata))


def test_the_models_hold_the_acme_tables() -> None:
    assert set(Base.metadata.tables) >= ACME_TABLES


def test_0006_upgrades_from_0005_and_downgrades_cleanly(db: Database) -> None:
    migrate.upgrade(db, "0005")
    assert version(db) == "0005"
    before = schema(db)
    assert not ACME_TABLES & set(before)
    # The schema comparison sees the ACME tables: at 0005 it reports exactly them as missing.
    diff = model_diff(db, ACME_TABLES)
    assert {d[1].name for d in diff if d[0] == "add_table"} == ACME_TABLES
    assert {d[1].table.name for d in diff if d[0] == "add_index"} <= ACME_TABLES
    assert all(d[0] in {"add_table", "add_index"} for d in diff), diff

    migrate.upgrade(db, "0006")
    assert version(db) == "0006"
    after = schema(db)
    assert set(after) == set(before) | ACME_TABLES
    assert {t: after[t] for t in before} == before  # nothing else touched
    assert model_diff(db, ACME_TABLES) == []
    assert ("uq_acme_accounts_authority_thumbprint", ("authority", "thumbprint")) in after[
        "acme_accounts"
    ]["unique"]
    assert ("ix_acme_nonces_expires_at", ("expires_at",), False) in after["acme_nonces"]["indexes"]
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).use("kept-until-downgrade", now + dt.timedelta(hours=1))

    downgrade(db, "0005")
    assert version(db) == "0005"
    assert schema(db) == before  # every ACME table and index gone, the rest as it was

    # And up again over the downgraded database: the same schema as the first time, empty.
    migrate.upgrade(db, "0006")
    assert schema(db) == after
    assert model_diff(db, ACME_TABLES) == []
    with unit_of_work(db, write=True) as s:
        # The used-nonce table came back empty: the nonce is not remembered as used.
        assert NonceRepository(s).use("kept-until-downgrade", now + dt.timedelta(hours=1))
