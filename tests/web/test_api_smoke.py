"""The HTTP API over a real gunicorn process: first start, issuance, revocation, CRL."""

from __future__ import annotations

from ..live import LiveServer


def test_first_start_issue_and_crl(live: LiveServer) -> None:
    health = live.request("GET", "/healthz")
    assert health.status == 200 and health.json["status"] == "ok"
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=live.admin_token,
        body={"common_name": "a.example.test"},
    )
    assert reply.status == 201, reply.body
    assert reply.headers["location"].endswith(reply.json["serial"])
    crl = live.request("GET", "/crl")
    assert crl.status == 200 and crl.content_type == "application/pkix-crl"
