"""The production topology as real processes on loopback: a PostgreSQL cluster of our own,
ca-service replicas with a data directory each, and haproxy in front (config/haproxy.cfg, as in
docker-compose.yml).

One module for tests/topology/test_replicas.py and bench/replicas.py (tests already import the
bench; the bench imports nothing from tests), so the test and the figures run the same processes.
Every process started here is stopped by its own PID; the PostgreSQL cluster is a new one in a
temporary directory on a free port, never the shared server on 5432, because the test restarts it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from bench.common import free_port, stop_process
from bench.http_scenarios import TOKEN_RE, ca_service_exe, child_pids

HOST = "127.0.0.1"
PG_BIN = Path(os.environ.get("CA_TOPOLOGY_PG_BIN", "/usr/lib/postgresql/15/bin"))
HAPROXY_CFG = Path(__file__).resolve().parent.parent / "config" / "haproxy.cfg"
# Not a secret: a throwaway CA on loopback, deleted with its temporary directory.
PASSPHRASE = "topology-passphrase-not-secret"  # noqa: S105


def absent_reason() -> str | None:
    """None when PostgreSQL's server binaries and haproxy are installed, else what is missing."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"no PostgreSQL server binaries in {PG_BIN} (apt-get install postgresql)"
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (apt-get install haproxy)"
    return None


def _wait(what: str, ready: Callable[[], bool], seconds: float, log: Path | None = None) -> None:
    """Poll ``ready()`` every 0.1 s for at most ``seconds``; raise with the log's tail if never."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready within {seconds:.0f} s\n{tail}")


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET path`` on a loopback port, None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- PostgreSQL


def free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports (the OS may hand the same one out twice in a row,
    since each probe's socket is closed before the next)."""
    found: list[int] = []
    for _ in range(20 * count):
        port = free_port()
        if port not in found:
            found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"could not find {count} free ports")


