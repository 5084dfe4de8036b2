"""Issue 14, the reproduction, live: two real gunicorn servers, each with a data directory of its
own, on one PostgreSQL schema (and, as a second run, one SQLite file outside both data dirs).

Before: `POST /ocsp` on the replica that had not made the OCSP responder answered 503 ("the
service is not ready", the log saying `cannot read key file .../keys/<name>-ocsp-<id>.key.pem`)
while /healthz said ok. Now both answer 200 with a good answer that `openssl ocsp` verifies, and
a revocation on one is in the other's OCSP answer and CRL within a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..conftest import database, run
from ..live import LiveServer, fetch_crl, issue, revoke, server_tracebacks, start_server

SEEN_WITHIN = 1.0  # seconds


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    base = tmp_path_factory.mktemp(f"replicas-{request.param}")
    with database(request.param, base) as url:
        a = start_server(base / "a" / "data", url, workers=2)
        try:
            b = start_server(base / "b" / "data", url, workers=2, admin_token=a.admin_token)
            try:
                yield a, b
            finally:
                assert b.stop() == 0
        finally:
            assert a.stop() == 0
        for server in (a, b):
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


@pytest.mark.slow  # two gunicorn servers per backend
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
    deadline = time.monotonic() + SEEN_WITHIN
    ocsp_status, listed = "", False
    for _ in range(100):
        ocsp_status = ocsp_status if ocsp_status == "revoked" else _openssl_ocsp(b, files, leaf)
        if not listed:
            crl = fetch_crl(b)
            listed = crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
        if (ocsp_status == "revoked" and listed) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert ocsp_status == "revoked"
    assert listed
    assert before.get_revoked_certificate_by_serial_number(int(serial, 16)) is None


def _request_der(directory: Path, files: dict[str, Path], leaf: Path) -> bytes:
    out = directory / "req.der"
    made = run(["openssl", "ocsp", "-issuer", str(files["issuer"]), "-cert", str(leaf),
                "-no_nonce", "-reqout", str(out)])  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out.read_bytes()
