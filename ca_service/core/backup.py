"""Backup of a whole ca-service: the store and the state kept beside it in the data
directory, in one file encrypted as a whole (crypto/archive.py).

What a backup holds, as JSON lines inside the encrypted stream:

1. the data directory's state files, as opaque bytes: ``keys/*`` (the CA and OCSP responder
   keys, each already encrypted PKCS#8) and ``tls/server.pem`` (the HTTPS key, encrypted, and
   its chain). Nothing else there is state: ``ca.db`` and its ``-wal``/``-shm`` are the store,
   taken through the database; ``ca.db.writelock``, ``ca.db.startlock``, ``crl-stamps/`` and
   ``tls/renew.lock`` are locks and hints between the processes of one host, made afresh.
   Keys kept in the database (or in a PKCS#11 token, which a backup cannot and must not copy)
   need nothing here;
2. every table of the store, from one consistent snapshot (storage/backup.py);
3. an end record with the count of each, so a restore knows it loaded everything.

The files are read after the snapshot is taken: a key file is written before the row naming it
commits and is never removed afterwards, so every key the snapshot refers to is there.

This module only reads: it must never write to the store (but for its audit event) or to
the data directory, and never decrypts a key file. Restoring is core/restore.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca_service import __version__
from ca_service.config import Settings
from ca_service.crypto.archive import ArchiveWriter
from ca_service.domain import Actor, AuditEvent
from ca_service.errors import BadRequest, Conflict
from ca_service.storage.backup import snapshot
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository

Progress = Callable[[str], None]
# Every this many rows of one table, a progress line.
PROGRESS_ROWS = 100_000
# Which passphrase a backup key is made from (recorded in the header; names, not secrets).
CA_PASSPHRASE = "ca-key-passphrase"  # noqa: S105
BACKUP_PASSPHRASE = "backup-passphrase"  # noqa: S105


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    size: int
    revision: str
    database: str
    tables: dict[str, int]
    files: int


def _state_files(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of the data directory's state files (see the module docstring)."""
    keys = data_dir / "keys"
    if keys.is_dir():
        for path in sorted(keys.iterdir()):
            if path.is_file() and not path.is_symlink():
                yield f"keys/{path.name}", path
    server = data_dir / "tls" / "server.pem"
    if server.is_file():
        yield "tls/server.pem", server


def _line(out: ArchiveWriter, record: Any) -> None:
    out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")


def write_backup(
    settings: Settings,
    db: Database,
    destination: Path,
    passphrase: bytes,
    *,
    key_source: str,
    actor: Actor,
    progress: Progress,
) -> BackupSummary:
    """Write a backup of the running service to ``destination`` (never overwritten: the file
    appears, mode 0600, only once complete)."""
    if destination.exists():
        raise Conflict(f"{destination} exists already; not overwriting it")
    parent = destination.parent if str(destination.parent) else Path(".")
    workdir = Path(tempfile.mkdtemp(prefix=".ca-backup-", dir=parent))
    partial = workdir / "backup.partial"
    try:
        with snapshot(db, workdir) as snap:
            if snap.revision is None:
                raise BadRequest("the database has no ca-service schema; nothing to back up")
            progress(f"snapshot of the {snap.dialect} store taken (schema {snap.revision})")
            header = {
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "alembic_revision": snap.revision,
                "database": snap.dialect,
                "key_source": key_source,
                "service_version": __version__,
            }
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                out = ArchiveWriter(fh, header, passphrase)
                files = 0
                for name, path in _state_files(settings.data_dir):
                    mode = path.stat().st_mode & 0o777
                    data = base64.b64encode(path.read_bytes()).decode()
                    _line(out, {"kind": "file", "path": name, "mode": mode, "data": data})
                    files += 1
                progress(f"{files} file(s) from {settings.data_dir}")
                counts: dict[str, int] = {}
                for table in snap.tables():
                    _line(out, {"kind": "table", "name": table.name,
                                "columns": table.columns, "kinds": table.kinds})  # fmt: skip
                    n = 0
                    for row in table.rows:
                        _line(out, row)
                        n += 1
                        if n % PROGRESS_ROWS == 0:
                            progress(f"  {table.name}: {n} rows")
                    counts[table.name] = n
                    progress(f"{table.name}: {n} rows")
                _line(out, {"kind": "end", "tables": counts, "files": files})
                out.close()
                fh.flush()
                os.fsync(fh.fileno())
                size = out.written
            revision = snap.revision
            dialect = snap.dialect
        _publish(partial, destination)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with unit_of_work(db, write=True) as s:
        details = {"revision": revision, "tables": counts, "files": files}
        now = dt.datetime.now(dt.UTC)
        AuditRepository(s).add(AuditEvent.of(actor, "store.backup", destination.name, now, details))
    return BackupSummary(destination, size, revision, dialect, counts, files)


def _publish(partial: Path, destination: Path) -> None:
    """Give the complete file its name, never replacing a file that appeared meanwhile."""
    try:
        os.link(partial, destination)
    except FileExistsError:
        raise Conflict(f"{destination} exists already; not overwriting it") from None
    except OSError:
        # A file system without hard links (some network shares): rename, after one more look.
        if destination.exists():
            raise Conflict(f"{destination} exists already; not overwriting it") from None
        os.rename(partial, destination)
