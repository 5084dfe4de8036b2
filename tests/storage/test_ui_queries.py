"""The admin UI's reads (issue 13): Catalog.search_certificates and the dashboard, both databases.

The store holds real issued certificates (so history has real issue, renew and revoke events)
and rows written with plain SQL whose every attribute the filters look at is varied. Every
answer is compared with the same query computed in Python over all rows, read back with SQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import (
    Actor,
    AuthorityStatusCounts,
    CertificateQuery,
    CertificateSort,
    CertificateState,
    CertStatus,
    RevocationReason,
)
from ca_service.errors import BadRequest

from ..conftest import ADMIN

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
HOLD = RevocationReason.CERTIFICATE_HOLD.value
PROFILES = ("server", "client", "peer")
REQUESTERS = ("token:0a1b", "acme:acct7", "oidc:ci:repo:x", "cli:root", "cert:default/ab12")


@dataclass(frozen=True)
class Row:
    """A stored certificate as the oracle sees it."""

    id: int
    authority: str
    serial: str
    fingerprint: str
    cn: str | None
    sans: str
    status: str
    reason: str | None
    not_after: dt.datetime
    profile: str
    requester: str

    def state(self, now: dt.datetime) -> CertificateState:
        if self.status == "revoked":
            return CertificateState.ON_HOLD if self.reason == HOLD else CertificateState.REVOKED
        return CertificateState.VALID if self.not_after > now else CertificateState.EXPIRED


def _hex(q: str) -> str | None:
    cleaned = "".join(q.lower().split()).replace(":", "").removeprefix("0x")
    return cleaned if cleaned and all(c in "0123456789abcdef" for c in cleaned) else None


def oracle(rows: list[Row], query: CertificateQuery, now: dt.datetime) -> list[str]:
    """The serials the query must list, in its order, computed without SQL."""

    def keep(r: Row) -> bool:
        if query.authority and r.authority != query.authority:
            return False
        if query.status and r.state(now).value != query.status.value:
            return False
        if query.profile and r.profile != query.profile:
            return False
        if query.requester_kind and r.requester.split(":", 1)[0] != query.requester_kind:
            return False
        if query.expiring_within_days is not None and not (
            r.status == "valid"
            and now < r.not_after <= now + dt.timedelta(days=query.expiring_within_days)
        ):
            return False
        if query.q:
            term, hexed = query.q.strip().lower(), _hex(query.q)
            by_name = term in (r.cn or "").lower() or term in r.sans.lower()
            by_serial = hexed is not None and (hexed.lstrip("0") or "0").rjust(2, "0") == r.serial
            by_print = hexed is not None and hexed == r.fingerprint
            return by_name or by_serial or by_print
        return True

    found = [r for r in rows if keep(r)]
    if query.sort is CertificateSort.ISSUED:
        found.sort(key=lambda r: -r.id)
    else:
        found.sort(key=lambda r: (r.not_after, r.id))
    return [r.serial for r in found]


class Store:
    """A real CA with two hierarchies, certificates issued through it and rows added by SQL."""

    def __init__(self, ca: Core) -> None:
        self.ca = ca
        ca.create_hierarchy(HierarchySpec(name="other"), ADMIN)
        ca.load_keys()
        self.sqlite = ca.db.is_sqlite
        with ca.db.engine.connect() as conn:
            self.authority_ids: dict[str, int] = {
                name: int(i)
                for name, i in conn.execute(sa.text("SELECT name, id FROM authorities")).all()
            }

    def _time(self, value: dt.datetime) -> object:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else value

    def insert_mix(self, count: int) -> None:
        """``count`` rows cycling through every value each filter looks at."""
        params = []
        for i in range(count):
            status, reason = [("valid", None), ("revoked", HOLD), ("revoked", "keyCompromise"),
                              ("valid", None), ("revoked", None)][i % 5]  # fmt: skip
            # Ties on not_after (every third row shares one) test the id tiebreak of the cursor.
            days = [-40, -1, 0.5, 3, 6.9, 7, 8, 29, 31, 200][(i // 3) % 10]
            serial = hashlib.sha256(f"mix-{i}".encode()).hexdigest()[:38]
            fingerprint = hashlib.sha256(f"fp-{i}".encode()).hexdigest()
            cn = f"host{i}.team{i % 4}.example.test" if i % 7 else None
            params.append(
                {
                    "a": self.authority_ids["default" if i % 3 else "other"],
                    "serial": serial,
                    "cn": cn,
                    "sans": f" dns:san{i}.example.test ip:10.0.0.{i % 250} ",
                    "profile": PROFILES[i % 3 if i % 11 else 2],
                    "na": self._time(NOW + dt.timedelta(days=days)),
                    "nb": self._time(NOW - dt.timedelta(days=90)),
                    "status": status,
                    "reason": reason,
                    "ra": self._time(NOW - dt.timedelta(days=1)) if status == "revoked" else None,
                    "fp": fingerprint,
                    "der": fingerprint.encode(),
                    "req": REQUESTERS[i % len(REQUESTERS)],
                }
            )
        # One row whose serial is also hex that a name contains: "cafe" finds both.
        params[0] = {**params[0], "serial": "cafe", "cn": "espresso.example.test"}
        params[1] = {**params[1], "cn": "cafe.example.test"}
        with self.ca.db.write_engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO certificates (authority_id, serial, subject, common_name, sans,"
                    " key_type, profile, not_before, not_after, status, revoked_at,"
                    " revocation_reason, fingerprint_sha256, der, requester, created_at) VALUES"
                    " (:a, :serial, '', :cn, :sans, 'ecdsa-p256', :profile, :nb, :na, :status,"
                    " :ra, :reason, :fp, :der, :req, :nb)"
                ),
                params,
            )

    def rows(self) -> list[Row]:
        with self.ca.db.engine.connect() as conn:
            got = conn.execute(
                sa.text(
                    "SELECT c.id, a.name, c.serial, c.fingerprint_sha256, c.common_name, c.sans,"
                    " c.status, c.revocation_reason, c.not_after, c.profile, c.requester"
                    " FROM certificates c JOIN authorities a ON a.id = c.authority_id"
                )
            ).all()
        out = []
        for r in got:
            not_after = r[8]
            if not isinstance(not_after, dt.datetime):
                not_after = dt.datetime.fromisoformat(str(not_after))
            if not_after.tzinfo is None:
                not_after = not_after.replace(tzinfo=dt.UTC)
            out.append(Row(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], not_after, r[9],
                           r[10]))  # fmt: skip
        return out


@pytest.fixture
def store(ca: Core) -> Store:
    s = Store(ca)
    for _ in range(3):
        ca.issue_with_new_key(ADMIN, common_name="real.example.test", names=["real.example.test"])
    s.insert_mix(90)
    return s


def walk(ca: Core, query: CertificateQuery, now: dt.datetime) -> Iterator[list[str]]:
    """Every page of ``query``, following next_cursor (bounded: a loop would fail the test)."""
    for _ in range(500):
        page = ca.catalog.search_certificates(query, now)
        yield [r.serial for r in page.records]
        if page.next_cursor is None:
            return
        assert page.records, "a page with a next cursor is never empty"
        query = dataclasses.replace(query, cursor=page.next_cursor)
    raise AssertionError("more than 500 pages")


FILTERS: list[dict[str, Any]] = [
    {},
    {"authority": "other"},
    {"authority": "nowhere"},
    *({"status": s} for s in CertificateState),
    {"status": CertStatus.REVOKED},
    {"profile": "peer"},
    {"profile": "client"},
    *({"requester_kind": k} for k in ("token", "acme", "oidc", "cli", "cert", "nobody")),
    {"expiring_within_days": 7},
    {"expiring_within_days": 0},
    {"q": "team1"},
    {"q": "EXAMPLE.test"},
    {"q": "10.0.0.1"},
    {"q": "real.example"},
    {"q": "cafe"},
    {"q": "team2", "status": CertificateState.VALID, "profile": "server"},
    {"q": "example", "authority": "default", "requester_kind": "acme"},
    {"status": CertificateState.REVOKED, "authority": "other", "profile": "server"},
    {"expiring_within_days": 30, "requester_kind": "token"},
]


def test_every_filter_in_both_orders_walks_each_match_exactly_once(store: Store) -> None:
    rows = store.rows()
    assert len(rows) > 90
    for flt, sort, limit in itertools.product(FILTERS, CertificateSort, (1, 7, 200)):
        query = CertificateQuery(sort=sort, limit=limit, **flt)
        pages = list(walk(store.ca, query, NOW))
        listed = [s for page in pages for s in page]
        assert listed == oracle(rows, query, NOW), (flt, sort, limit)
        assert all(len(p) <= limit for p in pages)
        assert len(pages) == max(1, -(-len(listed) // limit)), (flt, sort, limit)


def test_the_expected_filters_are_not_empty(store: Store) -> None:
    """The oracle itself sees every state and kind, so the walk above compares real pages."""
    rows = store.rows()
    for flt in FILTERS[:-1]:
        if flt.get("authority") == "nowhere" or flt.get("requester_kind") == "nobody":
            continue
        if flt.get("expiring_within_days") == 0:
            continue
        assert oracle(rows, CertificateQuery(**flt), NOW), flt


def test_rows_added_between_pages_do_not_shift_the_next_page(store: Store) -> None:
    first = store.ca.catalog.search_certificates(CertificateQuery(limit=10), NOW)
    before = oracle(store.rows(), CertificateQuery(), NOW)
    store.ca.issue_with_new_key(ADMIN, common_name="late.example.test", names=["late.example.test"])
    second = store.ca.catalog.search_certificates(
        CertificateQuery(limit=10, cursor=first.next_cursor), NOW
    )
    assert [r.serial for r in second.records] == before[10:20]


def _colons(text: str) -> str:
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def test_a_serial_or_fingerprint_in_any_form_finds_its_certificate(store: Store) -> None:
    real = next(r for r in store.rows() if r.cn == "real.example.test")
    for q in (real.serial, real.serial.upper(), _colons(real.serial).upper(), "0x" + real.serial,
              "00:" + _colons(real.serial), f"  {_colons(real.serial)}  "):  # fmt: skip
        page = store.ca.catalog.search_certificates(CertificateQuery(q=q), NOW)
        assert [r.serial for r in page.records] == [real.serial], q
    for q in (real.fingerprint, _colons(real.fingerprint), _colons(real.fingerprint).upper()):
        page = store.ca.catalog.search_certificates(CertificateQuery(q=q), NOW)
        assert [r.fingerprint_sha256 for r in page.records] == [real.fingerprint], q
    # With another filter that excludes it, the exact match is not shown.
    page = store.ca.catalog.search_certificates(
        CertificateQuery(q=real.serial, status=CertificateState.REVOKED), NOW
    )
    assert page.records == []


def test_a_hex_q_that_is_also_a_name_finds_both(store: Store) -> None:
    for sort in CertificateSort:
        page = store.ca.catalog.search_certificates(CertificateQuery(q="CAFE", sort=sort), NOW)
        found = {(r.serial, r.common_name) for r in page.records}
        assert ("cafe", "espresso.example.test") in found
        assert any(cn == "cafe.example.test" for _, cn in found)
        page = store.ca.catalog.search_certificates(CertificateQuery(q="ca:fe", sort=sort), NOW)
        assert [r.serial for r in page.records] == ["cafe"]


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"cursor": "nonsense"}, "cursor"),
    ({"cursor": "i0"}, "cursor"),
    ({"cursor": "i-5"}, "cursor"),
    ({"cursor": "i" + "9" * 30}, "cursor"),
    ({"cursor": "e123_5"}, "cursor"),  # an expiry cursor given to the issued order
    ({"cursor": "i5", "sort": CertificateSort.EXPIRY}, "cursor"),
    ({"cursor": "e-99999999999999999_5", "sort": CertificateSort.EXPIRY}, "cursor"),
    ({"cursor": "e" + "9" * 18 + "_5", "sort": CertificateSort.EXPIRY}, "cursor"),
    ({"cursor": "e1.5_5", "sort": CertificateSort.EXPIRY}, "cursor"),
    ({"q": "zz"}, "3 characters"),
    ({"q": "a\x00bc"}, "control character"),
]


def test_a_malformed_cursor_or_query_is_a_bad_request(store: Store) -> None:
    for kw, words in BAD_QUERIES:
        with pytest.raises(BadRequest) as err:
            store.ca.catalog.search_certificates(CertificateQuery(**kw), NOW)
        assert words in err.value.detail, kw


@pytest.mark.parametrize(
    "kw",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"expiring_within_days": -1},
        {"requester_kind": "to ken"},
        {"requester_kind": ""},
    ],
)
def test_out_of_range_arguments_are_refused_when_the_query_is_made(kw: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        CertificateQuery(**kw)


def test_limit_bounds_are_inclusive(store: Store) -> None:
    assert len(store.ca.catalog.search_certificates(CertificateQuery(limit=1), NOW).records) == 1
    assert len(store.ca.catalog.search_certificates(CertificateQuery(limit=200), NOW).records) > 90


def test_status_counts_cover_every_authority(store: Store) -> None:
    rows = store.rows()
    got = store.ca.catalog.status_counts(NOW)
    names = sorted(store.authority_ids)
    assert [c.authority for c in got] == names
    for name in names:
        mine = [r.state(NOW) for r in rows if r.authority == name]
        assert got[names.index(name)] == AuthorityStatusCounts(
            name,
            valid=mine.count(CertificateState.VALID),
            revoked=mine.count(CertificateState.REVOKED),
            expired=mine.count(CertificateState.EXPIRED),
            on_hold=mine.count(CertificateState.ON_HOLD),
        )
    # The roots issued only their intermediates, and those are still counted.
    assert sum(c.valid + c.revoked + c.expired + c.on_hold for c in got) == len(rows)


def test_expiry_histogram_counts_valid_certificates_per_day(store: Store) -> None:
    rows = store.rows()
    hist = store.ca.catalog.expiry_histogram(NOW, 30)
    assert [d for d, _ in hist] == [NOW.date() + dt.timedelta(days=i) for i in range(30)]
    for day, n in hist:
        assert n == sum(
            1 for r in rows if r.state(NOW) is CertificateState.VALID and r.not_after.date() == day
        ), day
    assert sum(n for _, n in hist) > 0
    assert any(n == 0 for _, n in hist)
    with pytest.raises(BadRequest):
        store.ca.catalog.expiry_histogram(NOW, 0)


def test_history_of_a_renewed_then_revoked_certificate(store: Store) -> None:
    ca = store.ca
    other = Actor("token:someone")
    old = ca.issue_with_new_key(ADMIN, common_name="h.example.test", names=["h.example.test"])
    new = ca.renew(old.record.serial, ADMIN)
    ca.revoke(old.record.serial, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    ca.release_hold(old.record.serial, ADMIN)
    ca.revoke(old.record.serial, RevocationReason.SUPERSEDED, other)
    a, s = old.record.authority, old.record.serial
    history = ca.catalog.certificate_history(a, _colons(s).upper())
    assert [(e.action, e.target, e.actor) for e in history] == [
        ("certificate.revoke", f"{a}/{s}", "token:someone"),
        ("certificate.release_hold", f"{a}/{s}", ADMIN.identity),
        ("certificate.revoke", f"{a}/{s}", ADMIN.identity),
        ("certificate.renew", f"{a}/{new.record.serial}", ADMIN.identity),
        ("certificate.issue", f"{a}/{s}", ADMIN.identity),
    ]
    assert history[3].details is not None and history[3].details["renews"] == s
    # The successor's own history starts with its renewal and has nothing of the old one's.
    assert [e.action for e in ca.catalog.certificate_history(a, new.record.serial)] == [
        "certificate.renew"
    ]
    assert ca.catalog.certificate_history(a, s, limit=2) == history[:2]
    with pytest.raises(BadRequest):
        ca.catalog.certificate_history(a, "not-hex")


def test_audit_page_filters_and_walks_newest_first(store: Store) -> None:
    ca = store.ca
    someone = Actor("token:auditor")
    issued = [
        ca.issue_with_new_key(
            someone, common_name=f"a{i}.example.test", names=[f"a{i}.example.test"]
        )
        for i in range(4)
    ]
    ca.revoke(issued[1].record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    everything = ca.catalog.audit_events(limit=1000)
    assert len(everything) > 8

    def walk_audit(**kw: Any) -> list[int]:
        ids: list[int] = []
        cursor = None
        for _ in range(200):
            events, cursor = ca.catalog.audit_page(cursor=cursor, limit=3, **kw)
            ids += [e.id for e in events if e.id is not None]
            if cursor is None:
                return ids
        raise AssertionError("more than 200 pages")

    assert walk_audit() == [e.id for e in everything]
    assert walk_audit(actor="token:auditor") == [
        e.id for e in everything if e.actor == "token:auditor"
    ]
    assert len(walk_audit(actor="token:auditor")) == 4
    assert walk_audit(action="certificate.revoke") == [
        e.id for e in everything if e.action == "certificate.revoke"
    ]
    target = f"{issued[1].record.authority}/{issued[1].record.serial}"
    assert len(walk_audit(target=target)) == 2
    middle = sorted(e.at for e in everything)[len(everything) // 2]
    assert walk_audit(since=middle) == [e.id for e in everything if e.at >= middle]
    assert walk_audit(until=middle) == [e.id for e in everything if e.at < middle]
    assert ca.catalog.latest_audit_events(2) == list(everything[:2])
    for bad in ("x", "a0", "i5", "a" + "1" * 30):
        with pytest.raises(BadRequest):
            ca.catalog.audit_page(cursor=bad)
    for limit in (0, 201):
        with pytest.raises(BadRequest):
            ca.catalog.audit_page(limit=limit)


def _statements(store: Store, query: CertificateQuery) -> list[tuple[str, Any]]:
    """The SQL statements (and parameters) one search runs."""
    captured: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        captured.append((args[2], args[3]))

    sa.event.listen(store.ca.db.engine, "before_cursor_execute", capture)
    try:
        store.ca.catalog.search_certificates(query, NOW)
    finally:
        sa.event.remove(store.ca.db.engine, "before_cursor_execute", capture)
    return [c for c in captured if "FROM certificates" in c[0]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_pages_walk_an_index_in_their_order(store: Store) -> None:
    """SQLite keeps no statistics, so its plan does not depend on the data: the plans at 1M
    (bench/ui_pages.py) are the plans here. A page that sorts its matches costs them all (a
    newest-first list of the valid ones took 0.4 s, of the expired 3.6 s at 1M)."""
    ordered = [
        *((flt, CertificateSort.ISSUED) for flt in FILTERS if "q" not in flt),
        ({}, CertificateSort.EXPIRY),
        ({"status": CertificateState.VALID}, CertificateSort.EXPIRY),
        ({"status": CertificateState.EXPIRED}, CertificateSort.EXPIRY),
        ({"expiring_within_days": 30}, CertificateSort.EXPIRY),
    ]
    for flt, sort in ordered:
        if flt.get("authority") == "nowhere":
            continue
        query = CertificateQuery(sort=sort, **flt)
        with store.ca.db.engine.connect() as conn:
            for statement, params in _statements(store, query):
                plan = " | ".join(
                    str(r[3])
                    for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                )
                assert "TEMP B-TREE FOR ORDER BY" not in plan, (flt, sort, plan)


def test_the_requester_kind_filter_is_served_by_its_expression_index(store: Store) -> None:
    """The query writes the index's expression character for character (models.REQUESTER_KIND_SQL
    against migration 0008): a drift between the two would silently scan the table at 1M."""
    query = CertificateQuery(requester_kind="cli")
    assert store.ca.catalog.search_certificates(query, NOW).records
    (statement, params), *_ = _statements(store, query)
    with store.ca.db.engine.connect() as conn:
        if store.sqlite:
            plan = " ".join(
                str(r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            )
        else:
            # A handful of rows: the planner would rather scan, unless told not to.
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
    assert "ix_certificates_requester_kind" in plan, plan


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_name_search_reads_the_unindexed_tail_by_rowid(store: Store) -> None:
    """The rows the name index does not hold yet (storage/name_index.py) are the newest: their
    part of a search must be a rowid range, in either sort, never a walk of an index over the
    whole table (SQLite could pick the expiry index to avoid the sort, and at 1M that reads a
    million entries to find a few hundred)."""
    # Enough other rows that one name is rare (under 1 % of the sample): the expiry sort takes
    # the index path, and so a tail part, only for a rare term.
    with store.ca.db.write_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO certificates (authority_id, serial, subject, common_name, sans,"
                " key_type, profile, not_before, not_after, status, fingerprint_sha256, der,"
                " requester, created_at) VALUES (:a, :s, '', :cn, '', 'ecdsa-p256', 'server',"
                " :t, :t, 'valid', :s, x'00', 'cli:x', :t)"
            ),
            [
                {
                    "a": store.authority_ids["default"],
                    "s": f"{i:040x}",
                    "cn": f"filler{i}.test",
                    "t": store._time(NOW),
                }
                for i in range(1, 200)
            ],
        )
    seen_expiry_tail = False
    for sort in CertificateSort:
        for q in ("espresso.example", "example.test"):
            query = CertificateQuery(q=q, sort=sort)
            with store.ca.db.engine.connect() as conn:
                plans = [
                    " | ".join(
                        str(r[3])
                        for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                    )
                    for statement, params in _statements(store, query)
                    if "certificate_names" not in statement
                ]
            tails = [p for p in plans if "rowid>?" in p]
            # (A common term in the expiry sort walks that order with LIKE alone: no tail part.)
            assert tails or (sort is CertificateSort.EXPIRY and q == "example.test"), plans
            seen_expiry_tail = seen_expiry_tail or (bool(tails) and sort is CertificateSort.EXPIRY)
            for plan in tails:
                assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan, (sort, q, plan)
    assert seen_expiry_tail
