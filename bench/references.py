"""The reference figures every issuance number is read against.

(a) ``openssl speed``: raw sign/s of the CA key types; the hardware bound.
(b) the in-process ceiling: what one Python process does per second with ca-service's own
    ``parse_csr`` + policy ``check`` + ``sign_leaf`` (no HTTP, no DB). A server cannot beat it
    per worker, so ``figure / ceiling`` says how much HTTP and storage cost.
(c) CFSSL (``cfssl serve``, Go) driven by our load generator with the same CSR: the peer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bench.common import (
    LEAF_NAMES,
    bounded_loop,
    database_url,
    free_port,
    latency_summary,
    new_ca,
    progress,
    stop_process,
)
from bench.loadgen import Request, run_load, run_wrk
from ca_service.core.facade import Core
from ca_service.crypto.csr import parse_csr
from ca_service.domain import CallerPolicy, IssuanceRequest, KeyType
from ca_service.policy.check import AuthorityView, check
from ca_service.policy.names import NameConstraintsSpec
from ca_service.signing.serials import random_serial

# The directory with the CFSSL peer's setup_cfssl.sh and make_certdb.sh (not part of this
# repository); without it the CFSSL reference is reported absent.
_PEER = os.environ.get("CA_BENCH_CFSSL_PEER")
CFSSL_PEER = Path(_PEER) if _PEER else None


def openssl_speed(seconds: int) -> dict[str, Any]:
    """Single-core sign/s and verify/s from ``openssl speed`` (absent if openssl is missing)."""
    if shutil.which("openssl") is None:
        return {"status": "absent", "reason": "openssl CLI not installed"}
    proc = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256", "rsa2048"],
        capture_output=True,
        text=True,
        timeout=seconds * 8 + 60,
    )
    out: dict[str, Any] = {"status": "ok", "seconds_per_test": seconds}
    rsa = re.search(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", proc.stdout, re.M)
    ecdsa = re.search(
        r"^\s*256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", proc.stdout, re.M
    )
    if rsa:
        out["rsa2048_sign_per_s"] = float(rsa.group(1))
        out["rsa2048_verify_per_s"] = float(rsa.group(2))
    if ecdsa:
        out["ecdsap256_sign_per_s"] = float(ecdsa.group(1))
        out["ecdsap256_verify_per_s"] = float(ecdsa.group(2))
    if not (rsa and ecdsa):
        out["status"] = "error"
        out["raw"] = proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def inprocess_ceiling(
    csr_pem: bytes, key_types: Sequence[KeyType], max_count: int, max_seconds: float
) -> dict[str, Any]:
    """Certs/s of one process doing the product's CPU work for one issuance, per CA key type."""
    out: dict[str, Any] = {"status": "ok"}
    for key_type in key_types:
        with (
            tempfile.TemporaryDirectory(prefix="ca-bench-ceiling-") as tmp,
            database_url("sqlite", Path(tmp)) as url,
        ):
            ca = new_ca(Path(tmp) / "data", url, key_type)
            try:
                out[key_type.value] = _ceiling_of(ca, csr_pem, max_count, max_seconds)
            finally:
                ca.db.dispose()
    return out


def _ceiling_of(
    ca: Core, csr_pem: bytes, max_count: int, max_seconds: float
) -> dict[str, Any]:
    """parse_csr + policy check + signing + PEM: the product's own calls, without DB or HTTP."""
    name = ca.default_authority()
    signer = ca._registry.load(name).signer
    crl_url, issuers_url, ocsp_url = ca.urls(name)
    view = AuthorityView(
        name=name,
        not_after=signer.certificate.not_valid_after_utc,
        constraints=NameConstraintsSpec(),
        crl_url=crl_url,
        ca_issuers_url=issuers_url,
        ocsp_url=ocsp_url,
    )
    profiles = ca.settings.profiles
    caller = CallerPolicy.unrestricted()

    def one(_: int) -> None:
        parsed = parse_csr(csr_pem)
        request = IssuanceRequest(
            public_key=parsed.public_key,
            key_type=parsed.key_type,
            common_name=parsed.common_name,
            names=parsed.names,
        )
        now = dt.datetime.now(dt.UTC)
        template = check(request, profiles, view, caller, now, random_serial())
        signer.sign_certificate(template).public_bytes(Encoding.PEM)

    loop = bounded_loop(one, max_count, max_seconds, warmup=20)
    return {**loop.as_dict(), **latency_summary(loop.latencies)}


