"""API tokens (shown once, stored as a hash, expiry, revocation) and the audit log.

Each issuance, revocation, token change and refused authorization must be found in the audit
log with its actor, action, target, time, the request id the client sent and the client address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from typing import Any

import pytest
import sqlalchemy as sa

from ..live import (
    LiveServer,
    assert_problem,
    create_token,
    db_engine,
    expire_token,
    issue,
    list_all,
    run_cli,
)

TOKEN_RE = re.compile(r"^cas_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")


def _stored_text(live: LiveServer) -> str:
    """Every value of every row of every table of the server's database, as one string."""
    engine = db_engine(live)
    out: list[str] = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608
                    for value in row:
                        if isinstance(value, bytes | bytearray | memoryview):
                            out.append(bytes(value).decode("latin-1"))
                        elif value is not None:
                            out.append(str(value))
    finally:
        engine.dispose()
    return "\n".join(out)


def _rid() -> str:
    return f"test-{secrets.token_hex(6)}"


def _events(live: LiveServer, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return list_all(live, "/api/v1/audit" + (f"?{query}" if query else ""))


def _one_event(live: LiveServer, request_id: str, action: str) -> dict[str, Any]:
    found = [e for e in _events(live, action=action) if e["request_id"] == request_id]
    assert len(found) == 1, (action, request_id, found)
    event = found[0]
    assert event["client_address"] == "127.0.0.1"
    at = dt.datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - at) < dt.timedelta(minutes=10)
    return event


def test_a_token_is_shown_once_and_stored_only_as_a_hash(live: LiveServer) -> None:
    rid = _rid()
    reply = live.request(
        "POST",
        "/api/v1/tokens",
        token=live.admin_token,
        body={"name": "hash-check", "role": "reader", "expires_in_days": 7},
        headers={"X-Request-Id": rid},
    )
    assert reply.status == 201
    plain = reply.json["token"]
    match = TOKEN_RE.match(plain)
    assert match and match.group(1) == reply.json["id"]
    secret = match.group(2)
    assert len(secret) * 6 >= 256  # 43 base64url characters: 256 random bits
    assert reply.headers["location"] == f"/api/v1/tokens/{reply.json['id']}"
    assert reply.json["state"] == "active" and reply.json["role"] == "reader"
    expires = dt.datetime.fromisoformat(reply.json["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(days=6) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)

    other, _ = create_token(live, "reader", name="hash-check-2")
    assert other != plain

    # Never again: not in the list, not in the store; only its SHA-256 is kept.
    listed = live.request("GET", "/api/v1/tokens", token=live.admin_token)
    assert secret.encode() not in listed.body
    assert all("token" not in t for t in listed.json["items"])
    stored = _stored_text(live)
    assert plain not in stored and secret not in stored
    admin = TOKEN_RE.match(live.admin_token)
    assert admin is not None and admin.group(2) not in stored
    assert hashlib.sha256(secret.encode()).hexdigest() in stored

    event = _one_event(live, rid, "token.create")
    assert event["target"] == f"token:{reply.json['id']}"
    assert event["actor"] == f"token:{admin.group(1)}"
    assert secret not in str(event)
    assert live.request("GET", "/api/v1/authorities", token=plain).status == 200


def test_expired_and_revoked_tokens(live: LiveServer) -> None:
    token, token_id = create_token(live, "issuer", allowed_names=["*.tok.example.test"])
    assert live.request("GET", "/api/v1/authorities", token=token).status == 200

    rid = _rid()
    gone = live.request(
        "DELETE",
        f"/api/v1/tokens/{token_id}",
        token=live.admin_token,
        headers={"X-Request-Id": rid},
    )
    assert gone.status == 200
    assert gone.json["state"] == "revoked" and gone.json["revoked_at"]
    assert "token" not in gone.json
    event = _one_event(live, rid, "token.revoke")
    assert event["target"] == f"token:{token_id}"
    # Revoking again changes nothing and records nothing.
    again = live.request("DELETE", f"/api/v1/tokens/{token_id}", token=live.admin_token)
    assert again.status == 200 and again.json["revoked_at"] == gone.json["revoked_at"]
    revokes = [e for e in _events(live, action="token.revoke") if e["target"] == event["target"]]
    assert len(revokes) == 1
    reply = live.request("GET", "/api/v1/authorities", token=token)
    assert "revoked" in assert_problem(reply, 401)["detail"]

    token2, token2_id = create_token(live, "reader", name="expiring", expires_in_days=1)
    assert live.request("GET", "/api/v1/authorities", token=token2).status == 200
    expire_token(live, token2_id)
    reply = live.request("GET", "/api/v1/authorities", token=token2)
    assert "expired" in assert_problem(reply, 401)["detail"]
    states = {
        t["id"]: t["state"]
        for t in live.request("GET", "/api/v1/tokens", token=live.admin_token).json["items"]
    }
    assert states[token_id] == "revoked" and states[token2_id] == "expired"

    # A well-formed token with a wrong secret is refused like an unknown one.
    m = TOKEN_RE.match(token2)
    assert m is not None
    forged = f"cas_{m.group(1)}_{'B' * 43}"
    reply = live.request("GET", "/api/v1/authorities", token=forged)
    assert "unknown" in assert_problem(reply, 401)["detail"]


def test_issuance_and_revocation_are_audited(live: LiveServer) -> None:
    ci, ci_id = create_token(live, "issuer", name="audit-ci", allowed_names=["*.aud.example.test"])
    rid = _rid()
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=ci,
        body={"common_name": "b1.aud.example.test"},
        headers={"X-Request-Id": rid},
    )
    assert reply.status == 201 and reply.headers["x-request-id"] == rid
    serial = reply.json["serial"]
    event = _one_event(live, rid, "certificate.issue")
    assert event["actor"] == f"token:{ci_id}"
    assert event["target"] == f"default/{serial}"
    assert "private_key" not in str(event) and "PRIVATE" not in str(event)

    rid2 = _rid()
    revoked = live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=ci,
        body={"reason": "cessationOfOperation"},
        headers={"X-Request-Id": rid2},
    )
    assert revoked.status == 200
    event = _one_event(live, rid2, "certificate.revoke")
    assert event["actor"] == f"token:{ci_id}"
    assert event["target"] == f"default/{serial}"
    assert event["details"] == {"reason": "cessationOfOperation"}

    # Filtered by actor: exactly what this token did, newest first.
    mine = _events(live, actor=f"token:{ci_id}")
    assert [e["action"] for e in mine] == ["certificate.revoke", "certificate.issue"]


