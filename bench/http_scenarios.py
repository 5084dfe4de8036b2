"""HTTP scenarios against ``ca-service serve`` (gunicorn), written to the API contract of issue #4.

The API is being built while this is written, so every entry point first asks
``api_absent_reason()`` and reports ``{"status": "absent", "reason": ...}`` instead of failing or
inventing a figure. What the server must provide (see bench/README.md):

* ``ca-service serve --host 127.0.0.1 --port PORT`` runs gunicorn with its default worker count,
  configured by the usual CA_* environment (CA_DATA_DIR, CA_DATABASE_URL, CA_KEY_PASSPHRASE,
  CA_PUBLIC_URL);
* ``ca-service token create NAME`` prints a bearer token as its last stdout line (the one hook
  to adapt, ``provision_token``, if the CLI spells it differently);
* ``POST /api/v1/certificates`` with ``{"csr": PEM}`` or ``{"common_name", "sans", "key_type"}``
  answers 200/201 with JSON holding ``serial`` (top level or under ``certificate``);
* ``GET /api/v1/certificates?q=NAME``, ``GET /api/v1/certificates/{serial}``,
  ``POST /api/v1/certificates/{serial}/revoke`` with ``{"reason": "keyCompromise"}``,
  ``GET /ca/{name}/crl`` (DER or PEM).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.common import (
    LEAF_NAMES,
    PASSPHRASE,
    free_port,
    new_ca,
    progress,
    require_loopback,
    stop_process,
)
from bench.loadgen import Request, run_load
from ca_service.domain import KeyType

HOST = "127.0.0.1"


def api_absent_reason() -> str | None:
    """None when the HTTP API and ``ca-service serve`` exist, else what is missing."""
    try:
        import ca_service.web as web
    except ImportError as exc:
        return f"ca_service.web cannot be imported: {exc}"
    if not hasattr(web, "create_app"):
        return "ca_service.web has no create_app (the HTTP API is not built yet)"
    exe = shutil.which("ca-service") or str(Path(sys.executable).parent / "ca-service")
    proc = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True)
    if proc.returncode != 0:
        return "`ca-service serve` does not exist yet"
    return None


def server_env(data_dir: Path, db_url: str, port: int) -> dict[str, str]:
    """The environment the server and the CLI get: the same store the bench populated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(
        CA_DATA_DIR=str(data_dir),
        CA_DATABASE_URL=db_url,
        CA_KEY_PASSPHRASE=PASSPHRASE.decode(),
        CA_PUBLIC_URL=f"http://{HOST}:{port}",
    )
    return env


def provision_token(env: dict[str, str]) -> str:
    """HOOK: a bearer token allowed to issue and revoke. Adapt here if the CLI differs."""
    proc = subprocess.run(
        ["ca-service", "token", "create", "bench-load"], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot create an API token: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1].strip()


@dataclass(frozen=True)
class Server:
    port: int
    token: str
    pid: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


