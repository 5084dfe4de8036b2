"""A revoked API token through a real gunicorn with several workers, each of which may hold the
token in its cache of verified tokens (POST /api/v1/certificates: require(...,
confirm_in_store=True), TokenService.authenticate_to_confirm).

Revocation goes through one worker, which forgets the token; the others still have it cached,
and only the store's check in the issuance's transaction (or web/auth.py's
_settle_confirmation) stands between them and the token. The access log (JSON, with the pid of
the worker that answered) tells which worker served each request, so each test makes sure it
reached a worker that had the token cached, instead of hoping it did.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import database
from tests.live import (
    LiveServer,
    Reply,
    assert_problem,
    certificate_count,
    create_token,
    list_all,
    server_tracebacks,
    start_server,
)

from .observability import json_lines, wait_for

WORKERS = 2
NAMES = ["*.conf.example.test"]
# Issuances on fresh connections before looking whether every worker served (and so cached)
# the token, and the most we send to get there.
WARM_MIN = 20
WARM_MAX = 80
# Requests with a revoked token in the main test, and the most sent to reach a cached worker.
AFTER = 20
AFTER_MAX = 60
ISSUE = "/api/v1/certificates"
REVOKED_REASON = "bearer token revoked"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """gunicorn with WORKERS workers; JSON logs at INFO, for the access lines and their pid."""
    base = tmp_path_factory.mktemp(f"confirm-{request.param}")
    env = {"CA_LOG_FORMAT": "json", "CA_LOG_LEVEL": "INFO"}
    with database(request.param, base) as url:
        server = start_server(base / "data", url, workers=WORKERS, extra_env=env)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def _no_tracebacks(live: LiveServer) -> Iterator[None]:
    yield
    assert server_tracebacks(live) == 0, live.log()[-3000:]


# ---------------------------------------------------------------------------- helpers


def _send(
    live: LiveServer,
    token: str | None,
    *,
    method: str = "POST",
    path: str = ISSUE,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    check_spec: bool = True,
) -> tuple[Reply, str]:
    """One request on a connection of its own (LiveServer.request opens one each time), with
    a request id of ours (127.0.0.1 is a trusted proxy in tests/live.py); (reply, request id)."""
    rid = f"tc-{secrets.token_hex(8)}"
    reply = live.request(
        method,
        path,
        token=token,
        body=body,
        raw=raw,
        headers={"X-Request-Id": rid, **(headers or {})},
        check_spec=check_spec,
    )
    assert reply.headers.get("x-request-id") == rid
    return reply, rid


def _pids(live: LiveServer, rids: list[str]) -> dict[str, int]:
    """The pid of the worker that answered each request, from its access line (gunicorn
    writes it after the answer: looked for a bounded while)."""

    def find() -> dict[str, int] | None:
        found: dict[str, int] = {}
        for event in json_lines(live.log(), being_written=True):
            if event.get("logger") == "gunicorn.access" and event.get("request_id") in rids:
                found[str(event["request_id"])] = int(event["pid"])
        return found if len(found) == len(set(rids)) else None

    result = wait_for(find, f"the access lines of {len(rids)} requests", seconds=15)
    assert isinstance(result, dict)
    return result


def _issuer(live: LiveServer, name: str) -> tuple[str, str]:
    return create_token(live, "issuer", name=name, allowed_names=NAMES)


def _warm(live: LiveServer, token: str, label: str) -> list[str]:
    """Issue with ``token`` on fresh connections until every worker has served (and so
    cached) it; the serials issued. Fails if the workers cannot all be reached."""
    serials: list[str] = []
    rids: list[str] = []
    for i in range(WARM_MAX):
        body = {"common_name": f"w{i}-{label}.conf.example.test"}
        reply, rid = _send(live, token, body=body)
        assert reply.status == 201, reply.body[:300]
        serials.append(reply.json["serial"])
        rids.append(rid)
        due = len(rids) >= WARM_MIN and len(rids) % 5 == 0
        if due and len(set(_pids(live, rids).values())) == WORKERS:
            return serials
    raise AssertionError(f"{WARM_MAX} issuances did not reach all {WORKERS} workers")


def _revoke_token(live: LiveServer, token_id: str) -> int:
    """Revoke with the admin token; the pid of the worker that did (and forgot the token)."""
    reply, rid = _send(live, live.admin_token, method="DELETE", path=f"/api/v1/tokens/{token_id}")
    assert reply.status == 200 and reply.json["state"] == "revoked", reply.body[:300]
    return _pids(live, [rid])[rid]


def _until_a_cached_worker(
    live: LiveServer, send: Callable[[], tuple[Reply, str]], forgot: int, *, at_least: int = 1
) -> list[tuple[Reply, int]]:
    """``send`` at least ``at_least`` times and until one request was answered by a worker
    other than ``forgot`` (one that had the token cached); every (reply, pid)."""
    sent: list[tuple[Reply, str]] = []
    for _ in range(max(at_least, AFTER_MAX)):
        sent.append(send())
        if len(sent) >= at_least:
            pids = _pids(live, [rid for _, rid in sent])
            if any(pid != forgot for pid in pids.values()):
                return [(reply, pids[rid]) for reply, rid in sent]
    raise AssertionError(f"{len(sent)} requests never reached a worker that cached the token")


def _events(live: LiveServer, action: str, actor: str | None = None) -> list[dict[str, Any]]:
    query = f"?action={action}" + (f"&actor={actor}" if actor else "")
    return list_all(live, "/api/v1/audit" + query)


def _revoked_refusals(live: LiveServer, token_id: str) -> int:
    """Refusals counted with the reason "bearer token revoked" for ``token_id``: as an
    authenticated-looking caller (token:<id>) or as nobody (anonymous), see ca_service.refusals
    (counted per address, identity, minute and process; details.reasons has the counts)."""
    total = 0
    for actor in ("anonymous", f"token:{token_id}"):
        for event in _events(live, "auth.refused", actor):
            total += int(event["details"].get("reasons", {}).get(REVOKED_REASON, 0))
    return total


def _issued_by(live: LiveServer, token_id: str) -> int:
    return len(_events(live, "certificate.issue", f"token:{token_id}"))


# ---------------------------------------------------------------------------- 1. issuance


def test_every_issuance_after_revocation_is_refused_by_every_worker(live: LiveServer) -> None:
    token, token_id = _issuer(live, "revoked-everywhere")
    _warm(live, token, "t1")
    certificates, issued = certificate_count(live), _issued_by(live, token_id)
    refusals = _revoked_refusals(live, token_id)

    forgot = _revoke_token(live, token_id)
    counter = iter(range(AFTER_MAX))

    def send() -> tuple[Reply, str]:
        body = {"common_name": f"after{next(counter)}.conf.example.test"}
        return _send(live, token, body=body)

    answered = _until_a_cached_worker(live, send, forgot, at_least=AFTER)
    for reply, _ in answered:
        problem = assert_problem(reply, 401)
        assert REVOKED_REASON in problem["detail"]
    assert {pid for _, pid in answered} - {forgot}  # a worker that had it cached refused it

    assert certificate_count(live) == certificates
    assert _issued_by(live, token_id) == issued
    # Each refusal is audited: counted (an event per address, identity, minute and worker,
    # its count updated within a second), so the counts add up to the refusals sent.
    wanted = refusals + len(answered)
    wait_for(lambda: _revoked_refusals(live, token_id) >= wanted, "the refusals' counts", 15)
    assert _revoked_refusals(live, token_id) == wanted
    events = _events(live, "auth.refused", f"token:{token_id}") + _events(
        live, "auth.refused", "anonymous"
    )
    assert all(e["client_address"] == "127.0.0.1" for e in events)
    assert token.split("_")[2] not in str(events)


# ---------------------------------------------------------------------------- 2. no glimpse

MALFORMED_CSR = (
    "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"
)


@pytest.mark.parametrize(
    ("kind", "body", "active_status"),
    [
        ("malformed-csr", {"csr": MALFORMED_CSR}, 400),
        ("missing-fields", {}, 400),
        ("csr-and-common-name", {"csr": MALFORMED_CSR, "common_name": "a.conf.example.test"}, 400),
        ("unknown-field", {"common_name": "u.conf.example.test", "bogus": 1}, 400),
        ("wrong-type", {"common_name": 7}, 400),
        ("unknown-profile", {"common_name": "p.conf.example.test", "profile": "nope"}, 403),
        ("outside-policy", {"common_name": "x.elsewhere.example.test"}, 403),
    ],
)
def test_a_revoked_token_learns_nothing_of_what_its_request_would_have_done(
    live: LiveServer, kind: str, body: dict[str, Any], active_status: int
) -> None:
    token, token_id = _issuer(live, f"glimpse-{kind}")
    _warm(live, token, kind)
    # While active, the request gets its own answer (so the 401 below is not that answer).
    reply, _ = _send(live, token, body=body)
    assert_problem(reply, active_status)
    certificates = certificate_count(live)

    forgot = _revoke_token(live, token_id)
    answered = _until_a_cached_worker(live, lambda: _send(live, token, body=body), forgot)
    for reply, pid in answered:
        problem = assert_problem(reply, 401)
        assert REVOKED_REASON in problem["detail"], (pid, problem)
        assert "rule" not in problem
    assert certificate_count(live) == certificates


def _after_revocation(live: LiveServer, token_id: str) -> int:
    """The id of the token's revocation event: what happened after it is after revocation."""
    events = _events(live, "token.revoke")
    assert events and events[0]["target"] == f"token:{token_id}"
    return int(events[0]["id"])


