"""Profile ``ca-service serve`` under one bench load with py-spy; print where the time goes.

``python -m bench.profile_server --db sqlite --scenario issue --concurrency 32 --seconds 10``

Builds a fresh store (optionally bulk-loaded with ``--rows`` revoked rows), starts the server as
the bench does, drives the scenario's load and records every gunicorn worker with
``py-spy record --subprocesses`` (raw collapsed stacks, idle threads excluded). Prints the
inclusive share of the busiest functions (a function's share is the fraction of the workers'
busy samples whose stack contains it) and the top self-time frames, and keeps the raw stacks and
the summary in ``--out``. Shares are of the samples of threads inside ``wsgi_app`` (serving a
request); with ``--idle`` those include waits (SQLite lock backoff, fsync, network). Not part
of ``bench.run``: it is how the causes in bench/PROFILES.md were measured.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import http_scenarios as hs
from bench.common import database_url, leaf_csr_pem, new_ca, progress
from bench.loadgen import Request, run_load
from bench.populate import load, prepare
from ca_service.domain import KeyType

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "ca_service/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def analyze(raw: Path, top: int = 30) -> dict[str, object]:
    """Inclusive and self shares of the busy samples in a py-spy raw (collapsed) file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frame is the process ("process 123:..."), then the thread, then calls.
        frames = [
            _frame_name(f)
            for f in stack.split(";")
            if "(" in f and not f.startswith(("process ", "thread ("))
        ]
        # Only threads serving a request: with --idle, threads waiting for one are noise.
        if not any(".wsgi_app (" in f for f in frames):
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {"samples": total, "inclusive_pct": share(inclusive), "self_pct": share(own)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--scenario", choices=("issue", "crl", "search", "fetch", "ocsp"), default="issue"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rows", type=int, default=0, help="bulk-load this many revoked rows")
    parser.add_argument(
        "--idle", action="store_true", help="also sample waiting threads (locks, fsync, sleeps)"
    )
    parser.add_argument(
        "--gil", action="store_true",
        help="sample only the thread holding the GIL: the workers' Python CPU, without waits",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=30, help="rows of each table")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "ca-bench-prof")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)
    flags = ("-idle" if args.idle else "") + ("-gil" if args.gil else "")
    tag = f"{args.db}-{args.scenario}-c{args.concurrency}-{args.rows}{flags}"
    csr = leaf_csr_pem()
    with (
        tempfile.TemporaryDirectory(prefix="ca-bench-prof-") as tmp,
        database_url(args.db, Path(tmp)) as url,
    ):
        data = Path(tmp) / "data"
        ca = new_ca(data, url, KeyType.ECDSA_P256)
        pop = prepare(ca)
        if args.rows:
            progress(f"populating {args.rows:,} revoked rows")
            load(pop, url, args.rows, revoked=True, deadline=time.monotonic() + 300)
        ca.generate_crl()
        ca.db.dispose()
        with hs.start_server(data, url) as server:
            if args.scenario == "issue":
                body = json.dumps({"csr": csr.decode()}).encode()
                reqs = [Request("POST", "/api/v1/certificates", body, server.auth)]
            elif args.scenario == "crl":
                reqs = [Request("GET", "/ca/default/crl")]
            elif args.scenario == "search":
                reqs = [
                    Request("GET", f"/api/v1/certificates?q={n}", None, server.auth)
                    for n in pop.sample_names
                ]
            elif args.scenario == "fetch":
                reqs = [
                    Request("GET", f"/api/v1/certificates/{s}", None, server.auth)
                    for s in pop.sample_serials
                ]
            else:
                answers = hs.issue_some(server, csr, 10, 20)
                ders = [
                    hs.ocsp_request_der(
                        hs.x509.load_pem_x509_certificate(a["certificate"].encode()),
                        hs._issuer_of(a),
                    )
                    for a in answers
                ]
                reqs = [Request("POST", "/ocsp", d, hs.OCSP_CT) for d in ders]
            run_load(hs.HOST, server.port, reqs, concurrency=8, max_requests=200, max_seconds=3)
            raw = args.out / f"{tag}.txt"
            spy = subprocess.Popen(
                ["py-spy", "record", "--subprocesses", "--pid", str(server.pid), "--rate", "200",
                 "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw),
                 "--nonblocking", *(["--idle"] if args.idle else []),
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)
            result = run_load(
                hs.HOST, server.port, reqs, concurrency=args.concurrency,
                max_requests=1_000_000, max_seconds=args.seconds - 1.5,
            )  # fmt: skip
            _, err = spy.communicate(timeout=args.seconds + 60)
    summary = {"tag": tag, "load": result.summary(), **analyze(raw, args.top)}
    (args.out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["load"]))
    print(f"busy samples: {summary['samples']}  (py-spy: {err.decode().strip()[-200:]})")
    print("inclusive %:")
    for name, pct in summary["inclusive_pct"]:  # type: ignore[union-attr]
        print(f"  {pct:5.1f}  {name}")
    print("self %:")
    for name, pct in summary["self_pct"][: args.top]:  # type: ignore[index]
        print(f"  {pct:5.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
