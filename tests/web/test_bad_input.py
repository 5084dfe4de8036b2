"""Issue 9 item 5: input that used to answer 500 with a traceback in the server log.

Each reproduction from the issue, sent by the least-privileged caller the issue names, to a real
gunicorn server on SQLite and on PostgreSQL: a 4xx problem+json (documented in the OpenAPI
document, which the client checks), no certificate, token or audit row written, and no
"Traceback" in the server log. On the old code: RecursionError (deep nesting),
UnicodeEncodeError (lone surrogates), an integer overflow in the driver (the cursor), DataError on
PostgreSQL (NUL bytes; on SQLite the NUL token name was stored), InvalidVersion (the CSR).
"""

from __future__ import annotations

import base64
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ..helpers import csr_der
from ..live import (
    PROBLEM_JSON,
    LiveServer,
    assert_problem,
    certificate_count,
    create_token,
    db_engine,
    server_tracebacks,
)

CERTS = "/api/v1/certificates"
TOKENS = "/api/v1/tokens"
JSON = {"Content-Type": "application/json"}
OVERFLOW_CURSOR = "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"  # base64 of "99999999999999999999999"


def _csr_version_1() -> str:
    """A well-formed, signed CSR whose version INTEGER says 1 instead of 0 (PEM)."""
    der = bytearray(csr_der(ec.generate_private_key(ec.SECP256R1()), "v1.bad.example.test"))
    at = bytes(der).index(b"\x02\x01\x00") + 2  # CertificationRequestInfo.version
    der[at] = 1
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


@dataclass
class Case:
    id: str
    method: str
    path: str
    token: str  # "admin", "issuer", "reader" or "none"
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 400
    detail: str | None = None


ISSUE_OK = {"common_name": "ok.bad.example.test"}
CASES = [
    # RecursionError in the JSON parser.
    Case(
        "nested-arrays", "POST", CERTS, "issuer", raw=b"[" * 30_000, headers=JSON, detail="nested"
    ),
    Case(
        "nested-objects",
        "POST",
        CERTS,
        "issuer",
        raw=b'{"a":' * 10_000,
        headers=JSON,
        detail="nested",
    ),
    Case("nested-token", "POST", TOKENS, "admin", raw=b"[" * 30_000, headers=JSON),
    # UnicodeEncodeError: a lone surrogate (JSON "\ud800") in each text field the issue names.
    Case(
        "surrogate-csr",
        "POST",
        CERTS,
        "issuer",
        body={"csr": "-----BEGIN CERTIFICATE REQUEST-----\ud800"},
        detail="csr",
    ),
    Case(
        "surrogate-authority",
        "POST",
        CERTS,
        "issuer",
        body={**ISSUE_OK, "authority": "\ud800"},
        detail="authority",
    ),
    Case(
        "surrogate-client-cn",
        "POST",
        CERTS,
        "issuer",
        body={"common_name": "\ud800 Ops", "profile": "client"},
        detail="common_name",
    ),
    Case(
        "surrogate-token-name",
        "POST",
        TOKENS,
        "admin",
        body={"name": "\ud800", "role": "reader"},
        detail="name",
    ),
    Case(
        "surrogate-in-list",
        "POST",
        CERTS,
        "issuer",
        body={"sans": ["ok.bad.example.test", "\udfff.bad.example.test"]},
        detail="sans",
    ),
    Case(
        "surrogate-revoke-reason",
        "POST",
        f"{CERTS}/0a/revoke",
        "issuer",
        body={"reason": "\ud800"},
        detail="reason",
    ),
    # Integer overflow: a cursor that decodes to a number wider than 64 bits.
    Case("cursor-overflow-certs", "GET", f"{CERTS}?cursor={OVERFLOW_CURSOR}", "reader"),
    Case("cursor-overflow-audit", "GET", f"/api/v1/audit?cursor={OVERFLOW_CURSOR}", "admin"),
    Case(
        "number-overflow",
        "POST",
        CERTS,
        "issuer",
        raw=b'{"validity_days": 1' + b"0" * 30 + b"}",
        headers=JSON,
    ),
    # DataError on PostgreSQL (and a stored NUL on SQLite).
    Case(
        "nul-token-name",
        "POST",
        TOKENS,
        "admin",
        body={"name": "a\x00b", "role": "reader"},
        detail="name",
    ),
    Case(
        "nul-authority",
        "POST",
        CERTS,
        "issuer",
        body={**ISSUE_OK, "authority": "a\x00b"},
        detail="authority",
    ),
    Case("nul-short-q", "GET", f"{CERTS}?q=%00", "reader", detail="'q'"),
    Case("nul-q", "GET", f"{CERTS}?q=abc%00def", "reader", detail="'q'"),
    Case("nul-authority-filter", "GET", f"{CERTS}?authority=a%00b", "reader"),
    Case("nul-audit-actor", "GET", "/api/v1/audit?actor=a%00b", "admin", detail="'actor'"),
    Case("nul-token-id", "DELETE", f"{TOKENS}/a%00b", "admin", detail="path"),
    Case("nul-serial", "GET", f"{CERTS}/0a%00", "reader", detail="path"),
    Case("nul-crl", "GET", "/ca/a%00b/crl", "none", detail="path"),
    Case("nul-crl-pem", "GET", "/ca/a%00b/crl.pem", "none", detail="path"),
    Case("nul-chain", "GET", "/ca/a%00b/chain.pem", "none", detail="path"),
    Case("nul-ca-cer", "GET", "/ca/a%00b/ca.cer", "none", detail="path"),
    # Found by schemathesis: typed parameters given empty, and null fields, were ignored.
    Case("empty-expires-before", "GET", f"{CERTS}?expires_before=", "reader"),
    Case("empty-status", "GET", f"{CERTS}?status=", "reader"),
    Case("empty-limit", "GET", f"{CERTS}?limit=", "reader", detail="limit"),
    Case(
        "null-authority",
        "POST",
        f"{CERTS}/0a/revoke",
        "issuer",
        body={"reason": "superseded", "authority": None},
        detail="null",
    ),
    Case("null-name", "POST", CERTS, "issuer", body={"common_name": None}, detail="null"),
    # InvalidVersion from cryptography, which load_csr did not catch.
    Case("csr-version-1", "POST", CERTS, "issuer", body={"csr": _csr_version_1()}, detail="CSR"),
]


