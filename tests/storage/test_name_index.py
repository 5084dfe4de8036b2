"""SQLite's name index behind the writes (migration 0012, storage/name_index.py).

The FTS5 table holds the rows up to a mark; the rows above it (the tail) are matched by LIKE.
What must hold: a search gives the same answer wherever the mark stands, across pages that
straddle it, in both of the admin UI's orders; no write ever leaves the index unequal to the
table once the tail is indexed (FTS5's integrity-check compares the two); an insert no longer
writes the index on the request path, and the tail stays bounded whoever writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from ca_service import scheduler
from ca_service.core.facade import Core
from ca_service.domain import CertificateFilter, CertificateQuery, CertificateSort
from ca_service.storage import migrate, name_index
from ca_service.storage.db import Database, unit_of_work

from ..conftest import ADMIN
from .test_search import NOW, Store

TERMS = ("zeta", "example", "svc3.", "pay", "a1.svc1.example.t", "nothing-like-it")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: PostgreSQL's trigram indexes are kept by its server (last test)."""
    return f"sqlite:///{tmp_path / 'ca.db'}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'ca.db'}", index=False)
    yield s
    s.db.dispose()


def _sql(store: Store, sql: str, **params: object) -> list[tuple[object, ...]]:
    with store.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def mark(store: Store) -> int:
    with unit_of_work(store.db) as s:
        held = name_index.indexed_through(s)
    assert held is not None
    return held


def in_index(store: Store, phrase: str) -> list[int]:
    """What the FTS table itself matches: the rows it holds."""
    rows = _sql(
        store,
        "SELECT rowid FROM certificate_names WHERE certificate_names MATCH :p ORDER BY rowid",
        p=f'"{phrase}"',
    )
    return [int(str(r[0])) for r in rows]


def integrity_check(store: Store) -> None:
    # rank 1: FTS5 compares its index with the content table too, and raises on a difference.
    store.execute(
        "INSERT INTO certificate_names(certificate_names, rank) VALUES ('integrity-check', 1)"
    )


def fill(store: Store, n: int, start: int = 0) -> list[int]:
    names = ["alpha", "beta", "gamma", "delta", "zeta"]
    ids: list[int] = []
    for i in range(start, start + n):
        base = names[i % len(names)]
        ids += store.insert(
            [
                (f"{base}{i}.svc{i % 4}.example.test", [f"dns:{base}{i}.svc{i % 4}.example.test"]),
                (None, [f"email:pay{i}@corp.test"]),
            ],
            status="revoked" if i % 3 == 0 else "valid",
            not_after=NOW + dt.timedelta(days=(i * 7) % 50 - 5),
        )
    return ids


def test_rows_in_the_tail_are_found_and_then_indexed(store: Store) -> None:
    ids = fill(store, 6)
    assert mark(store) == 0 and in_index(store, "example") == []
    for term in TERMS:
        assert store.ids(term) == store.expected(term), term
    assert name_index.catch_up(store.db) == len(ids)
    assert mark(store) == max(ids) and in_index(store, "example") == sorted(ids[::2])
    for term in TERMS:
        assert store.ids(term) == store.expected(term), term
    assert name_index.catch_up(store.db) == 0
    integrity_check(store)


@pytest.mark.parametrize("limit", [1, 3, 500])
def test_pages_that_straddle_the_mark_list_each_match_once(store: Store, limit: int) -> None:
    fill(store, 10)
    name_index.catch_up(store.db)
    fill(store, 10, start=10)
    assert 0 < mark(store) < max(store.rows)
    for term in TERMS:
        assert store.ids(term, limit=limit) == store.expected(term), (term, limit)


