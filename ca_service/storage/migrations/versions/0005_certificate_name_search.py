"""Indexed certificate name search

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

The listing filter ``name`` (API ``q``, CLI ``list --name``) is a case-insensitive substring of
the common name or of the ``sans`` text. A ``LIKE '%term%'`` cannot use a B-tree, so this adds
trigram indexes that the database itself keeps current, whoever writes the rows (the service, a
bulk load with plain SQL, a manual fix):

- PostgreSQL: GIN ``gin_trgm_ops`` indexes on ``lower(common_name)`` and ``lower(sans)`` (the
  exact expressions the query filters on, so the planner matches them). ``pg_trgm`` is a trusted
  extension (PostgreSQL 13+): the owner of the database may create it; otherwise a superuser
  runs ``CREATE EXTENSION pg_trgm`` once before the upgrade.
- SQLite: an external-content FTS5 table ``certificate_names`` with the ``trigram`` tokenizer
  (SQLite 3.34+) over ``certificates(common_name, sans)``, kept in step by three triggers.
  A later migration that rebuilds ``certificates`` on SQLite (``batch_alter_table`` with a
  table copy) drops these triggers with the old table and must create them again.

Upgrade builds the indexes from the rows present (a full rebuild, so running it again gives the
same index); downgrade removes them. The extension is left installed on downgrade: other
schemas of the same database may use it.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FTS = "certificate_names"
TRIGGERS = (f"{FTS}_after_insert", f"{FTS}_after_delete", f"{FTS}_after_update")
PG_INDEXES = {
    "ix_certificates_common_name_trgm": "lower(common_name)",
    "ix_certificates_sans_trgm": "lower(sans)",
}


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        _upgrade_postgresql(conn)
    elif conn.dialect.name == "sqlite":
        _upgrade_sqlite(conn)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for name in PG_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    elif conn.dialect.name == "sqlite":
        for trigger in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")


def _trgm_schema(conn: sa.Connection) -> str | None:
    return conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_trgm'"
        )
    ).scalar()


def _upgrade_postgresql(conn: sa.Connection) -> None:
    schema = _trgm_schema(conn)
    if schema is None:
        allowed = conn.execute(
            sa.text("SELECT has_database_privilege(current_database(), 'CREATE')")
        ).scalar()
        if not allowed:
            raise RuntimeError(
                "name search needs the pg_trgm extension and this role may not create it: "
                "run 'CREATE EXTENSION pg_trgm' as the database owner or a superuser, then "
                "'ca-service db upgrade' again"
            )
        # Into the first schema of the search path, like any object the migrations create.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema = _trgm_schema(conn)
    # The operator class is named with its schema: the extension may live outside search_path.
    opclass = f"{conn.dialect.identifier_preparer.quote_identifier(str(schema))}.gin_trgm_ops"
    for name, expression in PG_INDEXES.items():
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON certificates USING gin ({expression} {opclass})")
        # A finer histogram of the expression: the planner's choice between the index (a rare
        # term) and the newest rows by primary key (a common one) rests on this estimate.
        op.execute(f"ALTER INDEX {name} ALTER COLUMN 1 SET STATISTICS 1000")
    op.execute("ANALYZE certificates")


def _upgrade_sqlite(conn: sa.Connection) -> None:
    if sqlite3.sqlite_version_info < (3, 34, 0):
        raise RuntimeError(
            f"name search needs SQLite 3.34 or later (FTS5 trigram tokenizer); this Python "
            f"has SQLite {sqlite3.sqlite_version}"
        )
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute(f"DROP TABLE IF EXISTS {FTS}")
    op.execute(
        "CREATE VIRTUAL TABLE certificate_names USING fts5(common_name, sans,"
        " content='certificates', content_rowid='id', tokenize='trigram')"
    )
    insert = (
        "INSERT INTO certificate_names(rowid, common_name, sans)"
        " VALUES (new.id, new.common_name, new.sans);"
    )
    delete = (
        "INSERT INTO certificate_names(certificate_names, rowid, common_name, sans)"
        " VALUES ('delete', old.id, old.common_name, old.sans);"
    )
    op.execute(f"CREATE TRIGGER {TRIGGERS[0]} AFTER INSERT ON certificates BEGIN {insert} END")
    op.execute(f"CREATE TRIGGER {TRIGGERS[1]} AFTER DELETE ON certificates BEGIN {delete} END")
    op.execute(
        f"CREATE TRIGGER {TRIGGERS[2]} AFTER UPDATE OF id, common_name, sans ON certificates"
        f" BEGIN {delete} {insert} END"
    )
    # Index every stored row (the content table is read back in one pass).
    op.execute("INSERT INTO certificate_names(certificate_names) VALUES ('rebuild')")