# ------------------------------------------------------------------------------------ CFSSL


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cfssl_setup(workdir: Path) -> str | None:
    """Run the peer's setup script in ``workdir``; None when ready, else why CFSSL is absent."""
    for tool in ("cfssl", "cfssljson", "sqlite3"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y golang-cfssl sqlite3)"
    if CFSSL_PEER is None:
        return "CA_BENCH_CFSSL_PEER is not set (the directory of setup_cfssl.sh, make_certdb.sh)"
    script = CFSSL_PEER / "setup_cfssl.sh"
    if not script.exists():
        return "setup_cfssl.sh not found in CA_BENCH_CFSSL_PEER"
    env = {**os.environ, "CFSSL_WORK": str(workdir)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"setup_cfssl.sh failed: {proc.stderr[-500:]}"
    return None


def cfssl_scenario(
    workdir: Path,
    csr_pem: bytes,
    configs: Sequence[tuple[str, str]],
    concurrencies: Sequence[int],
    seconds: float,
    max_requests: int,
    wrk_seconds: int,
) -> dict[str, Any]:
    """``cfssl serve`` per (algo, store) on a free loopback port, driven like ca-service is."""
    absent = cfssl_setup(workdir)
    if absent:
        return {"status": "absent", "reason": absent}
    body = json.dumps(
        {"certificate_request": csr_pem.decode(), "hosts": list(LEAF_NAMES), "profile": "server"}
    ).encode()
    request = Request("POST", "/api/v1/cfssl/sign", body, {"Content-Type": "application/json"})
    out: dict[str, Any] = {"status": "ok", "runs": {}}
    for algo, store in configs:
        tag = f"{algo}_{store}"
        progress(f"reference (c) CFSSL {tag}")
        argv = [
            "cfssl",
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port := free_port()),
            "-ca",
            f"ca-{algo}.pem",
            "-ca-key",
            f"ca-{algo}-key.pem",
            "-config",
            "config.json",
            "-loglevel",
            "4",
        ]
        if store == "sqlite":
            env = {**os.environ, "CFSSL_WORK": str(workdir)}
            assert CFSSL_PEER is not None  # checked by the setup
            subprocess.run(["bash", str(CFSSL_PEER / "make_certdb.sh")], env=env, check=True)
            argv += ["-db-config", "db-config.json"]
        log = (workdir / f"serve_{tag}.log").open("w")
        server = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            run: dict[str, Any] = {"check": _cfssl_check(port, body, workdir / f"ca-{algo}.pem")}
            run_load("127.0.0.1", port, [request], concurrency=4, max_requests=200, max_seconds=2)
            for c in concurrencies:
                cpu0, t0 = _cpu_seconds(server.pid), time.monotonic()
                result = run_load(
                    "127.0.0.1",
                    port,
                    [request],
                    concurrency=c,
                    max_requests=max_requests,
                    max_seconds=seconds,
                )
                cpu = (_cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
                run[f"c{c}"] = {**result.summary(), "server_cpu_cores": round(cpu, 2)}
            if wrk_seconds > 0:
                wrk = run_wrk(
                    "127.0.0.1",
                    port,
                    "/api/v1/cfssl/sign",
                    body,
                    concurrency=max(concurrencies),
                    seconds=wrk_seconds,
                )
                if wrk is not None:
                    run["wrk_cross_check"] = wrk
        finally:
            stop_process(server, grace=10)
            log.close()
        if store == "sqlite":
            # Counted after the server stopped: while it writes, the file is locked.
            rows = subprocess.run(
                ["sqlite3", str(workdir / "certs.db"), "select count(*) from certificates"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            run["rows_stored"] = int(rows or 0)
        out["runs"][tag] = run
    return out


def _cfssl_check(port: int, body: bytes, ca_pem: Path) -> str:
    """One answer must hold a certificate for our names that the CFSSL CA really signed."""
    deadline = time.monotonic() + 15
    while True:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/cfssl/sign",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (loopback only)
                answer = json.loads(resp.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    cert = x509.load_pem_x509_certificate(answer["result"]["certificate"].encode())
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(LEAF_NAMES)
    return "verified"