def test_the_ui_search_in_both_orders_across_the_mark(ca: Core) -> None:
    for i in range(8):
        ca.issue_with_new_key(ADMIN, common_name=f"early{i}.example.test")
    ca.catalog.index_names()
    for i in range(8):
        ca.issue_with_new_key(ADMIN, common_name=f"late{i}.example.test")
    now = dt.datetime.now(dt.UTC)
    for sort in CertificateSort:
        for limit in (1, 3, 100):
            query = CertificateQuery(q="example.test", sort=sort, limit=limit)
            seen: list[str] = []
            for _ in range(100):
                page = ca.catalog.search_certificates(query, now)
                seen += [r.serial for r in page.records]
                if page.next_cursor is None:
                    break
                query = dataclasses.replace(query, cursor=page.next_cursor)
            whole = ca.catalog.search_certificates(
                CertificateQuery(q="example.test", sort=sort, limit=100), now
            )
            assert seen == [r.serial for r in whole.records], (sort, limit)
            assert len(seen) == 16 and len(set(seen)) == 16


def test_updates_and_deletes_on_either_side_of_the_mark_keep_the_index_whole(
    store: Store,
) -> None:
    held = fill(store, 2)
    name_index.catch_up(store.db)
    tail = fill(store, 2, start=2)
    for i, new in ((held[0], "renamed-held"), (tail[0], "renamed-tail")):
        store.execute(
            "UPDATE certificates SET common_name = :cn, sans = ' dns:x.test ' WHERE id = :i",
            cn=f"{new}.example.test",
            i=i,
        )
        store.rows[i] = dataclasses.replace(
            store.rows[i], cn=f"{new}.example.test", sans=("dns:x.test",)
        )
    for i in (held[1], tail[1]):
        store.execute("DELETE FROM certificates WHERE id = :i", i=i)
        del store.rows[i]
    for term in ("renamed", "alpha0", "beta1", "pay", "x.test", "example"):
        assert store.ids(term) == store.expected(term), term
    name_index.catch_up(store.db)
    integrity_check(store)
    assert in_index(store, "renamed") == sorted([held[0], tail[0]])


def test_an_id_given_out_again_below_the_mark_is_indexed_at_once(store: Store) -> None:
    ids = fill(store, 2)
    name_index.catch_up(store.db)
    newest = max(ids)
    store.execute("DELETE FROM certificates WHERE id = :i", i=newest)
    del store.rows[newest]
    (again,) = store.insert([("reborn.example.test", [])])
    assert again == newest == mark(store)  # SQLite gave the deleted newest id out again
    assert in_index(store, "reborn") == [again]
    assert store.ids("reborn") == [again]
    integrity_check(store)


def test_catch_up_goes_in_batches_and_stops_at_its_bound(store: Store) -> None:
    ids = fill(store, 30)
    assert name_index.catch_up(store.db, batch=7, max_rows=20) == 20
    assert mark(store) == ids[19]
    assert name_index.catch_up(store.db, batch=7) == 40
    assert mark(store) == ids[-1]
    integrity_check(store)


def test_the_insert_that_would_pass_the_bound_indexes_the_tail(store: Store) -> None:
    """Writers that never catch up (CLI commands, SQL loads) still keep the tail bounded."""
    rows = [(f"bulk{i}.example.test", []) for i in range(name_index.TAIL_BOUND + 10)]
    ids = store.insert(rows)
    # The row that passed the bound indexed those before it, and stayed in the tail itself.
    assert mark(store) == ids[name_index.TAIL_BOUND] - 1
    assert max(ids) - mark(store) <= name_index.TAIL_BOUND
    assert store.ids("bulk4105.") == store.expected("bulk4105.") == [ids[4105]]
    assert store.ids("bulk1.") == [ids[1]]
    name_index.catch_up(store.db)
    integrity_check(store)


