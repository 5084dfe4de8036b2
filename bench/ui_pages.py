"""The admin UI's pages at scale (issue 13 item 4): the certificate list at 1M stored certificates.

One store per database is bulk-loaded with a mix like a CA that has issued for two years:
created_at grows with the id, validities of 7 to 365 days (so most stored certificates have
expired, as in any long-running CA), two issuing authorities, four profiles, five requester
kinds, 4% revoked of which a tenth on hold, one audit event per issuance and per revocation. The
rows go in through SQL like bench/populate.py's, with the trigram name index kept by the
database itself (FTS5 triggers, GIN indexes), as production keeps it.

Each case measures the server's time of one page (``Catalog.search_certificates`` and the other
Catalog reads the pages make): the query, the rows and their records, in process, no HTTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import (
    ADMIN,
    LEAF_NAMES,
    bounded_loop,
    database_url,
    latency_summary,
    new_ca,
    pg_reachable,
    progress,
)
from bench.populate import Population, load, prepare, random_host, random_serial_der
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import (
    CertificateQuery,
    CertificateSort,
    CertificateState,
    KeyType,
)
from ca_service.signing.crl import entry_der
from ca_service.signing.serials import serial_hex
from ca_service.storage.search import _Key

# Per mode: certificates stored, the fill's time bound (s), and per case the runs and seconds.
PLANS: dict[str, tuple[int, float, int, float]] = {
    "full": (1_000_000, 600.0, 200, 8.0),
    "quick": (100_000, 120.0, 50, 2.0),
    "tiny": (3_000, 30.0, 5, 0.5),
}
# The cases in the order RESULTS.md shows them (results.json sorts its keys).
ORDER = (
    "first page (issued)",
    "deep page (issued, cursor 90% down)",
    "authority team-b",
    "status valid",
    "status expired",
    "status revoked",
    "status on hold",
    "profile client",
    "profile peer (5%)",
    "profile ca (the 2 intermediates)",
    "requester acme",
    "requester cli (1%)",
    "requester bench (the ~60 real issuances)",
    "expiring within 7 days",
    "sort expiry, first page",
    "sort expiry, deep page (cursor 50% down)",
    "sort expiry, status valid",
    "sort expiry, expiring within 30 days",
    "sort expiry, on hold, team-b",
    "name search, one host",
    "name search, common (svc12.)",
    "name search, one host, sort expiry",
    "name search, common, sort expiry",
    "name search, common, status revoked",
    "serial, colons, upper case",
    "fingerprint, colons",
    "dashboard: status counts",
    "dashboard: expiry histogram (90 days)",
    "dashboard: latest audit events",
    "audit page, first",
    "audit page, action certificate.revoke",
    "audit page, one actor (cli)",
    "certificate history",
)
# The findings behind the figures (plans, fixes, what remains), appended to the section.
NOTES = Path(__file__).with_name("UI_PAGES.md")
SPAN_DAYS = 730
CHUNK = 100_000
TARGET_P99_MS = 100.0
HOLD = "certificateHold"
REASONS = (None, "keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged")


class Mix:
    """Makes rows (bench.populate.RowMaker) and keeps samples that exist in the store."""

    def __init__(self, authority_ids: list[int], authority_names: list[str], total: int) -> None:
        self.authority_ids = authority_ids
        self.names = authority_names
        self.total = total
        self.index = 0
        self.now = dt.datetime.now(dt.UTC)
        self.start = self.now - dt.timedelta(days=SPAN_DAYS)
        self.fingerprints: list[str] = []
        self.serials: list[tuple[str, str]] = []  # (authority, serial)
        self.every = max(1, total // 2000)

    def rows(
        self, pop: Population, count: int, _revoked: bool, _now: dt.datetime, rng: random.Random
    ) -> Iterator[tuple[Any, ...]]:
        span = dt.timedelta(days=SPAN_DAYS)
        for _ in range(count):
            i = self.index
            self.index += 1
            created = self.start + span * (i / self.total)
            r = rng.random()
            days = 90 if r < 0.6 else 30 if r < 0.85 else 365 if r < 0.95 else 7
            not_after = created + dt.timedelta(days=days)
            which = 0 if rng.random() < 0.85 else 1
            authority_id = self.authority_ids[which]
            r = rng.random()
            profile = "server" if r < 0.75 else "client" if r < 0.95 else "peer"
            serial_int, der = random_serial_der(pop)
            serial = serial_hex(serial_int)
            r = rng.random()
            if r < 0.45:
                requester = f"token:{rng.randrange(20):032x}"
            elif r < 0.80:
                requester = f"acme:{rng.randrange(2000):016x}"
            elif r < 0.92:
                requester = f"oidc:ci:repo:team/app{rng.randrange(300)}:ref:refs/heads/main"
            elif r < 0.93:
                requester = f"cli:admin{rng.randrange(3)}"
            else:
                requester = f"cert:{self.names[which]}/{rng.getrandbits(120):030x}"
            revoked = rng.random() < 0.04
            hold = revoked and rng.random() < 0.1
            revoked_at = created + (not_after - created) * rng.random() if revoked else None
            if revoked_at is not None and revoked_at > self.now:
                revoked_at = self.now - dt.timedelta(seconds=1)
            host = random_host(rng)
            fingerprint = hashlib.sha256(der).hexdigest()
            if i % self.every == 0:
                self.fingerprints.append(fingerprint)
                self.serials.append((self.names[which], serial))
            reason = HOLD if hold else (rng.choice(REASONS) if revoked else None)
            yield (
                authority_id,
                serial,
                f"CN={host}",
                host,
                f" dns:{host} dns:{LEAF_NAMES[1]} ",
                "ecdsa-p256",
                profile,
                created,
                not_after,
                "revoked" if revoked else "valid",
                revoked_at,
                reason,
                entry_der(serial, revoked_at, reason) if revoked_at else None,
                fingerprint,
                der,
                requester,
                created,
            )


def _audit_fill(ca: Core) -> tuple[int, int]:
    """One audit event per stored issuance and revocation, written by the database from the
    certificate rows (the order of ids is issuances, then revocations)."""
    sqlite = ca.db.is_sqlite
    target = "a.name || '/' || c.serial"
    details = (
        "json_object('profile', c.profile)" if sqlite else "json_build_object('profile', c.profile)"
    )
    reason = (
        "json_object('reason', c.revocation_reason)"
        if sqlite
        else "json_build_object('reason', c.revocation_reason)"
    )
    # Constant SQL fragments only (no value from outside).
    with ca.db.write_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (at, actor, action, target, details)"  # noqa: S608
                f" SELECT c.created_at, c.requester, 'certificate.issue', {target}, {details}"
                " FROM certificates c JOIN authorities a ON a.id = c.authority_id ORDER BY c.id"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (at, actor, action, target, details)"  # noqa: S608
                f" SELECT c.revoked_at, 'token:{0:032x}', 'certificate.revoke', {target}, {reason}"
                " FROM certificates c JOIN authorities a ON a.id = c.authority_id"
                " WHERE c.status = 'revoked' ORDER BY c.revoked_at"
            )
        )
        n = int(conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one())
        stored = int(conn.execute(sa.text("SELECT count(*) FROM certificates")).scalar_one())
    if not sqlite:
        # What autovacuum does within minutes of a million inserts (PostgreSQL 13+ vacuums
        # insert-only tables too): statistics, and the visibility map that lets the counts
        # read their index alone. Measured right after a bulk load, without it, the dashboard
        # counts read the heap (2 s instead of 0.2).
        with ca.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM (ANALYZE) certificates"))
            conn.execute(sa.text("VACUUM (ANALYZE) audit_events"))
    return n, stored


def _fill(
    ca: Core, db_url: str, rows: int, budget_s: float
) -> tuple[Mix, Population, dict[str, Any]]:
    pop = prepare(ca)
    ca.create_hierarchy(HierarchySpec(name="team-b", key_type=KeyType.ECDSA_P256), ADMIN)
    with ca.db.engine.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT name, id FROM authorities")).all())
    mix = Mix([int(ids["default"]), int(ids["team-b"])], ["default", "team-b"], rows)
    t0 = time.perf_counter()
    deadline = time.monotonic() + budget_s
    while pop.rows < rows and time.monotonic() < deadline:
        want = min(CHUNK, rows - pop.rows)
        load(pop, db_url, want, revoked=False, deadline=deadline, rows=mix.rows)
        rate = pop.rows / max(time.perf_counter() - t0, 1e-9)
        progress(f"ui: {pop.rows:,} / {rows:,} certificates ({rate:,.0f} rows/s)")
    fill_s = time.perf_counter() - t0
    progress("ui: audit events from the certificate rows")
    t1 = time.perf_counter()
    events, stored = _audit_fill(ca)
    return (
        mix,
        pop,
        {
            "certificates": stored,
            "wanted": rows,
            "fill_s": round(fill_s, 1),
            "rows_per_s": round(pop.rows / max(fill_s, 1e-9)),
            "audit_events": events,
            "audit_fill_s": round(time.perf_counter() - t1, 1),
        },
    )


def _cursor_at(ca: Core, sort: CertificateSort, share: float) -> str:
    """The cursor of a page that starts ``share`` of the way down the whole listing."""
    with ca.db.engine.connect() as conn:
        total = int(conn.execute(sa.text("SELECT count(*) FROM certificates")).scalar_one())
        order = "id DESC" if sort is CertificateSort.ISSUED else "not_after, id"
        row = conn.execute(
            sa.text(f"SELECT id, not_after FROM certificates ORDER BY {order} LIMIT 1 OFFSET :n"),  # noqa: S608
            {"n": int(total * share)},
        ).one()
    at = row[1] if isinstance(row[1], dt.datetime) else dt.datetime.fromisoformat(str(row[1]))
    return _Key(sort, int(row[0]), at).text()


def _colons(text: str, upper: bool) -> str:
    pairs = ":".join(text[i : i + 2] for i in range(0, len(text), 2))
    return pairs.upper() if upper else pairs


def cases(ca: Core, mix: Mix, pop: Population) -> dict[str, Callable[[random.Random], object]]:
    """Each page the UI makes, as a call that returns how many rows it showed."""
    cat = ca.catalog
    now = mix.now
    deep_issued = _cursor_at(ca, CertificateSort.ISSUED, 0.9)
    deep_expiry = _cursor_at(ca, CertificateSort.EXPIRY, 0.5)
    expiry = CertificateSort.EXPIRY

    def page(**kw: Any) -> Callable[[random.Random], object]:
        def run(_: random.Random) -> object:
            return len(cat.search_certificates(CertificateQuery(**kw), now).records)

        return run

    def q(make: Callable[[random.Random], str], **kw: Any) -> Callable[[random.Random], object]:
        def run(rng: random.Random) -> object:
            found = cat.search_certificates(CertificateQuery(q=make(rng), **kw), now).records
            assert found, "the search found nothing"
            return len(found)

        return run

    names, serials, prints = pop.sample_names, mix.serials, mix.fingerprints
    return {
        "first page (issued)": page(),
        "deep page (issued, cursor 90% down)": page(cursor=deep_issued),
        "authority team-b": page(authority="team-b"),
        "status valid": page(status=CertificateState.VALID),
        "status expired": page(status=CertificateState.EXPIRED),
        "status revoked": page(status=CertificateState.REVOKED),
        "status on hold": page(status=CertificateState.ON_HOLD),
        "profile client": page(profile="client"),
        "profile peer (5%)": page(profile="peer"),
        "profile ca (the 2 intermediates)": page(profile="ca"),
        "requester acme": page(requester_kind="acme"),
        "requester cli (1%)": page(requester_kind="cli"),
        "requester bench (the ~60 real issuances)": page(requester_kind="bench"),
        "expiring within 7 days": page(expiring_within_days=7),
        "sort expiry, first page": page(sort=expiry),
        "sort expiry, deep page (cursor 50% down)": page(sort=expiry, cursor=deep_expiry),
        "sort expiry, status valid": page(sort=expiry, status=CertificateState.VALID),
        "sort expiry, expiring within 30 days": page(sort=expiry, expiring_within_days=30),
        "sort expiry, on hold, team-b": page(
            sort=expiry, status=CertificateState.ON_HOLD, authority="team-b"
        ),
        "name search, one host": q(lambda rng: rng.choice(names)),
        "name search, common (svc12.)": q(lambda _: "svc12."),
        "name search, one host, sort expiry": q(lambda rng: rng.choice(names), sort=expiry),
        "name search, common, sort expiry": q(lambda _: "svc12.", sort=expiry),
        "name search, common, status revoked": q(
            lambda _: "example.test", status=CertificateState.REVOKED
        ),
        "serial, colons, upper case": q(lambda rng: _colons(rng.choice(serials)[1], True)),
        "fingerprint, colons": q(lambda rng: _colons(rng.choice(prints), False)),
        "dashboard: status counts": lambda _: len(cat.status_counts(now)),
        "dashboard: expiry histogram (90 days)": lambda _: len(cat.expiry_histogram(now, 90)),
        "dashboard: latest audit events": lambda _: len(cat.latest_audit_events(10)),
        "audit page, first": lambda _: len(cat.audit_page()[0]),
        "audit page, action certificate.revoke": lambda _: len(
            cat.audit_page(action="certificate.revoke")[0]
        ),
        "audit page, one actor (cli)": lambda _: len(cat.audit_page(actor="cli:admin1")[0]),
        "certificate history": lambda rng: len(cat.certificate_history(*rng.choice(serials))),
    }


def measure_db(
    kind: str, db_url: str, data_dir: Path, plan: tuple[int, float, int, float]
) -> dict[str, Any]:
    rows, budget_s, runs, seconds = plan
    load_start = os.getloadavg()[0]
    progress(f"ui {kind}: creating the CAs")
    ca = new_ca(data_dir, db_url, KeyType.ECDSA_P256)
    try:
        mix, pop, fill = _fill(ca, db_url, rows, budget_s)
        out: dict[str, Any] = {"status": "ok", **fill, "cases": {}}
        out["load_1min"] = {
            "start": round(load_start, 1),
            "measuring": round(os.getloadavg()[0], 1),
        }
        rng = random.Random(13)  # noqa: S311 (which sample to ask for)
        for label, fn in cases(ca, mix, pop).items():
            shown: list[object] = []

            def once(
                _: int, fn: Callable[[random.Random], object] = fn, shown: list[object] = shown
            ) -> None:
                shown.append(fn(rng))

            try:
                loop = bounded_loop(once, runs, seconds, warmup=2)
            except Exception as exc:  # one broken case must not hide the others
                out["cases"][label] = {"status": "error", "reason": repr(exc)}
                progress(f"ui {kind}: {label}: {exc!r}")
                continue
            out["cases"][label] = {
                **loop.as_dict(),
                **latency_summary(loop.latencies),
                "rows_shown": shown[-1] if shown else None,
            }
            p99 = out["cases"][label]["p99_ms"]
            progress(f"ui {kind}: {label}: p50 {out['cases'][label]['p50_ms']} ms, p99 {p99} ms")
        return out
    finally:
        ca.db.dispose()


def run_scenario(dbs: list[str], mode: str) -> dict[str, Any]:
    """The UI pages on each database; a failure is recorded and the other database still runs."""
    plan = PLANS[mode]
    results: dict[str, Any] = {"plan": {"rows": plan[0], "runs": plan[2], "seconds": plan[3]}}
    started = dt.datetime.now(dt.UTC)
    results["date"] = started.strftime("%Y-%m-%d %H:%M UTC")
    for db in dbs:
        if db == "postgresql" and (reason := pg_reachable()) is not None:
            results[db] = {"status": "absent", "reason": reason}
            continue
        with (
            tempfile.TemporaryDirectory(prefix=f"ca-bench-ui-{db}-") as tmp,
            database_url(db, Path(tmp)) as url,
        ):
            try:
                results[db] = measure_db(db, url, Path(tmp) / "data", plan)
            except Exception as exc:  # record and go on, as the other scenarios do
                results[db] = {"status": "error", "reason": repr(exc)}
    return results


def markdown(ui: dict[str, Any], machine: dict[str, Any] | None = None, where: str = "") -> str:
    """The section of RESULTS.md; empty when the scenario did not run. ``where`` names the
    run the figures come from when it is not the one the rest of the file reports."""
    dbs = [db for db in ("sqlite", "postgresql") if db in ui]
    if not dbs:
        return ""
    lines = ["", "## Admin UI pages at 1M (issue 13)", ""]
    if where:
        lines += [f"From {where}: a run of this scenario alone, with its own machine and date.", ""]
    if machine:
        lines += [
            f"- machine: {machine['cpu_model']}, {machine['nproc']} cores (nproc), "
            f"{machine['mem_total_gib']} GiB RAM; Python {machine['python']}; "
            f"commit `{machine['commit']}`"
            + (" (work tree had uncommitted changes)" if machine.get("tree_dirty") else ""),
            "",
        ]
    lines += [
        f"Run {ui.get('date', '?')}, {ui['plan']['rows']:,} certificates asked for. Server time of "
        "one page, in process (`Catalog.search_certificates` and the dashboard's reads: query, "
        f"rows, records; no HTTP, no template), up to {ui['plan']['runs']} runs or "
        f"{ui['plan']['seconds']} s per case. Target: p99 under {TARGET_P99_MS:.0f} ms.",
    ]
    for db in dbs:
        got = ui[db]
        lines += ["", f"### {db}", ""]
        if got.get("status") != "ok":
            lines.append(f"Not measured: {got.get('status')} ({got.get('reason', '')}).")
            continue
        load = got.get("load_1min")
        said = (
            f" Load average (1 min) {load['start']} before the fill, {load['measuring']} when "
            "the measuring began."
            if load
            else ""
        )
        lines += [
            f"{got['certificates']:,} certificates filled in {got['fill_s']} s "
            f"({got['rows_per_s']:,} rows/s), then {got['audit_events']:,} audit events in "
            f"{got['audit_fill_s']} s.{said}",
            "",
            "| page | p50 ms | p99 ms | max ms | runs | rows shown | p99 < 100 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        rank = {label: i for i, label in enumerate(ORDER)}
        for label, c in sorted(got["cases"].items(), key=lambda kv: rank.get(kv[0], len(rank))):
            if "p99_ms" not in c:
                lines.append(f"| {label} | {c.get('status')}: {c.get('reason')} |||||| **no** |")
                continue
            ok = "yes" if c["p99_ms"] < TARGET_P99_MS else "**no**"
            lines.append(
                f"| {label} | {c['p50_ms']} | {c['p99_ms']} | {c['max_ms']} | {c['count']} "
                f"| {c['rows_shown']} | {ok} |"
            )
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    return "\n".join(lines) + "\n"
