"""HTTP scenarios against the real ``ca-service serve`` (gunicorn, its default worker count).

What the server provides (see bench/README.md): ``ca-service serve --bind HOST:PORT`` (or
``CA_BIND``) with the CA_* environment; ``ca-service token create --name N --role admin`` prints a
bearer token as its first stdout line; ``POST /api/v1/certificates`` answers 201 with a top-level
``serial``; ``POST /api/v1/certificates/{serial}/revoke`` answers 200; ``GET /ca/default/crl``
serves DER from an in-process cache; ``POST /ocsp`` (application/ocsp-request) and
``GET /ocsp/{base64}``; ``GET /api/v1/certificates?q=`` and ``GET /api/v1/certificates/{serial}``.

Every figure carries the 1-minute load average at its start and the server's CPU use (master and
workers, from /proc), because the machine is shared. Rates are medians of short repeated runs.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.common import (
    LEAF_NAMES,
    PASSPHRASE,
    free_port,
    new_ca,
    progress,
    require_loopback,
    stop_process,
)
from bench.loadgen import Request, run_load, run_wrk
from ca_service.domain import KeyType

HOST = "127.0.0.1"
TOKEN_RE = re.compile(r"cas_[a-z0-9]{16}_[A-Za-z0-9_-]{43}")
OCSP_CT = {"Content-Type": "application/ocsp-request"}


def ca_service_exe() -> str:
    return shutil.which("ca-service") or str(Path(sys.executable).parent / "ca-service")


def api_absent_reason() -> str | None:
    """None when the HTTP API and ``ca-service serve`` exist, else what is missing."""
    try:
        from ca_service.web.app import create_app
    except ImportError as exc:
        return f"ca_service.web.app.create_app cannot be imported: {exc}"
    del create_app
    proc = subprocess.run([ca_service_exe(), "serve", "--help"], capture_output=True, text=True)
    if proc.returncode != 0 or "--bind" not in proc.stdout:
        return "`ca-service serve --bind` does not exist"
    return None


def server_env(data_dir: Path, db_url: str, port: int) -> dict[str, str]:
    """The environment of the server and the CLI: the store the bench built, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(
        CA_DATA_DIR=str(data_dir),
        CA_DATABASE_URL=db_url,
        CA_KEY_PASSPHRASE=PASSPHRASE.decode(),
        CA_PUBLIC_URL=f"http://{HOST}:{port}",
        CA_BIND=f"{HOST}:{port}",
    )
    return env


