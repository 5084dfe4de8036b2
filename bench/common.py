"""Shared pieces of the benchmark: statistics, bounded loops, databases, a CA to measure, the CSR.

Every scenario builds the product through ``ca_service.wiring.build_authority`` exactly as the CLI
and the server do, so what is measured is the shipped code path and not a bench-only shortcut.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import Actor, KeyType

PG_URL = os.environ.get("CA_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSPHRASE = b"bench-passphrase-not-secret"
ADMIN = Actor(identity="bench:admin")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# The names every issuance scenario asks for, for ca-service and CFSSL alike.
LEAF_CN = "www.example.test"
LEAF_NAMES = ("www.example.test", "example.test")


def require_loopback(host: str) -> None:
    """The bench only ever loads the machine it runs on; anything else is a configuration bug."""
    if host not in LOOPBACK:
        raise ValueError(f"refusing to send load to {host!r}: only loopback targets are allowed")


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds: the figures the targets are stated in."""
    ordered = sorted(seconds)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
    }


@dataclass(frozen=True)
class LoopResult:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.rate, 1),
        }


def bounded_loop(
    fn: Callable[[int], object], max_count: int, max_seconds: float, warmup: int = 0
) -> LoopResult:
    """Call ``fn(i)`` until ``max_count`` calls or ``max_seconds`` pass, whichever comes first.

    Both bounds, always: a scenario that turns out slower than expected must shorten the run, not
    stretch it past the 15-minute budget.
    """
    for i in range(warmup):
        fn(-1 - i)
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + max_seconds
    i = 0
    while i < max_count:
        t0 = time.perf_counter()
        fn(i)
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        i += 1
        if t1 >= deadline:
            break
    return LoopResult(i, time.perf_counter() - start, latencies)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it; the small race is acceptable for a bench)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_info(repo: Path) -> dict[str, Any]:
    """What RESULTS.md must state so that figures from different machines are not compared."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    import cryptography

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "tree_dirty": dirty,
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------------------------- databases


def pg_reachable() -> str | None:
    """None when the bench PostgreSQL answers, else why not (the PostgreSQL half is skipped)."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any driver error means "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


@contextlib.contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty store: a SQLite file in ``workdir`` or a PostgreSQL schema dropped after."""
    if kind == "sqlite":
        path = workdir / "ca.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").unlink()
        return
    schema = f"bench_{secrets.token_hex(5)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def bench_settings(data_dir: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=db_url,
        key_passphrase=PASSPHRASE,
        public_url="http://127.0.0.1:8000",
    )


def new_ca(data_dir: Path, db_url: str, key_type: KeyType) -> Core:
    """A migrated store with one hierarchy ("default"), built the way ``ca-service init`` does."""
    from ca_service.wiring import build_authority

    ca = build_authority(bench_settings(data_dir, db_url), apply_migrations=True)
    ca.create_hierarchy(HierarchySpec(key_type=key_type), ADMIN)
    ca.load_keys()
    return ca


def open_ca(data_dir: Path, db_url: str) -> Core:
    """The CA of an existing store, as ``ca-service serve`` opens it (pending migrations applied).

    Applying them matters in a shared work tree: a migration added while a long run is going
    would otherwise stop the child processes of later steps.
    """
    from ca_service.wiring import build_authority

    ca = build_authority(bench_settings(data_dir, db_url), apply_migrations=True)
    ca.load_keys()
    return ca


def leaf_csr_pem() -> bytes:
    """One ECDSA P-256 CSR for ``LEAF_NAMES``: the same bytes go to ca-service and to CFSSL."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LEAF_CN)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in LEAF_NAMES]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def stop_process(proc: subprocess.Popen[Any], grace: float = 20) -> None:
    """Stop a server this bench started, by its own pid: SIGTERM, then SIGKILL after ``grace``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def python_exe() -> str:
    return sys.executable


def progress(message: str) -> None:
    """The one progress line the issue asks for: which scenario runs now, on stderr."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)
