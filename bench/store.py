"""Scenarios on the store that need no HTTP: CRL generation at scale, lookups, issuance.

One store per database kind is grown step by step (10k -> 100k -> 1M revoked rows): each step
measures ``generate_crl`` in a child process, the last step also measures fetch by serial, name
search and in-process issuance, which are compared with the same measurements on the empty store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import http_scenarios as hs
from bench.common import (
    ADMIN,
    bounded_loop,
    latency_summary,
    leaf_csr_pem,
    new_ca,
    progress,
    python_exe,
)
from bench.populate import Population, indexes_off, load, prepare
from ca_service.core.facade import Core
from ca_service.domain import CertificateFilter, KeyType
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import CertificateRepository


def crl_in_child(db_url: str, data_dir: Path, timeout: float, breakdown: bool) -> dict[str, Any]:
    """One ``generate_crl`` in a fresh interpreter: time, clean peak RSS, size, entry count."""
    argv = [python_exe(), "-m", "bench.crl_child", db_url, str(data_dir)]
    if breakdown:
        argv.append("--breakdown")
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout}
    if proc.returncode != 0:
        return {"status": "error", "stderr": proc.stderr[-1500:]}
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": "ok", **figures}


def issuance_inprocess(ca: Core, csr: bytes, max_count: int, max_seconds: float) -> dict[str, Any]:
    """``issue_from_csr`` in a loop: policy, signing and the committed store write, no HTTP.

    On SQLite the names of the loop's rows are then indexed (what a server's scheduler does
    beside the requests), and that time is counted in ``per_s``: moving the index off the
    request path must not hide its cost. ``loop_per_s`` is the loop alone.
    """
    ca.catalog.index_names()
    loop = bounded_loop(lambda _: ca.issue_from_csr(csr, ADMIN), max_count, max_seconds, warmup=5)
    start = time.perf_counter()
    indexed = ca.catalog.index_names()
    index_s = time.perf_counter() - start
    out = {**loop.as_dict(), **latency_summary(loop.latencies)}
    out.update(
        loop_per_s=out["per_s"],
        per_s=round(loop.count / (loop.seconds + index_s), 1) if loop.seconds else 0.0,
        name_index={"rows": indexed, "seconds": round(index_s, 4)},
    )
    return out


def lookups(ca: Core, pop: Population, max_count: int, max_seconds: float) -> dict[str, Any]:
    """Fetch by serial (``get_certificate``) and name search (the repository's listing filter).

    Rare search: the host name of one random stored certificate (one match; on a LIKE '%..%'
    scan this is the worst case). Common search: a name every row has (the first page fills
    at once).
    """
    rng = random.Random(7)  # noqa: S311 (which sample to query)
    serials, names = pop.sample_serials, pop.sample_names
    now = dt.datetime.now(dt.UTC)

    def fetch(_: int) -> None:
        ca.get_certificate(rng.choice(serials))

    def search(term: str) -> None:
        with unit_of_work(ca.db) as s:
            records, _ = CertificateRepository(s).list(CertificateFilter(name=term), now)
        assert records, f"search for {term!r} found nothing"

    out: dict[str, Any] = {}
    for label, fn in (
        ("fetch_by_serial", fetch),
        ("search_rare", lambda _: search(rng.choice(names))),
        ("search_common", lambda _: search("example.test")),
    ):
        loop = bounded_loop(fn, max_count, max_seconds, warmup=3)
        out[label] = {**loop.as_dict(), **latency_summary(loop.latencies)}
    return out


def store_family(
    kind: str,
    db_url: str,
    data_dir: Path,
    sizes: Sequence[int],
    *,
    populate_budget_s: float,
    crl_timeout_s: float,
    lookup_count: int,
    lookup_seconds: float,
    issue_count: int,
    issue_seconds: float,
    http_plan: hs.HttpPlan | None = None,
    crl_only: bool = False,
) -> dict[str, Any]:
    """Grow one store of ``kind`` through ``sizes`` revoked rows, measuring at every step.

    ``crl_only`` (``--only crl``): the CRL builds alone, without the lookups and issuance.

    With ``http_plan`` one ``ca-service serve`` runs on this store for the whole growth (the bulk
    loader writes underneath it): HTTP issuance on the empty store, then at each step up to 100k
    the CRL fetch rate and revocation-to-CRL/OCSP latency, and at the last step HTTP search,
    fetch by serial and issuance again.
    """
    progress(f"store {kind}: creating the CA (ECDSA P-256)")
    ca = new_ca(data_dir, db_url, KeyType.ECDSA_P256)
    csr = leaf_csr_pem()
    pop = prepare(ca)
    out: dict[str, Any] = {"db": kind, "crl": {}, "populate": {}, "lookups": {}}
    if not crl_only:
        progress(f"store {kind}: in-process issuance on the (almost) empty store")
        out["issuance_empty"] = issuance_inprocess(ca, csr, issue_count, issue_seconds)
    with contextlib.ExitStack() as stack:
        server = None
        if http_plan is not None and not crl_only and hs.api_absent_reason() is None:
            server = stack.enter_context(hs.start_server(data_dir, db_url))
            progress(f"store {kind}: HTTP issuance on the (almost) empty store")
            out["http"] = {"issue_empty": _http_issue(server, csr, http_plan), "steps": {}}
        _grow(kind, ca, db_url, data_dir, csr, pop, sizes, out, server, http_plan,
              populate_budget_s=populate_budget_s, crl_timeout_s=crl_timeout_s,
              lookup_count=0 if crl_only else lookup_count,
              lookup_seconds=lookup_seconds)  # fmt: skip
    out["stored_rows"] = pop.rows
    if crl_only:
        ca.db.dispose()
        return out
    progress(f"store {kind}: in-process issuance with {pop.rows:,} stored certificates")
    out["issuance_full"] = issuance_inprocess(ca, csr, issue_count, issue_seconds)
    empty, full = out["issuance_empty"]["per_s"], out["issuance_full"]["per_s"]
    out["issuance_full_vs_empty"] = round(full / empty, 3) if empty else None
    ca.db.dispose()
    return out


def _http_issue(server: hs.Server, csr: bytes, plan: hs.HttpPlan) -> dict[str, Any]:
    c = plan.fetch_concurrency
    got = hs.issuance(
        server, {"csr": csr.decode()}, [c], plan.seconds, plan.max_requests, plan.repeats
    )
    at_c: dict[str, Any] = got.get(f"c{c}", got)
    return at_c


def _grow(
    kind: str,
    ca: Core,
    db_url: str,
    data_dir: Path,
    csr: bytes,
    pop: Population,
    sizes: Sequence[int],
    out: dict[str, Any],
    server: hs.Server | None,
    plan: hs.HttpPlan | None,
    *,
    populate_budget_s: float,
    crl_timeout_s: float,
    lookup_count: int,
    lookup_seconds: float,
) -> None:
    # The budget is for the fill alone: the measurements between the steps and the index
    # rebuild after each one (bench.populate.indexes_off) do not eat into it.
    fill_left = populate_budget_s
    probes = 0  # certificates the HTTP revocation probes added to the CRL
    for size in sizes:
        want = size - pop.rows
        progress(f"store {kind}: populating to {size:,} revoked rows (have {pop.rows:,})")
        t0 = time.perf_counter()
        got, rebuilt = 0, {"rebuild_s": 0.0}
        if want > 0:
            with indexes_off(db_url) as rebuilt:
                got = load(pop, db_url, want, revoked=True, deadline=time.monotonic() + fill_left)
                filled = time.perf_counter() - t0
            progress(f"store {kind}: secondary indexes rebuilt in {rebuilt['rebuild_s']} s")
        else:
            filled = 0.0
        fill_left -= filled
        out["populate"][str(size)] = {
            "rows_added": got,
            "seconds": round(filled, 2),
            "rows_total": pop.rows,
            "rows_per_s": round(got / max(filled, 1e-9)),
            "index_rebuild_s": rebuilt["rebuild_s"],
        }
        label = str(size)
        if pop.rows < size:
            out["crl"][label] = {
                "status": "partial",
                "note": f"population budget ran out at {pop.rows:,} rows",
                "rows": pop.rows,
            }
        progress(f"store {kind}: generate_crl with {pop.rows:,} revoked (child process)")
        load1 = round(os.getloadavg()[0], 2)
        result = crl_in_child(db_url, data_dir, crl_timeout_s, breakdown=True)
        out["crl"][label] = {
            **out["crl"].get(label, {}),
            **result,
            "revoked_rows": pop.rows + probes,
            "load1": load1,
        }
        last = size == sizes[-1] or pop.rows < size
        if lookup_count > 0:
            progress(f"store {kind}: fetch by serial and name search with {pop.rows:,} rows")
            # The scaling curve at every step, the full budget only at the last one.
            seconds = lookup_seconds if last else lookup_seconds / 3
            out["lookups"][label] = {"rows": pop.rows, **lookups(ca, pop, lookup_count, seconds)}
        if server is not None and plan is not None:
            step: dict[str, Any] = {"rows": pop.rows}
            if pop.rows <= 100_000:
                # A 1M CRL would be regenerated inside the revoke request (tens of seconds)
                # and loaded by every worker: measured in the child above instead.
                progress(f"store {kind}: HTTP CRL fetch and revocation latency at {pop.rows:,}")
                step["crl_fetch"] = hs._guard(
                    hs.crl_fetch, server, plan.fetch_concurrency, plan.seconds,
                    plan.max_requests, plan.repeats,
                )  # fmt: skip
                step["revocation_visibility"] = hs._guard(hs.revocation_visibility, server, csr)
                probes += 1
            if last:
                progress(f"store {kind}: HTTP search, fetch and issuance with {pop.rows:,} rows")
                step["lookups"] = hs._guard(
                    hs.lookups, server, pop.sample_names, pop.sample_serials, lookup_seconds,
                    lookup_count,
                )  # fmt: skip
                step["issue_full"] = hs._guard(_http_issue, server, csr, plan)
            out["http"]["steps"][label] = step
        if last:
            break