class Postgres:
    """A PostgreSQL 15 cluster in a directory of its own, on a free loopback port.

    Password authentication over TCP (scram-sha-256), as docker-compose.yml sets up: clients
    read the password from a libpq password file (PGPASSFILE, the compose file's pgpass secret),
    never from a URL or the environment. Only the cluster's own Unix socket, in its directory,
    trusts local users (initdb and createdb).

    PostgreSQL refuses to run as root, so as root its commands run as the ``postgres`` OS user
    (runuser), which owns the cluster's directory; that directory is made directly under the
    temporary directory because pytest's own (0700, root's) cannot be entered by that user.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = Path(tempfile.mkdtemp(prefix="ca-topology-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.database = "ca"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
        # A throwaway password for a throwaway cluster; written only to its two files.
        password = secrets.token_hex(16)
        self.pwfile = self.base / "initdb-password"
        self.pwfile.write_text(password + "\n")
        if self._as_root:
            shutil.chown(self.pwfile, "postgres", "postgres")
        self.passfile = self.base / "pgpass"
        # libpq ignores a password file that others may read.
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{HOST}:{self.port}:*:postgres:{password}\n")

    @property
    def url(self) -> str:
        """The URL the replicas get: no password in it (it is in ``passfile``)."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{self.database}"

    def client_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    def engine(self) -> sa.Engine:
        """A SQLAlchemy engine on the database, for a test's own queries (dispose of it)."""
        return sa.create_engine(self.url, connect_args={"passfile": str(self.passfile)})

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )

    def _checked(self, *args: str) -> None:
        proc = self._run(*args)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr[-800:]}")

    def create(self) -> None:
        """initdb, start, and an empty database ``ca``."""
        self._checked(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            f"--pwfile={self.pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.pwfile.unlink()
        self.start()
        self._checked(
            str(PG_BIN / "createdb"), "-h", str(self.base), "-p", str(self.port), "-U",
            "postgres", self.database,
        )  # fmt: skip

    def start(self) -> None:
        # Loopback only, no Unix socket outside the cluster's directory; max_connections covers
        # two replicas' pools (workers x pool size) with room for the test's own engine.
        options = (
            f"-p {self.port} -c listen_addresses={HOST} -k {self.base} -c max_connections=200 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._checked(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def pid(self) -> int | None:
        """The postmaster's PID, from its pid file (None when it is not running)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``; if that fails, SIGKILL the postmaster by its PID."""
        pid = self.pid()
        if pid is None:
            return
        proc = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        if proc.returncode != 0 and self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------------------------------ replicas


@dataclass
class Replica:
    """One ``ca-service serve`` (a gunicorn master, which ``serve`` execs, and its workers)."""

    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # The first admin token, printed by the replica that created the store (None on the others).
    printed_token: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def workers(self) -> list[int]:
        """The gunicorn workers: the master's children in /proc."""
        return child_pids(self.pid)

    def start(self, ready_timeout: float = 90) -> None:
        """Start and wait until /readyz is 200 (the store answers, the keys are loaded)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # appended: a restart keeps the earlier lines
            self.proc = subprocess.Popen(
                [ca_service_exe(), "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{self.name} exited {proc.returncode}:\n{tail}")
            return http_status(self.port, "/readyz") == 200

        _wait(self.name, ready, ready_timeout, self.log_path)
        if self.printed_token is None:
            found = TOKEN_RE.search(self.log_path.read_text(errors="replace"))
            self.printed_token = found.group(0) if found else None

    def kill(self) -> None:
        """``kill -9`` of the whole replica: the master and every worker, by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = [self.proc.pid, *self.workers()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        # The workers were the master's children, so nobody reaps them now but init; wait for
        # them to be gone so that the port is free for a restart.
        _wait(f"{self.name}'s workers exiting", lambda: not any(_alive(p) for p in pids[1:]), 30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, grace=40)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _alive(pid: int) -> bool:
    """A process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def replica_env(
    data_dir: Path, pg: Postgres, port: int, public_url: str, workers: int
) -> dict[str, str]:
    """A replica's environment: its own data directory, the shared database and passphrase."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "PG"))}
    env.update(pg.client_env())
    env.update(
        CA_DATA_DIR=str(data_dir),
        CA_DATABASE_URL=pg.url,
        CA_KEY_PASSPHRASE=PASSPHRASE,
        CA_BIND=f"{HOST}:{port}",
        CA_WORKERS=str(workers),
        # Every replica puts the balancer's address in what it signs (CRL DP, OCSP URL), as a
        # deployment would; the replica's own port stays internal.
        CA_PUBLIC_URL=public_url,
        CA_LOG_LEVEL="WARNING",
    )
    return env


# ------------------------------------------------------------------------------------- haproxy


@dataclass
class Balancer:
    """haproxy in the foreground (-db) with config/haproxy.cfg; ports through its environment."""

    port: int
    stats_port: int
    backends: tuple[int, int]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_socket(self) -> Path:
        return self.log_path.parent / "haproxy-admin.sock"

    def command(self, line: str) -> str:
        """One command of haproxy's runtime API (its admin socket); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def set_state(self, server: str, state: str, seconds: float = 30) -> None:
        """Take a replica out of rotation (``maint``) or put it back (``ready``), and wait until
        haproxy reports it so (UP again only once its health check passes)."""
        answer = self.command(f"set server replicas/{server} state {state}")
        if answer.strip():
            raise RuntimeError(f"haproxy refused 'state {state}' for {server}: {answer.strip()}")
        self.wait_states({server: "MAINT" if state == "maint" else "UP"}, seconds)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "REPLICA"))}
        env.update(
            LB_BIND=f"{HOST}:{self.port}",
            LB_STATS=f"{HOST}:{self.stats_port}",
            LB_ADMIN=str(self.admin_socket),
            REPLICA1=f"{HOST}:{self.backends[0]}",
            REPLICA2=f"{HOST}:{self.backends[1]}",
        )
        return env

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """``haproxy -c -f config/haproxy.cfg`` with this balancer's addresses."""
        return subprocess.run(
            ["haproxy", "-c", "-f", str(HAPROXY_CFG)],
            env=self.env(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {proc.returncode}: {self.log_path.read_text()}")
            return http_status(self.stats_port, "/stats") == 200

        _wait("haproxy", ready, 30, self.log_path)

    def server_states(self) -> dict[str, str]:
        """Each replica's state as haproxy sees it (UP, DOWN, ...), from the CSV stats page."""
        conn = http.client.HTTPConnection(HOST, self.stats_port, timeout=5)
        try:
            conn.request("GET", "/stats;csv")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        states = {}
        for line in text.splitlines():
            cols = line.split(",")
            if len(cols) > 17 and cols[0] == "replicas" and cols[1].startswith("replica"):
                states[cols[1]] = cols[17]
        return states

    def wait_states(self, wanted: dict[str, str], seconds: float = 30) -> None:
        """Wait until haproxy's health checks see the replicas as ``wanted`` (UP / DOWN)."""

        def matches() -> bool:
            states = self.server_states()
            return all(re.match(v, states.get(k, "")) for k, v in wanted.items())

        _wait(f"haproxy states {wanted}", matches, seconds, self.log_path)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, grace=10)


# ------------------------------------------------------------------------------------ together


@dataclass
class Topology:
    pg: Postgres
    replicas: list[Replica]
    balancer: Balancer
    workdir: Path

    @property
    def url(self) -> str:
        return self.pg.url

    @property
    def token(self) -> str:
        token = self.replicas[0].printed_token
        assert token is not None, "the first replica printed no admin token"
        return token


@contextlib.contextmanager
def topology(workdir: Path, *, workers: int = 2) -> Iterator[Topology]:
    """PostgreSQL, replica1 (which creates the CA on the empty database), haproxy, and replica2
    (from the database alone: an empty data directory of its own); everything stopped after."""
    missing = absent_reason()
    if missing:
        raise RuntimeError(missing)
    pg_port, lb_port, stats_port, *replica_ports = free_ports(5)
    ports = (replica_ports[0], replica_ports[1])
    pg = Postgres(pg_port)
    public = f"http://{HOST}:{lb_port}"
    replicas = [
        Replica(
            name,
            port,
            workdir / name / "data",
            replica_env(workdir / name / "data", pg, port, public, workers),
            workdir / f"{name}.log",
        )
        for name, port in zip(("replica1", "replica2"), ports, strict=True)
    ]
    balancer = Balancer(lb_port, stats_port, ports, workdir / "haproxy.log")
    topo = Topology(pg, replicas, balancer, workdir)
    try:
        pg.create()
        replicas[0].start()
        balancer.start()
        replicas[1].start()
        balancer.wait_states({"replica1": "UP", "replica2": "UP"})
        yield topo
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()
        pg.destroy()
