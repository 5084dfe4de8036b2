"""Reference (d): the stack's floor, the least an issuing endpoint on this stack can cost.

Issue 15 asks for rates (1,500 certificates/s on PostgreSQL, 1.5x CFSSL on SQLite) on two
cores shared with the load generator. Whether a rate is out of reach for *any* service built on
this stack, not only for ours, is a measurement: this module serves a deliberately bare
endpoint on the same gunicorn worker class, worker count and threads as ``ca-service serve``,
driven by the same load generator with the same CSR, in the same run. Each request parses the
JSON body, loads the CSR and checks its signature, builds and signs a leaf with the four
extensions every leaf needs, and answers the PEM in JSON. With a store it also writes the
certificate (serial, DER, fingerprint) durably before answering, in one transaction per group of
concurrent requests (the group commit ca-service uses), on the same kind of database:

- ``none``: no store at all: gunicorn + Flask + cryptography;
- ``postgresql``: psycopg straight to the server, ``executemany`` and one COMMIT a group;
- ``sqlite``: the stdlib driver, WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` a group.

It does strictly less than ca-service (no token, policy, audit row, search index, record, API
model or problem details), so its rate bounds ca-service's from above on the same machine: a
target above the floor's rate cannot be reached here by any change to our code, only by another
stack or another machine. Run alone: ``python -m bench.floor --store postgresql``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
STORES = ("none", "sqlite", "postgresql")
_SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS floor_certificates (id INTEGER PRIMARY KEY, "
    "serial TEXT UNIQUE NOT NULL, der BLOB NOT NULL, fingerprint TEXT UNIQUE NOT NULL, "
    "created_at TEXT NOT NULL)"
)
_PG_DDL = (
    "CREATE TABLE IF NOT EXISTS floor_certificates (id BIGSERIAL PRIMARY KEY, "
    "serial TEXT UNIQUE NOT NULL, der BYTEA NOT NULL, fingerprint TEXT UNIQUE NOT NULL, "
    "created_at TIMESTAMPTZ NOT NULL)"
)

Row = tuple[str, bytes, str, dt.datetime]


class GroupWriter:
    """One writer thread per process: rows of concurrent requests share one durable commit.

    A request thread queues its row and waits; the writer takes everything queued, writes it in
    one transaction and wakes the requests it committed. The same shape as ca-service's
    ``storage/group_commit.py`` at its simplest, so the floor is not slower for lack of it.
    """

    def __init__(self, connect: Callable[[], Any], write: Callable[[Any, list[Row]], None]):
        self._connect = connect
        self._write = write
        self._queue: queue.SimpleQueue[tuple[Row, threading.Event, list[BaseException]]]
        self._queue = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def commit(self, row: Row) -> None:
        with self._lock:
            if not self._started:
                threading.Thread(target=self._run, name="floor-writer", daemon=True).start()
                self._started = True
        done, failed = threading.Event(), list[BaseException]()
        self._queue.put((row, done, failed))
        done.wait()
        if failed:
            raise failed[0]

    def _run(self) -> None:
        conn = self._connect()
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(conn, [row for row, _, _ in batch])
            except Exception as exc:  # handed to every waiting request
                for _, _, failed in batch:
                    failed.append(exc)
            for _, done, _ in batch:
                done.set()


def _sqlite_writer(path: str) -> GroupWriter:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def write(conn: sqlite3.Connection, rows: list[Row]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO floor_certificates (serial, der, fingerprint, created_at) "
                "VALUES (?, ?, ?, ?)",
                [(s, d, f, c.isoformat()) for s, d, f, c in rows],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    return GroupWriter(connect, write)


def _pg_writer(conninfo: str) -> GroupWriter:
    import psycopg

    def connect() -> Any:
        return psycopg.connect(conninfo)

    def write(conn: Any, rows: list[Row]) -> None:
        try:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO floor_certificates (serial, der, fingerprint, created_at) "
                    "VALUES (%s, %s, %s, %s)",
                    rows,
                )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    return GroupWriter(connect, write)


def create_app() -> Any:
    """The floor's WSGI app; its store comes from ``FLOOR_STORE`` and ``FLOOR_TARGET``."""
    from flask import Flask, Response, request

    store = os.environ.get("FLOOR_STORE", "none")
    target = os.environ.get("FLOOR_TARGET", "")
    writer = (
        _sqlite_writer(target) if store == "sqlite"
        else _pg_writer(target) if store == "postgresql"
        else None
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor reference CA")])
    app = Flask("floor")

    @app.post("/sign")
    def sign() -> Response:
        try:
            csr = x509.load_pem_x509_csr(json.loads(request.get_data())["csr"].encode())
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, KeyError, TypeError, x509.ExtensionNotFound):
            return Response("bad CSR", 400)
        if not csr.is_signature_valid:
            return Response("bad CSR signature", 400)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(issuer).public_key(csr.public_key())
            .serial_number(serial).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(sans, critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        der = cert.public_bytes(serialization.Encoding.DER)
        if writer is not None:
            writer.commit((format(serial, "x"), der, hashlib.sha256(der).hexdigest(), now))
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        body = json.dumps({"certificate": pem, "serial": format(serial, "x")})
        return Response(body, 201, mimetype="application/json")

    return app


def prepare_store(store: str, workdir: Path, db_url: str | None) -> str:
    """The ``FLOOR_TARGET`` of a store: a fresh SQLite file, or a psycopg conninfo."""
    if store == "sqlite":
        path = workdir / "floor.db"
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SQLITE_DDL)
        return str(path)
    if store == "postgresql":
        import psycopg
        import sqlalchemy as sa

        url = sa.make_url(db_url or "")
        parts = {
            "host": url.host or HOST, "port": url.port or 5432, "user": url.username or "",
            "dbname": url.database or "", "options": str(url.query.get("options", "")),
        }  # fmt: skip
        conninfo = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items() if v})
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(_PG_DDL)
        return conninfo
    return ""