def test_a_revoked_token_outside_its_policy_leaves_no_policy_refusal(live: LiveServer) -> None:
    token, token_id = _issuer(live, "policy-audit")
    _warm(live, token, "pa")
    forgot = _revoke_token(live, token_id)
    revoked_at = _after_revocation(live, token_id)
    body = {"common_name": "x.elsewhere.example.test"}
    answered = _until_a_cached_worker(live, lambda: _send(live, token, body=body), forgot)
    assert all(reply.status == 401 for reply, _ in answered)
    later = [
        e for e in _events(live, "policy.refused", f"token:{token_id}") if e["id"] > revoked_at
    ]
    assert later == []


def test_a_revoked_token_with_a_body_that_is_not_json_gets_401(live: LiveServer) -> None:
    token, token_id = _issuer(live, "not-json")
    _warm(live, token, "nj")
    raw, headers = b'{"common_name": "nj.conf.example.test"}', {"Content-Type": "text/plain"}
    active, _ = _send(live, token, raw=raw, headers=headers, check_spec=False)
    assert_problem(active, 415)

    forgot = _revoke_token(live, token_id)
    answered = _until_a_cached_worker(
        live, lambda: _send(live, token, raw=raw, headers=headers, check_spec=False), forgot
    )
    for reply, _ in answered:
        assert_problem(reply, 401)


