"""The authorization matrix: every endpoint x every kind of caller, against the expected status.

Callers: no token, a malformed one, a well-formed unknown one, an expired admin token, a revoked
admin token, and live admin, issuer and reader tokens. Expired and revoked tokens are admin
tokens on purpose: once dead, even the strongest role gets nothing. A refused call must change
nothing: the certificate and token counts are compared around every refusal of a write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ..live import (
    LiveServer,
    assert_problem,
    certificate_count,
    create_token,
    expire_token,
    fetch_crl,
    issue,
)

CALLERS = ["none", "malformed", "unknown", "expired", "revoked", "admin", "issuer", "reader"]
DEAD = {"none": 401, "malformed": 401, "unknown": 401, "expired": 401, "revoked": 401}
ISSUER_NAMES = ["*.authz.example.test"]


@dataclass
class Ctx:
    live: LiveServer
    tokens: dict[str, str | None]


@pytest.fixture(scope="module")
def ctx(live: LiveServer) -> Ctx:
    expired, expired_id = create_token(live, "admin", name="soon-expired", expires_in_days=1)
    expire_token(live, expired_id)
    revoked, revoked_id = create_token(live, "admin", name="revoked-admin")
    gone = live.request("DELETE", f"/api/v1/tokens/{revoked_id}", token=live.admin_token)
    assert gone.status == 200 and gone.json["state"] == "revoked"
    issuer, _ = create_token(live, "issuer", name="authz-issuer", allowed_names=ISSUER_NAMES)
    reader, _ = create_token(live, "reader", name="authz-reader")
    tokens: dict[str, str | None] = {
        "none": None,
        "malformed": "not-a-token",
        "unknown": "cas_0123456789abcdef_" + "A" * 43,
        "expired": expired,
        "revoked": revoked,
        "admin": live.admin_token,
        "issuer": issuer,
        "reader": reader,
    }
    return Ctx(live, tokens)


def _own_cert(c: Ctx) -> str:
    """A fresh certificate issued by the issuer token, so both it and an admin may revoke it."""
    token = c.tokens["issuer"]
    assert token is not None
    return str(issue(c.live, token, common_name="rev.authz.example.test").json["serial"])


def _fresh_token_id(c: Ctx) -> str:
    return create_token(c.live, "reader", name="to-delete")[1]


def _a_serial(c: Ctx) -> str:
    return str(issue(c.live, common_name="seen.authz.example.test").json["serial"])


Request = tuple[str, str, Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    build: Callable[[Ctx], Request]
    needs: str | None  # the least role, or None for a public endpoint
    ok: int = 200


ENDPOINTS = [
    Endpoint(
        "issue",
        lambda c: ("POST", "/api/v1/certificates", {"common_name": "m.authz.example.test"}),
        "issuer",
        201,
    ),
    Endpoint("list", lambda c: ("GET", "/api/v1/certificates", None), "reader"),
    Endpoint("show", lambda c: ("GET", f"/api/v1/certificates/{_a_serial(c)}", None), "reader"),
    Endpoint(
        "revoke",
        lambda c: (
            "POST",
            f"/api/v1/certificates/{_own_cert(c)}/revoke",
            {"reason": "superseded"},
        ),
        "issuer",
    ),
    Endpoint("authorities", lambda c: ("GET", "/api/v1/authorities", None), "reader"),
    Endpoint(
        "token-create",
        lambda c: ("POST", "/api/v1/tokens", {"name": "matrix", "role": "reader"}),
        "admin",
        201,
    ),
    Endpoint("token-list", lambda c: ("GET", "/api/v1/tokens", None), "admin"),
    Endpoint(
        "token-revoke",
        lambda c: ("DELETE", f"/api/v1/tokens/{_fresh_token_id(c)}", None),
        "admin",
    ),
    Endpoint("audit", lambda c: ("GET", "/api/v1/audit", None), "admin"),
    *(
        Endpoint(path, lambda c, p=path: ("GET", p, None), None)  # type: ignore[misc]
        for path in (
            "/ca.pem",
            "/ca/root.pem",
            "/ca/default/chain.pem",
            "/ca/default/ca.cer",
            "/crl",
            "/crl.pem",
            "/ca/default/crl",
            "/ca/default/crl.pem",
            "/healthz",
            "/openapi.json",
            "/docs",
        )
    ),
]

ORDER = ["reader", "issuer", "admin"]


def expected(endpoint: Endpoint, caller: str) -> int:
    if endpoint.needs is None:
        return endpoint.ok
    if caller in DEAD:
        return DEAD[caller]
    return endpoint.ok if ORDER.index(caller) >= ORDER.index(endpoint.needs) else 403


def _state(c: Ctx) -> tuple[int, int, int]:
    """Certificates, tokens and revoked certificates: what a refused call must not change."""
    tokens = c.live.request("GET", "/api/v1/tokens", token=c.live.admin_token).json["items"]
    revoked = c.live.request(
        "GET", "/api/v1/certificates?status=revoked&limit=500", token=c.live.admin_token
    ).json["items"]
    active_tokens = sum(1 for t in tokens if t["state"] == "active")
    return certificate_count(c.live), len(tokens) + 1000 * active_tokens, len(revoked)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_authorization_matrix(ctx: Ctx, endpoint: Endpoint, caller: str) -> None:
    method, path, body = endpoint.build(ctx)
    want = expected(endpoint, caller)
    writes = method != "GET"
    before = _state(ctx) if writes and want >= 400 else None
    if path.startswith(("/crl", "/ca/default/crl")) and want == 200:
        # Public CRLs answer whatever Authorization header comes along; lint what comes back.
        fetch_crl(ctx.live, path, token=ctx.tokens[caller])
        return
    reply = ctx.live.request(method, path, token=ctx.tokens[caller], body=body)
    assert reply.status == want, (caller, method, path, reply.body[:300])
    if want == 401:
        problem = assert_problem(reply, 401)
        assert reply.headers.get("www-authenticate", "").startswith("Bearer")
        assert "token" in problem["detail"] or "Authorization" in problem["detail"]
    elif want == 403:
        problem = assert_problem(reply, 403)
        assert endpoint.needs is not None and endpoint.needs in problem["detail"]
    if before is not None:
        assert _state(ctx) == before, "a refused request changed the store"


def test_an_issuer_revokes_only_what_it_issued(ctx: Ctx) -> None:
    live = ctx.live
    other = _a_serial(ctx)  # issued by the admin
    before = _state(ctx)
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{other}/revoke",
        token=ctx.tokens["issuer"],
        body={"reason": "keyCompromise"},
    )
    problem = assert_problem(reply, 403)
    assert "issued" in problem["detail"]
    assert _state(ctx) == before
    shown = live.request("GET", f"/api/v1/certificates/{other}", token=ctx.tokens["reader"])
    assert shown.json["status"] == "valid"


def test_an_issuer_is_held_to_its_policy_and_a_reader_only_reads(ctx: Ctx) -> None:
    live = ctx.live
    before = certificate_count(live)
    outside = live.request(
        "POST",
        "/api/v1/certificates",
        token=ctx.tokens["issuer"],
        body={"common_name": "www.elsewhere.example.test"},
    )
    assert assert_problem(outside, 403)["rule"] == "caller.allowed_names"
    wildcard = live.request(
        "POST",
        "/api/v1/certificates",
        token=ctx.tokens["issuer"],
        body={"common_name": "*.authz.example.test"},
    )
    assert assert_problem(wildcard, 403)["rule"].endswith("wildcards")
    assert certificate_count(live) == before
    # The reader sees certificates issued by anyone, with their PEM.
    serial = _a_serial(ctx)
    shown = live.request(
        "GET",
        f"/api/v1/certificates/{serial}",
        token=ctx.tokens["reader"],
        headers={"Accept": "application/pem-certificate-chain"},
    )
    assert shown.status == 200 and shown.body.startswith(b"-----BEGIN CERTIFICATE")


def test_a_token_revoked_later_stops_working_at_once(ctx: Ctx) -> None:
    """No worker caches a token: revoking one in any worker refuses it in every worker."""
    live = ctx.live
    token, token_id = create_token(live, "reader", name="short-lived")
    for _ in range(4):  # gunicorn spreads these over its workers
        assert live.request("GET", "/api/v1/authorities", token=token).status == 200
    assert (
        live.request("DELETE", f"/api/v1/tokens/{token_id}", token=live.admin_token).status == 200
    )
    for _ in range(4):
        reply = live.request("GET", "/api/v1/authorities", token=token)
        assert "revoked" in assert_problem(reply, 401)["detail"]
