"""The OCSP responder over a real gunicorn server, checked with `openssl ocsp` and pkilint."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca_service.clock import FixedClock
from ca_service.crypto.ocsp_wire import parse_request
from ca_service.domain import RevocationReason

from ..conftest import ADMIN, make_settings, new_ca, run
from ..live import LiveServer, assert_problem, issue

LINT_OCSP = Path(sys.executable).parent / "lint_ocsp_response"
LINT_CERT = Path(sys.executable).parent / "lint_pkix_cert"
OCSP_REQ = {"Content-Type": "application/ocsp-request"}


@pytest.fixture(scope="module")
def pki(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files for the openssl client: issuing CA, root, chain bundle, and two leaves."""
    d = tmp_path_factory.mktemp("ocsp")
    chain = live.request("GET", "/ca.pem").body
    certs = x509.load_pem_x509_certificates(chain)
    files = {
        "issuer": d / "issuer.pem",
        "root": d / "root.pem",
        "chain": d / "chain.pem",
    }
    files["issuer"].write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    files["root"].write_bytes(certs[-1].public_bytes(serialization.Encoding.PEM))
    files["chain"].write_bytes(chain)
    return files


def _leaf(live: LiveServer, directory: Path, name: str) -> tuple[Path, str]:
    reply = issue(live, common_name=f"{name}.ocsp.example.test")
    path = directory / f"{name}.pem"
    path.write_text(reply.json["certificate"])
    return path, reply.json["serial"]


def _openssl_ocsp(
    live: LiveServer, pki: dict[str, Path], *args: str
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(pki["issuer"]),
            "-url",
            f"{live.base_url}/ocsp",
            "-CAfile",
            str(pki["chain"]),
            *args,
        ]
    )


