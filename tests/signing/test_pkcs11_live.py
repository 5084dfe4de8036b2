"""Issue 16 items 2 and 3 on a real server: gunicorn with two workers signing through one
SoftHSM2 token concurrently, and the token failing under the running service (its directory
moved away: SoftHSM then fails every operation of every process) and coming back.

The server has a SoftHSM configuration and token directory of its own, so moving that
directory fails only this server's token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ..conftest import database, run
from ..live import LiveServer, assert_problem, fetch_crl, issue, server_tracebacks, start_server
from .softhsm import SoftHSM

OCSP_REQUEST = "application/ocsp-request"
REQUESTS = 24  # bounded: 8 client threads, 3 requests each
THREADS = 8


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hsm_live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, SoftHSM]]:
    base = tmp_path_factory.mktemp(f"hsm-live-{request.param}")
    hsm = SoftHSM.create(base / "softhsm")
    label = hsm.new_token()
    with database(request.param, base) as url:
        server = start_server(base / "data", url, workers=2, extra_env=hsm.env(label))
        try:
            yield server, hsm
        finally:
            server.stop()


def _chain(live: LiveServer) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(live.request("GET", "/ca.pem").body)


@pytest.mark.slow
def test_two_workers_issue_concurrently_through_the_token(
    hsm_live: tuple[LiveServer, SoftHSM], tmp_path: Path
) -> None:
    live, _ = hsm_live
    issuer = _chain(live)[0]

    def one(i: int) -> x509.Certificate:
        reply = issue(live, common_name=f"w{i}.hsm.example.test")
        return x509.load_pem_x509_certificate(reply.json["certificate"].encode())

    with ThreadPoolExecutor(THREADS) as pool:
        certs = list(pool.map(one, range(REQUESTS)))
    assert len({c.serial_number for c in certs}) == REQUESTS
    for cert in certs:
        cert.verify_directly_issued_by(issuer)  # raises if a signature is not the token key's
    crl = fetch_crl(live, "/crl")  # linted by pkilint inside fetch_crl
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]

    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issue(live, common_name="ocsp.hsm.example.test").json["certificate"])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(live.request("GET", "/ca.pem").body)
    inter = tmp_path / "inter.pem"
    inter.write_text(chain.read_text().split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    ))
    checked = run(
        ["openssl", "ocsp", "-issuer", str(inter), "-cert", str(leaf), "-CAfile", str(chain),
         "-url", f"{live.base_url}/ocsp"]
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ": good" in checked.stdout and "Response verify OK" in checked.stderr
    assert server_tracebacks(live) == 0


@pytest.mark.slow
def test_a_token_failure_is_503_and_the_service_recovers(
    hsm_live: tuple[LiveServer, SoftHSM],
) -> None:
    live, hsm = hsm_live
    before = x509.load_pem_x509_certificate(
        issue(live, common_name="before.hsm.example.test").json["certificate"].encode()
    )
    # With a nonce, an OCSP answer is signed for this request: no cached answer can serve it.
    ocsp_request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(before, _chain(live)[0], hashes.SHA256())
        .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    away = hsm.tokendir.with_name("tokens.away")
    hsm.tokendir.rename(away)
    try:
        # Every worker fails the same way: a few requests reach both.
        for i in range(4):
            reply = live.request(
                "POST",
                "/api/v1/certificates",
                token=live.admin_token,
                body={"common_name": f"during{i}.hsm.example.test"},
            )
            body = assert_problem(reply, 503)
            assert body["type"].endswith(":unavailable"), body
            assert "HSM" in body["detail"], body
            assert reply.headers.get("retry-after") == "2"
        for _ in range(2):
            reply = live.request(
                "POST", "/ocsp", raw=ocsp_request, headers={"Content-Type": OCSP_REQUEST}
            )
            assert "HSM" in assert_problem(reply, 503)["detail"]
    finally:
        away.rename(hsm.tokendir)
    # Back: the next request re-opens the token (each worker on its own), within a bound.
    recovered = 0
    deadline = time.monotonic() + 30
    for i in range(20):
        if time.monotonic() > deadline:
            break
        reply = live.request(
            "POST",
            "/api/v1/certificates",
            token=live.admin_token,
            body={"common_name": f"after{i}.hsm.example.test"},
        )
        assert reply.status in (201, 503), reply.body[:300]
        recovered = recovered + 1 if reply.status == 201 else 0
        if recovered >= 6:
            break
        time.sleep(0.2)
    assert recovered >= 6, "the service did not recover after the token came back"
    reply = live.request("POST", "/ocsp", raw=ocsp_request, headers={"Content-Type": OCSP_REQUEST})
    assert reply.status == 200
    assert ocsp.load_der_ocsp_response(reply.body).certificate_status is ocsp.OCSPCertStatus.GOOD
    log = live.log()
    assert server_tracebacks(live) == 0, log[-3000:]
    assert "PKCS#11 token" in log  # the operator's line names the token and the failure
