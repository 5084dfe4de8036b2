"""A small HTTP load generator: processes x threads of keep-alive ``http.client`` connections.

Why not only wrk: the same generator must drive ca-service and CFSSL with bodies that change per
request (revocation needs one serial per call) and report per-request latencies we can reduce
ourselves. Why processes: one CPython process tops out near a few thousand requests/s under the
GIL, so concurrency is spread over up to ``os.cpu_count()`` processes, each with threads.

Every run is bounded twice: by ``max_requests`` and by ``max_seconds``. Only loopback hosts are
accepted. Workers are forked (Linux): a spawned worker re-imports the ``__main__`` module, which
under ``python -m bench.run`` is the whole bench and ca_service, ~2-3 s per run on a loaded
2-core machine; the bench's main process holds no threads when it forks.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    concurrency: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    statuses: dict[str, int]
    first_error: str | None = None

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The figures RESULTS.md and the JSON keep: rate, p50, p99 and what failed."""
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            if not ordered:
                return 0.0
            rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
            return round(ordered[rank] * 1000, 3)

        return {
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "max_ms": pct(100),
            "statuses": self.statuses,
            "first_error": self.first_error,
        }


def _thread_loop(
    host: str,
    port: int,
    requests: Sequence[Request],
    first_index: int,
    stride: int,
    quota: int,
    deadline: float,
    timeout: float,
    ok_statuses: frozenset[int],
    out: list[Any],
) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0
    first_error: str | None = None
    end = 0.0
    index = first_index
    for _ in range(quota):
        now = time.monotonic()
        if now >= deadline:
            break
        req = requests[index % len(requests)]
        index += stride
        t0 = time.perf_counter()
        try:
            conn.request(req.method, req.path, body=req.body, headers=req.headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            errors += 1
            statuses[type(exc).__name__] += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            continue
        latency = time.perf_counter() - t0
        end = time.monotonic()
        statuses[str(status)] += 1
        if status in ok_statuses:
            latencies.append(latency)
        else:
            errors += 1
            first_error = first_error or f"HTTP {status}: {data[:300]!r}"
    conn.close()
    out.append((latencies, errors, dict(statuses), first_error, end))


def _worker(
    host: str,
    port: int,
    requests: Sequence[Request],
    thread_ids: Sequence[int],
    quotas: Sequence[int],
    stride: int,
    max_seconds: float,
    timeout: float,
    ok_statuses: frozenset[int],
    ready: Any,
    go: Any,
    start_at: Any,
    results: Any,
) -> None:
    ready.put(os.getpid())
    go.wait()
    deadline = start_at.value + max_seconds
    out: list[Any] = []
    threads = [
        threading.Thread(
            target=_thread_loop,
            args=(host, port, requests, tid, stride, q, deadline, timeout, ok_statuses, out),
        )
        for tid, q in zip(thread_ids, quotas, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


def run_load(
    host: str,
    port: int,
    requests: Sequence[Request],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    processes: int | None = None,
    timeout: float = 30.0,
    ok_statuses: Sequence[int] = (200, 201),
) -> LoadResult:
    """Drive ``requests`` (cycled; thread k takes indices k, k+c, k+2c...) at ``concurrency``.

    Returns when every thread has sent its share of ``max_requests`` or ``max_seconds`` have passed.
    Latency is per request; the rate counts successful answers over the wall time from the common
    start to the last answer.
    """
    if host not in LOOPBACK:
        raise ValueError(f"refusing to send load to {host!r}: only loopback targets are allowed")
    if not requests or concurrency < 1 or max_requests < 1:
        raise ValueError("need at least one request, one connection and a positive count")
    nproc = max(1, min(processes or (os.cpu_count() or 1), concurrency))
    base, extra = divmod(max_requests, concurrency)
    quotas = [base + (1 if i < extra else 0) for i in range(concurrency)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = []
    for p in range(nproc):
        tids = list(range(p, concurrency, nproc))
        procs.append(
            ctx.Process(
                target=_worker,
                args=(
                    host,
                    port,
                    list(requests),
                    tids,
                    [quotas[t] for t in tids],
                    concurrency,
                    max_seconds,
                    timeout,
                    frozenset(ok_statuses),
                    ready,
                    go,
                    start_at,
                    results,
                ),
                daemon=True,
            )
        )
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        start = time.monotonic() + 0.05
        start_at.value = start
        go.set()
        outs: list[Any] = []
        for _ in procs:
            outs.extend(results.get(timeout=max_seconds + timeout + 60))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0
    first_error = None
    last = start
    for lat, errs, stats, first, end in outs:
        latencies.extend(lat)
        errors += errs
        statuses.update(stats)
        first_error = first_error or first
        last = max(last, end)
    return LoadResult(
        concurrency=concurrency,
        ok=len(latencies),
        errors=errors,
        seconds=max(last - start, 1e-9),
        latencies=latencies,
        statuses=dict(statuses),
        first_error=first_error,
    )


def run_wrk(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    seconds: int,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    content_type: str = "application/json",
) -> dict[str, Any] | None:
    """Cross-check with wrk (C, far cheaper per request) when installed; None if it is not.

    wrk is bounded by time only, so ``seconds`` is kept short by the caller. ``method`` GET
    sends no body (``body`` is then ignored).
    """
    import re
    import shutil
    import subprocess
    import tempfile

    if host not in LOOPBACK:
        raise ValueError(f"refusing to send load to {host!r}: only loopback targets are allowed")
    if shutil.which("wrk") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        body_file = os.path.join(tmp, "body")
        with open(body_file, "wb") as fh:
            fh.write(body)
        lines = [f"wrk.method = {method!r}"]
        if method != "GET":
            lines.append(f"wrk.headers['Content-Type'] = {content_type!r}")
        for k, v in (headers or {}).items():
            lines.append(f"wrk.headers[{k!r}] = {v!r}")
        if method != "GET":
            lines.append(f'local f = assert(io.open("{body_file}", "rb")); wrk.body = f:read("*a")')
            lines.append("f:close()")
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        proc = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script,
                f"http://{host}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
    text = proc.stdout

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\b", text, re.M)
        if not m:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return round(float(m.group(1)) * scale, 3)

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return {
        "engine": "wrk",
        "concurrency": concurrency,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }
