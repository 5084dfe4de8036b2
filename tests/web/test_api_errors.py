"""Every kind of bad request gets an RFC 9457 problem with the right status, and writes nothing.

For each case: the status, application/problem+json with type/title/status/detail, no stack
trace in the body or in the server log, and the certificate and token counts unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..helpers import csr_pem, make_key
from ..live import (
    LiveServer,
    assert_problem,
    certificate_count,
    create_token,
    issue,
    server_tracebacks,
)

CERTS = "/api/v1/certificates"
UNKNOWN_SERIAL = "7f" + "0" * 38


@dataclass
class Case:
    id: str
    method: str
    path: str
    status: int
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token: str = "admin"  # "admin", "issuer", "none", or a literal Authorization header
    rule: str | None = None
    detail: str | None = None  # a substring the detail must contain
    documented: bool = True


JSON = {"Content-Type": "application/json"}
BIG = json.dumps({"common_name": "big.example.test", "sans": ["x" * 70_000]}).encode()

CASES = [
    # Malformed bodies.
    Case("malformed-json", "POST", CERTS, 400, raw=b'{"common_name": ', headers=JSON),
    Case("json-not-object", "POST", CERTS, 400, raw=b'["a.example.test"]', headers=JSON),
    Case("json-bare-string", "POST", "/api/v1/tokens", 400, raw=b'"x"', headers=JSON),
    Case(
        "not-utf8",
        "POST",
        CERTS,
        400,
        raw=b'{"common_name": "\xff\xfe"}',
        headers=JSON,
    ),
    Case(
        "wrong-content-type",
        "POST",
        CERTS,
        415,
        raw=b'{"common_name": "a.example.test"}',
        headers={"Content-Type": "text/plain"},
    ),
    Case("too-large", "POST", CERTS, 413, raw=BIG, headers=JSON, detail="65536"),
    Case("too-large-token", "POST", "/api/v1/tokens", 413, raw=BIG, headers=JSON),
    Case(
        "too-large-revoke", "POST", f"{CERTS}/{UNKNOWN_SERIAL}/revoke", 413, raw=BIG, headers=JSON
    ),
    # Missing and wrong-typed fields.
    Case("empty-issue", "POST", CERTS, 400, body={}),
    Case("unknown-field", "POST", CERTS, 400, body={"cn": "a.example.test"}, detail="cn"),
    Case("cn-number", "POST", CERTS, 400, body={"common_name": 5}, detail="common_name"),
    Case("sans-string", "POST", CERTS, 400, body={"sans": "a.example.test"}, detail="sans"),
    Case("sans-numbers", "POST", CERTS, 400, body={"sans": [1, 2]}, detail="sans"),
    Case(
        "validity-string",
        "POST",
        CERTS,
        400,
        body={"common_name": "a.example.test", "validity_days": "30"},
        detail="validity_days",
    ),
    Case(
        "validity-bool",
        "POST",
        CERTS,
        400,
        body={"common_name": "a.example.test", "validity_days": True},
        detail="validity_days",
    ),
    Case(
        "validity-float",
        "POST",
        CERTS,
        400,
        body={"common_name": "a.example.test", "validity_days": 1.5},
    ),
    Case(
        "bad-key-type",
        "POST",
        CERTS,
        400,
        body={"common_name": "a.example.test", "key_type": "dsa-1024"},
    ),
    Case("bad-csr", "POST", CERTS, 400, body={"csr": "-----BEGIN CERTIFICATE REQUEST-----\nxx"}),
    Case("bad-name", "POST", CERTS, 400, body={"sans": ["a..example.test"]}),
    Case("token-no-role", "POST", "/api/v1/tokens", 400, body={"name": "x"}, detail="role"),
    Case("token-no-body", "POST", "/api/v1/tokens", 400, raw=b"", headers=JSON),
    Case("token-bad-role", "POST", "/api/v1/tokens", 400, body={"name": "x", "role": "root"}),
    Case(
        "token-issuer-without-names",
        "POST",
        "/api/v1/tokens",
        400,
        body={"name": "x", "role": "issuer"},
    ),
    Case(
        "token-bad-pattern",
        "POST",
        "/api/v1/tokens",
        400,
        body={"name": "x", "role": "issuer", "allowed_names": ["a..example.test"]},
    ),
    Case(
        "token-unknown-profile",
        "POST",
        "/api/v1/tokens",
        400,
        body={"name": "x", "role": "issuer", "allowed_names": ["a.test"], "profiles": ["nope"]},
    ),
    Case(
        "token-expiry-range",
        "POST",
        "/api/v1/tokens",
        400,
        body={"name": "x", "role": "reader", "expires_in_days": 0},
    ),
    Case("serial-not-hex", "GET", f"{CERTS}/zz", 400),
    Case("serial-too-long", "GET", f"{CERTS}/{'0' * 200}", 400),
    Case("revoke-serial-not-hex", "POST", f"{CERTS}/zz/revoke", 400, body={}),
    Case(
        "validity-zero",
        "POST",
        CERTS,
        400,
        body={"common_name": "a.example.test", "validity_days": 0},
        detail="validity_days",
    ),
    Case(
        "unknown-profile",
        "POST",
        CERTS,
        403,
        body={"common_name": "a.example.test", "profile": "nope"},
        rule="profile.unknown",
    ),
    Case("revoke-bad-reason", "POST", "{serial}/revoke", 400, body={"reason": "lost"}),
    Case("revoke-reason-number", "POST", "{serial}/revoke", 400, body={"reason": 1}),
    # Query parameters.
    Case("list-bad-status", "GET", f"{CERTS}?status=gone", 400),
    Case("list-bad-cursor", "GET", f"{CERTS}?cursor=!!!", 400),
    Case("list-bad-limit", "GET", f"{CERTS}?limit=0", 400),
    Case("list-limit-text", "GET", f"{CERTS}?limit=ten", 400),
    Case("list-bad-time", "GET", f"{CERTS}?expires_before=tomorrow", 400),
    Case("list-long-q", "GET", f"{CERTS}?q={'a' * 300}", 400),
    Case("audit-bad-cursor", "GET", "/api/v1/audit?cursor=-1", 400),
    # Things that do not exist.
    Case("unknown-serial", "GET", f"{CERTS}/{UNKNOWN_SERIAL}", 404),
    Case("unknown-serial-revoke", "POST", f"{CERTS}/{UNKNOWN_SERIAL}/revoke", 404, body={}),
    Case("unknown-token", "DELETE", "/api/v1/tokens/0000000000000000", 404),
    Case("unknown-authority-crl", "GET", "/ca/nope/crl", 404),
    Case("unknown-authority-chain", "GET", "/ca/nope/chain.pem", 404),
    Case("unknown-authority-cer", "GET", "/ca/nope/ca.cer", 404),
    Case(
        "unknown-authority-issue",
        "POST",
        CERTS,
        404,
        body={"common_name": "a.example.test", "authority": "nope"},
    ),
    Case("unknown-url", "GET", "/api/v1/nothing-here", 404, documented=False),
    Case("wrong-method", "PUT", CERTS, 405, body={}, documented=False),
    # Policy refusals name their rule.
    Case(
        "validity-too-long",
        "POST",
        CERTS,
        403,
        body={"common_name": "a.example.test", "validity_days": 5000},
        rule="profile.max_validity",
    ),
    Case(
        "issue-from-root",
        "POST",
        CERTS,
        403,
        body={"common_name": "a.example.test", "authority": "default-root"},
        rule="authority.is_root",
    ),
    Case(
        "issuer-outside-names",
        "POST",
        CERTS,
        403,
        body={"common_name": "api.example.test"},
        token="issuer",
        rule="caller.allowed_names",
    ),
    Case(
        "issuer-too-long",
        "POST",
        CERTS,
        403,
        body={"common_name": "a.err.example.test", "validity_days": 60},
        token="issuer",
        rule="caller.max_validity",
    ),
    Case(
        "issuer-profile",
        "POST",
        CERTS,
        403,
        body={"common_name": "a.err.example.test", "profile": "client"},
        token="issuer",
        rule="caller.profiles",
    ),
    # Bad credentials.
    Case("basic-auth", "GET", CERTS, 401, token="Basic dXNlcjpwYXNz"),
    Case("bearer-empty", "GET", CERTS, 401, token="Bearer "),
    Case("no-token", "POST", CERTS, 401, body={"common_name": "a.example.test"}, token="none"),
    Case(
        "issuer-makes-token",
        "POST",
        "/api/v1/tokens",
        403,
        body={"name": "x", "role": "admin"},
        token="issuer",
    ),
]


@pytest.fixture(scope="module")
def setup(live: LiveServer) -> dict[str, str]:
    issuer, _ = create_token(
        live,
        "issuer",
        name="errors-issuer",
        allowed_names=["*.err.example.test"],
        max_validity_days=30,
        profiles=["server"],
    )
    serial = issue(live, common_name="target.example.test").json["serial"]
    return {"issuer": issuer, "serial": serial}


def _token_count(live: LiveServer) -> int:
    return len(live.request("GET", "/api/v1/tokens", token=live.admin_token).json["items"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_is_a_problem_and_writes_nothing(
    live: LiveServer, setup: dict[str, str], case: Case
) -> None:
    path = case.path.replace("{serial}", f"{CERTS}/{setup['serial']}")
    headers = dict(case.headers)
    token: str | None = None
    if case.token == "admin":
        token = live.admin_token
    elif case.token == "issuer":
        token = setup["issuer"]
    elif case.token != "none":
        headers["Authorization"] = case.token
    before = (certificate_count(live), _token_count(live), server_tracebacks(live))
    reply = live.request(
        case.method,
        path,
        token=token,
        body=case.body,
        raw=case.raw,
        headers=headers,
        check_spec=case.documented,
    )
    problem = assert_problem(reply, case.status)
    if case.rule:
        assert problem.get("rule") == case.rule
        assert case.rule in problem["detail"]
    if case.detail:
        assert case.detail in problem["detail"]
    assert problem.get("request_id") == reply.headers["x-request-id"]
    assert (certificate_count(live), _token_count(live), server_tracebacks(live)) == before


def test_problem_echoes_the_request_id(live: LiveServer) -> None:
    reply = live.request(
        "GET",
        f"{CERTS}/{UNKNOWN_SERIAL}",
        token=live.admin_token,
        headers={"X-Request-Id": "err-req-0001"},
    )
    assert assert_problem(reply, 404)["request_id"] == "err-req-0001"
    assert reply.headers["x-request-id"] == "err-req-0001"


def test_conflicting_revocation_is_409_and_the_first_reason_stays(live: LiveServer) -> None:
    serial = issue(live, common_name="conflict.example.test").json["serial"]
    url = f"{CERTS}/{serial}/revoke"
    first = live.request("POST", url, token=live.admin_token, body={"reason": "keyCompromise"})
    assert first.status == 200 and first.json["revocation_reason"] == "keyCompromise"
    again = live.request("POST", url, token=live.admin_token, body={"reason": "keyCompromise"})
    assert again.status == 200 and again.json["revoked_at"] == first.json["revoked_at"]
    other = live.request("POST", url, token=live.admin_token, body={"reason": "superseded"})
    assert "keyCompromise" in assert_problem(other, 409)["detail"]
    shown = live.request("GET", f"{CERTS}/{serial}", token=live.admin_token)
    assert shown.json["revocation_reason"] == "keyCompromise"
    assert shown.json["revoked_at"] == first.json["revoked_at"]


def test_csr_with_other_fields_is_refused(live: LiveServer) -> None:
    before = certificate_count(live)
    csr = csr_pem(make_key("p256"), "csr.example.test").decode()
    reply = live.request(
        "POST",
        CERTS,
        token=live.admin_token,
        body={"csr": csr, "common_name": "other.example.test"},
    )
    assert "csr" in assert_problem(reply, 400)["detail"]
    assert certificate_count(live) == before


def test_the_server_log_has_no_traceback(live: LiveServer) -> None:
    """Runs after the cases above in this module: none of them made the server log a trace."""
    assert server_tracebacks(live) == 0, live.log()[-3000:]
