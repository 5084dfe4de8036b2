"""Issue 14, item 8: issuance throughput with one and with two replicas behind haproxy on
PostgreSQL, in the same run (``python -m bench.run --only replicas``).

The topology is bench/cluster.py's, the one tests/topology/test_replicas.py runs: a PostgreSQL
cluster of its own, replicas with a data directory each, haproxy with config/haproxy.cfg. First
replica2 is down (haproxy's health checks see it so) and every request goes to replica1 through
the balancer; then replica2 starts and the same load is split between the two. The same load
straight at replica1 gives the balancer's own cost. Everything runs on this machine's cores: two
replicas share them with PostgreSQL, haproxy and the load generator, which the CPU columns show.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cluster
from bench.common import progress
from bench.http_scenarios import tree_cpu_seconds
from bench.loadgen import Request, run_load


@dataclass(frozen=True)
class ReplicaPlan:
    """Counts and bounds: every run stops at ``max_requests`` or ``seconds``, whichever first."""

    concurrencies: tuple[int, ...]
    seconds: float
    max_requests: int
    repeats: int
    workers: int | None  # per replica; None: the service's default (4)


PLANS = {
    "full": ReplicaPlan((8, 32), 6.0, 20_000, 3, None),
    "quick": ReplicaPlan((8,), 2.0, 5_000, 3, None),
    "tiny": ReplicaPlan((2,), 0.5, 50, 1, 2),
}


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}


def measure(
    port: int, request: Request, pids: dict[str, int], plan: ReplicaPlan, concurrency: int
) -> dict[str, Any]:
    """``plan.repeats`` bounded runs at ``concurrency``; the median-rate run is reported, with
    every rate, the load average before, and the CPU cores each process tree used meanwhile."""
    load1 = os.getloadavg()[0]
    cpu0, t0 = _cpu(pids), time.monotonic()
    runs = [
        run_load(
            cluster.HOST, port, [request], concurrency=concurrency,
            max_requests=max(1, plan.max_requests // plan.repeats),
            max_seconds=plan.seconds / plan.repeats, ok_statuses=(201,),
        ).summary()
        for _ in range(plan.repeats)
    ]  # fmt: skip
    wall = max(time.monotonic() - t0, 1e-9)
    cpu1 = _cpu(pids)
    rates = [r["rps"] for r in runs]
    chosen = dict(runs[rates.index(statistics.median_low(rates))])
    chosen.update(
        rps_runs=rates,
        errors=sum(r["errors"] for r in runs),
        load1=round(load1, 2),
        cpu_cores={name: round((cpu1[name] - cpu0[name]) / wall, 2) for name in pids},
    )
    return chosen


def _warm(port: int, request: Request) -> None:
    """Every worker imports, loads keys and fills its pool before anything is timed."""
    run_load(cluster.HOST, port, [request], concurrency=8, max_requests=64, max_seconds=5)


def run_scenario(mode: str, csr_pem: bytes) -> dict[str, Any]:
    """The whole scenario; "absent" without PostgreSQL's server binaries or haproxy."""
    missing = cluster.absent_reason()
    if missing:
        return {"status": "absent", "reason": missing}
    plan = PLANS[mode]
    progress("replicas: PostgreSQL of its own, replica1, haproxy (replica2 down)")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ca-bench-replicas-") as tmp,
            cluster.topology(Path(tmp), workers=plan.workers or 4, start_second=False) as topo,
        ):
            return _measure_all(topo, plan, csr_pem)
    except Exception as exc:  # record and go on, as the other scenarios do
        return {"status": "error", "reason": repr(exc)}


def _measure_all(topo: cluster.Topology, plan: ReplicaPlan, csr_pem: bytes) -> dict[str, Any]:
    first, second = topo.replicas
    lb = topo.balancer
    headers = {"Authorization": f"Bearer {topo.token}", "Content-Type": "application/json"}
    body = json.dumps({"csr": csr_pem.decode()}).encode()
    request = Request("POST", "/api/v1/certificates", body, headers)
    assert lb.proc is not None
    postgres = topo.pg.pid()
    assert postgres is not None
    pids = {"replica1": first.pid, "haproxy": lb.proc.pid, "postgres": postgres}
    out: dict[str, Any] = {
        "status": "ok",
        "workers_per_replica": plan.workers or 4,
        "nproc": os.cpu_count(),
        "one": {},
        "direct": {},
        "two": {},
    }
    _warm(lb.port, request)
    for c in plan.concurrencies:
        progress(f"replicas: one replica behind haproxy, c={c}")
        out["one"][f"c{c}"] = measure(lb.port, request, pids, plan, c)
        progress(f"replicas: replica1 directly (no balancer), c={c}")
        out["direct"][f"c{c}"] = measure(first.port, request, pids, plan, c)
    progress("replicas: starting replica2 (from the database alone)")
    second.start()
    lb.wait_states({"replica1": "UP", "replica2": "UP"})
    pids["replica2"] = second.pid
    _warm(lb.port, request)
    for c in plan.concurrencies:
        progress(f"replicas: two replicas behind haproxy, c={c}")
        out["two"][f"c{c}"] = measure(lb.port, request, pids, plan, c)
    out["two_vs_one"] = {
        key: round(out["two"][key]["rps"] / out["one"][key]["rps"], 2)
        if out["one"][key]["rps"]
        else None
        for key in out["one"]
    }
    return out


def markdown(replicas: dict[str, Any]) -> str:
    """The section of RESULTS.md ('' when the scenario did not run)."""
    if not replicas:
        return ""
    lines = ["", "## Replicas behind haproxy (issue 14)", ""]
    if replicas.get("status") != "ok":
        reason = str(replicas.get("reason", ""))[:300]
        return "\n".join([*lines, f"{replicas.get('status')}: {reason}", ""])
    lines += [
        "`POST /api/v1/certificates` from a CSR (ECDSA P-256 CA) on a PostgreSQL 15 cluster of the "
        f"bench's own, {replicas['workers_per_replica']} gunicorn workers per replica, haproxy "
        "(config/haproxy.cfg) round robin with /readyz health checks. Same run: one replica "
        "behind the balancer (replica2 down), the same replica directly, then two replicas "
        f"behind the balancer. All on this machine's {replicas['nproc']} cores: the replicas, "
        "PostgreSQL, haproxy and the load generator share them.",
        "",
        "| replicas | path | c | certs/s | runs | p50 ms | p99 ms | errors | load1 "
        "| CPU cores: replica1 / replica2 / postgres / haproxy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, key, path in (
        ("1", "one", "haproxy"),
        ("1", "direct", "direct"),
        ("2", "two", "haproxy"),
    ):
        for c, r in replicas[key].items():
            cpu = r["cpu_cores"]
            cores = " / ".join(
                str(cpu.get(name, "-")) for name in ("replica1", "replica2", "postgres", "haproxy")
            )
            lines.append(
                f"| {label} | {path} | {c.removeprefix('c')} | {r['rps']} | {r['rps_runs']} "
                f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['load1']} | {cores} |"
            )
    ratios = ", ".join(f"c={k.removeprefix('c')}: {v}" for k, v in replicas["two_vs_one"].items())
    lines += ["", f"Two replicas against one, behind the balancer: {ratios}.", ""]
    return "\n".join(lines)