def provision_token(env: dict[str, str]) -> str:
    """An admin bearer token: ``ca-service token create`` prints it as its first stdout line."""
    proc = subprocess.run(
        [ca_service_exe(), "token", "create", "--name", "bench", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not TOKEN_RE.fullmatch(lines[0].strip()):
        raise RuntimeError(f"cannot create an API token: {proc.stderr.strip()[-300:]}")
    return lines[0].strip()


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (/proc): a gunicorn master's are its workers."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            out += [int(c) for c in text.split()]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its live children (gunicorn master + workers)."""
    total = 0.0
    for p in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Server:
    port: int
    token: str
    pid: int
    log: Path
    ocsp_refs: list[tuple[x509.Certificate, x509.Certificate]] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def workers(self) -> list[int]:
        return child_pids(self.pid)


@contextlib.contextmanager
def start_server(data_dir: Path, db_url: str, *, ready_timeout: float = 60) -> Iterator[Server]:
    """``ca-service serve`` on a free loopback port, default workers; stopped by its own pid."""
    port = free_port()
    require_loopback(HOST)
    env = server_env(data_dir, db_url, port)
    token = provision_token(env)
    log_path = data_dir / f"serve-{port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [ca_service_exe(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = call("GET", port, "/healthz", None, {})
                if status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"ca-service serve did not come up: {tail}")
            time.sleep(0.2)
        yield Server(port, token, proc.pid, log_path)
    finally:
        stop_process(proc, grace=40)
        log.close()


def call(
    method: str, port: int, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def measure(
    server: Server,
    requests: Sequence[Request],
    *,
    concurrency: int,
    seconds: float,
    max_requests: int,
    repeats: int = 1,
    ok_statuses: Sequence[int] = (200, 201),
) -> dict[str, Any]:
    """``repeats`` short bounded runs; the one with the median rate is reported, with all rates,
    the load average before the first and the server's CPU cores used over all of them."""
    load1 = os.getloadavg()[0]
    cpu0, t0 = tree_cpu_seconds(server.pid), time.monotonic()
    runs = [
        run_load(
            HOST, server.port, requests, concurrency=concurrency,
            max_requests=max(1, max_requests // repeats), max_seconds=seconds / repeats,
            ok_statuses=ok_statuses,
        ).summary()
        for _ in range(repeats)
    ]  # fmt: skip
    cpu = (tree_cpu_seconds(server.pid) - cpu0) / max(time.monotonic() - t0, 1e-9)
    rates = [r["rps"] for r in runs]
    median = statistics.median_low(rates)
    chosen = dict(runs[rates.index(median)])
    chosen.update(
        rps_runs=rates,
        errors=sum(r["errors"] for r in runs),
        load1=round(load1, 2),
        server_cpu_cores=round(cpu, 2),
    )
    return chosen


def _serial_of(answer: bytes) -> str:
    data = json.loads(answer)
    return str(data.get("serial") or data["certificate"]["serial"])


def issuance(
    server: Server,
    body: dict[str, Any],
    concurrencies: Sequence[int],
    seconds: float,
    max_requests: int,
    repeats: int,
) -> dict[str, Any]:
    """POST /api/v1/certificates at each concurrency: certs/s (median run), p50, p99."""
    payload = json.dumps(body).encode()
    request = Request("POST", "/api/v1/certificates", payload, server.auth)
    status, answer = call("POST", server.port, request.path, payload, server.auth)
    if status != 201:
        return {"status": "error", "reason": f"HTTP {status}: {answer[:300]!r}"}
    _serial_of(answer)
    # Warm every worker (imports, keys, connection pools) before anything is timed.
    run_load(HOST, server.port, [request], concurrency=8, max_requests=64, max_seconds=3)
    out: dict[str, Any] = {"status": "ok"}
    for c in concurrencies:
        out[f"c{c}"] = measure(
            server, [request], concurrency=c, seconds=seconds, max_requests=max_requests,
            repeats=repeats, ok_statuses=(201,),
        )  # fmt: skip
    return out


def issue_some(server: Server, csr_pem: bytes, count: int, seconds: float) -> list[dict[str, Any]]:
    """Issue up to ``count`` certificates one by one on a keep-alive connection; their JSON."""
    body = json.dumps({"csr": csr_pem.decode()}).encode()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    try:
        while len(out) < count and time.monotonic() < deadline:
            conn.request("POST", "/api/v1/certificates", body=body, headers=server.auth)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 201:
                raise RuntimeError(f"issue: HTTP {resp.status}: {data[:300]!r}")
            out.append(json.loads(data))
    finally:
        conn.close()
    return out


def _issuer_of(answer: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(answer["chain"].encode())[0]


def ocsp_request_der(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A one-certificate OCSP request without nonce (so the responder's cache applies)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    return builder.build().public_bytes(serialization.Encoding.DER)


def ocsp_get_path(der: bytes) -> str:
    return "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def ocsp_status(port: int, der: bytes) -> ocsp.OCSPCertStatus:
    status, data = call("POST", port, "/ocsp", der, OCSP_CT)
    if status != 200:
        raise RuntimeError(f"OCSP: HTTP {status}: {data[:300]!r}")
    answer = ocsp.load_der_ocsp_response(data)
    if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"OCSP: {answer.response_status}")
    return answer.certificate_status


def crl_has(port: int, serial: str) -> bool:
    status, data = call("GET", port, "/ca/default/crl", None, {})
    if status != 200:
        raise RuntimeError(f"CRL: HTTP {status}: {data[:300]!r}")
    crl = x509.load_der_x509_crl(data)
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


def revocation_visibility(server: Server, csr_pem: bytes, limit_s: float = 30) -> dict[str, Any]:
    """Issue one certificate, revoke it, and time (from sending the revoke) until the served
    CRL lists it and the OCSP answer says revoked; polled on fresh connections."""
    answer = issue_some(server, csr_pem, 1, 30)[0]
    serial = answer["serial"]
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    der = ocsp_request_der(cert, _issuer_of(answer))
    if ocsp_status(server.port, der) is not ocsp.OCSPCertStatus.GOOD:
        return {"status": "error", "reason": "a new certificate was not good in OCSP"}
    crl_has(server.port, serial)  # every cache warm: only the revocation's effect is timed
    reason = json.dumps({"reason": "keyCompromise"}).encode()
    t0 = time.perf_counter()
    status, body = call(
        "POST", server.port, f"/api/v1/certificates/{serial}/revoke", reason, server.auth
    )
    revoke_s = time.perf_counter() - t0
    if status != 200:
        return {"status": "error", "reason": f"revoke: HTTP {status}: {body[:300]!r}"}
    crl_s = ocsp_s = None
    while time.perf_counter() - t0 < limit_s and (crl_s is None or ocsp_s is None):
        if ocsp_s is None and ocsp_status(server.port, der) is ocsp.OCSPCertStatus.REVOKED:
            ocsp_s = time.perf_counter() - t0
        if crl_s is None and crl_has(server.port, serial):
            crl_s = time.perf_counter() - t0
        time.sleep(0.005)
    return {
        "status": "ok",
        "revoke_answer_s": round(revoke_s, 4),
        "revocation_to_crl_s": round(crl_s, 4) if crl_s is not None else None,
        "revocation_to_ocsp_s": round(ocsp_s, 4) if ocsp_s is not None else None,
        "limit_s": limit_s,
    }


def revocation_rate(
    server: Server, csr_pem: bytes, count: int, seconds: float, concurrency: int
) -> dict[str, Any]:
    """POST .../revoke over HTTP for ``count`` fresh certificates (each revocation also signs
    and stores a new CRL in the request, as the product does)."""
    serials = [a["serial"] for a in issue_some(server, csr_pem, count, seconds)]
    reason = json.dumps({"reason": "keyCompromise"}).encode()
    requests = [
        Request("POST", f"/api/v1/certificates/{s}/revoke", reason, server.auth) for s in serials
    ]
    return measure(
        server, requests, concurrency=min(concurrency, len(requests)), seconds=seconds,
        max_requests=len(requests), ok_statuses=(200,),
    )  # fmt: skip


def crl_fetch(
    server: Server, concurrency: int, seconds: float, max_requests: int, repeats: int
) -> dict[str, Any]:
    """GET /ca/default/crl (DER) from the in-process cache: req/s. Every worker is warmed
    first, so the one read of the CRL body from the store is not in the figure."""
    request = Request("GET", "/ca/default/crl")
    warm = run_load(HOST, server.port, [request], concurrency=8, max_requests=64, max_seconds=20)
    if warm.ok == 0:
        return {"status": "error", "reason": warm.first_error}
    _, data = call("GET", server.port, request.path, None, {})
    result = measure(
        server, [request], concurrency=concurrency, seconds=seconds, max_requests=max_requests,
        repeats=repeats, ok_statuses=(200,),
    )  # fmt: skip
    return {"status": "ok", "crl_bytes": len(data), **result}


def ocsp_load(
    server: Server,
    refs: Sequence[tuple[x509.Certificate, x509.Certificate]],
    concurrency: int,
    seconds: float,
    max_requests: int,
    repeats: int,
) -> dict[str, Any]:
    """OCSP answers/s and p99 for a fixed set of certificates, POST and GET, no nonce."""
    ders = [ocsp_request_der(c, i) for c, i in refs]
    if ocsp_status(server.port, ders[0]) is not ocsp.OCSPCertStatus.GOOD:
        return {"status": "error", "reason": "first answer is not 'good'"}
    out: dict[str, Any] = {"status": "ok", "certificates": len(ders)}
    for label, reqs in (
        ("post", [Request("POST", "/ocsp", d, OCSP_CT) for d in ders]),
        ("get", [Request("GET", ocsp_get_path(d)) for d in ders]),
    ):
        # Warm: every worker signs (and caches) each answer once.
        run_load(HOST, server.port, reqs, concurrency=8, max_requests=8 * len(reqs), max_seconds=5)
        out[label] = measure(
            server, reqs, concurrency=concurrency, seconds=seconds, max_requests=max_requests,
            repeats=repeats, ok_statuses=(200,),
        )  # fmt: skip
        # The same answers driven by wrk (C): bench/loadgen.py is Python on the server's two
        # cores and spends as much CPU per answer as the server does, so this is the figure of
        # what the server itself answers (one fixed request; the set above is pre-signed too).
        first = reqs[0]
        wrk = run_wrk(
            HOST, server.port, first.path, first.body or b"", concurrency=concurrency,
            seconds=max(2, round(seconds)), method=first.method,
            content_type=OCSP_CT["Content-Type"],
        )  # fmt: skip
        if wrk is not None:
            out[f"{label}_wrk"] = wrk
    return out


def lookups(
    server: Server, names: Sequence[str], serials: Sequence[str], seconds: float, count: int
) -> dict[str, Any]:
    """GET /api/v1/certificates?q= (a rare name; a common one) and fetch by serial, c=1."""
    rare = [Request("GET", f"/api/v1/certificates?q={n}", None, server.auth) for n in names]
    common = [Request("GET", "/api/v1/certificates?q=example.test", None, server.auth)]
    fetch = [Request("GET", f"/api/v1/certificates/{s}", None, server.auth) for s in serials]
    out: dict[str, Any] = {"status": "ok"}
    for label, reqs in (("search_rare", rare), ("search_common", common),
                        ("fetch_by_serial", fetch)):  # fmt: skip
        out[label] = measure(
            server, reqs, concurrency=1, seconds=seconds, max_requests=count, ok_statuses=(200,)
        )
    return out


@dataclass(frozen=True)
class HttpPlan:
    """Counts and bounds of the HTTP scenarios of one mode."""

    concurrencies: Sequence[int]
    seconds: float
    max_requests: int
    repeats: int
    fetch_concurrency: int
    revocations: int
    ocsp_certificates: int


def http_family(
    kind: str,
    key_type: KeyType,
    db_url: str,
    data_dir: Path,
    csr_pem: bytes,
    plan: HttpPlan,
    *,
    extras: bool,
) -> dict[str, Any]:
    """Every HTTP scenario for one (database, CA key type) on a fresh store ``db_url``.

    Issuance from CSR at each concurrency; with ``extras`` (the ECDSA CA) also keygen issuance,
    revocation rate and revocation-to-CRL/OCSP latency and CRL fetch (OCSP load: the ocsp
    scenario).
    """
    reason = api_absent_reason()
    if reason:
        return {"status": "absent", "reason": reason}
    new_ca(data_dir, db_url, key_type).db.dispose()
    out: dict[str, Any] = {"status": "ok", "db": kind, "key_type": key_type.value}
    with start_server(data_dir, db_url) as server:
        out["workers"] = len(server.workers())
        progress(f"http {kind} {key_type.value}: issuance from CSR at c={list(plan.concurrencies)}")
        out["issue_csr"] = issuance(
            server, {"csr": csr_pem.decode()}, plan.concurrencies, plan.seconds,
            plan.max_requests, plan.repeats,
        )  # fmt: skip
        if not extras:
            return out
        c_mid = plan.fetch_concurrency
        progress(f"http {kind}: server-side keygen issuance at c={c_mid}")
        keygen = {"common_name": LEAF_NAMES[0], "sans": list(LEAF_NAMES), "key_type": "ecdsa-p256"}
        out["issue_keygen"] = issuance(
            server, keygen, [c_mid], plan.seconds, plan.max_requests, plan.repeats
        )
        progress(f"http {kind}: revocation rate and revocation-to-CRL/OCSP latency")
        out["revocation"] = _guard(
            revocation_rate, server, csr_pem, plan.revocations, plan.seconds, c_mid
        )
        out["revocation_visibility"] = _guard(revocation_visibility, server, csr_pem)
        progress(f"http {kind}: CRL fetch at c={c_mid}")
        out["crl_fetch"] = _guard(
            crl_fetch, server, c_mid, plan.seconds, plan.max_requests, plan.repeats
        )
        # OCSP answers are the ocsp scenario's (bench/ocsp_presigned.py), measured once.
    return out


def _guard(fn: Any, *args: Any) -> dict[str, Any]:
    """One scenario's failure is recorded in its place; the others still run."""
    try:
        result: dict[str, Any] = fn(*args)
    except Exception as exc:
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    return result