def test_refused_authorizations_are_audited(live: LiveServer) -> None:
    reader, reader_id = create_token(live, "reader", name="audit-reader")
    rid = _rid()
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=reader,
        body={"common_name": "x.example.test"},
        headers={"X-Request-Id": rid},
    )
    assert_problem(reply, 403)
    event = _one_event(live, rid, "auth.refused")
    assert event["actor"] == f"token:{reader_id}"
    assert event["target"] == "POST /api/v1/certificates"
    assert "issuer" in event["details"]["reason"]

    # Nobody authenticated: counted per client address and minute (ca_service.refusals), so the
    # refusal shows as one more in the count, not as an event with its own request id.
    before = _anonymous_refusals(live)
    assert_problem(live.request("GET", "/api/v1/audit", headers={"X-Request-Id": _rid()}), 401)
    _await_anonymous_refusals(live, before + 1)

    bad = live.request("GET", "/api/v1/tokens", token="cas_nope", headers={"X-Request-Id": _rid()})
    assert_problem(bad, 401)
    events = _await_anonymous_refusals(live, before + 2, "malformed bearer token")
    assert all(e["client_address"] == "127.0.0.1" for e in events)
    assert "cas_nope" not in str(events)  # a presented secret is never written down


def _anonymous_refusals(live: LiveServer) -> int:
    return sum(
        e["details"]["count"] for e in _events(live, action="auth.refused", actor="anonymous")
    )


def _await_anonymous_refusals(
    live: LiveServer, at_least: int, reason: str | None = None
) -> list[dict[str, Any]]:
    """The counted anonymous refusals once they add up to ``at_least`` (and one counted
    ``reason``): after the first failure of a minute, a count is written within a second, so
    look a bounded few times."""
    for _ in range(50):
        events = _events(live, action="auth.refused", actor="anonymous")
        if sum(e["details"]["count"] for e in events) >= at_least and (
            reason is None or any(reason in e["details"]["reasons"] for e in events)
        ):
            return events
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} anonymous refusals counted, or none {reason!r}")


def test_audit_filters_and_pagination(live: LiveServer) -> None:
    for i in range(3):
        issue(live, common_name=f"page{i}.example.test")
    everything = _events(live)
    assert len(everything) >= 8
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)

    pages: list[list[int]] = []
    cursor = None
    for _ in range(100):
        url = "/api/v1/audit?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = live.request("GET", url, token=live.admin_token).json
        assert len(page["items"]) <= 3
        pages.append([e["id"] for e in page["items"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    flat = [i for p in pages for i in p]
    # Nothing else writes to the log while this test pages through it (reading does not).
    assert flat == ids and len(pages) >= 3

    issues = _events(live, action="certificate.issue")
    assert issues and all(e["action"] == "certificate.issue" for e in issues)
    assert len(issues) == sum(1 for e in everything if e["action"] == "certificate.issue")
    assert _events(live, actor="token:nobody") == []


def _token_and_audit_rows(live: LiveServer) -> tuple[int, int]:
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            return (
                int(conn.execute(sa.text("SELECT count(*) FROM api_tokens")).scalar_one()),
                int(conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()),
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("field", "option", "value", "rule"),
    [
        ("profiles", "--profile", "nope", "token.unknown_profile"),
        ("authorities", "--authority", "nowhere", "token.unknown_authority"),
    ],
)
def test_api_and_cli_refuse_a_token_naming_an_unknown_target_by_the_same_rule(
    live: LiveServer, field: str, option: str, value: str, rule: str
) -> None:
    """Issue 10, item 4: `ca-service token create --profile nope` used to store the token that
    POST /api/v1/tokens refuses (a grant that names nothing, and refuses every issuance)."""
    before = _token_and_audit_rows(live)
    body = {"name": "typo", "role": "issuer", "allowed_names": ["*.t.example.test"]}
    path = "/api/v1/tokens"
    reply = live.request("POST", path, token=live.admin_token, body=body | {field: [value]})
    problem = assert_problem(reply, 400)
    assert problem["rule"] == rule and repr(value) in problem["detail"]
    cli_args = ["token", "create", "--name", "typo", "--role", "issuer"]
    refused = run_cli(live, *cli_args, "--names", "*.t.example.test", option, value)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == f"error: {problem['detail']}"
    assert "Traceback" not in refused.stderr
    # Bad input: neither wrote a token nor an audit event.
    assert _token_and_audit_rows(live) == before

    # What exists is accepted by both.
    known = {"profiles": "server", "authorities": "default"}[field]
    reply = live.request("POST", path, token=live.admin_token, body=body | {field: [known]})
    assert reply.status == 201, reply.body
    assert reply.json["policy"][field] == [known]
    made = run_cli(live, *cli_args, "--names", "*.t.example.test", option, known)
    assert made.returncode == 0, made.stderr
    assert TOKEN_RE.match(made.stdout.strip())
    assert _token_and_audit_rows(live) == (before[0] + 2, before[1] + 2)
