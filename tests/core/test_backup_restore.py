"""Backup and restore in-process (core/backup.py, core/restore.py), on SQLite and PostgreSQL:
an older schema's backup is brought to head, and a restore that fails half-way through loading
leaves the targets as empty as it found them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ca_service.clock import SystemClock
from ca_service.config import Settings
from ca_service.core.backup import CA_PASSPHRASE, write_backup
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.core.restore import restore_backup
from ca_service.crypto.archive import ArchiveWriter
from ca_service.errors import BadRequest
from ca_service.storage import migrate
from ca_service.storage.db import Database
from ca_service.wiring import open_keystore

from ..conftest import ADMIN, PASSPHRASE, database, make_settings, table_names

OLDER = "0007"


def _target(tmp_path: Path, url: str) -> Settings:
    return make_settings(tmp_path / "target", url, key_backend="file")


def test_a_backup_of_an_older_schema_is_restored_and_brought_to_head(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    settings = settings.with_overrides(key_backend="file")
    db = Database(settings.resolved_database_url)
    try:
        migrate.upgrade(db, OLDER)
        core = Core(settings, db, open_keystore(settings, db, SystemClock()))
        core.create_hierarchy(HierarchySpec(), ADMIN)
        core.load_keys()
        issued = core.issue_with_new_key(ADMIN, common_name="older.example.test")
        out = tmp_path / "older.bak"
        summary = write_backup(
            settings, db, out, PASSPHRASE, key_source=CA_PASSPHRASE, actor=ADMIN,
            progress=lambda _: None,
        )  # fmt: skip
    finally:
        db.dispose()
    assert summary.revision == OLDER and summary.files == 2
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    (tmp_path / "restored").mkdir()
    with database(backend, tmp_path / "restored") as url:
        target = _target(tmp_path, url)
        lines: list[str] = []
        restored = restore_backup(
            target, out, PASSPHRASE, key_source=CA_PASSPHRASE, actor=ADMIN,
            progress=lines.append,
        )  # fmt: skip
        assert restored.revision == OLDER
        assert restored.tables["certificates"] == summary.tables["certificates"]
        db2 = Database(url)
        try:
            assert migrate.pending(db2) == []  # at head, past the backup's revision
            core2 = Core(target, db2, open_keystore(target, db2, SystemClock()))
            core2.load_keys()  # the restored key files open with the passphrase
            assert core2.get_certificate(issued.record.serial).common_name == ("older.example.test")
            again = core2.issue_with_new_key(ADMIN, common_name="newer.example.test")
            assert again.record.serial != issued.record.serial
        finally:
            db2.dispose()
        assert any("intact" in line for line in lines)


def test_a_restore_failing_while_loading_leaves_the_targets_empty(
    tmp_path: Path, db_url: str
) -> None:
    bad = tmp_path / "bad.bak"
    with bad.open("wb") as fh:
        writer = ArchiveWriter(
            fh,
            {"alembic_revision": migrate.head(), "database": "sqlite", "key_source": CA_PASSPHRASE},
            PASSPHRASE,
        )
        writer.write(b'{"kind":"file","path":"keys/x.key.pem","mode":384,"data":"eA=="}\n')
        writer.write(b'{"kind":"table","name":"authorities","columns":["id"],"kinds":["value"]}\n')
        writer.close()
    target = _target(tmp_path, db_url)
    with pytest.raises(BadRequest, match="other columns than its revision defines"):
        restore_backup(
            target, bad, PASSPHRASE, key_source=CA_PASSPHRASE, actor=ADMIN, progress=print
        )
    # The schema the load had created is rolled back; the staged key file and the data
    # directory it made are gone (and a SQLite file it made, with its sidecars).
    assert not target.data_dir.exists()
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        assert not any(os.path.exists(path + s) for s in ("", "-wal", "-shm", ".writelock"))
    assert table_names(db_url) == []