@contextlib.contextmanager
def start_server(data_dir: Path, db_url: str, *, ready_timeout: float = 30) -> Iterator[Server]:
    """HOOK: ``ca-service serve`` on a free loopback port, default workers; stopped by its pid."""
    port = free_port()
    require_loopback(HOST)
    env = server_env(data_dir, db_url, port)
    token = provision_token(env)
    log = (data_dir / f"serve-{port}.log").open("w")
    proc = subprocess.Popen(
        ["ca-service", "serve", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            with contextlib.suppress(OSError):
                status, _ = _call("GET", port, "/ca/default/crl", None, {})
                if status < 500:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ca-service serve did not come up (see {log.name})")
            time.sleep(0.2)
        yield Server(port, token, proc.pid)
    finally:
        stop_process(proc)
        log.close()


def _call(
    method: str, port: int, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _serial_of(answer: bytes) -> str:
    data = json.loads(answer)
    return str(data.get("serial") or data["certificate"]["serial"])


def issuance(
    server: Server,
    body: dict[str, Any],
    concurrencies: Sequence[int],
    seconds: float,
    max_requests: int,
) -> dict[str, Any]:
    """POST /api/v1/certificates at each concurrency: rps, p50, p99, errors."""
    payload = json.dumps(body).encode()
    request = Request("POST", "/api/v1/certificates", payload, server.auth)
    status, answer = _call("POST", server.port, request.path, payload, server.auth)
    if status not in (200, 201):
        return {"status": "error", "reason": f"HTTP {status}: {answer[:300]!r}"}
    run_load(HOST, server.port, [request], concurrency=4, max_requests=100, max_seconds=2)
    out: dict[str, Any] = {"status": "ok"}
    for c in concurrencies:
        result = run_load(
            HOST, server.port, [request], concurrency=c, max_requests=max_requests,
            max_seconds=seconds,
        )  # fmt: skip
        out[f"c{c}"] = result.summary()
    return out


def _crl_has(port: int, serial: str) -> bool:
    status, data = _call("GET", port, "/ca/default/crl", None, {})
    if status != 200:
        return False
    crl = (
        x509.load_pem_x509_crl(data) if data.startswith(b"-----") else x509.load_der_x509_crl(data)
    )
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


def revocation(
    server: Server, csr_pem: bytes, count: int, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Revocation rate over HTTP, then the time from one revocation to the CRL that lists it."""
    serials = []
    body = json.dumps({"csr": csr_pem.decode()}).encode()
    deadline = time.monotonic() + seconds
    while len(serials) < count + 1 and time.monotonic() < deadline:
        status, answer = _call("POST", server.port, "/api/v1/certificates", body, server.auth)
        if status not in (200, 201):
            return {"status": "error", "reason": f"issue: HTTP {status}: {answer[:300]!r}"}
        serials.append(_serial_of(answer))
    probe, batch = serials[0], serials[1:]
    reason = json.dumps({"reason": "keyCompromise"}).encode()
    requests = [
        Request("POST", f"/api/v1/certificates/{s}/revoke", reason, server.auth) for s in batch
    ]
    result = run_load(
        HOST, server.port, requests, concurrency=concurrency, max_requests=len(requests),
        max_seconds=seconds,
    )  # fmt: skip
    t0 = time.perf_counter()
    status, answer = _call(
        "POST", server.port, f"/api/v1/certificates/{probe}/revoke", reason, server.auth
    )
    if status not in (200, 201):
        return {"status": "error", "reason": f"revoke: HTTP {status}: {answer[:300]!r}"}
    visible = None
    while time.perf_counter() - t0 < 30:
        if _crl_has(server.port, probe):
            visible = time.perf_counter() - t0
            break
        time.sleep(0.01)
    return {
        "status": "ok",
        "revoke": result.summary(),
        "revocation_to_crl_s": round(visible, 3) if visible is not None else None,
    }


def crl_fetch(
    server: Server, concurrency: int, seconds: float, max_requests: int
) -> dict[str, Any]:
    """GET /ca/default/crl from the cache: req/s (the CRL was generated before)."""
    request = Request("GET", "/ca/default/crl")
    result = run_load(
        HOST, server.port, [request], concurrency=concurrency, max_requests=max_requests,
        max_seconds=seconds, ok_statuses=(200,),
    )  # fmt: skip
    return {"status": "ok", **result.summary()}


def lookups(
    server: Server, names: Sequence[str], serials: Sequence[str], seconds: float, count: int
) -> dict[str, Any]:
    """GET /api/v1/certificates?q= and /api/v1/certificates/{serial} at concurrency 1."""
    search = [Request("GET", f"/api/v1/certificates?q={n}", None, server.auth) for n in names]
    fetch = [Request("GET", f"/api/v1/certificates/{s}", None, server.auth) for s in serials]
    out: dict[str, Any] = {"status": "ok"}
    for label, reqs in (("search", search), ("fetch_by_serial", fetch)):
        result = run_load(
            HOST, server.port, reqs, concurrency=1, max_requests=count, max_seconds=seconds,
            ok_statuses=(200,),
        )  # fmt: skip
        out[label] = result.summary()
    return out


def http_family(
    kind: str,
    key_type: KeyType,
    db_url: str,
    data_dir: Path,
    csr_pem: bytes,
    *,
    concurrencies: Sequence[int],
    seconds: float,
    max_requests: int,
) -> dict[str, Any]:
    """HOOK: every HTTP scenario for one (database, CA key type) on a fresh store ``db_url``.

    Issuance from CSR at each concurrency for both key types; keygen issuance, revocation,
    revocation-to-CRL and CRL fetch on the ECDSA P-256 CA only (they do not depend on the key).
    """
    reason = api_absent_reason()
    if reason:
        return {"status": "absent", "reason": reason}
    new_ca(data_dir, db_url, key_type).db.dispose()
    out: dict[str, Any] = {"status": "ok", "db": kind, "key_type": key_type.value}
    with start_server(data_dir, db_url) as server:
        progress(f"http {kind} {key_type.value}: issuance from CSR")
        out["issue_csr"] = issuance(
            server, {"csr": csr_pem.decode()}, concurrencies, seconds, max_requests
        )
        if key_type is KeyType.ECDSA_P256:
            progress(f"http {kind}: server-side keygen issuance")
            keygen = {"common_name": LEAF_NAMES[0], "sans": list(LEAF_NAMES),
                      "key_type": "ecdsa-p256"}  # fmt: skip
            out["issue_keygen"] = issuance(
                server, keygen, [max(concurrencies)], seconds, max_requests
            )
            progress(f"http {kind}: revocation and revocation-to-CRL latency")
            out["revocation"] = revocation(server, csr_pem, 200, seconds, 8)
            progress(f"http {kind}: CRL fetch")
            out["crl_fetch"] = crl_fetch(server, max(concurrencies), seconds, max_requests)
    return out