@pytest.fixture(scope="module")
def callers(live: LiveServer) -> dict[str, str | None]:
    issuer, _ = create_token(
        live, "issuer", name="bad-issuer", allowed_names=["*.bad.example.test"]
    )
    reader, _ = create_token(live, "reader", name="bad-reader")
    return {"admin": live.admin_token, "issuer": issuer, "reader": reader, "none": None}


def _rows(live: LiveServer) -> tuple[int, ...]:
    """Certificates, tokens and audit events, counted in the server's own database."""
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            return tuple(
                int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
                for table in ("certificates", "api_tokens", "audit_events")
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_4xx_problem_and_writes_nothing(
    live: LiveServer, callers: dict[str, str | None], case: Case
) -> None:
    before = (_rows(live), server_tracebacks(live))
    reply = live.request(
        case.method,
        case.path,
        token=callers[case.token],
        body=case.body,
        raw=case.raw,
        headers=case.headers,
    )
    problem = assert_problem(reply, case.status)
    if case.detail:
        assert case.detail in problem["detail"], problem
    assert (_rows(live), server_tracebacks(live)) == before, live.log()[-3000:]


def test_ocsp_get_with_a_newline_is_a_malformed_request(live: LiveServer) -> None:
    """werkzeug's path converter stopped at %0A: a 404 where any other garbage gets an OCSP
    malformedRequest answer (found by schemathesis)."""
    for path in ("/ocsp/MEMwQT%0A", "/ocsp/%0A", "/ocsp/T.%C3%A0E%0A0%C2%93"):
        reply = live.request("GET", path)
        assert reply.status == 200, (path, reply.body[:200])
        assert reply.content_type == "application/ocsp-response"
        assert ocsp.load_der_ocsp_response(reply.body).response_status is (
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )


def test_nul_token_name_is_not_stored(live: LiveServer) -> None:
    """On SQLite the NUL name used to be stored; now no token has a NUL in its name."""
    names = [t["name"] for t in live.request("GET", TOKENS, token=live.admin_token).json["items"]]
    assert names and not any("\x00" in n for n in names)


def test_body_over_the_limit_closes_the_connection(live: LiveServer) -> None:
    """413, and `Connection: close`: the unread body is not drained nor taken as a request."""
    before = certificate_count(live)
    big = json.dumps({"common_name": "big.bad.example.test", "sans": ["x" * 70_000]}).encode()
    reply = live.request("POST", CERTS, token=live.admin_token, raw=big, headers=JSON)
    assert_problem(reply, 413)
    assert reply.headers.get("connection", "").lower() == "close", reply.headers
    small = live.request("GET", "/api/v1/authorities", token=live.admin_token)
    assert small.status == 200 and small.headers.get("connection", "").lower() != "close"
    assert certificate_count(live) == before


def _raw_exchange(live: LiveServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client library would, and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < 1_000_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


GUNICORN_REFUSALS = [
    ("request-line-too-long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (
        "too-many-headers",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(120))
        + b"\r\n",
        431,
    ),
    (
        "header-too-large",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
        431,
    ),
    ("bad-request-line", b"NOT AN HTTP REQUEST\r\n\r\n", 400),
    ("bad-header", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [(r, s) for _, r, s in GUNICORN_REFUSALS],
    ids=[i for i, _, _ in GUNICORN_REFUSALS],
)
def test_gunicorn_refusals_are_problems(
    live: LiveServer, request_bytes: bytes, status: int
) -> None:
    """What gunicorn refuses before the application sees it is problem+json too."""
    got, headers, body = _raw_exchange(live, request_bytes)
    assert got == status, (got, body[:300])
    assert headers["content-type"] == PROBLEM_JSON
    assert headers["connection"].lower() == "close"
    assert int(headers["content-length"]) == len(body)
    assert re.fullmatch(r"[0-9a-f]{16}", headers["x-request-id"])
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"].startswith("urn:ca-service:problem:")
    assert problem["title"] and problem["detail"]


def test_the_server_log_has_no_traceback(live: LiveServer) -> None:
    """Runs last in this module: none of the requests above made the server log a trace."""
    assert server_tracebacks(live) == 0, live.log()[-3000:]


def test_csr_version_1_is_what_the_test_sends() -> None:
    """The reproduction is the defect it claims: cryptography refuses the version field."""
    pem = _csr_version_1().encode()
    with pytest.raises(x509.InvalidVersion):
        x509.load_pem_x509_csr(pem)
