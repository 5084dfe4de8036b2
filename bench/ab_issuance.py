"""``python -m bench.ab_issuance --base DIR [--db sqlite] [--rounds 3]``: HTTP issuance, two trees.

A before/after of one change to the issuance path, in one run on one machine: ``--base`` is a
copy of the product before the change (``git worktree add --detach DIR COMMIT``), the tree
this runs from is the after. Each round starts a fresh store and ``ca-service serve`` (default
workers) from each tree in turn, so drifts of a shared machine fall on both sides alike, and
drives ``POST /api/v1/certificates`` from one CSR at each concurrency; with
``CA_BENCH_CFSSL_PEER`` set, ``cfssl serve`` with its SQLite certdb is measured in the same
round at the same concurrencies. Reports each figure's median over the rounds with the server's
CPU milliseconds per certificate (the load generator shares the cores, so certs/s alone
understates a change that saves CPU). Every load is bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import http_scenarios as hs
from bench import references
from bench.common import database_url, leaf_csr_pem, new_ca, progress
from ca_service.domain import KeyType

MAX_REQUESTS = 100_000


def _one_server(
    tree: Path, db: str, csr: bytes, levels: list[int], seconds: float
) -> dict[str, Any]:
    """A fresh store and server from ``tree``: certs/s, p50, p99 and CPU ms/cert per level."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ca-bench-ab-") as tmp,
            database_url(db, Path(tmp)) as url,
        ):
            data = Path(tmp) / "data"
            ca = new_ca(data, url, KeyType.ECDSA_P256)
            ca.generate_crl()
            ca.db.dispose()
            with hs.start_server(data, url) as server:
                found = hs.issuance(server, {"csr": csr.decode()}, levels, seconds, MAX_REQUESTS, 1)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return _per_level(found, levels)


def _cfssl(csr: bytes, levels: list[int], seconds: float) -> dict[int, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ca-bench-ab-cfssl-") as tmp:
        found = references.cfssl_scenario(
            Path(tmp), csr, [("ecdsa", "sqlite")], levels, seconds, MAX_REQUESTS, 0
        )
    return _per_level((found.get("runs") or {}).get("ecdsa_sqlite") or {}, levels)


def _per_level(found: dict[str, Any], levels: list[int]) -> dict[int, dict[str, Any]]:
    """Each level's certs/s, p50, p99 and server CPU ms per certificate, from a run's
    ``c<N>`` figures (ca-service's and CFSSL's have the same shape)."""
    out: dict[int, dict[str, Any]] = {}
    for c in levels:
        r = found.get(f"c{c}") or {}
        rps, cores = r.get("rps"), r.get("server_cpu_cores")
        out[c] = {
            "rps": rps,
            "p50_ms": r.get("p50_ms"),
            "p99_ms": r.get("p99_ms"),
            "cpu_ms_per_cert": round(1000 * cores / rps, 2) if rps and cores else None,
        }
    return out


def _median(rounds: list[dict[int, dict[str, Any]]], c: int, key: str) -> float | None:
    values = [r[c][key] for r in rounds if r.get(c, {}).get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the tree before the change")
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=4.0, help="per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    after = Path(__file__).resolve().parent.parent
    csr = leaf_csr_pem()
    sides: dict[str, list[dict[int, dict[str, Any]]]] = {}
    for rnd in range(args.rounds):
        for db in args.db or ["sqlite"]:
            for label, tree in (("before", args.base.resolve()), ("after", after)):
                progress(f"round {rnd + 1}/{args.rounds}: {db} {label}")
                sides.setdefault(f"{db} {label}", []).append(
                    _one_server(tree, db, csr, levels, args.seconds)
                )
        if references.CFSSL_PEER is not None:
            progress(f"round {rnd + 1}/{args.rounds}: CFSSL + SQLite certdb")
            sides.setdefault("CFSSL sqlite certdb", []).append(_cfssl(csr, levels, args.seconds))
    summary = {
        side: {
            c: {k: _median(rounds, c, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_cert")}
            for c in levels
        }
        for side, rounds in sides.items()
    }
    print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "summary": summary}))
    print("| side | " + " | ".join(f"c={c} certs/s (p99 ms, CPU ms/cert)" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for side, per in summary.items():
        cells = []
        for c in levels:
            f = per[c]
            extra = ", ".join(f"{v}" for v in (f["p99_ms"], f["cpu_ms_per_cert"]) if v is not None)
            cells.append(f"{f['rps']} ({extra})" if extra else f"{f['rps']}")
        print(f"| {side} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
