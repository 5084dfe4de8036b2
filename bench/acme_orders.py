"""ACME orders end to end against the real ``ca-service serve --tls``, beside plain API issuance
measured on the same server in the same run.

One ACME account (the ``acme`` library's ClientV2, ES256) places orders one after another for
fresh names under ``bench.acme.test``; each order is timed per step:

- ``new_order``: newOrder plus the POST-as-GET of its authorization (what ClientV2.new_order does);
- ``challenge``: answering http-01 and polling the authorization until it is valid;
- ``finalize``: the finalize request with the CSR and polling the order until it is valid;
- ``download``: the POST-as-GET of the certificate chain.

There are no client-side sleeps: polls follow each other at once (their number is reported), so
the figure is the server's, whether it validates synchronously or not. The http-01 answers come
from ``acme.standalone.HTTP01Server`` in this process on a loopback port, and the server resolves
the names through a minimal DNS responder in this process that answers 127.0.0.1 for every A
query (the server's ``CA_ACME_DNS_RESOLVER``): nothing leaves the machine. Accounts are not
bound by EAB here (``CA_ACME_REQUIRE_EAB=false`` with a default policy of ``*.bench.acme.test``)
and the rate limits are raised, so neither is measured.

The comparison is ``POST /api/v1/certificates`` with a CSR over the same HTTPS, sequentially,
with the same count and time bounds: the ratio is what ACME's extra round trips and validation
cost per certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import secrets
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.common import (
    database_url,
    free_port,
    latency_summary,
    new_ca,
    progress,
    require_loopback,
    stop_process,
)
from bench.http_scenarios import TOKEN_RE, ca_service_exe, server_env, tree_cpu_seconds
from ca_service.domain import KeyType

HOST = "127.0.0.1"
ZONE = "bench.acme.test"
STEPS = ("new_order", "challenge", "finalize", "download")


@dataclass(frozen=True)
class Budget:
    """Both bounds of every loop: orders (and API issuances) and seconds, per mode; ``dbs``
    narrows the databases (None: the mode's)."""

    orders: int
    seconds: float
    dbs: tuple[str, ...] | None = None
    max_polls: int = 5000
    poll_seconds: float = 30.0


BUDGETS = {
    "full": Budget(300, 40.0),
    # Starting a TLS server on a fresh store dominates a short run: quick measures SQLite only.
    "quick": Budget(30, 5.0, dbs=("sqlite",)),
    "tiny": Budget(3, 5.0),
}


# ---------------------------------------------------------------------------- DNS on loopback


class LoopbackResolver:
    """A UDP DNS responder on 127.0.0.1 answering every A question with 127.0.0.1 and every
    other type with an empty NOERROR (no AAAA, no CAA: issuance is allowed). Just enough DNS
    for the server's lookups during http-01; stopped by ``close``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-dns", daemon=True)
        self._thread.start()

    @staticmethod
    def answer(query: bytes) -> bytes | None:
        if len(query) < 17:
            return None
        i = 12
        while i < len(query) and query[i] != 0:
            if query[i] & 0xC0:  # no compression in a question we sent ourselves: refuse
                return None
            i += query[i] + 1
        end = i + 5
        if end > len(query):
            return None
        qtype = int.from_bytes(query[i + 1 : i + 3], "big")
        question = query[12:end]
        rd = query[2] & 0x01
        answer = b""
        if qtype == 1:
            answer = (
                b"\xc0\x0c"  # the question's name
                + (1).to_bytes(2, "big")  # A
                + (1).to_bytes(2, "big")  # IN
                + (60).to_bytes(4, "big")
                + (4).to_bytes(2, "big")
                + bytes([127, 0, 0, 1])
            )
        header = (
            query[:2]
            + bytes([0x80 | 0x04 | rd, 0x80])  # response, authoritative, RD echoed; RA, NOERROR
            + (1).to_bytes(2, "big")
            + (1 if answer else 0).to_bytes(2, "big")
            + b"\x00\x00\x00\x00"
        )
        return header + question + answer

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            reply = self.answer(data)
            if reply is not None:
                self.queries += 1
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


# ---------------------------------------------------------------------------- the server


@dataclass
class TlsServer:
    port: int
    token: str
    proc: subprocess.Popen[bytes]
    root_file: Path
    context: ssl.SSLContext

    @property
    def base_url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(HOST, self.port, timeout=timeout, context=self.context)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def start_tls_server(
    data_dir: Path, db_url: str, root_pem: str, extra: dict[str, str], ready_timeout: float = 60
) -> Iterator[TlsServer]:
    """``ca-service serve --tls`` on a free loopback port with an https public URL (ACME on);
    ready when /healthz answers over TLS against the root from the store; stopped by its pid."""
    port = free_port()
    require_loopback(HOST)
    env = server_env(data_dir, db_url, port)
    env.update(CA_PUBLIC_URL=f"https://{HOST}:{port}", CA_LOG_LEVEL="WARNING", **extra)
    root_file = data_dir.parent / "bench-root.pem"
    root_file.write_text(root_pem)
    context = ssl.create_default_context(cadata=root_pem)
    log_path = data_dir.parent / f"serve-tls-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [ca_service_exe(), "serve", "--tls"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + ready_timeout
        token = None
        while token is None:
            # The first start of a store without tokens prints the first admin token once.
            found = TOKEN_RE.search(log_path.read_text(errors="replace"))
            token = found.group(0) if found else None
            if token is None and (proc.poll() is not None or time.monotonic() > deadline):
                tail = log_path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"ca-service serve --tls printed no admin token: {tail}")
            time.sleep(0.1)
        server = TlsServer(port, token, proc, root_file, context)
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                # A short timeout: a worker still booting must not hold a probe for a minute.
                if server.call("GET", "/healthz", timeout=2)[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"ca-service serve --tls did not come up: {tail}")
            time.sleep(0.2)
        yield server
    finally:
        stop_process(proc, grace=40)


# ---------------------------------------------------------------------------- measuring


def _csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class AcmeOrders:
    """One account and the bounded, sleep-free polling of its orders."""

    def __init__(self, server: TlsServer, http01_resources: set[Any], budget: Budget) -> None:
        import josepy
        from acme import client, messages

        self.messages = messages
        self.budget = budget
        self.resources = http01_resources
        account_key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        # requests takes a CA bundle path where ClientNetwork says bool.
        net = client.ClientNetwork(
            account_key,
            alg=josepy.ES256,
            verify_ssl=str(server.root_file),  # type: ignore[arg-type]
            user_agent="ca-service-bench",
        )
        directory = client.ClientV2.get_directory(f"{server.base_url}/acme/directory", net)
        self.client = client.ClientV2(directory, net)
        self.client.new_account(
            messages.NewRegistration.from_data(
                email="bench@example.test", terms_of_service_agreed=True
            )
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.polls = {"challenge": 0, "finalize": 0}

    def close(self) -> None:
        self.client.net.session.close()

    def _get(self, url: str) -> Any:
        return self.client.net.post(url, None, new_nonce_url=self.client.directory["newNonce"])

    def _until(self, url: str, step: str, done: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + self.budget.poll_seconds
        for _ in range(self.budget.max_polls):
            body: dict[str, Any] = self._get(url).json()
            self.polls[step] += 1
            if body.get("status") in done:
                return body
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{step}: {url} still {body.get('status')!r} after the poll budget")

    def one(self, i: int) -> dict[str, float]:
        """One complete order; the seconds of each step."""
        from acme import challenges

        name = f"o{i}-{secrets.token_hex(3)}.{ZONE}"
        csr = _csr_pem(self.key, name)
        t0 = time.perf_counter()
        order = self.client.new_order(csr)
        t1 = time.perf_counter()
        for authz in order.authorizations:
            challb = next(
                c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challb.response_and_validation(self.client.net.key)
            self.resources.add(
                _http01_resource(challb.chall, response, validation)  # type: ignore[arg-type]
            )
            self.client.answer_challenge(challb, response)
            body = self._until(authz.uri, "challenge", {"valid", "invalid"})
            if body["status"] != "valid":
                raise RuntimeError(f"validation of {name} failed: {json.dumps(body)[:400]}")
        t2 = time.perf_counter()
        final = self.client.begin_finalization(order)
        body = self._until(final.uri, "finalize", {"valid", "invalid"})
        if body["status"] != "valid" or not body.get("certificate"):
            raise RuntimeError(f"finalize of {name}: {json.dumps(body)[:400]}")
        t3 = time.perf_counter()
        pem = self._get(body["certificate"]).text
        t4 = time.perf_counter()
        if not pem.startswith("-----BEGIN CERTIFICATE-----"):
            raise RuntimeError(f"certificate of {name} is not PEM: {pem[:100]!r}")
        self.resources.clear()
        return {
            "new_order": t1 - t0,
            "challenge": t2 - t1,
            "finalize": t3 - t2,
            "download": t4 - t3,
        }


def _http01_resource(chall: Any, response: Any, validation: str) -> Any:
    from acme import standalone

    return standalone.HTTP01RequestHandler.HTTP01Resource(
        chall=chall, response=response, validation=validation
    )


def _api_issuance(server: TlsServer, budget: Budget) -> dict[str, Any]:
    """Plain ``POST /api/v1/certificates`` with a CSR on one keep-alive HTTPS connection."""
    key = ec.generate_private_key(ec.SECP256R1())
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    conn = http.client.HTTPSConnection(HOST, server.port, timeout=60, context=server.context)
    latencies: list[float] = []
    try:
        start = time.perf_counter()
        deadline = start + budget.seconds
        for i in range(budget.orders):
            body = json.dumps({"csr": _csr_pem(key, f"api{i}.{ZONE}").decode()}).encode()
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/certificates", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            latencies.append(time.perf_counter() - t0)
            if resp.status != 201:
                raise RuntimeError(f"API issuance: HTTP {resp.status}: {data[:300]!r}")
            if time.perf_counter() >= deadline:
                break
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return {
        "count": len(latencies),
        "seconds": round(seconds, 3),
        "per_s": round(len(latencies) / seconds, 2) if seconds > 0 else 0.0,
        **latency_summary(latencies),
    }


def acme_family(db: str, db_url: str, workdir: Path, budget: Budget) -> dict[str, Any]:
    """Everything for one database: a fresh store, the server, the orders, the API issuance."""
    from acme import standalone

    data_dir = workdir / "data"
    ca = new_ca(data_dir, db_url, KeyType.ECDSA_P256)
    try:
        root_pem = ca.chain_pem()[-1]
    finally:
        ca.db.dispose()
    resources: set[Any] = set()
    http01_port = free_port()
    responder = standalone.HTTP01Server((HOST, http01_port), resources, ipv6=False)
    responder_thread = threading.Thread(target=responder.serve_forever, daemon=True)
    responder_thread.start()
    dns = LoopbackResolver()
    extra = {
        "CA_ACME_REQUIRE_EAB": "false",
        "CA_ACME_DEFAULT_ALLOWED_NAMES": f"*.{ZONE}",
        "CA_ACME_HTTP01_PORT": str(http01_port),
        "CA_ACME_DNS_RESOLVER": f"{HOST}:{dns.port}",
        "CA_ACME_ORDERS_PER_HOUR": "100000",
        "CA_ACME_FAILED_VALIDATIONS_PER_HOUR": "100000",
    }
    try:
        with start_tls_server(data_dir, db_url, root_pem, extra) as server:
            status, _ = server.call("GET", "/acme/directory")
            if status != 200:
                return {"status": "absent", "reason": f"GET /acme/directory answered {status}"}
            orders = AcmeOrders(server, resources, budget)
            orders.one(-1)  # warm: imports, keys, pools, the first validation's connections
            orders.polls = {"challenge": 0, "finalize": 0}
            load1 = os.getloadavg()[0]
            cpu0 = tree_cpu_seconds(server.proc.pid)
            per_step: dict[str, list[float]] = {s: [] for s in STEPS}
            totals: list[float] = []
            start = time.perf_counter()
            deadline = start + budget.seconds
            for i in range(budget.orders):
                steps = orders.one(i)
                for s in STEPS:
                    per_step[s].append(steps[s])
                totals.append(sum(steps.values()))
                if time.perf_counter() >= deadline:
                    break
            seconds = time.perf_counter() - start
            cpu = (tree_cpu_seconds(server.proc.pid) - cpu0) / max(seconds, 1e-9)
            count = len(totals)
            # Closed before the server stops: gunicorn's graceful stop waits for open
            # keep-alive connections, which would add its whole timeout to the run.
            orders.close()
            api = _api_issuance(server, budget)
    finally:
        dns.close()
        responder.shutdown()
        responder.server_close()
        responder_thread.join(timeout=5)
    return {
        "status": "ok",
        "db": db,
        "load1": round(load1, 2),
        "server_cpu_cores": round(cpu, 2),
        "orders": {
            "count": count,
            "seconds": round(seconds, 3),
            "per_s": round(count / seconds, 2) if seconds > 0 else 0.0,
            **latency_summary(totals),
        },
        "steps": {s: latency_summary(v) for s, v in per_step.items()},
        "polls_per_order": {k: round(v / max(count, 1), 2) for k, v in orders.polls.items()},
        "dns_queries": dns.queries,
        "api_issuance": api,
    }


def acme_absent_reason() -> str | None:
    """None when this build has the ACME server (its settings exist), else why not."""
    import dataclasses

    from ca_service.config import Settings

    if "acme_require_eab" not in {f.name for f in dataclasses.fields(Settings)}:
        return "this build has no ACME server (no acme_* settings)"
    return None


def run_scenario(dbs: list[str], mode: str) -> dict[str, Any]:
    """The scenario as bench.run calls it: one family per database, each failure recorded."""
    budget = BUDGETS[mode]
    out: dict[str, Any] = {}
    if budget.dbs is not None:
        dbs = [db for db in dbs if db in budget.dbs]
    absent = acme_absent_reason()
    if absent:
        return {db: {"status": "absent", "reason": absent} for db in dbs}
    for db in dbs:
        progress(f"acme: orders end to end on {db} (at most {budget.orders}, {budget.seconds} s)")
        with (
            tempfile.TemporaryDirectory(prefix=f"ca-bench-acme-{db}-") as tmp,
            database_url(db, Path(tmp)) as url,
        ):
            try:
                out[db] = acme_family(db, url, Path(tmp), budget)
            except Exception as exc:  # record and go on, as the other scenarios do
                out[db] = {"status": "error", "reason": repr(exc)}
    out["measured_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return out


# ---------------------------------------------------------------------------- report


def markdown(acme: dict[str, Any]) -> str:
    """The ACME section of RESULTS.md ('' when the scenario did not run)."""
    dbs = {k: v for k, v in acme.items() if isinstance(v, dict)}
    if not dbs:
        return ""
    lines = [
        "",
        "## ACME orders end to end (bench/acme_orders.py)",
        "",
        "One account, orders in sequence, http-01 answered in the bench process, no client "
        "sleeps; beside it plain `POST /api/v1/certificates` on the same HTTPS server.",
        "",
        "| db | orders/s | order p99 ms | newOrder p99 | challenge p99 | finalize p99 "
        "| download p99 | polls/order (chall, fin) | API certs/s | API p99 ms | load1 "
        "| server CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for db, r in dbs.items():
        if r.get("status") != "ok":
            reason = str(r.get("reason", ""))[:160].replace("|", "/")
            lines.append(f"| {db} | {r.get('status')}: {reason} |" + " |" * 11)
            continue
        s, o, a, p = r["steps"], r["orders"], r["api_issuance"], r["polls_per_order"]
        lines.append(
            f"| {db} | {o['per_s']} ({o['count']}) | {o['p99_ms']} | {s['new_order']['p99_ms']} "
            f"| {s['challenge']['p99_ms']} | {s['finalize']['p99_ms']} "
            f"| {s['download']['p99_ms']} | {p['challenge']}, {p['finalize']} "
            f"| {a['per_s']} ({a['count']}) | {a['p99_ms']} | {r['load1']} "
            f"| {r['server_cpu_cores']} |"
        )
    return "\n".join(lines) + "\n"
