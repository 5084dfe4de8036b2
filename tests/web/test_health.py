"""Issue 9 item 5 (health): /livez says the process answers, /readyz that it can do its work
(database, keys, issuing CA neither revoked nor expired), /healthz is /readyz. Each condition is
made real against a real server: a revoked default CA, an expired one, a key file the server
refuses, and (PostgreSQL) the database going away behind a TCP proxy on loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ..conftest import PG_URL, drop_pg_schema, live_server, make_pg_schema
from ..external_ca import external_ca_files
from ..live import CA_SERVICE, LiveServer, Reply, assert_problem, db_engine, start_server


def cli(live: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in live.env.items() if k != "CA_BIND"}
    result = subprocess.run(
        [CA_SERVICE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def readyz_until(live: LiveServer, status: int, *, tries: int = 60) -> Reply:
    """/readyz until it answers ``status`` (bounded: the default authority is cached for a few
    seconds per process, and a new CA expires on its own clock)."""
    reply = live.request("GET", "/readyz")
    for _ in range(tries):
        if reply.status == status:
            return reply
        time.sleep(0.5)
        reply = live.request("GET", "/readyz")
    raise AssertionError(f"/readyz never answered {status}: {reply.status} {reply.body[:400]!r}")


def assert_not_ready(reply: Reply, *words: str) -> dict[str, Any]:
    body = assert_problem(reply, 503)
    assert body["type"] == "urn:ca-service:problem:not-ready"
    for word in words:
        assert word in body["detail"], body
    assert body["problems"] and all(isinstance(p, str) for p in body["problems"])
    return body


def test_livez_readyz_and_the_healthz_alias(live: LiveServer) -> None:
    alive = live.request("GET", "/livez")
    assert alive.status == 200 and alive.json == {"status": "ok"}
    ready = live.request("GET", "/readyz")
    assert ready.status == 200, ready.body
    assert ready.json["status"] == "ok"
    assert ready.json["database"] == "ok" and ready.json["keys"] == "ok"
    assert ready.json["authority"] == "default"
    assert ready.json["chain"] == [
        {"name": "default", "status": "valid"},
        {"name": "default-root", "status": "valid"},
    ]
    assert ready.json["authorities"] == 2
    alias = live.request("GET", "/healthz")
    assert alias.status == 200 and alias.json == ready.json


@pytest.fixture(params=["sqlite", "postgresql"])
def own_live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A server of this test's own: these tests break its CAs on purpose."""
    with live_server(request.param, tmp_path / "srv") as server:
        yield server


def test_not_ready_for_an_unreadable_key_a_revoked_or_an_expired_default_ca(
    own_live: LiveServer, tmp_path: Path
) -> None:
    """Reproduction: issuance carried on under a revoked CA while /healthz said ok."""
    live = own_live
    readyz_until(live, 200)

    # A CA key the server refuses to load (its stored blob replaced by another key's, which
    # does not match the certificate): not ready, the reason named without the key's name;
    # back to ready once the right key is there again.
    cli(live, "init", "--name", "keyed")
    engine = db_engine(live)
    try:
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT name, pem_encrypted FROM key_blobs"))
            blobs = {str(n): bytes(d) for n, d in rows}
            (name,) = [n for n in blobs if n.startswith("keyed-") and "root" not in n]
            (root_name,) = [n for n in blobs if n.startswith("keyed-root")]
            swap = sa.text("UPDATE key_blobs SET pem_encrypted = :d WHERE name = :n")
            conn.execute(swap, {"d": blobs[root_name], "n": name})
        body = assert_not_ready(readyz_until(live, 503), "key")
        assert body["checks"]["keys"] == "not loaded"
        assert name not in live.request("GET", "/readyz").body.decode()
        with engine.begin() as conn:
            conn.execute(swap, {"d": blobs[name], "n": name})
    finally:
        engine.dispose()
    readyz_until(live, 200)

    # The default CA revoked (the explicit admin action): /readyz and /healthz say so and why,
    # /livez does not care, and issuance is refused with a problem, not a 500.
    revoked = live.request(
        "POST",
        "/api/v1/authorities/default/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert revoked.status == 200, revoked.body
    for path in ("/readyz", "/healthz"):
        reply = live.request("GET", path)
        body = assert_not_ready(reply, "'default'", "revoked", "keyCompromise")
        assert "retry-after" not in reply.headers  # waiting will not help
        assert body["checks"]["chain"][0] == {"name": "default", "status": "revoked"}
        assert body["checks"]["database"] == "ok"
    assert live.request("GET", "/livez").status == 200
    refused = live.request(
        "POST",
        "/api/v1/certificates",
        token=live.admin_token,
        body={"common_name": "after.example.test"},
    )
    assert assert_problem(refused, 409)["rule"] == "authority.revoked"

    # Another default: ready again.
    cli(live, "set-default", "keyed")
    assert readyz_until(live, 200).json["authority"] == "keyed"

    # An expired default: an imported intermediate that lives a few seconds.
    cert, key, chain = external_ca_files(tmp_path, 12)
    cli(live, "init", "--name", "brief", "--import-cert", str(cert), "--import-key", str(key),
        "--import-chain", str(chain))  # fmt: skip
    cli(live, "set-default", "brief")
    body = assert_not_ready(readyz_until(live, 503), "'brief'", "expired")
    assert body["checks"]["chain"] == [{"name": "brief", "status": "expired"}]
    expired = live.request(
        "POST", "/api/v1/certificates", token=live.admin_token, body={"common_name": "x.test"}
    )
    assert assert_problem(expired, 403)["rule"] == "authority.expired"
    assert "Traceback" not in live.log()


class TcpProxy:
    """A loopback TCP forwarder the test can cut and restore: the database going away and
    coming back, as a network or a restart makes it, without touching the shared server.
    Bounded: every socket has a timeout and the threads end when the proxy is cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._stop.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(1.0)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()


def test_not_ready_while_the_database_is_away(tmp_path: Path) -> None:
    """PostgreSQL behind a proxy that is cut: 503 with Retry-After, then ready again. (SQLite
    is a file this process holds open; it does not go away the same way.)"""
    url, schema = make_pg_schema()
    host_port = PG_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.start()
    proxied = url.replace(f"@{host_port}/", f"@127.0.0.1:{proxy.port}/")
    assert proxied != url
    server = None
    try:
        # One worker: once it answers, no worker is still booting (a boot needs the database,
        # which is another matter than readiness).
        server = start_server(tmp_path / "data", proxied, workers=1)
        readyz_until(server, 200)
        proxy.cut()
        reply = readyz_until(server, 503)
        body = assert_not_ready(reply, "database")
        assert body["checks"] == {"database": "unreachable"}
        assert reply.headers.get("retry-after") == "5"
        assert server.request("GET", "/livez").status == 200
        proxy.start()
        assert readyz_until(server, 200).json["database"] == "ok"
        assert "Traceback" not in server.log()
    finally:
        if server is not None:
            server.stop()
        proxy.cut()
        drop_pg_schema(schema)
