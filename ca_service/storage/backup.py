"""The store's side of backup and restore: every table read in one consistent snapshot, and rows
loaded into an empty store in one transaction.

Consistency while the service runs:

- SQLite: the online backup API (``sqlite3.Connection.backup``) copies the database into a
  private file in one step, that is in one read transaction: in WAL mode writers go on while it
  copies, and the copy is the database as of one commit. (A copy made in several steps restarts
  whenever another connection writes, so under steady load it might never end.) The rows are
  then read from the copy, not from the live file.
- PostgreSQL: one ``REPEATABLE READ, READ ONLY`` transaction reads the alembic revision and then
  every table, so all of them show the same snapshot: whatever had committed when its first
  statement ran, and nothing after. This is what ``pg_dump`` itself does (its snapshot is also
  REPEATABLE READ); SERIALIZABLE DEFERRABLE adds nothing here, as the service's own transactions
  are READ COMMITTED, and could wait. No ``pg_dump`` binary is needed, which also means the
  backup is rows, not SQL, and restores into either database.

The rows are carried as JSON values per column kind (bytes as base64, times as UTC ISO 8601,
JSON columns as JSON), so a backup of SQLite restores into PostgreSQL and back: the way to move
a store that outgrew one host. The schema itself is never carried: a restore runs the
migrations up to the backup's revision, loads the rows, then runs the rest up to head. Derived
objects are left out and rebuilt by the database: SQLite's name-search FTS table (its insert
trigger indexes the rows a batch at a time as they arrive, the scheduler the last ones) and
PostgreSQL's trigram indexes.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.engine import make_url as _make_url
from sqlalchemy.orm import Session

from ca_service.clock import as_utc
from ca_service.domain import AuditEvent
from ca_service.errors import BadRequest, Conflict
from ca_service.storage import migrate
from ca_service.storage.db import Database
from ca_service.storage.models import SEARCH_FTS_TABLE, AuthorityRow, CRLRow
from ca_service.storage.repositories import AuditRepository

BATCH = 1000
ALEMBIC_TABLE = "alembic_version"


def _carried(name: str) -> bool:
    """Tables a backup carries: all but alembic's own and the derived search index."""
    if name == ALEMBIC_TABLE or name.startswith("sqlite_"):
        return False
    return name != SEARCH_FTS_TABLE and not name.startswith(SEARCH_FTS_TABLE + "_")


def _kind(type_: sa.types.TypeEngine[Any]) -> str:
    if isinstance(type_, sa.LargeBinary):
        return "bytes"
    if isinstance(type_, sa.DateTime):
        return "datetime"
    if isinstance(type_, sa.JSON):
        return "json"
    return "value"


def _encoder(kind: str, where: str) -> Callable[[Any], Any]:
    def encode(value: Any) -> Any:
        if value is None or kind == "json":
            return value
        if kind == "bytes":
            return base64.b64encode(value).decode()
        if kind == "datetime":
            return as_utc(value).isoformat()
        if isinstance(value, (bool, int, float, str)):
            return value
        raise BadRequest(f"{where} holds a {type(value).__name__}, which a backup cannot carry")

    return encode


def _decoder(kind: str) -> Callable[[Any], Any]:
    def decode(value: Any) -> Any:
        if value is None or kind in ("json", "value"):
            return value
        if kind == "bytes":
            return base64.b64decode(value, validate=True)
        return as_utc(dt.datetime.fromisoformat(value))

    return decode


def _reflect(
    conn: Connection, only: Callable[[str, sa.MetaData], bool] | None = None
) -> sa.MetaData:
    """The tables as the database has them. SQLite cannot describe expression indexes (the
    requester-kind index of migration 0008) and SQLAlchemy warns about each; a copy of rows needs
    no index, so that one warning is silenced here rather than printed on every backup."""
    meta = sa.MetaData()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Skipped unsupported reflection of expression-based index"
        )
        meta.reflect(bind=conn, only=only)
    return meta


@dataclass(frozen=True)
class TableRows:
    """One table of a snapshot: its columns, their kinds, and its rows as JSON-ready lists in
    primary-key order, read as they are iterated (never all in memory)."""

    name: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    rows: Iterator[list[Any]]


