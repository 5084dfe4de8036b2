"""Issue 14, item 8: issuance throughput with one and with two replicas behind haproxy on
PostgreSQL, in the same run (``python -m bench.run --only replicas``).

The topology is bench/cluster.py's, the one tests/topology/test_replicas.py runs: a PostgreSQL
cluster of its own, two replicas with a data directory each, haproxy with config/haproxy.cfg.
With replica2 out of rotation (in maintenance through haproxy's runtime API) every request goes
to replica1 through the balancer; with it back, the same load is split between the two. The
same load straight at replica1 gives the balancer's own cost. Everything runs on this machine's
cores: two replicas share them with PostgreSQL, haproxy and the load generator, which the CPU
columns show.
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
    "full": ReplicaPlan((8, 32), 10.0, 30_000, 5, None),
    "quick": ReplicaPlan((8,), 2.0, 5_000, 3, None),
    "tiny": ReplicaPlan((2,), 0.5, 50, 1, 2),
}


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}


def one_run(
    port: int, request: Request, pids: dict[str, int], plan: ReplicaPlan, concurrency: int
) -> dict[str, Any]:
    """One bounded run at ``concurrency``, with the CPU seconds each process tree used in it."""
    load1 = os.getloadavg()[0]
    cpu0, t0 = _cpu(pids), time.monotonic()
    summary = run_load(
        cluster.HOST, port, [request], concurrency=concurrency,
        max_requests=max(1, plan.max_requests // plan.repeats),
        max_seconds=plan.seconds / plan.repeats, ok_statuses=(201,),
    ).summary()  # fmt: skip
    cpu1 = _cpu(pids)
    summary.update(
        load1=round(load1, 2),
        wall_s=time.monotonic() - t0,
        cpu_s={name: cpu1[name] - cpu0[name] for name in pids},
    )
    return summary


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median-rate run with every run's rate, the errors of all, the highest load average
    seen, and each process tree's CPU cores over all the runs."""
    rates = [r["rps"] for r in runs]
    chosen = dict(runs[rates.index(statistics.median_low(rates))])
    wall = sum(r["wall_s"] for r in runs) or 1e-9
    chosen.update(
        rps_runs=rates,
        errors=sum(r["errors"] for r in runs),
        load1=max(r["load1"] for r in runs),
        cpu_cores={n: round(sum(r["cpu_s"][n] for r in runs) / wall, 2) for n in runs[0]["cpu_s"]},
    )
    del chosen["wall_s"], chosen["cpu_s"]
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
    progress("replicas: PostgreSQL of its own, two replicas, haproxy")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ca-bench-replicas-") as tmp,
            cluster.topology(Path(tmp), workers=plan.workers or 4) as topo,
        ):
            return _measure_all(topo, plan, csr_pem)
    except Exception as exc:  # record and go on, as the other scenarios do
        return {"status": "error", "reason": repr(exc)}


def _measure_all(topo: cluster.Topology, plan: ReplicaPlan, csr_pem: bytes) -> dict[str, Any]:
    """Rounds of: replica2 out of rotation (haproxy's runtime API), the load through the
    balancer and straight at replica1; replica2 back, the load through the balancer. Taking
    turns, on a shared machine, lets a burst of other work hit the three alike."""
    first, second = topo.replicas
    lb = topo.balancer
    headers = {"Authorization": f"Bearer {topo.token}", "Content-Type": "application/json"}
    body = json.dumps({"csr": csr_pem.decode()}).encode()
    request = Request("POST", "/api/v1/certificates", body, headers)
    assert lb.proc is not None
    postgres = topo.pg.pid()
    assert postgres is not None
    pids = {
        "replica1": first.pid, "replica2": second.pid, "haproxy": lb.proc.pid,
        "postgres": postgres,
    }  # fmt: skip
    out: dict[str, Any] = {
        "status": "ok",
        "workers_per_replica": plan.workers or 4,
        "nproc": os.cpu_count(),
        "one": {},
        "direct": {},
        "two": {},
    }
    _warm(first.port, request)
    _warm(second.port, request)
    for c in plan.concurrencies:
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "direct": [], "two": []}
        for round_ in range(1, plan.repeats + 1):
            progress(f"replicas: c={c}, round {round_}/{plan.repeats}: one, direct, two")
            lb.set_state("replica2", "maint")
            runs["one"].append(one_run(lb.port, request, pids, plan, c))
            runs["direct"].append(one_run(first.port, request, pids, plan, c))
            lb.set_state("replica2", "ready")
            runs["two"].append(one_run(lb.port, request, pids, plan, c))
        for key, found in runs.items():
            out[key][f"c{c}"] = combine(found)
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
        "(config/haproxy.cfg) round robin with /readyz health checks. In the same run, taking "
        "turns round by round: one replica behind the balancer (replica2 out of rotation through "
        "haproxy's runtime API), the same replica directly, two replicas behind the balancer. "
        f"All on this machine's {replicas['nproc']} cores: the replicas, PostgreSQL, haproxy and "
        "the load generator share them. certs/s is the median round's; load1 the highest seen.",
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
        for c, r in _by_concurrency(replicas[key]):
            cpu = r["cpu_cores"]
            cores = " / ".join(
                str(cpu.get(name, "-")) for name in ("replica1", "replica2", "postgres", "haproxy")
            )
            lines.append(
                f"| {label} | {path} | {c.removeprefix('c')} | {r['rps']} | {r['rps_runs']} "
                f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['load1']} | {cores} |"
            )
    ratios = ", ".join(f"c={k[1:]}: {v}" for k, v in _by_concurrency(replicas["two_vs_one"]))
    lines += ["", f"Two replicas against one, behind the balancer: {ratios}.", ""]
    lines += _reading(replicas)
    return "\n".join(lines)


def _by_concurrency(figures: dict[str, Any]) -> list[tuple[str, Any]]:
    """``{"c8": ..., "c32": ...}`` in the order of c (results.json sorts its keys as text)."""
    return sorted(figures.items(), key=lambda item: int(item[0][1:]))


def _reading(replicas: dict[str, Any]) -> list[str]:
    """What the figures say, derived from them: the CPU the server side had, against the cores."""
    measured = replicas.get("measured", {})
    used, per_cert = [], []
    for key in ("one", "two"):
        for c, r in _by_concurrency(replicas[key]):
            cores = sum(r["cpu_cores"].values())
            label = f"with {'one' if key == 'one' else 'two'} at c={c[1:]}"
            used.append(f"{cores:.2f} {label}")
            if r["rps"]:
                per_cert.append(f"{cores / r['rps'] * 1000:.1f} ms {label}")
    load = max(r["load1"] for key in ("one", "two", "direct") for r in replicas[key].values())
    where = ""
    if measured:
        where = f"Measured {measured['date']}, commit `{measured['commit']}`"
        where += f" (`{measured['command']}`). " if "command" in measured else ". "
    return [
        f"{where}The server side (replicas, PostgreSQL, haproxy) used "
        f"{', '.join(used)} cores of {replicas['nproc']}, with a load average up to {load}; "
        f"CPU per certificate: {', '.join(per_cert)}. "
        "Two replicas on one machine cannot add cores: here they share the same "
        f"{replicas['nproc']} with the load generator and whatever else runs, so this table "
        "shows what a second replica costs on a shared host and that each takes its half of the "
        "load, not the scaling that replicas on separate hosts (or cores) give.",
        "",
    ]
