"""Restore: a backup file (core/backup.py) loaded into an empty data directory and database.

A restore refuses, and changes nothing, when the data directory or the database is not empty,
when the file is not a backup, was altered or cut short, when the passphrase is wrong, or when
the backup's schema is newer than this installation's. It authenticates the whole file before
it writes anything, then loads it in one database transaction. The restored CRL numbers are
moved up by a gap (``crl_gap``): the original may have published CRLs after the backup, and a
number signed twice, or a CRL numbered below one relying parties hold, breaks RFC 5280's
"monotonically increasing"; the stored CRLs are dropped, so the first request signs a new one.

It must never merge into, or overwrite, a store or a data directory that holds anything.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ca_service.config import Settings
from ca_service.core.backup import BACKUP_PASSPHRASE, CA_PASSPHRASE, PROGRESS_ROWS, Progress
from ca_service.crypto.archive import ArchiveError, ArchiveReader, WrongPassphrase, read_header
from ca_service.domain import Actor, AuditEvent
from ca_service.errors import BadRequest, Conflict
from ca_service.storage import migrate
from ca_service.storage.backup import TableLoader, existing_tables, loading, sqlite_path
from ca_service.storage.db import Database

DEFAULT_CRL_GAP = 1_000_000


@dataclass(frozen=True)
class RestoreSummary:
    revision: str
    created_at: str
    tables: dict[str, int]
    files: int
    crl_numbers: dict[str, int] = field(default_factory=dict)


def _open_archive(source: IO[bytes], passphrase: bytes, key_source: str) -> ArchiveReader:
    try:
        return ArchiveReader(source, passphrase)
    except WrongPassphrase:
        source.seek(0)
        made_with = _peek_key_source(source)
        if made_with == BACKUP_PASSPHRASE and key_source != BACKUP_PASSPHRASE:
            raise BadRequest(
                "this backup was encrypted with a backup passphrase: give --passphrase-file"
            ) from None
        if made_with == CA_PASSPHRASE and key_source != CA_PASSPHRASE:
            raise BadRequest(
                "wrong passphrase: this backup was encrypted with the CA key passphrase, "
                "not a --passphrase-file"
            ) from None
        raise BadRequest("wrong passphrase for this backup file") from None
    except ArchiveError as exc:
        raise BadRequest(str(exc)) from None


def _peek_key_source(source: IO[bytes]) -> str | None:
    try:
        value = read_header(source)[0].get("key_source")
    except ArchiveError:
        return None
    return value if isinstance(value, str) else None


def _check_empty_targets(settings: Settings) -> None:
    data_dir = settings.data_dir
    if data_dir.exists():
        if not data_dir.is_dir():
            raise Conflict(f"the data directory {data_dir} is not a directory")
        present = sorted(p.name for p in data_dir.iterdir())
        if present:
            raise Conflict(
                f"the data directory {data_dir} is not empty ({', '.join(present[:5])}); "
                "restore only into an empty one"
            )
    tables = existing_tables(settings.resolved_database_url)
    if tables:
        raise Conflict(
            f"the target database is not empty (it has {', '.join(tables[:5])}"
            f"{', ...' if len(tables) > 5 else ''}); restore only into an empty one"
        )


def _safe_relative(name: Any) -> PurePosixPath:
    """A file path from the backup, only where state files live (keys/NAME, tls/server.pem)."""
    if not isinstance(name, str):
        raise BadRequest("the backup holds a file record without a path")
    path = PurePosixPath(name)
    key_file = len(path.parts) == 2 and path.parts[0] == "keys" and path.parts[1] != ".."
    allowed = key_file or name == "tls/server.pem"
    if not allowed:
        raise BadRequest(f"the backup holds a file outside the data directory's state: {name!r}")
    return path


def restore_backup(
    settings: Settings,
    source_path: Path,
    passphrase: bytes,
    *,
    key_source: str,
    actor: Actor,
    progress: Progress,
    crl_gap: int = DEFAULT_CRL_GAP,
) -> RestoreSummary:
    """Load a backup into the empty data directory and database ``settings`` name."""
    if crl_gap < 0:
        raise BadRequest("the CRL number gap cannot be negative")
    with source_path.open("rb") as source:
        reader = _open_archive(source, passphrase, key_source)
        header = reader.header
        revision = header.get("alembic_revision")
        if not isinstance(revision, str) or not migrate.is_known(revision):
            raise BadRequest(
                f"the backup's schema ({revision}) is newer than this installation's "
                f"({migrate.head()}); restore it with a ca-service at least as new as the one "
                "that wrote it"
            )
        _check_empty_targets(settings)
        progress("checking the whole backup file before writing anything")
        try:
            reader.verify()
        except ArchiveError as exc:
            raise BadRequest(str(exc)) from None
        progress(f"backup of {header.get('created_at')} (schema {revision}) is intact; loading")
        return _load(settings, reader, revision, actor, progress, crl_gap)


def _load(
    settings: Settings,
    reader: ArchiveReader,
    revision: str,
    actor: Actor,
    progress: Progress,
    crl_gap: int,
) -> RestoreSummary:
    data_dir = settings.data_dir
    url = settings.resolved_database_url
    sqlite_file = sqlite_path(url)
    made_sqlite = sqlite_file is not None and not sqlite_file.exists()
    made_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    db = Database(url)
    staged: list[PurePosixPath] = []
    try:
        with loading(db, revision) as loader:
            current: TableLoader | None = None
            end: dict[str, Any] | None = None
            rows = 0
            for line in reader.lines():
                record = _parse(line)
                if end is not None:
                    raise BadRequest("the backup holds data after its end record")
                if isinstance(record, list):
                    if current is None:
                        raise BadRequest("the backup holds a row outside any table")
                    current.add(record)
                    rows += 1
                    if rows % PROGRESS_ROWS == 0:
                        progress(f"  {current.name}: {rows} rows")
                    continue
                kind = record.get("kind")
                if kind == "file":
                    staged.append(_stage(staging, record))
                elif kind == "table":
                    if current is not None:
                        current.flush()
                    current = loader.table(record["name"], record["columns"], record["kinds"])
                    rows = 0
                    progress(f"loading {record['name']}")
                elif kind == "end":
                    if current is not None:
                        current.flush()
                    end = record
                else:
                    raise BadRequest(f"the backup holds a record of unknown kind {kind!r}")
            if end is None:
                raise BadRequest("the backup has no end record: it was cut short when written")
            if end.get("tables") != loader.counts or end.get("files") != len(staged):
                raise BadRequest("the backup's contents do not match its own counts")
            event = AuditEvent.of(
                actor, "store.restore", None, dt.datetime.now(dt.UTC),
                {"backup_created_at": reader.header.get("created_at"), "revision": revision,
                 "source_database": reader.header.get("database"), "crl_number_gap": crl_gap},
            )  # fmt: skip
            crl_numbers = loader.finish(crl_gap, event)
            counts = dict(loader.counts)
        for relative in staged:
            target = data_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(target.parent, 0o700)
            os.rename(staging / relative, target)
    except BaseException:
        db.dispose()
        _undo(data_dir, made_dir, sqlite_file if made_sqlite else None)
        raise
    finally:
        db.dispose()
        shutil.rmtree(staging, ignore_errors=True)
    for name, number in sorted(crl_numbers.items()):
        progress(f"{name}: the next CRL is number {number + 1}")
    return RestoreSummary(
        revision, str(reader.header.get("created_at")), counts, len(staged), crl_numbers
    )


def _parse(line: bytes) -> Any:
    try:
        record = json.loads(line)
    except ValueError:
        raise BadRequest("the backup holds a malformed record") from None
    if not isinstance(record, (list, dict)):
        raise BadRequest("the backup holds a malformed record")
    return record


def _stage(staging: Path, record: dict[str, Any]) -> PurePosixPath:
    relative = _safe_relative(record.get("path"))
    try:
        data = base64.b64decode(record["data"], validate=True)
    except (KeyError, TypeError, binascii.Error):
        raise BadRequest(f"the backup's file {relative} is malformed") from None
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return relative


def _undo(data_dir: Path, made_dir: bool, sqlite_file: Path | None) -> None:
    """Put the targets back as they were after a load that failed: the data directory was empty
    (or absent) before, so whatever is in it now is ours."""
    if data_dir.is_dir():
        for path in data_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if made_dir:
            data_dir.rmdir()
    if sqlite_file is not None:
        for suffix in ("", "-wal", "-shm", "-journal", ".writelock", ".startlock"):
            Path(str(sqlite_file) + suffix).unlink(missing_ok=True)