class Snapshot:
    """The store as of one moment; valid inside :func:`snapshot` only."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self.dialect = dialect
        # The first statement fixes the snapshot on PostgreSQL: the revision is of that moment.
        self.revision = migrate.current(conn)
        self._meta = _reflect(conn, only=lambda name, _meta: _carried(name))

    def tables(self) -> Iterator[TableRows]:
        """Every carried table, parents before children (foreign keys)."""
        for table in self._meta.sorted_tables:
            kinds = tuple(_kind(c.type) for c in table.columns)
            yield TableRows(
                table.name,
                tuple(c.name for c in table.columns),
                kinds,
                self._rows(table, kinds),
            )

    def _rows(self, table: sa.Table, kinds: Sequence[str]) -> Iterator[list[Any]]:
        encoders = [
            _encoder(k, f"{table.name}.{c.name}") for k, c in zip(kinds, table.columns, strict=True)
        ]
        order = list(table.primary_key.columns) or list(table.columns)
        # yield_per: a server-side cursor on PostgreSQL, so a million rows stream in batches.
        result = self._conn.execution_options(yield_per=BATCH).execute(
            sa.select(table).order_by(*order)
        )
        for row in result:
            yield [encode(value) for encode, value in zip(encoders, row, strict=True)]


@contextmanager
def snapshot(db: Database, workdir: Path) -> Iterator[Snapshot]:
    """A consistent snapshot of the running store (see the module's docstring). ``workdir`` is a
    private directory for SQLite's copy, removed by the caller."""
    if db.is_sqlite:
        source = db.engine.url.database
        if not source or source == ":memory:":
            raise BadRequest("an in-memory SQLite database cannot be backed up")
        copy = workdir / "snapshot.db"
        _sqlite_copy(source, copy)
        engine = sa.create_engine(f"sqlite:///{copy}")
        try:
            with engine.connect() as conn, conn.begin():
                yield Snapshot(conn, "sqlite")
        finally:
            engine.dispose()
        return
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield Snapshot(conn, "postgresql")


def _sqlite_copy(source: str, target: Path) -> None:
    """The online backup API, in one step (one read transaction: see the module docstring)."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


# ---------------------------------------------------------------------------- restore


def existing_tables(url: str) -> list[str]:
    """The tables the database at ``url`` already holds, without creating anything: a SQLite
    file that does not exist is not made, and an empty one is empty."""
    parsed = _make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not os.path.exists(path):
            return []
        if os.path.getsize(path) == 0:
            return []
        raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        except sqlite3.DatabaseError as exc:
            raise Conflict(f"{path} exists and is not an empty SQLite database ({exc})") from None
        finally:
            raw.close()
        return sorted(str(r[0]) for r in rows if not str(r[0]).startswith("sqlite_"))
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return sorted(sa.inspect(conn).get_table_names())
    finally:
        db.dispose()


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    parsed = _make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


class Loader:
    """Rows going into an empty store, inside the one transaction of :func:`loading`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._meta = _reflect(conn, only=lambda name, _meta: _carried(name))
        self.counts: dict[str, int] = {}
        self.finished = False

    def table(self, name: str, columns: Sequence[str], kinds: Sequence[str]) -> TableLoader:
        table = self._meta.tables.get(name)
        if table is None or not _carried(name):
            raise BadRequest(f"the backup holds a table {name!r} that its revision does not have")
        if set(columns) != set(table.columns.keys()):
            raise BadRequest(
                f"the backup's table {name!r} has other columns than its revision defines"
            )
        for column, kind in zip(columns, kinds, strict=True):
            if kind == "json":
                # None is SQL NULL, as a column left unset would be (not the JSON text 'null').
                table.columns[column].type = sa.JSON(none_as_null=True)
        return TableLoader(self, table, columns, kinds)

    def finish(self, crl_gap: int, event: AuditEvent) -> dict[str, int]:
        """Bring the schema to head, let ids and CRL numbers continue above the restored ones,
        and record the restore. Returns each authority's CRL number from now on."""
        migrate.upgrade_on(self._conn, "head")
        if self._conn.dialect.name == "postgresql":
            self._continue_sequences()
            # The migrations analysed empty tables; the planner's choices (name search: index
            # or newest rows first) rest on statistics of the rows that are there now.
            preparer = self._conn.dialect.identifier_preparer
            for name in self.counts:
                self._conn.execute(sa.text(f"ANALYZE {preparer.quote(name)}"))
        authorities = sa.table(
            AuthorityRow.__tablename__, sa.column("name"), sa.column("crl_number")
        )
        self._conn.execute(
            sa.update(authorities).values(crl_number=authorities.c.crl_number + crl_gap)
        )
        # The stored CRLs go: the original may have signed later ones after this backup, and a
        # restored service must publish a new CRL, under the new numbers, at its first request.
        self._conn.execute(sa.delete(sa.table(CRLRow.__tablename__)))
        with Session(bind=self._conn) as session:
            AuditRepository(session).add(event)
            session.flush()
        numbers = self._conn.execute(sa.select(authorities.c.name, authorities.c.crl_number))
        self.finished = True
        return {str(name): int(number) for name, number in numbers}

    def _continue_sequences(self) -> None:
        """setval each serial/identity sequence past the largest restored id: explicit ids do
        not advance a sequence, so the next insert would collide with a restored row."""
        meta = _reflect(self._conn)
        for table in meta.sorted_tables:
            pk = list(table.primary_key.columns)
            if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer):
                continue
            column = pk[0]
            sequence = self._conn.execute(
                sa.select(sa.func.pg_get_serial_sequence(table.name, column.name))
            ).scalar()
            if sequence is None:
                continue
            largest = sa.select(sa.func.max(column)).scalar_subquery()
            self._conn.execute(
                sa.select(sa.func.setval(sequence, sa.func.coalesce(largest, 0) + 1, False))
            )


