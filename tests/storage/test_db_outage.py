"""Issue 9 item 5: while PostgreSQL is away, requests answer 503 problem+json with Retry-After.

During a PostgreSQL restart 142 issuances got 500 "internal error". The shared server cannot be
restarted here (others test against it), so the outage is made on the path to it: the service's
database URL points at a TCP forwarder on loopback, written below, which the test closes
(listener and every open connection: what a restart does to the clients) and then reopens on the
same port. Checked: each answer during the outage is a 503 problem+json with Retry-After, nothing
is written, no traceback is logged, and issuance works again once the database is back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ..conftest import drop_pg_schema, make_pg_schema
from ..live import LiveServer, Reply, assert_problem, free_port, server_tracebacks, start_server

CERTS = "/api/v1/certificates"


class Forwarder:
    """Relays TCP connections from a loopback port to ``target``; ``close`` cuts them all."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._acceptor: threading.Thread | None = None

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)  # so that the accept loop sees _stop promptly
        self._listener = listener
        self._stop.clear()
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        """Refuse new connections and drop every relayed one (a server restart, seen by clients)."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for pair in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=pair, daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[LiveServer, Forwarder, str]]:
    """A live server whose PostgreSQL is reached through a Forwarder; (server, forwarder,
    direct URL of the same schema, for counting rows behind the service's back)."""
    direct, schema = make_pg_schema()
    url = make_url(direct)
    forwarder = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    forwarder.open()
    through = url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)
    server = start_server(tmp_path / "data", through, workers=2)
    try:
        yield server, forwarder, direct
    finally:
        server.stop()
        forwarder.close()
        drop_pg_schema(schema)


def _certificates(direct_url: str) -> int:
    engine = sa.create_engine(direct_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM certificates")).scalar_one())
    finally:
        engine.dispose()


def _issue(live: LiveServer, n: int) -> Reply:
    return live.request(
        "POST", CERTS, token=live.admin_token, body={"common_name": f"o{n}.outage.example.test"}
    )


def _assert_unavailable(reply: Reply) -> None:
    problem = assert_problem(reply, 503)
    assert problem["type"] == "urn:ca-service:problem:unavailable"
    assert int(reply.headers["retry-after"]) >= 1
    # The driver's reason (host, port) is for the log, not for callers.
    assert "127.0.0.1" not in problem["detail"] and "port" not in problem["detail"]


def test_database_outage_is_503_with_retry_after_and_recovers(
    outage: tuple[LiveServer, Forwarder, str],
) -> None:
    live, forwarder, direct = outage
    stored = _certificates(direct)  # the CA's own certificates
    assert _issue(live, 0).status == 201
    # Every worker's pool holds connections now (two workers, a few requests each).
    for n in range(1, 5):
        assert _issue(live, n).status == 201
    assert live.request("GET", CERTS, token=live.admin_token).status == 200
    stored += 5
    assert _certificates(direct) == stored

    forwarder.close()
    # Pooled connections are cut (a restart) and new ones refused (the server still down):
    # enough requests to meet both in each worker.
    for n in range(100, 112):
        _assert_unavailable(_issue(live, n))
    _assert_unavailable(live.request("GET", CERTS, token=live.admin_token))
    _assert_unavailable(live.request("GET", "/api/v1/audit", token=live.admin_token))
    health = live.request("GET", "/healthz")
    assert health.status == 503
    assert _certificates(direct) == stored

    forwarder.open()
    recovered = None
    for n in range(200, 240):  # bounded: 40 tries, a quarter of a second apart
        reply = _issue(live, n)
        if reply.status == 201:
            recovered = n
            break
        _assert_unavailable(reply)
        time.sleep(0.25)
    assert recovered is not None, "issuance did not come back after the database did"
    stored += 1
    # Once back, it stays back: the pools dropped their dead connections.
    for n in range(300, 306):
        assert _issue(live, n).status == 201
    stored += 6
    assert _certificates(direct) == stored
    assert server_tracebacks(live) == 0, live.log()[-3000:]
    assert "database is unreachable" in live.log()


def _workers(live: LiveServer) -> set[int]:
    """The PIDs of the gunicorn master's children (its workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == live.proc.pid:
                found.add(int(entry.name))
    return found


def test_a_worker_that_boots_during_an_outage_waits_for_the_database(
    outage: tuple[LiveServer, Forwarder, str],
) -> None:
    """Seen in CI: a worker (re)started while the database was away died in create_app with
    a traceback (and gunicorn would treat a boot error as fatal for the whole service). Now it
    waits for the database with one line per second, then serves."""
    live, forwarder, _ = outage
    assert _issue(live, 0).status == 201
    before = _workers(live)
    assert len(before) == 2, before
    forwarder.close()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "worker waiting for the database" not in live.log():
        time.sleep(0.2)
    assert "worker waiting for the database" in live.log(), live.log()[-3000:]
    forwarder.open()
    # Both workers serve again: the respawned one finished its boot once the database was back.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_workers(live)) < 2:
        time.sleep(0.2)
    # The surviving worker's pooled connections were cut with the outage: its first requests
    # may still meet one (a 503, as the other test shows) before its pool drops them.
    for n in range(100, 140):  # bounded: 40 tries, a quarter of a second apart
        reply = _issue(live, n)
        if reply.status == 201:
            break
        _assert_unavailable(reply)
        time.sleep(0.25)
    served = [_issue(live, n).status for n in range(10, 20)]
    assert served == [201] * 10, served
    assert victim not in _workers(live) and len(_workers(live)) == 2
    assert server_tracebacks(live) == 0, live.log()[-3000:]
    assert live.proc.poll() is None  # the master kept running