def test_a_revoked_reader_token_gets_401_from_the_issuance_route(live: LiveServer) -> None:
    reader, reader_id = create_token(live, "reader", name="cached-reader")
    rids = []
    for i in range(WARM_MAX):  # refused with 403 on each worker: cached all the same
        reply, rid = _send(live, reader, body={"common_name": f"r{i}.conf.example.test"})
        assert_problem(reply, 403)
        rids.append(rid)
        if i + 1 >= WARM_MIN and len(set(_pids(live, rids).values())) == WORKERS:
            break
    assert len(set(_pids(live, rids).values())) == WORKERS

    forgot = _revoke_token(live, reader_id)
    body = {"common_name": "r.conf.example.test"}
    answered = _until_a_cached_worker(live, lambda: _send(live, reader, body=body), forgot)
    for reply, _ in answered:
        assert_problem(reply, 401)


# ---------------------------------------------------------------------------- 5. other routes


def test_other_routes_refuse_a_revoked_token_at_once(live: LiveServer) -> None:
    token, token_id = _issuer(live, "other-routes")
    serials = _warm(live, token, "or")
    serial = serials[0]
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/api/v1/certificates", None),
        ("GET", f"/api/v1/certificates/{serial}", None),
        ("GET", "/api/v1/authorities", None),
        ("POST", f"/api/v1/certificates/{serial}/revoke", {"reason": "keyCompromise"}),
        ("POST", f"/api/v1/certificates/{serial}/renew", {}),
    ]
    # While active, each is allowed (the revoke and renew last: they change the certificate).
    for method, path, body in requests[:3]:
        reply, _ = _send(live, token, method=method, path=path, body=body)
        assert reply.status == 200, (path, reply.body[:300])
    other = serials[1]
    ok, _ = _send(live, token, path=f"/api/v1/certificates/{other}/renew", body={})
    assert ok.status == 201, ok.body[:300]
    ok, _ = _send(live, token, path=f"/api/v1/certificates/{other}/revoke", body={})
    assert ok.status == 200, ok.body[:300]
    certificates = certificate_count(live)

    forgot = _revoke_token(live, token_id)
    pids: set[int] = set()
    for method, path, body in requests:

        def send(m: str = method, p: str = path, b: Any = body) -> tuple[Reply, str]:
            return _send(live, token, method=m, path=p, body=b)

        for reply, pid in _until_a_cached_worker(live, send, forgot, at_least=4):
            assert REVOKED_REASON in assert_problem(reply, 401)["detail"], path
            pids.add(pid)
    assert len(pids) == WORKERS
    assert certificate_count(live) == certificates
    state, _ = _send(live, live.admin_token, method="GET", path=f"/api/v1/certificates/{serial}")
    assert state.status == 200 and state.json["status"] == "valid"
