"""Replay-Nonces: issued without a write, used once, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator

import pytest

from ca_service.acme.nonces import Nonces, nonce_key
from ca_service.storage import migrate
from ca_service.storage.db import Database

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LIFE = dt.timedelta(hours=1)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    found = Database(db_url)
    migrate.upgrade(found)
    yield found
    found.dispose()


def _count(db: Database) -> int:
    from sqlalchemy import text

    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM acme_nonces")).scalar_one())


def test_issuing_writes_nothing_and_each_nonce_is_used_once(db: Database) -> None:
    nonces = Nonces(db, nonce_key(b"passphrase"), LIFE)
    issued = [nonces.issue(NOW) for _ in range(50)]
    assert len(set(issued)) == 50
    assert _count(db) == 0
    assert all(len(base64.urlsafe_b64decode(n + "==")) == 40 for n in issued)
    assert nonces.use(issued[0], NOW) is True
    assert nonces.use(issued[0], NOW) is False
    assert _count(db) == 1


def test_a_nonce_of_another_key_a_forged_or_expired_one_is_refused(db: Database) -> None:
    ours = Nonces(db, nonce_key(b"passphrase"), LIFE)
    theirs = Nonces(db, nonce_key(b"another passphrase"), LIFE)
    assert ours.use(theirs.issue(NOW), NOW) is False
    good = ours.issue(NOW)
    raw = bytearray(base64.urlsafe_b64decode(good + "=="))
    raw[10] ^= 1  # one bit of the random part: the MAC no longer matches
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert ours.use(forged, NOW) is False
    assert ours.use(good, NOW + LIFE) is False  # its expiry is the first instant it is dead
    for junk in ("", "x", "!!!!", good + "=", good[:-2], "A" * 65):
        assert ours.use(junk, NOW) is False
    assert _count(db) == 0  # no refused nonce was recorded
    assert ours.use(good, NOW + LIFE - dt.timedelta(seconds=1)) is True


def test_replicas_sharing_the_passphrase_accept_each_others_nonces_once(db: Database) -> None:
    one = Nonces(db, nonce_key(b"shared"), LIFE)
    two = Nonces(db, nonce_key(b"shared"), LIFE)
    value = one.issue(NOW)
    assert two.use(value, NOW) is True
    assert one.use(value, NOW) is False
