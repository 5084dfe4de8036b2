"""Certificate name search (CertificateFilter.name, API ``q``, CLI ``list --name``), both databases.

Rows are mostly written with plain SQL, the way a bulk load or a manual fix writes them: the
trigram index of migration 0005 must be kept by the database itself, not by the repository.
Every listing is checked against the same filter computed in Python over all rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import CertificateFilter, CertStatus
from ca_service.storage import migrate, name_index, repositories
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import CertificateRepository
from ca_service.web import openapi

from ..conftest import ADMIN
from ..helpers import cli_run

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Row:
    id: int
    authority: str
    cn: str | None
    sans: tuple[str, ...]
    status: str = "valid"
    not_after: dt.datetime = NOW + dt.timedelta(days=30)


class Store:
    """A migrated database with two authorities, written to with plain SQL.

    ``index`` (the default): on SQLite the name index catches up after every insert, as the
    scheduler would, so that searches go through it; without, the rows stay in the tail that
    searches match by LIKE (tests/storage/test_name_index.py).
    """

    def __init__(self, url: str, *, index: bool = True) -> None:
        self.index = index
        self.db = Database(url)
        self.sqlite = self.db.is_sqlite
        migrate.upgrade(self.db)
        self.rows: dict[int, Row] = {}
        self.authority_ids: dict[str, int] = {}
        for name in ("alpha", "beta"):
            self.authority_ids[name] = self._add_authority(name)

    def _time(self, value: dt.datetime) -> object:
        # SQLite: the text SQLAlchemy's DateTime stores (naive UTC); PostgreSQL: timestamptz.
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else value

    def _add_authority(self, name: str) -> int:
        with self.db.write_engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO authorities (name, is_root, is_default, subject, key_type,"
                    " cert_der, key_file, not_before, not_after, crl_number, created_at)"
                    " VALUES (:n, false, false, :s, 'ecdsa-p256', :d, 'none', :t, :t, 0, :t)"
                ),
                {"n": name, "s": f"CN={name}", "d": b"\x30\x00", "t": self._time(NOW)},
            )
            return int(
                conn.execute(
                    sa.text("SELECT id FROM authorities WHERE name = :n"), {"n": name}
                ).scalar_one()
            )

    def insert(self, rows: Sequence[tuple[str | None, Sequence[str]]], **kw: object) -> list[int]:
        """Insert certificates (common name, SANs) in one multi-row INSERT; returns their ids."""
        authority = str(kw.get("authority", "alpha"))
        status = str(kw.get("status", "valid"))
        not_after = kw.get("not_after", NOW + dt.timedelta(days=30))
        assert isinstance(not_after, dt.datetime)
        params = []
        for cn, sans in rows:
            serial = hashlib.sha256(f"{len(self.rows)}-{len(params)}-{cn}".encode()).hexdigest()
            params.append(
                {
                    "a": self.authority_ids[authority],
                    "serial": serial[:40],
                    "subject": f"CN={cn}" if cn else "",
                    "cn": cn,
                    "sans": " " + " ".join(sans) + " ",
                    "nb": self._time(NOW - dt.timedelta(days=1)),
                    "na": self._time(not_after),
                    "status": status,
                    "fp": serial,
                    "der": b"\x30\x00",
                }
            )
        with self.db.write_engine.begin() as conn:
            before = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM certificates"))
            first = int(before.scalar_one()) + 1
            conn.execute(
                sa.text(
                    "INSERT INTO certificates (authority_id, serial, subject, common_name, sans,"
                    " key_type, profile, not_before, not_after, status, fingerprint_sha256, der,"
                    " requester, created_at) VALUES (:a, :serial, :subject, :cn, :sans,"
                    " 'ecdsa-p256', 'server', :nb, :na, :status, :fp, :der, 'test:sql', :nb)"
                ),
                params,
            )
            ids = [
                int(i)
                for i in conn.execute(
                    sa.text("SELECT id FROM certificates WHERE id >= :f ORDER BY id"), {"f": first}
                ).scalars()
            ]
        assert len(ids) == len(rows)
        if self.index:
            name_index.catch_up(self.db)
        for i, (cn, sans) in zip(ids, rows, strict=True):
            self.rows[i] = Row(i, authority, cn, tuple(sans), status, not_after)
        return ids

    def execute(self, sql: str, **params: object) -> None:
        with self.db.write_engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def page(self, flt: CertificateFilter) -> tuple[list[str], int | None]:
        with unit_of_work(self.db) as s:
            records, cursor = CertificateRepository(s).list(flt, NOW)
        return [r.serial for r in records], cursor

    def serial_ids(self) -> dict[str, int]:
        with self.db.engine.connect() as conn:
            return {
                s: int(i) for s, i in conn.execute(sa.text("SELECT serial, id FROM certificates"))
            }

    def ids(self, term: str, **kw: object) -> list[int]:
        """Every match, following the cursor page by page (newest first)."""
        out: list[int] = []
        by_serial = self.serial_ids()
        after: int | None = None
        for _ in range(1000):
            serials, after = self.page(CertificateFilter(name=term, after_id=after, **kw))  # type: ignore[arg-type]
            out += [by_serial[s] for s in serials]
            if after is None:
                return out
        raise AssertionError("the cursor never ran out")

    def expected(
        self,
        term: str,
        *,
        authority: str | None = None,
        status: CertStatus | None = None,
        expires_before: dt.datetime | None = None,
    ) -> list[int]:
        """The same filter in Python: case-insensitive substring of the CN or the SAN text."""
        needle = term.lower()
        out = []
        for row in self.rows.values():
            text = " " + " ".join(row.sans) + " "
            if needle not in (row.cn or "").lower() and needle not in text.lower():
                continue
            if authority and row.authority != authority:
                continue
            if status is CertStatus.REVOKED and row.status != "revoked":
                continue
            if status is CertStatus.VALID and not (row.status == "valid" and row.not_after > NOW):
                continue
            if status is CertStatus.EXPIRED and not (
                row.status == "valid" and row.not_after <= NOW
            ):
                continue
            if expires_before and not row.not_after < expires_before:
                continue
            out.append(row.id)
        return sorted(out, reverse=True)

    def index_objects(self) -> set[str]:
        with self.db.engine.connect() as conn:
            if self.sqlite:
                query = "SELECT name FROM sqlite_master WHERE name LIKE 'certificate_names%'"
            else:
                query = (
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                    " AND indexname LIKE '%trgm'"
                )
            return set(conn.execute(sa.text(query)).scalars())


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.db.dispose()


def test_case_insensitive_substring_of_the_common_name_and_every_san_kind(store: Store) -> None:
    store.insert(
        [
            ("Web.Example.TEST", ["dns:web.example.test"]),
            (None, ["dns:api.internal.test", "ip:10.20.30.40"]),
            ("Mail Service", ["email:Alice.Smith@Corp.test"]),
            ("workload", ["uri:spiffe://Cluster.local/ns/Payments/sa/api"]),
            ("other", ["dns:unrelated.test", "ip:2001:db8::7"]),
        ]
    )
    for term, cn_or_san in (
        ("EXAMPLE.test", "Web.Example.TEST"),  # the CN, case folded both ways
        ("API.INTERNAL", "api.internal.test"),  # a DNS SAN of a row without a CN
        ("0.20.30.4", "10.20.30.40"),  # inside an IPv4 SAN
        ("db8::", "2001:db8::7"),  # an IPv6 SAN
        ("alice.smith@corp", "Alice.Smith@Corp.test"),  # an e-mail SAN with capitals
        ("cluster.LOCAL/ns/payments", "spiffe://Cluster.local/..."),  # a URI SAN with capitals
        ("il se", "Mail Service"),  # spaces are characters like any other
        ("email:ali", "the kind prefix is part of the searched text"),
    ):
        got = store.ids(term)
        assert got == store.expected(term), (term, cn_or_san)
        assert len(got) == 1, (term, got)
    assert store.ids("nothing-like-this") == []
    assert store.ids(".test") == store.expected(".test") and len(store.ids(".test")) == 4


def test_like_metacharacters_and_quotes_in_the_term_are_literal(store: Store) -> None:
    store.insert(
        [
            ("a%b.example.test", []),
            ("axxb.example.test", []),
            ("c_d.example.test", []),
            ("cxd.example.test", []),
            ("e\\f.example.test", []),
            ('g"h.example.test', []),
            ("ghh.example.test", []),
        ]
    )
    cases = {"a%b": 1, "%b.ex": 1, "c_d": 1, "_d.": 1, "e\\f": 1, "\\f.": 1, 'g"h': 1, '"h.': 1}
    for term, count in cases.items():
        got = store.ids(term)
        assert got == store.expected(term), term
        assert len(got) == count, (term, got)
    # Short terms take the other path; the same literal meaning.
    for term in ("%", "_", "\\", '"', "%b", "c_"):
        got = store.ids(term)
        assert got == store.expected(term) and len(got) == 1, (term, got)


@pytest.mark.parametrize(
    "term", ["zeta", "example", "svc3.", "pay", "ex", "y", "a1.svc1.example.t"]
)
def test_filters_and_keyset_pages_agree_with_a_full_scan(store: Store, term: str) -> None:
    names = ["alpha", "beta", "gamma", "delta", "zeta"]
    for n, status, authority, days in itertools.product(
        range(12), ("valid", "revoked"), ("alpha", "beta"), (-5, 10, 400)
    ):
        base = names[n % len(names)]
        store.insert(
            [
                (f"{base}{n}.svc{n % 4}.example.test", [f"dns:{base}{n}.svc{n % 4}.example.test"]),
                (None, [f"email:pay{n}@corp.test", f"uri:spiffe://x/{base}"]),
            ],
            status=status,
            authority=authority,
            not_after=NOW + dt.timedelta(days=days),
        )
    combos: list[dict[str, object]] = [
        {},
        {"status": CertStatus.VALID},
        {"status": CertStatus.REVOKED},
        {"status": CertStatus.EXPIRED},
        {"authority": "beta"},
        {"expires_before": NOW + dt.timedelta(days=30)},
        {
            "authority": "alpha",
            "status": CertStatus.VALID,
            "expires_before": NOW + dt.timedelta(days=60),
        },
    ]
    seen_any = False
    for combo in combos:
        want = store.expected(term, **combo)  # type: ignore[arg-type]
        seen_any = seen_any or bool(want)
        for limit in (1, 3, 500):
            assert store.ids(term, limit=limit, **combo) == want, (combo, limit)
    assert seen_any


def test_short_terms_are_matched_window_by_window(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repositories, "SHORT_TERM_WINDOW", 4)
    ids = store.insert([(f"host{i}.example.test", [f"dns:k{i}.test"]) for i in range(10)])
    store.insert([("zq.example.test", [])])
    store.insert([(f"plain{i}.example.test", []) for i in range(9)])
    # 'zq' sits in the second window from the top: the first page is empty but has a cursor.
    serials, cursor = store.page(CertificateFilter(name="zq", limit=10))
    assert serials == [] and cursor is not None
    assert store.ids("zq") == store.expected("zq") and len(store.ids("zq")) == 1
    # A common short term fills a page inside the first window, with the usual cursor.
    serials, cursor = store.page(CertificateFilter(name="ex", limit=2))
    assert len(serials) == 2 and cursor is not None
    assert store.ids("k1", limit=3) == store.expected("k1") == [ids[1]]
    # With fewer rows than a window left below the cursor, the listing ends as usual.
    serials, cursor = store.page(CertificateFilter(name="ho", after_id=ids[3], limit=50))
    assert len(serials) == 3 and cursor is None


def test_updated_and_deleted_rows_stay_consistent(store: Store) -> None:
    a, b, c = store.insert(
        [("old-name.example.test", ["dns:old-san.example.test"]), ("keep.example.test", []),
         ("gone.example.test", ["dns:gone-san.example.test"])]
    )  # fmt: skip
    assert store.ids("old-name") == [a] and store.ids("gone-san") == [c]
    store.execute(
        "UPDATE certificates SET common_name = 'new-name.example.test',"
        " sans = ' dns:new-san.example.test ' WHERE id = :i",
        i=a,
    )
    store.rows[a] = Row(a, "alpha", "new-name.example.test", ("dns:new-san.example.test",))
    store.execute("DELETE FROM certificates WHERE id = :i", i=c)
    del store.rows[c]
    # A status change (revocation) leaves the names, and the index, as they were.
    store.execute("UPDATE certificates SET status = 'revoked' WHERE id = :i", i=b)
    store.rows[b] = Row(b, "alpha", "keep.example.test", (), status="revoked")
    for term in ("old-name", "old-san", "gone", "new-name", "new-san", "keep.ex", "example"):
        assert store.ids(term) == store.expected(term), term
    assert store.ids("new-san") == [a] and store.ids("gone") == [] and store.ids("old-") == []
    assert store.ids("keep", status=CertStatus.REVOKED) == [b]
    if store.sqlite:
        # FTS5 compares its index with the content table and raises on any difference.
        store.execute(
            "INSERT INTO certificate_names(certificate_names, rank) VALUES ('integrity-check', 1)"
        )


def test_migration_builds_the_index_from_existing_rows_and_downgrades(store: Store) -> None:
    expected_objects = (
        {"certificate_names", "certificate_names_after_insert", "certificate_names_after_delete",
         "certificate_names_after_update", "certificate_names_upto"}
        if store.sqlite
        else {"ix_certificates_common_name_trgm", "ix_certificates_sans_trgm"}
    )  # fmt: skip
    assert expected_objects <= store.index_objects()
    first = store.insert([("before-downgrade.example.test", ["dns:www.before.test"])])
    with store.db.engine.begin() as conn:
        cfg = migrate._config()
        cfg.attributes["connection"] = conn
        from alembic import command

        command.downgrade(cfg, "0004")
    assert store.index_objects().isdisjoint(expected_objects)
    # Rows written while the index is absent are indexed by the upgrade (the backfill) ...
    store.index = False
    second = store.insert([("while-down.example.test", ["dns:www.while.test"])])
    migrate.upgrade(store.db)
    store.index = True
    assert expected_objects <= store.index_objects()
    assert store.ids("while-down") == second and store.ids("before-down") == first
    assert store.ids("www.") == sorted(first + second, reverse=True)
    # ... and running it again over an existing index gives the same answers.
    with store.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    migrate.upgrade(store.db)
    third = store.insert([("after-again.example.test", [])])
    assert store.ids("example.test") == sorted(first + second + third, reverse=True)
    if store.sqlite:
        store.execute(
            "INSERT INTO certificate_names(certificate_names, rank) VALUES ('integrity-check', 1)"
        )


def test_issued_certificates_are_found_through_the_service(ca: Core) -> None:
    issued = ca.issue_with_new_key(
        ADMIN, common_name="Portal.Example.test", names=["dns:portal.example.test", "ip:10.9.8.7"]
    )
    ca.issue_with_new_key(ADMIN, common_name="other.example.test")
    with unit_of_work(ca.db) as s:
        repo = CertificateRepository(s)
        for term in ("PORTAL.example", "10.9.8", "rtal"):
            records, cursor = repo.list(CertificateFilter(name=term), NOW)
            assert [r.serial for r in records] == [issued.record.serial] and cursor is None, term
        records, _ = repo.list(CertificateFilter(name="example.test"), NOW)
        assert len(records) == 2


def test_cli_list_name_follows_short_term_windows(
    ca: Core, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repositories, "SHORT_TERM_WINDOW", 2)
    wanted = ca.issue_with_new_key(ADMIN, common_name="qz.example.test")
    for i in range(5):
        ca.issue_with_new_key(ADMIN, common_name=f"filler{i}.example.test")
    # 'qz' is five windows below the newest row: the first API page alone would be empty.
    with unit_of_work(ca.db) as s:
        first, cursor = CertificateRepository(s).list(CertificateFilter(name="qz"), NOW)
    assert first == [] and cursor is not None
    result = cli_run(settings, ["list", "--json", "--name", "QZ"])
    assert result.exit_code == 0
    assert [r["serial"] for r in json.loads(result.output)] == [wanted.record.serial]
    result = cli_run(settings, ["list", "--json", "--name", "il", "--limit", "3"])
    assert len(json.loads(result.output)) == 3


def test_openapi_states_the_short_term_window() -> None:
    (q,) = [
        p
        for p in openapi.document()["paths"]["/api/v1/certificates"]["get"]["parameters"]
        if p["name"] == "q"
    ]
    assert f"{repositories.SHORT_TERM_WINDOW:,}" in q["description"]
    assert f"{repositories.MIN_INDEXED_TERM} or more" in q["description"]


def test_rare_and_common_terms_after_analyze(store: Store) -> None:
    """With planner statistics, PostgreSQL picks its path per term from the sampled names."""
    store.insert([(f"u{i:03d}-uniq.example.test", [f"dns:u{i:03d}.alt.test"]) for i in range(400)])
    store.insert([(f"bulk{i}.common.test", ["dns:shared.common.test"]) for i in range(150)])
    store.insert(
        [(f"late{i}.common.test", ["dns:u123x.alt.test"]) for i in range(3)], status="revoked"
    )
    if not store.sqlite:
        store.execute("ANALYZE certificates")
        with unit_of_work(store.db) as s:
            sample = CertificateRepository(s)._name_sample()
        assert sample.is_rare("u123-uniq.example.test") and not sample.is_rare("common.test")
        # The index is given the least common 8 characters, not the shared domain.
        assert sample.rarest_slice("u123-uniq.example.test").startswith("u123")
    for term in ("u123-uniq.example.test", "u12", "u123", "common.test", "uniq.example.te"):
        for combo in ({}, {"status": CertStatus.REVOKED}, {"authority": "beta"}):
            want = store.expected(term, **combo)  # type: ignore[arg-type]
            assert store.ids(term, limit=7, **combo) == want, (term, combo)
    assert len(store.ids("u123")) == 4 and len(store.ids("common.test")) == 153
