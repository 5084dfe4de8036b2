"""Issue 14, the reproduction, live: two real gunicorn servers, each with a data directory of its
own, on one PostgreSQL schema (and, as a second run, one SQLite file outside both data dirs),
started together on an empty database.

Before: `POST /ocsp` on the replica that had not made the OCSP responder answered 503 ("the
service is not ready", the log saying `cannot read key file .../keys/<name>-ocsp-<id>.key.pem`)
while /healthz said ok. Now both answer 200 with a good answer that `openssl ocsp` verifies, and
a revocation on one is in the other's OCSP answer and CRL within a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..conftest import database, run
from ..live import LiveServer, fetch_crl, issue, revoke, server_tracebacks, start_server

SEEN_WITHIN = 1.0  # seconds


TOKEN = re.compile(r"cas_[a-z0-9]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two replicas started at the same moment on an empty database (item 4): both migrate,
    and one of them makes the CA and the first admin token, which both then use."""
    base = tmp_path_factory.mktemp(f"replicas-{request.param}")
    with database(request.param, base) as url, ThreadPoolExecutor(2) as pool:
        starting = [
            pool.submit(start_server, base / n / "data", url, workers=2, admin_token="")
            for n in ("a", "b")
        ]
        servers = [f.result() for f in starting if f.exception() is None]
        try:
            assert len(servers) == 2, [str(f.exception()) for f in starting]
            logs = [s.log() for s in servers]
            assert sum("first start: creating" in log for log in logs) == 1, logs
            tokens = [t for log in logs for t in TOKEN.findall(log)]
            assert len(tokens) == 1, logs
            for server in servers:
                server.admin_token = tokens[0]
            yield servers[0], servers[1]
        finally:
            for server in servers:
                assert server.stop() == 0
        for server in servers:
            assert server_tracebacks(server) == 0, server.log()
            assert "cannot read key file" not in server.log()
            assert "PRIVATE KEY" not in server.log()
            assert server.env["CA_KEY_PASSPHRASE"] not in server.log()


def _openssl_ocsp(server: LiveServer, files: dict[str, Path], leaf: Path) -> str:
    """What `openssl ocsp` says of ``leaf`` at ``server``, the answer verified against the
    chain; a failure (a 503, an answer that does not verify) fails the test."""
    result = run(
        ["openssl", "ocsp", "-issuer", str(files["issuer"]), "-cert", str(leaf),
         "-url", f"{server.base_url}/ocsp", "-CAfile", str(files["chain"]), "-no_nonce"]
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Response verify OK" in out, out
    return result.stdout.split(f"{leaf}:", 1)[1].split()[0]


def _files(server: LiveServer, directory: Path) -> dict[str, Path]:
    chain = server.request("GET", "/ca.pem").body
    issuer = x509.load_pem_x509_certificates(chain)[0]
    files = {"issuer": directory / "issuer.pem", "chain": directory / "chain.pem"}
    files["issuer"].write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    files["chain"].write_bytes(chain)
    return files


def test_both_replicas_answer_ocsp_and_show_a_revocation_within_a_second(
    replicas: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    a, b = replicas
    files = _files(a, tmp_path)
    assert b.request("GET", "/ca.pem").body == files["chain"].read_bytes()
    # One leaf from each replica: B signs with the CA key A made, read from the database.
    leaves = {}
    for name, server in (("from-a", a), ("from-b", b)):
        reply = issue(server, common_name=f"{name}.replicas.example.test")
        leaves[name] = (tmp_path / f"{name}.pem", reply.json["serial"])
        leaves[name][0].write_text(reply.json["certificate"])
    # A makes the responder at its first answer; B signs with that same responder.
    for leaf, _ in leaves.values():
        assert _openssl_ocsp(a, files, leaf) == "good"
        assert _openssl_ocsp(b, files, leaf) == "good"
    answer = b.request("POST", "/ocsp", raw=_request_der(tmp_path, files, leaves["from-a"][0]),
                       headers={"Content-Type": "application/ocsp-request"})  # fmt: skip
    assert answer.status == 200 and answer.content_type == "application/ocsp-response"

    leaf, serial = leaves["from-b"]
    before = fetch_crl(b)  # B's app holds this CRL in memory now
    revoke(a, serial)
    revoked_at = time.monotonic()
    # Every probe SENT a second or more after the revocation must see it (the bound is on the
    # caches, not on how fast a loaded machine answers); poll, bounded in count and time.
    late: list[tuple[str, float]] = []
    ocsp_status, listed = "", False
    for _ in range(100):
        if ocsp_status != "revoked":
            sent = time.monotonic() - revoked_at
            ocsp_status = _openssl_ocsp(b, files, leaf)
            if ocsp_status != "revoked" and sent >= SEEN_WITHIN:
                late.append(("ocsp", round(sent, 3)))
        if not listed:
            sent = time.monotonic() - revoked_at
            crl = fetch_crl(b)
            listed = crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
            if not listed and sent >= SEEN_WITHIN:
                late.append(("crl", round(sent, 3)))
        if (ocsp_status == "revoked" and listed) or time.monotonic() - revoked_at > 20:
            break
        time.sleep(0.05)
    assert late == [], f"not seen by probes sent this late after the revocation: {late}"
    assert ocsp_status == "revoked"
    assert listed
    assert before.get_revoked_certificate_by_serial_number(int(serial, 16)) is None


def _request_der(directory: Path, files: dict[str, Path], leaf: Path) -> bytes:
    out = directory / "req.der"
    made = run(["openssl", "ocsp", "-issuer", str(files["issuer"]), "-cert", str(leaf),
                "-no_nonce", "-reqout", str(out)])  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out.read_bytes()
