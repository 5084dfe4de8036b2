"""Structured logs through a real gunicorn (issue 14 item 5): with log_format = "json" every
line of the server's output (serve, gunicorn's error and access logs, the application) is one
JSON object; the access line of each request carries its request id, actor, action, outcome and
latency; X-Request-Id is taken only from a trusted proxy; and a whole session of secrets
(passphrase, tokens, a generated private key, refused credentials) leaves none in the log."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import database
from tests.live import LiveServer, assert_problem, create_token, issue, start_server

from .observability import json_lines, wait_for

PROXY = "127.0.0.2"  # the trusted proxy: a loopback address of its own
GENERATED = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp(f"logs-{request.param}")
    env = {"CA_LOG_FORMAT": "json", "CA_LOG_LEVEL": "INFO", "CA_TRUSTED_PROXIES": PROXY}
    with database(request.param, base) as url:
        server = start_server(base / "data", url, workers=2, extra_env=env)
        try:
            yield server
        finally:
            server.stop()


def _get(live: LiveServer, path: str, headers: dict[str, str], source: str) -> tuple[int, str]:
    """GET from a chosen loopback source address; (status, X-Request-Id of the answer)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", live.port, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Request-Id") or ""
    finally:
        conn.close()


def _access_line(live: LiveServer, request_id: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        for event in json_lines(live.log(), being_written=True):
            if event.get("logger") == "gunicorn.access" and event.get("request_id") == request_id:
                return event
        return None

    found = wait_for(find, f"the access line of request {request_id}", seconds=10)
    assert isinstance(found, dict)
    return found


def test_a_caller_elsewhere_cannot_choose_its_request_id(live: LiveServer) -> None:
    status, rid = _get(live, "/healthz", {"X-Request-Id": "chosen-by-client"}, "127.0.0.1")
    assert status == 200 and rid != "chosen-by-client" and GENERATED.match(rid)


def test_the_trusted_proxy_sets_the_request_id_if_well_formed(live: LiveServer) -> None:
    status, rid = _get(live, "/healthz", {"X-Request-Id": "lb-7f3a.2_x"}, PROXY)
    assert (status, rid) == (200, "lb-7f3a.2_x")
    assert _access_line(live, rid)["outcome"] == "ok"
    for bad in ("x" * 65, "has space", "semi;colon", ""):
        status, rid = _get(live, "/healthz", {"X-Request-Id": bad}, PROXY)
        assert status == 200 and rid != bad and GENERATED.match(rid), bad


def test_every_answer_has_a_request_id_that_its_access_line_repeats(live: LiveServer) -> None:
    for path, status in (("/healthz", 200), ("/ca.pem", 200), ("/nowhere", 404)):
        reply = live.request("GET", path, check_spec=status != 404)
        assert reply.status == status
        rid = reply.headers["x-request-id"]
        assert GENERATED.match(rid)
        line = _access_line(live, rid)
        assert line["status"] == status and line["path"] == path
        for key in ("time", "level", "actor", "action", "outcome", "latency_ms"):
            assert key in line, key
    refused = live.request("GET", "/api/v1/certificates", token="cas_0000000000000000_" + "B" * 43)
    body = assert_problem(refused, 401)
    assert body["request_id"] == refused.headers["x-request-id"]
    line = _access_line(live, body["request_id"])
    assert line["outcome"] == "refused" and line["status"] == 401


def test_the_access_line_names_the_authenticated_actor_and_action(live: LiveServer) -> None:
    reply = issue(live, common_name="actor.example.test")
    line = _access_line(live, reply.headers["x-request-id"])
    assert line["actor"] == reply.json["requester"]  # token:<id>, never the token
    assert line["action"] == "api.issue_certificate" and line["outcome"] == "ok"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0


def test_metrics_are_off_unless_enabled(live: LiveServer) -> None:
    assert_problem(live.request("GET", "/metrics"), 404)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr.example.test")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("csr.example.test")]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_a_whole_session_logs_no_secret_and_only_json(live: LiveServer) -> None:
    secrets: list[str] = []
    # A key made by the server, returned once.
    made = issue(live, common_name="key.example.test")
    assert "PRIVATE KEY" in made.json["private_key"]
    from_csr = issue(live, csr=_csr())
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{from_csr.json['serial']}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert reply.status == 200
    plain, token_id = create_token(
        live, "issuer", name="ci-logs", allowed_names=["*.ci.example.test"]
    )
    secrets.append(plain)
    secrets.append(plain.split("_", 2)[2])  # cas_<id>_<secret>
    issue(live, plain, common_name="b.ci.example.test")
    # A bad secret for a real token id, an unknown token, an unverifiable ID token.
    wrong = f"cas_{token_id}_" + "C" * 43
    fake_jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtc3ViIn0.c2lnbmF0dXJlLW5vdC1yZWFs"
    for credential in (wrong, "cas_ffffffffffffffff_" + "D" * 43, fake_jwt):
        assert_problem(live.request("GET", "/api/v1/certificates", token=credential), 401)
        secrets.append(credential)
    secrets.append("C" * 43)
    # ACME, cheap: over plain http its directory is refused (RFC 8555 6.1), and logged.
    acme = live.request("GET", "/acme/default/directory", check_spec=False)
    assert acme.status == 404 and b"https" in acme.body
    assert live.stop() == 0
    log = live.log()
    events = json_lines(log)  # every line is JSON
    assert any(e.get("logger") == "gunicorn.access" for e in events)
    assert any(e.get("logger") == "gunicorn.error" for e in events)
    assert any(e.get("logger") == "ca_service.serve" for e in events)
    assert live.env["CA_KEY_PASSPHRASE"] not in log
    assert "PRIVATE KEY" not in log and made.json["private_key"].splitlines()[1] not in log
    for secret in secrets:
        assert secret not in log, secret[:12]
    # The first admin token: in the one line that shows it, once, at first start.
    assert log.count(live.admin_token) == 1
    shown = [e for e in events if e.get("token") == live.admin_token]
    assert len(shown) == 1 and shown[0]["logger"] == "ca_service.serve"
    assert "Traceback" not in log
