"""SQLite's name-search index, kept in batches behind the writes instead of row by row.

Migration 0005 kept the FTS5 trigram table current with a trigger on every insert. Each write
transaction then flushed a segment of its own into the index and paid FTS5's merges of them,
and that cost grows with the index: in process at 1M stored, 1.73 ms of CPU per certificate
with the trigger against 1.10 ms without it, while indexing the same rows in batches of 500
afterwards cost 0.017 ms a row (bench/PROFILES.md, "The name index behind the writes").

Since migration 0012 the index holds the rows up to ``certificate_names_upto.last_id``; the
rows above it are the *tail*, which a search matches with LIKE on the table itself. The tail
stays short: the scheduler indexes it every second in a serving process, and whoever writes,
the insert that would make it longer than TAIL_BOUND rows indexes it first (the trigger). A
search is therefore exact at every moment, whoever wrote the rows and whether or not anything
indexed them yet. The triggers of migration 0012 still keep the index current for an update
or delete of a row it holds (and for an insert at or below the mark, which SQLite makes when
the newest row was deleted and its id is given out again).

PostgreSQL keeps its GIN trigram indexes itself: everything here is a no-op there. This module
never decides what a search matches: it only says where the index ends and moves that end.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.models import SEARCH_FTS_TABLE

log = logging.getLogger("ca_service.storage.name_index")

# The one-row table holding the highest certificates.id the index holds (migration 0012). Its
# name carries the FTS table's prefix, so schema comparison and backups leave it out with the
# rest of the derived index, which a restore builds again (ca_service.storage.backup).
UPTO_TABLE = f"{SEARCH_FTS_TABLE}_upto"
# The insert trigger's bound on the tail (migration 0012 writes it into the trigger).
TAIL_BOUND = 4096
# Rows per write transaction: 500 rows take 5-10 ms of the write lock on this machine, a pause
# an issuance waiting behind it hardly notices; the per-row cost barely falls beyond that.
CATCH_UP_BATCH = 500

_LAST = sa.text(f"SELECT last_id FROM {UPTO_TABLE}")  # noqa: S608 (constant names)
_NEWEST = sa.text("SELECT coalesce(max(id), 0) FROM certificates")
_INDEX = sa.text(
    f"INSERT INTO {SEARCH_FTS_TABLE}(rowid, common_name, sans)"  # noqa: S608 (constant names)
    " SELECT id, common_name, sans FROM certificates WHERE id > :low AND id <= :high"
    " ORDER BY id"
)
_MOVE = sa.text(f"UPDATE {UPTO_TABLE} SET last_id = :high")  # noqa: S608 (constant names)


def indexed_through(session: Session) -> int | None:
    """The highest certificate id the FTS index holds, or None when the database keeps its
    search index whole itself (PostgreSQL). Read in the caller's transaction, so that the
    index and the tail it leaves are seen at one moment."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    return int(session.execute(_LAST).scalar_one())


def catch_up(db: Database, *, batch: int = CATCH_UP_BATCH, max_rows: int | None = None) -> int:
    """Index the tail, ``batch`` rows per write transaction, up to ``max_rows`` rows in all
    (None: the whole tail as it was at the start); return how many rows were indexed.

    Safe beside other writers and other processes doing the same: each batch reads the mark
    and moves it under the write lock, so no row is indexed twice, and rows committed meanwhile
    stay in the tail for the next call.
    """
    if not db.is_sqlite:
        return 0
    with db.engine.connect() as conn:
        newest = int(conn.execute(_NEWEST).scalar_one())
    done = 0
    while max_rows is None or done < max_rows:
        step = batch if max_rows is None else min(batch, max_rows - done)
        with unit_of_work(db, write=True) as s:
            low = int(s.execute(_LAST).scalar_one())
            high = min(newest, low + step)
            if high <= low:
                break
            indexed = s.execute(_INDEX, {"low": low, "high": high})
            done += cast("sa.CursorResult[Any]", indexed).rowcount
            s.execute(_MOVE, {"high": high})
        if max_rows is not None and high - low < step:
            break
    if done:
        log.debug("name index: %d row(s) indexed", done)
    return done