def test_concurrent_catch_ups_beside_writers_index_every_row_once(store: Store) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def indexer() -> None:
        try:
            while not stop.is_set():
                name_index.catch_up(store.db, batch=3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=indexer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        fill(store, 40)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors
    name_index.catch_up(store.db)
    integrity_check(store)
    assert in_index(store, "example") == sorted(i for i, r in store.rows.items() if r.cn)
    for term in TERMS:
        assert store.ids(term) == store.expected(term), term


def test_an_issuance_no_longer_writes_the_index(ca: Core) -> None:
    """The cost that grew with the store (bench/PROFILES.md): migration 0005's trigger wrote
    every certificate's trigrams, and a segment of its own, inside the issuing commit."""
    ca.catalog.index_names()

    def segments() -> int:
        with ca.db.engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT count(*) FROM certificate_names_data")).one()[0]
            )

    before = segments()
    issued = ca.issue_with_new_key(ADMIN, common_name="fresh.example.test")
    assert segments() == before
    records, _ = ca.catalog.list_certificates(
        CertificateFilter(name="fresh.example"), dt.datetime.now(dt.UTC)
    )
    assert [r.serial for r in records] == [issued.record.serial]
    assert ca.catalog.index_names() == 1 and segments() > before


def test_the_scheduler_indexes_what_was_written(ca: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "NAME_INDEX_MAX_ROWS", 2)  # a tick's bound: several ticks
    for i in range(5):
        ca.issue_with_new_key(ADMIN, common_name=f"by-the-scheduler{i}.example.test")
    stop = scheduler.start_name_indexer(ca, interval=0.05)
    try:
        for _ in range(200):  # a bounded wait, not a timing assert
            with unit_of_work(ca.db) as s:
                if name_index.indexed_through(s) == _newest(ca):
                    break
            stop.wait(0.05)
        else:
            raise AssertionError("the scheduler never indexed the new row")
    finally:
        stop.set()


def _newest(ca: Core) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT max(id) FROM certificates")).one()[0])


def test_downgrade_indexes_the_tail_and_upgrade_sets_the_mark(store: Store) -> None:
    held = fill(store, 2)
    name_index.catch_up(store.db)
    tail = fill(store, 2, start=2)
    with store.db.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
    assert in_index(store, "example") == sorted(i for i in held + tail if store.rows[i].cn)
    integrity_check(store)  # 0005's triggers, and every row indexed
    migrate.upgrade(store.db)
    assert mark(store) == max(tail)
    later = fill(store, 1, start=4)
    assert in_index(store, "zeta4") == [] and store.ids("zeta4") == [later[0]]
    name_index.catch_up(store.db)
    integrity_check(store)


def test_postgresql_has_no_tail(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        migrate.upgrade(db)
        assert name_index.catch_up(db) == 0
        with unit_of_work(db) as s:
            assert name_index.indexed_through(s) is None
    finally:
        db.dispose()


def _insert_steps(store: Store, n: int) -> int:
    """SQLite VM instructions of one more certificate insert (with its triggers), counted by a
    progress handler: a measure of work that does not depend on the machine's speed."""
    path = store.db.engine.url.database
    assert path
    conn = sqlite3.connect(path, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        row = conn.execute(
            "SELECT authority_id, subject, key_type, profile, not_before, not_after, status,"
            " der, requester, created_at FROM certificates ORDER BY id DESC LIMIT 1"
        ).fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.set_progress_handler(count, 1)
        conn.execute(
            "INSERT INTO certificates (authority_id, serial, subject, common_name, sans,"
            " key_type, profile, not_before, not_after, status, fingerprint_sha256, der,"
            " requester, created_at) VALUES (?, ?, ?, 'steps.example.test', ' ', ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?)",
            (*row[:1], f"{n:040x}", *row[1:7], f"{n:064x}", *row[7:]),
        )
        conn.set_progress_handler(None, 1)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return steps


def test_an_insert_costs_the_same_whatever_the_tail_holds(store: Store) -> None:
    """The tail's bound was first a WHERE of the catch-up's SELECT, which SQLite tested row by
    row over the whole tail on every insert: issuance slowed as the tail grew (1.36 to 3.07 ms
    in process over 3,500 rows). Counted in SQLite's VM steps, not in seconds."""
    fill(store, 5)
    short = _insert_steps(store, 1)
    store.insert([(f"t{i}.example.test", []) for i in range(3000)])
    assert mark(store) == 0  # all 3,010 rows still in the tail
    long = _insert_steps(store, 2)
    assert long < short * 1.5, (short, long)
