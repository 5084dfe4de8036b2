"""The three journeys of the issue, end to end over a real gunicorn server.

A developer gets a certificate for a CSR and one with a key made by the service; a CI token made
by an admin gets a certificate inside its name policy and is refused outside it; an admin revokes
the CI certificate and the CRL at the URL inside the certificate makes openssl reject it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..helpers import csr_pem, make_key, openssl_verify, write
from ..live import (
    LiveServer,
    assert_problem,
    certificate_count,
    create_token,
    fetch_crl,
    issue,
    list_all,
)

PEM_CHAIN = "application/pem-certificate-chain"


def _public_der(key_or_cert: object) -> bytes:
    public = key_or_cert.public_key()  # type: ignore[attr-defined]
    return public.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verify(openssl: str, live: LiveServer, tmp: Path, leaf_pem: str, *extra: str) -> int:
    """openssl verify against the root and chain the server publishes; the return code."""
    root = live.request("GET", "/ca/root.pem")
    chain = live.request("GET", "/ca.pem")
    assert root.status == 200 and chain.status == 200
    code, _ = openssl_verify(
        openssl,
        write(tmp / "root.pem", root.body),
        write(tmp / "leaf.pem", leaf_pem),
        write(tmp / "chain.pem", chain.body),
        *extra,
    )
    return code


def test_developer_gets_a_certificate_for_a_csr(
    live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    dev, _ = create_token(live, "issuer", name="dev-alice", allowed_names=["*.dev.example.test"])
    key = make_key("p256")
    csr = csr_pem(key, "web.dev.example.test", ["web.dev.example.test"]).decode()
    reply = live.request(
        "POST", "/api/v1/certificates", token=dev, body={"csr": csr, "validity_days": 30}
    )
    assert reply.status == 201, reply.body
    data = reply.json
    assert "private_key" not in data
    assert data["status"] == "valid" and data["profile"] == "server"
    assert data["authority"] == "default"
    assert data["sans"] == ["dns:web.dev.example.test"]
    assert reply.headers["location"] == f"/api/v1/certificates/{data['serial']}"
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    assert _public_der(cert) == _public_der(key)
    assert format(cert.serial_number, "x") == data["serial"].lstrip("0").lower()
    # The ecosystem's convention (certbot, step): chain = the intermediates without the root,
    # fullchain = certificate + chain (what a server sends), root = the anchor above them.
    root_pem = live.request("GET", "/ca/root.pem").body.decode()
    (issuing,) = x509.load_pem_x509_certificates(data["chain"].encode())
    assert issuing.subject == cert.issuer and issuing.issuer != issuing.subject
    assert data["fullchain"] == data["certificate"] + data["chain"]
    assert data["root"] == root_pem
    assert _verify(openssl, live, tmp_path, data["certificate"]) == 0

    shown = live.request("GET", reply.headers["location"], token=dev)
    assert shown.status == 200
    assert shown.json["certificate"] == data["certificate"]
    for field in ("chain", "fullchain", "root"):
        assert shown.json[field] == data[field], field
    as_pem = live.request(
        "GET", reply.headers["location"], token=dev, headers={"Accept": PEM_CHAIN}
    )
    assert as_pem.status == 200 and as_pem.content_type == PEM_CHAIN
    assert as_pem.body.decode() == data["certificate"] + data["chain"]

    # The same CSR again, asking for the PEM chain itself.
    again = issue(live, dev, csr=csr, accept=PEM_CHAIN)
    assert again.content_type == PEM_CHAIN
    assert again.headers["location"].startswith("/api/v1/certificates/")
    assert b"PRIVATE KEY" not in again.body
    certs = x509.load_pem_x509_certificates(again.body)
    assert len(certs) == 2 and _public_der(certs[0]) == _public_der(key)
    assert certs[1].subject == certs[0].issuer and certs[1].issuer != certs[1].subject


def test_developer_gets_a_certificate_with_a_key_made_by_the_service(
    live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    dev, _ = create_token(live, "issuer", name="dev-bob", allowed_names=["*.dev.example.test"])
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=dev,
        body={
            "common_name": "api.dev.example.test",
            "sans": ["api.dev.example.test", "alt.dev.example.test"],
            "key_type": "rsa-2048",
        },
    )
    assert reply.status == 201, reply.body
    data = reply.json
    key = serialization.load_pem_private_key(data["private_key"].encode(), None)
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    assert _public_der(cert) == _public_der(key)
    assert data["key_type"] == "rsa-2048"
    assert set(data["sans"]) == {"dns:api.dev.example.test", "dns:alt.dev.example.test"}
    assert _verify(openssl, live, tmp_path, data["certificate"]) == 0
    # The key is shown once: the stored record never carries it.
    shown = live.request("GET", reply.headers["location"], token=dev)
    assert shown.status == 200 and "private_key" not in shown.json
    assert b"PRIVATE KEY" not in shown.body

    bundle = issue(live, dev, common_name="pem.dev.example.test", accept=PEM_CHAIN)
    assert bundle.content_type == "application/x-pem-file"
    key2 = serialization.load_pem_private_key(bundle.body, None)
    certs = x509.load_pem_x509_certificates(bundle.body)
    # Key, certificate and the intermediate: what a server is configured with, no root.
    assert len(certs) == 2 and _public_der(certs[0]) == _public_der(key2)


def test_ci_token_within_its_policy_then_revoked_and_rejected_by_openssl(
    live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    ci, ci_id = create_token(live, "issuer", name="ci-builds", allowed_names=["*.ci.example.test"])
    listed = live.request("GET", "/api/v1/tokens", token=live.admin_token)
    mine = [t for t in listed.json["items"] if t["id"] == ci_id]
    assert mine and mine[0]["policy"]["allowed_names"] == ["*.ci.example.test"]

    ok = issue(live, ci, common_name="build-7.ci.example.test")
    assert ok.json["requester"] == f"token:{ci_id}"
    ci_cert = ok.json["certificate"]

    before = certificate_count(live)
    refused = live.request(
        "POST", "/api/v1/certificates", token=ci, body={"common_name": "api.example.test"}
    )
    problem = assert_problem(refused, 403)
    assert problem["rule"] == "caller.allowed_names"
    assert "api.example.test" in problem["detail"]
    assert certificate_count(live) == before

    # A good certificate, to show that the same openssl command accepts what is not revoked.
    good = issue(live, ci, common_name="build-8.ci.example.test")

    revoked = live.request(
        "POST",
        f"/api/v1/certificates/{ok.json['serial']}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert revoked.status == 200, revoked.body
    assert revoked.json["status"] == "revoked"
    assert revoked.json["revocation_reason"] == "keyCompromise"

    # The CRL the certificate itself points at, fetched from that URL.
    cert = x509.load_pem_x509_certificate(ci_cert.encode())
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = cdp[0].full_name[0].value
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == live.base_url
    crl = fetch_crl(live, parts.path)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    good_serial = x509.load_pem_x509_certificate(good.json["certificate"].encode()).serial_number
    assert crl.get_revoked_certificate_by_serial_number(good_serial) is None

    crl_path = write(tmp_path / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    check = ("-crl_check", "-CRLfile", str(crl_path))
    assert _verify(openssl, live, tmp_path, ci_cert) == 0  # fine without the CRL
    assert _verify(openssl, live, tmp_path, ci_cert, *check) != 0
    assert _verify(openssl, live, tmp_path, good.json["certificate"], *check) == 0

    shown = live.request("GET", f"/api/v1/certificates/{ok.json['serial']}", token=ci)
    assert shown.json["status"] == "revoked"


def test_listing_filters_and_pagination(live: LiveServer) -> None:
    tag = "lst-" + format(len(list_all(live, "/api/v1/certificates")), "x")
    serials = [
        issue(live, common_name=f"{tag}-{i}.list.example.test", validity_days=10 + i).json["serial"]
        for i in range(5)
    ]
    revoke = live.request(
        "POST",
        f"/api/v1/certificates/{serials[0]}/revoke",
        token=live.admin_token,
        body={"reason": "superseded"},
    )
    assert revoke.status == 200
    reader, _ = create_token(live, "reader", name="lister")

    named = list_all(live, f"/api/v1/certificates?q={tag}", token=reader)
    assert [c["serial"] for c in named] == serials[::-1]  # newest first
    revoked = list_all(live, f"/api/v1/certificates?q={tag}&status=revoked", token=reader)
    assert [c["serial"] for c in revoked] == [serials[0]]
    valid = list_all(live, f"/api/v1/certificates?q={tag}&status=valid", token=reader)
    assert {c["serial"] for c in valid} == set(serials[1:])
    assert list_all(live, f"/api/v1/certificates?q={tag}&status=expired", token=reader) == []

    # expires_before: the ones with 10 and 11 days, not those with 12 days and more.
    cutoff = named[-1]["not_after"]  # serials[0], 10 days
    third = next(c for c in named if c["serial"] == serials[2])["not_after"]
    early = list_all(live, f"/api/v1/certificates?q={tag}&expires_before={third}", token=reader)
    assert {c["serial"] for c in early} == set(serials[:2]), (cutoff, third)

    assert len(list_all(live, f"/api/v1/certificates?q={tag}&authority=default")) == 5
    assert list_all(live, f"/api/v1/certificates?q={tag}&authority=default-root") == []

    # Pages of two, following next_cursor, give the same five once each.
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        url = f"/api/v1/certificates?q={tag}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = live.request("GET", url, token=reader).json
        assert len(page["items"]) <= 2
        seen += [c["serial"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == serials[::-1]