class TableLoader:
    def __init__(
        self, loader: Loader, table: sa.Table, columns: Sequence[str], kinds: Sequence[str]
    ) -> None:
        self._loader = loader
        self._table = table
        self._columns = tuple(columns)
        self._decoders = [_decoder(k) for k in kinds]
        self._batch: list[dict[str, Any]] = []
        loader.counts.setdefault(table.name, 0)

    @property
    def name(self) -> str:
        return self._table.name

    def add(self, values: Sequence[Any]) -> None:
        if len(values) != len(self._columns):
            raise BadRequest(f"a row of {self._table.name!r} in the backup is malformed")
        try:
            row = {c: d(v) for c, d, v in zip(self._columns, self._decoders, values, strict=True)}
        except (TypeError, ValueError):
            raise BadRequest(f"a row of {self._table.name!r} in the backup is malformed") from None
        self._batch.append(row)
        if len(self._batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self._loader._conn.execute(sa.insert(self._table), self._batch)
            self._loader.counts[self._table.name] += len(self._batch)
            self._batch = []


@contextmanager
def loading(db: Database, revision: str) -> Iterator[Loader]:
    """One transaction that creates the schema at ``revision`` in an empty database and takes
    the rows; committed only if the caller called :meth:`Loader.finish`, else rolled back."""
    with db.write_engine.connect() as conn, conn.begin():
        if conn.dialect.name == "sqlite":
            # One transaction of a whole store: with SQLite's default 2 MiB page cache its pages
            # spill to the WAL and are read back over and over (the name-search triggers touch
            # the index on every row); 256 MiB keeps the working set in memory, still bounded.
            conn.exec_driver_sql("PRAGMA cache_size = -262144")
        # A replica started on the target during the restore waits for it (migrate.upgrade).
        migrate.lock_migrations(conn)
        present = [t for t in sa.inspect(conn).get_table_names() if not t.startswith("sqlite_")]
        if present:
            raise Conflict(f"the target database is not empty (it has {', '.join(present[:5])})")
        migrate.upgrade_on(conn, revision)
        loader = Loader(conn)
        yield loader
        if not loader.finished:
            raise BadRequest("the restore stopped before the end of the backup")
