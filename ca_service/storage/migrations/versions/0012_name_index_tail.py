"""SQLite name index kept in batches: the rows above a mark are searched without it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

Issue 15 item 1: the FTS5 trigger of migration 0005 indexed every inserted row inside the
inserting transaction, whose segment flush and merges cost more as the index grew (0.63 ms of an
issuance's 1.73 ms of CPU at 1M stored). From here the index holds the rows up to
``certificate_names_upto.last_id`` and ``ca_service.storage.name_index.catch_up`` indexes the
rows above it in batches; a search matches those with LIKE (``storage/repositories.py``).

The three triggers stay, each for the rows the index holds: an update or delete of such a row
keeps the index equal to the table, and an insert at or below the mark (SQLite gives the id of
a deleted newest row out again) is indexed at once. A row above the mark is never handed to
FTS5's 'delete', which on an external-content table would corrupt the index. The insert
trigger also bounds the tail (TAIL_BOUND) whoever writes.

PostgreSQL's GIN trigram indexes are kept by the server: nothing changes there. Downgrade
indexes the tail, then puts back the triggers of 0005.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FTS = "certificate_names"
UPTO = f"{FTS}_upto"
INSERT, DELETE, UPDATE = (f"{FTS}_after_insert", f"{FTS}_after_delete", f"{FTS}_after_update")
HELD = f"(SELECT last_id FROM {UPTO})"  # noqa: S608 (constant names)
ADD = f"INSERT INTO {FTS}(rowid, common_name, sans) SELECT new.id, new.common_name, new.sans"
REMOVE = (
    f"INSERT INTO {FTS}({FTS}, rowid, common_name, sans)"
    " SELECT 'delete', old.id, old.common_name, old.sans"
)


# The most rows the tail may hold: the insert that would pass it indexes the tail first, so a
# store whose writers run no catch-up (CLI commands, a bulk load in SQL) keeps its searches'
# LIKE scan short. A serving process catches up every second and never reaches it.
TAIL_BOUND = 4096
BOUND = f"{FTS}_after_insert_bound"
# A trigger of its own whose WHEN is tested once per insert: as a WHERE of the catch-up's
# SELECT, SQLite walked the whole tail on every insert to test it (issuance slowed by 0.5 ms
# per thousand rows of tail, measured in process). It indexes the rows below the new one and
# leaves that one in the tail: whichever of the two insert triggers fires first, the new row
# is then indexed by neither (by both, it would be in the index twice: a corrupt index).
CATCH_UP = (
    f"CREATE TRIGGER {BOUND} AFTER INSERT ON certificates WHEN new.id > {HELD} + {TAIL_BOUND}"  # noqa: S608
    f" BEGIN INSERT INTO {FTS}(rowid, common_name, sans) SELECT id, common_name, sans"
    f" FROM certificates WHERE id > {HELD} AND id < new.id ORDER BY id;"
    f" UPDATE {UPTO} SET last_id = new.id - 1; END"
)


def _triggers(*, behind: bool) -> None:
    """The triggers: for the rows up to the mark and the tail's bound (``behind``), or 0005's
    three for every row."""
    for trigger in (INSERT, DELETE, UPDATE, BOUND):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    if not behind:
        op.execute(f"CREATE TRIGGER {INSERT} AFTER INSERT ON certificates BEGIN {ADD}; END")
        op.execute(f"CREATE TRIGGER {DELETE} AFTER DELETE ON certificates BEGIN {REMOVE}; END")
        op.execute(
            f"CREATE TRIGGER {UPDATE} AFTER UPDATE OF id, common_name, sans ON certificates"
            f" BEGIN {REMOVE}; {ADD}; END"
        )
        return
    op.execute(
        f"CREATE TRIGGER {INSERT} AFTER INSERT ON certificates WHEN new.id <= {HELD}"
        f" BEGIN {ADD}; END"
    )
    op.execute(
        f"CREATE TRIGGER {DELETE} AFTER DELETE ON certificates WHEN old.id <= {HELD}"
        f" BEGIN {REMOVE}; END"
    )
    # An update can move a row across the mark (its id changed): each half tests its own side.
    op.execute(
        f"CREATE TRIGGER {UPDATE} AFTER UPDATE OF id, common_name, sans ON certificates"
        f" BEGIN {REMOVE} WHERE old.id <= {HELD}; {ADD} WHERE new.id <= {HELD}; END"
    )
    op.execute(CATCH_UP)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"CREATE TABLE {UPTO} (last_id INTEGER NOT NULL)")
    # Every row present was indexed by 0005's trigger or its rebuild.
    op.execute(f"INSERT INTO {UPTO} (last_id) SELECT coalesce(max(id), 0) FROM certificates")  # noqa: S608
    _triggers(behind=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        f"INSERT INTO {FTS}(rowid, common_name, sans) SELECT id, common_name, sans"  # noqa: S608
        f" FROM certificates WHERE id > {HELD} ORDER BY id"
    )
    _triggers(behind=False)
    op.execute(f"DROP TABLE {UPTO}")
