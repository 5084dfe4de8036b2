"""CRLs and CA certificates as served, and the OpenAPI document as a contract.

Every CRL fetched here goes through ``fetch_crl``, which lints it with pkilint
(``lint_crl lint -t CRL -p PKIX -s WARNING``) and fails on any finding.
"""

from __future__ import annotations

import email.utils

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from openapi_spec_validator import validate

from ca_service.web.openapi import document

from ..live import SPEC, LiveServer, assert_problem, fetch_crl, issue
from ..live import crl_number as _crl_number
from ..live import revoke as _revoke


def test_openapi_document_is_valid_openapi_31(live: LiveServer) -> None:
    reply = live.request("GET", "/openapi.json")
    assert reply.status == 200 and reply.content_type == "application/json"
    served = reply.json
    assert served["openapi"].startswith("3.1")
    validate(served)  # raises on an invalid document
    assert served == document() == SPEC
    # Every documented error response is problem+json with the Problem schema.
    for ops in served["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                if int(status) >= 400 and "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    content = served["components"]["responses"][name]["content"]
                    assert content == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }


def test_docs_page_lists_every_operation(live: LiveServer) -> None:
    reply = live.request("GET", "/docs")
    assert reply.status == 200 and reply.content_type == "text/html"
    page = reply.body.decode()
    for path, ops in SPEC["paths"].items():
        assert f"<code>{path}</code>" in page
        for method in ops:
            assert f"<code>{method.upper()}</code>" in page


def test_ca_certificates_are_served_and_consistent(live: LiveServer) -> None:
    authorities = live.request("GET", "/api/v1/authorities", token=live.admin_token).json["items"]
    by_name = {a["name"]: a for a in authorities}
    default = next(a for a in authorities if a["is_default"])
    assert default["parent"] in by_name and by_name[default["parent"]]["is_root"]

    chain = live.request("GET", "/ca.pem")
    root = live.request("GET", "/ca/root.pem")
    named = live.request("GET", f"/ca/{default['name']}/chain.pem")
    der = live.request("GET", f"/ca/{default['name']}/ca.cer")
    for reply in (chain, root, named):
        assert reply.status == 200 and reply.content_type == "application/x-pem-file"
        assert "max-age" in reply.headers["cache-control"]
    assert der.status == 200 and der.content_type == "application/pkix-cert"
    assert chain.body == named.body
    issuing, top = x509.load_pem_x509_certificates(chain.body)
    (root_cert,) = x509.load_pem_x509_certificates(root.body)
    assert top == root_cert and root_cert.issuer == root_cert.subject
    assert x509.load_der_x509_certificate(der.body) == issuing
    issuing.verify_directly_issued_by(root_cert)
    assert issuing.subject.rfc4514_string() == default["subject"]

    # The root's own chain is itself alone.
    root_chain = live.request("GET", f"/ca/{default['parent']}/chain.pem")
    assert x509.load_pem_x509_certificates(root_chain.body) == [root_cert]


def test_every_authority_serves_a_signed_crl_in_der_and_pem(live: LiveServer) -> None:
    authorities = live.request("GET", "/api/v1/authorities", token=live.admin_token).json["items"]
    for authority in authorities:
        name = authority["name"]
        cert = x509.load_der_x509_certificate(live.request("GET", f"/ca/{name}/ca.cer").body)
        der = fetch_crl(live, f"/ca/{name}/crl")
        pem = fetch_crl(live, f"/ca/{name}/crl.pem")
        assert der == pem
        assert der.issuer == cert.subject
        assert der.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
        aki = der.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        if authority["is_default"]:
            assert fetch_crl(live, "/crl") == der
            assert fetch_crl(live, "/crl.pem") == der


def test_crl_caching_headers_and_304(live: LiveServer) -> None:
    crl = fetch_crl(live, "/crl")
    reply = live.request("GET", "/crl")
    etag = reply.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    modified = email.utils.parsedate_to_datetime(reply.headers["last-modified"])
    assert modified == crl.last_update_utc.replace(microsecond=0)
    expires = email.utils.parsedate_to_datetime(reply.headers["expires"])
    assert crl.next_update_utc is not None
    assert expires == crl.next_update_utc.replace(microsecond=0)
    directives = [d.strip() for d in reply.headers["cache-control"].split(",")]
    assert "public" in directives
    max_age = int(next(d for d in directives if d.startswith("max-age=")).split("=")[1])
    assert 0 <= max_age <= 300

    for tag in (etag, f"W/{etag}", f'"other", {etag}'):
        again = live.request("GET", "/crl", headers={"If-None-Match": tag})
        assert again.status == 304 and again.body == b""
        assert again.headers["etag"] == etag
    changed = live.request("GET", "/crl", headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200 and changed.body == reply.body
    # /crl.pem is another resource with the same validators: its own 304 works the same way.
    pem = live.request("GET", "/crl.pem")
    assert pem.status == 200 and pem.body.startswith(b"-----BEGIN X509 CRL")
    pem_again = live.request("GET", "/crl.pem", headers={"If-None-Match": pem.headers["etag"]})
    assert pem_again.status == 304


def test_each_revocation_publishes_a_new_crl(live: LiveServer) -> None:
    first = fetch_crl(live, "/crl")
    etag = live.request("GET", "/crl").headers["etag"]
    serials = [issue(live, common_name=f"crl{i}.example.test").json["serial"] for i in range(3)]
    numbers = [_crl_number(first)]
    seen: list[str] = []
    for serial, reason in zip(
        serials, ["keyCompromise", "superseded", "certificateHold"], strict=True
    ):
        _revoke(live, serial, reason)
        seen.append(serial)
        crl = fetch_crl(live, "/crl")
        numbers.append(_crl_number(crl))
        listed = {format(r.serial_number, "x") for r in crl}
        assert {s.lstrip("0").lower() for s in seen} <= listed
        entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
        assert entry is not None
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert (
            flag.name
            == {
                "keyCompromise": "key_compromise",
                "superseded": "superseded",
                "certificateHold": "certificate_hold",
            }[reason]
        )
    assert numbers == sorted(set(numbers)), numbers  # strictly increasing
    # The ETag of the first CRL no longer matches: a cache revalidating gets the new one.
    reply = live.request("GET", "/crl", headers={"If-None-Match": etag})
    assert reply.status == 200 and reply.headers["etag"] != etag
    # A revoked certificate is shown as such in the API too.
    shown = live.request("GET", f"/api/v1/certificates/{serials[0]}", token=live.admin_token)
    assert shown.json["status"] == "revoked"
    pem = x509.load_pem_x509_crl(live.request("GET", "/crl.pem").body)
    assert pem.public_bytes(serialization.Encoding.DER) == live.request("GET", "/crl").body


def test_api_answers_are_not_cacheable_but_ca_files_are(live: LiveServer) -> None:
    api = live.request("GET", "/api/v1/authorities", token=live.admin_token)
    assert api.headers["cache-control"] == "no-store"
    refused = live.request("GET", "/api/v1/authorities")
    assert_problem(refused, 401)
    assert refused.headers["cache-control"] == "no-store"
    assert "public" in live.request("GET", "/ca.pem").headers["cache-control"]
    assert live.request("GET", "/healthz").headers["x-content-type-options"] == "nosniff"


def test_unknown_url_is_a_problem(live: LiveServer) -> None:
    """Deliberately undocumented paths: the only requests here that skip the spec check."""
    for path in ("/nope", "/ca/default/nothing", "/api/v2/certificates"):
        reply = live.request("GET", path, check_spec=False)
        assert_problem(reply, 404)
