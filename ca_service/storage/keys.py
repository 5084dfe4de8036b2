"""Store access for the encrypted private keys of ``key_backend = "database"`` (issue 14).

What is stored is the passphrase-encrypted PKCS#8 PEM that signing/keystore.py made; nothing
here can open it, and nothing here ever sees a clear key. ``DatabaseKeyBlobs`` is the small
accessor the keystore reads and writes through, each call its own transaction (a key is
written before the record that names it, as a key file was); ``import_key_files`` moves the
key files of an older store into the table.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from ca_service.errors import ConfigError, Conflict
from ca_service.storage.db import Database, DuplicateRow, unit_of_work
from ca_service.storage.models import AuthorityRow, KeyBlobRow, OCSPResponderRow

log = logging.getLogger(__name__)

DB_PREFIX = "db:"
_NOT_FILES = (DB_PREFIX, "pkcs11:")


@dataclass(frozen=True)
class KeyImport:
    """What ``import_key_files`` did: the ``db:`` names of the keys it copied in, and the key
    files that rows name but this node does not have."""

    imported: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class KeyBlobRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, name: str) -> bytes | None:
        data = self.s.execute(
            select(KeyBlobRow.pem_encrypted).where(KeyBlobRow.name == name)
        ).scalar_one_or_none()
        return bytes(data) if data is not None else None

    def add(self, name: str, data: bytes, now: dt.datetime) -> None:
        self.s.add(KeyBlobRow(name=name, pem_encrypted=data, created_at=now))
        self.s.flush()

    def delete(self, name: str) -> None:
        self.s.execute(delete(KeyBlobRow).where(KeyBlobRow.name == name))

    def file_references(self, *, lock: bool) -> list[str]:
        """Every ``key_file`` that names a file in a node's data_dir/keys (an older store);
        with ``lock``, the rows that name them are locked, so that two replicas import in turn
        (the second finds nothing left once the first commits)."""
        found: set[str] = set()
        for model in (AuthorityRow, OCSPResponderRow):
            column = model.key_file
            query = (
                select(column)
                .where(~or_(*(column.startswith(p) for p in _NOT_FILES)))
                .order_by(model.id)
            )
            found.update(self.s.execute(query.with_for_update() if lock else query).scalars())
        return sorted(found)

    def repoint(self, old: str, new: str) -> None:
        """Every authority and responder row that names ``old`` names ``new`` instead."""
        for model in (AuthorityRow, OCSPResponderRow):
            self.s.execute(update(model).where(model.key_file == old).values(key_file=new))


class DatabaseKeyBlobs:
    """The ``signing.keystore.KeyBlobs`` of one database: get, put and delete a blob by name."""

    def __init__(self, db: Database, now: Callable[[], dt.datetime]) -> None:
        self.db = db
        self._now = now

    def __repr__(self) -> str:
        return f"DatabaseKeyBlobs({self.db.url.split('@')[-1]!r})"

    def get(self, name: str) -> bytes | None:
        with unit_of_work(self.db) as s:
            return KeyBlobRepository(s).get(name)

    def put(self, name: str, data: bytes) -> None:
        """Store a new blob; refuses to replace one (a key is never overwritten)."""
        try:
            with unit_of_work(self.db, write=True) as s:
                KeyBlobRepository(s).add(name, data, self._now())
        except DuplicateRow:
            raise Conflict(f"a key named {name!r} exists already; not overwriting it") from None

    def delete(self, name: str) -> None:
        with unit_of_work(self.db, write=True) as s:
            KeyBlobRepository(s).delete(name)


def import_key_files(
    db: Database, read_file: Callable[[str], bytes | None], now: dt.datetime
) -> KeyImport:
    """Copy the key files that rows still name into ``key_blobs`` and point the rows at the
    copies, in one transaction.

    ``read_file`` gives a file's encrypted bytes, checked to open with the passphrase, or None
    when this node does not have it (another replica may, and imports it at its start).
    Idempotent: a second run, here or on another replica, finds nothing left to import; the
    files are left in place (delete them once a backup of the database holds the keys).
    """
    with unit_of_work(db) as s:
        if not KeyBlobRepository(s).file_references(lock=False):
            return KeyImport()  # the common case, at every start: no write transaction
    done = KeyImport()
    with unit_of_work(db, write=True) as s:
        repo = KeyBlobRepository(s)
        for key_file in repo.file_references(lock=True):
            data = read_file(key_file)
            if data is None:
                log.warning(
                    "key file %s is named in the store but not in this node's data_dir/keys; "
                    "run 'ca-service keys import' where it is",
                    key_file,
                )
                done.missing.append(key_file)
                continue
            name = key_file.removesuffix(".key.pem")
            existing = repo.get(name)
            if existing is None:
                repo.add(name, data, now)
            elif existing != data:
                raise ConfigError(
                    f"key file {key_file} differs from the key stored as {DB_PREFIX}{name}; "
                    "nothing was imported"
                )
            repo.repoint(key_file, DB_PREFIX + name)
            done.imported.append(DB_PREFIX + name)
    if done.imported:
        log.warning("imported %d key file(s) into the database", len(done.imported))
    return done