def _lint(der: bytes, path: Path) -> None:
    path.write_bytes(der)
    result = run([str(LINT_OCSP), "lint", "-s", "WARNING", str(path)])
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_good_then_revoked_with_reason_and_unknown(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    leaf, serial = _leaf(live, tmp_path, "journey")
    out = tmp_path / "r1.der"
    first = _openssl_ocsp(live, pki, "-cert", str(leaf), "-respout", str(out))
    assert first.returncode == 0, first.stderr
    assert "Response verify OK" in first.stderr + first.stdout
    assert f"{leaf}: good" in first.stdout
    _lint(out.read_bytes(), tmp_path / "lint1.der")

    reply = live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert reply.status == 200
    # Several asks: with 2 gunicorn workers each must see the revocation at once.
    for i in range(4):
        after = _openssl_ocsp(live, pki, "-cert", str(leaf), "-no_nonce", "-respout", str(out))
        assert f"{leaf}: revoked" in after.stdout, (i, after.stdout, after.stderr)
        assert "Reason: keyCompromise" in after.stdout
        assert "Response verify OK" in after.stderr + after.stdout
    _lint(out.read_bytes(), tmp_path / "lint2.der")

    unknown = _openssl_ocsp(live, pki, "-serial", "0x1234567890abcdef1234", "-respout", str(out))
    assert "0x1234567890abcdef1234: unknown" in unknown.stdout, unknown.stdout + unknown.stderr
    _lint(out.read_bytes(), tmp_path / "lint3.der")


def test_several_certificates_in_one_request_with_sha256(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    a, _ = _leaf(live, tmp_path, "multi-a")
    b, serial_b = _leaf(live, tmp_path, "multi-b")
    live.request(
        "POST",
        f"/api/v1/certificates/{serial_b}/revoke",
        token=live.admin_token,
        body={"reason": "superseded"},
    )
    out = tmp_path / "multi.der"
    result = _openssl_ocsp(
        live, pki, "-sha256", "-cert", str(a), "-cert", str(b), "-respout", str(out)
    )
    assert f"{a}: good" in result.stdout and f"{b}: revoked" in result.stdout, result.stdout
    assert "Reason: superseded" in result.stdout
    assert "Response verify OK" in result.stderr + result.stdout
    _lint(out.read_bytes(), tmp_path / "lint-multi.der")
    text = run(["openssl", "ocsp", "-respin", str(out), "-resp_text", "-noverify"]).stdout
    assert text.count("Hash Algorithm: sha256") == 2


def test_responder_certificate_is_delegated_and_lints_clean(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    leaf, _ = _leaf(live, tmp_path, "responder")
    out = tmp_path / "resp.der"
    _openssl_ocsp(live, pki, "-cert", str(leaf), "-respout", str(out))
    response = ocsp.load_der_ocsp_response(out.read_bytes())
    assert len(response.certificates) == 1
    responder = response.certificates[0]
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    life = responder.not_valid_after_utc - responder.not_valid_before_utc
    assert life <= dt.timedelta(days=8)
    issuer = x509.load_pem_x509_certificate(pki["issuer"].read_bytes())
    responder.verify_directly_issued_by(issuer)
    pem = tmp_path / "responder.pem"
    pem.write_bytes(responder.public_bytes(serialization.Encoding.PEM))
    result = run([str(LINT_CERT), "lint", "-s", "WARNING", str(pem)])
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout


def _request_der(
    cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 (CertID)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_nonce_is_echoed_and_limits_enforced(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    leaf, _ = _leaf(live, tmp_path, "nonce")
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    issuer = x509.load_pem_x509_certificate(pki["issuer"].read_bytes())
    nonce = b"\x01" * 32
    reply = live.request("POST", "/ocsp", raw=_request_der(cert, issuer, nonce), headers=OCSP_REQ)
    assert reply.status == 200 and reply.content_type == "application/ocsp-response"
    answer = ocsp.load_der_ocsp_response(reply.body)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert echoed == nonce
    assert "no-store" in reply.headers["cache-control"]  # an answer to a nonce is for one client

    for bad in (b"", b"\x02" * 33):  # RFC 8954: 1 to 32 octets
        reply = live.request("POST", "/ocsp", raw=_request_der(cert, issuer, bad), headers=OCSP_REQ)
        assert reply.status == 200
        status = ocsp.load_der_ocsp_response(reply.body).response_status
        assert status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, len(bad)


def test_get_is_cacheable_until_next_update(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    leaf, _ = _leaf(live, tmp_path, "get")
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    issuer = x509.load_pem_x509_certificate(pki["issuer"].read_bytes())
    encoded = urllib.parse.quote(base64.b64encode(_request_der(cert, issuer)).decode(), safe="")
    reply = live.request("GET", f"/ocsp/{encoded}")
    assert reply.status == 200
    answer = ocsp.load_der_ocsp_response(reply.body)
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.next_update_utc is not None and answer.this_update_utc < answer.next_update_utc
    max_age = int(reply.headers["cache-control"].split("max-age=")[1].split(",")[0])
    remaining = (answer.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < max_age <= remaining + 5
    assert "public" in reply.headers["cache-control"]
    assert reply.headers["expires"] and reply.headers["last-modified"] and reply.headers["etag"]
    # Each worker signs once and then serves its cached answer: with 2 workers, 6 asks give at
    # most 2 distinct answers (ECDSA signatures differ every time, so re-signing would show).
    bodies = {live.request("GET", f"/ocsp/{encoded}").body for _ in range(6)} | {reply.body}
    assert len(bodies) <= 2


def test_bad_requests_get_ocsp_or_http_errors(
    live: LiveServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    for body in (b"garbage", b"\x30\x03\x02\x01\x01", b""):
        reply = live.request("POST", "/ocsp", raw=body, headers=OCSP_REQ)
        assert reply.status == 200, body
        status = ocsp.load_der_ocsp_response(reply.body).response_status
        assert status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST

    reply = live.request("GET", "/ocsp/not*base64!")
    assert reply.status == 200
    assert (
        ocsp.load_der_ocsp_response(reply.body).response_status
        is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )

    assert_problem(
        live.request("POST", "/ocsp", raw=b"x", headers={"Content-Type": "text/plain"}), 415
    )
    assert_problem(live.request("POST", "/ocsp", raw=b"\x30" * 20000, headers=OCSP_REQ), 413)

    # A certificate of another CA: this responder is not authorized to answer for it.
    other = new_ca(make_settings(tmp_path, f"sqlite:///{tmp_path / 'other.db'}"))
    foreign = other.issue_with_new_key(ADMIN, common_name="foreign.example.test")
    cert = x509.load_pem_x509_certificate(foreign.certificate_pem.encode())
    foreign_issuer = other.authority_certificate()
    reply = live.request("POST", "/ocsp", raw=_request_der(cert, foreign_issuer), headers=OCSP_REQ)
    assert (
        ocsp.load_der_ocsp_response(reply.body).response_status
        is ocsp.OCSPResponseStatus.UNAUTHORIZED
    )
    assert "Traceback" not in live.log()


# ---------------------------------------------------------------------------- in-process, no HTTP


def test_ca_key_signing_and_responder_rotation(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}")
    ca = new_ca(settings)
    ca.clock = clock
    issued = ca.issue_with_new_key(ADMIN, common_name="rot.example.test")
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    issuer = ca.authority_certificate()
    request = _request_der(cert, issuer)

    first = ocsp.load_der_ocsp_response(ca.answer_ocsp(request).der)
    serial_1 = first.certificates[0].serial_number
    clock.advance(dt.timedelta(days=4))  # under two thirds of a 7-day responder
    same = ocsp.load_der_ocsp_response(ca.answer_ocsp(request).der)
    assert same.certificates[0].serial_number == serial_1
    clock.advance(dt.timedelta(days=1))  # past two thirds: a new responder is issued
    rotated = ocsp.load_der_ocsp_response(ca.answer_ocsp(request).der)
    assert rotated.certificates[0].serial_number != serial_1
    assert rotated.certificates[0].not_valid_before_utc > first.certificates[0].not_valid_before_utc

    # The revocation is visible in the next answer even though one was cached.
    ca.revoke(issued.record.serial, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    held = ocsp.load_der_ocsp_response(ca.answer_ocsp(request).der)
    assert held.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert held.revocation_reason is x509.ReasonFlags.certificate_hold

    direct = new_ca(
        settings.with_overrides(
            ocsp_sign_with_ca=True,
            data_dir=tmp_path / "d2",
            database_url=f"sqlite:///{tmp_path / 'd2.db'}",
        )
    )
    leaf = direct.issue_with_new_key(ADMIN, common_name="direct.example.test")
    leaf_cert = x509.load_pem_x509_certificate(leaf.certificate_pem.encode())
    ca_cert = direct.authority_certificate()
    answer = ocsp.load_der_ocsp_response(
        direct.answer_ocsp(_request_der(leaf_cert, ca_cert)).der
    )
    assert answer.certificates == []  # signed by the CA itself: no delegated certificate
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


def test_request_parser_reads_several_certificates(tmp_path: Path) -> None:
    ca = new_ca(make_settings(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}"))
    issued = [ca.issue_with_new_key(ADMIN, common_name=f"p{i}.example.test") for i in range(2)]
    issuer = tmp_path / "issuer.pem"
    issuer.write_text(ca.chain_pem()[0])
    args = ["openssl", "ocsp", "-issuer", str(issuer), "-reqout", str(tmp_path / "req.der")]
    for i, item in enumerate(issued):
        path = tmp_path / f"c{i}.pem"
        path.write_text(item.certificate_pem)
        args += ["-cert", str(path)]
    assert run(args).returncode == 0
    parsed = parse_request((tmp_path / "req.der").read_bytes())
    assert [r.serial for r in parsed.refs] == [int(i.record.serial, 16) for i in issued]
    assert parsed.nonce_extension_der is not None