def stored_rows(store: str, target: str) -> int:
    """How many certificates the floor committed: every 201 must have its row."""
    if store == "sqlite":
        with sqlite3.connect(target) as conn:
            return int(conn.execute("SELECT count(*) FROM floor_certificates").fetchone()[0])
    if store == "postgresql":
        import psycopg

        with psycopg.connect(target) as conn:
            row = conn.execute("SELECT count(*) FROM floor_certificates").fetchone()
            return int(row[0]) if row else 0
    return 0


def _worker_cpu_seconds(master_pid: int) -> float:
    """CPU of gunicorn's master and workers (children of the master) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [master_pid]
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def floor_scenario(
    csr_pem: bytes,
    stores: Sequence[str],
    concurrencies: Sequence[int],
    seconds: float,
    max_requests: int,
    db_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Serve the floor app per store under ``serve``'s gunicorn settings and load it."""
    from bench.common import database_url, progress, require_loopback
    from bench.loadgen import Request
    from ca_service.config import Settings
    from ca_service.web import gunicorn_worker

    require_loopback(HOST)
    settings = Settings()
    worker_class = os.environ.get("FLOOR_WORKER_CLASS") or (
        "ca_service.web.gunicorn_worker.BalancedThreadWorker"
        if gunicorn_worker.supported() else "gthread"
    )  # fmt: skip
    body = json.dumps({"csr": csr_pem.decode()}).encode()
    request = Request("POST", "/sign", body, {"Content-Type": "application/json"})
    plan = LoadPlan(request, concurrencies, seconds, max_requests)
    out: dict[str, Any] = {
        "status": "ok", "workers": settings.worker_count, "threads": settings.threads,
        "worker_class": worker_class, "runs": {},
    }  # fmt: skip
    for store in stores:
        progress(f"reference (d) the stack's floor, store {store}")
        with tempfile.TemporaryDirectory(prefix="ca-bench-floor-") as tmp:
            kind = store if store != "none" else "sqlite"
            given = (db_urls or {}).get(store)
            with database_url(kind, Path(tmp)) as fresh:
                target = prepare_store(store, Path(tmp), given or fresh)
                out["runs"][store] = _serve_and_load(
                    store, target, worker_class, settings.worker_count, settings.threads, plan
                )
    return out


@dataclass(frozen=True)
class LoadPlan:
    """What each store's server is driven with: one request, its levels and bounds."""

    request: Any  # bench.loadgen.Request
    concurrencies: Sequence[int]
    seconds: float
    max_requests: int


def _serve_and_load(
    store: str, target: str, worker_class: str, workers: int, threads: int, plan: LoadPlan
) -> dict[str, Any]:
    from bench.common import free_port, stop_process
    from bench.loadgen import run_load

    port = free_port()
    env = {**os.environ, "FLOOR_STORE": store, "FLOOR_TARGET": target}
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    argv = [
        sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
        "--worker-class", worker_class, "--bind", f"{HOST}:{port}", "--keep-alive", "5",
        "bench.floor:create_app()",
    ]  # fmt: skip
    run: dict[str, Any] = {}
    answered = 0

    def load(concurrency: int, max_requests: int, max_seconds: float) -> Any:
        nonlocal answered
        result = run_load(
            HOST, port, [plan.request], concurrency=concurrency, max_requests=max_requests,
            max_seconds=max_seconds,
        )  # fmt: skip
        answered += result.ok
        return result

    with tempfile.TemporaryFile() as log_file:
        server = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not (warm := load(4, 50, 2)).ok or warm.errors:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_file.seek(0)
                    raise RuntimeError(f"floor server did not come up: {log_file.read()[-600:]!r}")
                time.sleep(0.3)
            # Both workers boot and warm before the figures (the second may start later).
            load(8, 400, 3)
            for c in plan.concurrencies:
                cpu0, t0 = _worker_cpu_seconds(server.pid), time.monotonic()
                result = load(c, plan.max_requests, plan.seconds)
                cpu, wall = _worker_cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
                summary = result.summary()
                summary["server_cpu_ms_per_cert"] = (
                    round(1000 * cpu / result.ok, 3) if result.ok else None
                )
                summary["server_cpu_cores"] = round(cpu / wall, 2)
                run[f"c{c}"] = summary
        finally:
            stop_process(server, grace=10)
    run["answered"] = answered
    if store != "none":
        # Every 201 was committed first: a floor that lost rows would not be a floor.
        run["rows_stored"] = stored_rows(store, target)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    from bench.common import leaf_csr_pem

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--store", choices=STORES, action="append")
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args(argv)
    result = floor_scenario(
        leaf_csr_pem(), args.store or list(STORES), args.concurrency or [8, 32], args.seconds,
        1_000_000,
    )  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
