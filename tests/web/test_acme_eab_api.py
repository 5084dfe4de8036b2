"""/api/v1/acme/eab through a live gunicorn server (SQLite and PostgreSQL): an admin makes,
lists, reads and revokes External Account Binding keys; nobody else may; bad bodies are 400 and
write nothing; every answer is checked against the OpenAPI document (tests/live.py).
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Any

import pytest
import sqlalchemy as sa

from ..live import LiveServer, assert_problem, create_token, db_engine, list_all

KID = re.compile(r"^eab_[A-Za-z0-9_-]{22}$")
EAB = "/api/v1/acme/eab"
FIELDS = {
    "kid",
    "name",
    "allowed_names",
    "profiles",
    "max_validity_days",
    "authorities",
    "allow_wildcards",
    "created_at",
    "bound_account",
    "revoked_at",
}


def _rid() -> str:
    return f"eab-{secrets.token_hex(6)}"


def _rows(live: LiveServer) -> int:
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM acme_eab_keys")).scalar_one())
    finally:
        engine.dispose()


def _sealed_values(live: LiveServer) -> bytes:
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT hmac_key_encrypted FROM acme_eab_keys"))
            return b"".join(bytes(r[0]) for r in rows)
    finally:
        engine.dispose()


def _events(live: LiveServer, action: str) -> list[dict[str, Any]]:
    return list_all(live, f"/api/v1/audit?action={action}")


def _create(live: LiveServer, **body: Any) -> dict[str, Any]:
    fields = {"name": "web", "allowed_names": ["*.eab-api.example.test"], **body}
    reply = live.request("POST", EAB, token=live.admin_token, body=fields)
    assert reply.status == 201, reply.body[:500]
    data = reply.json
    assert isinstance(data, dict)
    return data


def test_an_admin_creates_a_key_and_sees_its_hmac_key_once(live: LiveServer) -> None:
    rid = _rid()
    reply = live.request(
        "POST",
        EAB,
        token=live.admin_token,
        body={
            "name": "web servers",
            "allowed_names": ["*.eab-api.example.test", "10.20.0.0/16"],
            "profiles": ["server"],
            "max_validity_days": 30,
            "authorities": ["default"],
            "allow_wildcards": True,
        },
        headers={"X-Request-Id": rid},
    )
    assert reply.status == 201, reply.body[:500]
    assert reply.headers["cache-control"] == "no-store"
    data = reply.json
    assert set(data) == FIELDS | {"hmac_key"}
    assert KID.match(data["kid"])
    assert reply.headers["location"] == f"{EAB}/{data['kid']}"
    hmac_key = data["hmac_key"]
    assert "=" not in hmac_key
    raw = base64.urlsafe_b64decode(hmac_key + "=")
    assert len(raw) == 32
    assert data["name"] == "web servers"
    assert data["allowed_names"] == ["*.eab-api.example.test", "10.20.0.0/16"]
    assert data["profiles"] == ["server"] and data["max_validity_days"] == 30
    assert data["authorities"] == ["default"] and data["allow_wildcards"] is True
    assert data["bound_account"] is None and data["revoked_at"] is None
    assert data["created_at"].endswith("Z")

    # Never again: not in the list, not in the record, not in the store, not in the audit log.
    listed = live.request("GET", EAB, token=live.admin_token)
    assert listed.status == 200 and listed.headers["cache-control"] == "no-store"
    mine = [k for k in listed.json["items"] if k["kid"] == data["kid"]]
    assert len(mine) == 1 and set(mine[0]) == FIELDS
    assert all("hmac_key" not in k for k in listed.json["items"])
    assert hmac_key.encode() not in listed.body
    one = live.request("GET", f"{EAB}/{data['kid']}", token=live.admin_token)
    assert one.status == 200
    assert one.json == {k: v for k, v in data.items() if k != "hmac_key"}
    stored = _sealed_values(live)
    assert raw not in stored and hmac_key.encode() not in stored

    events = [e for e in _events(live, "acme.eab.create") if e["request_id"] == rid]
    assert len(events) == 1
    assert events[0]["target"] == f"eab:{data['kid']}"
    assert events[0]["client_address"] == "127.0.0.1"
    assert events[0]["actor"].startswith("token:")
    assert hmac_key not in str(events[0])


def test_defaults_of_an_optional_grant(live: LiveServer) -> None:
    data = _create(live, name="minimal")
    assert data["profiles"] is None and data["max_validity_days"] is None
    assert data["authorities"] is None and data["allow_wildcards"] is False


def test_revoke_is_idempotent_and_unknown_kids_are_404(live: LiveServer) -> None:
    data = _create(live, name="to revoke")
    kid = data["kid"]
    rid = _rid()
    gone = live.request(
        "DELETE", f"{EAB}/{kid}", token=live.admin_token, headers={"X-Request-Id": rid}
    )
    assert gone.status == 200
    assert gone.json["kid"] == kid and gone.json["revoked_at"] is not None
    assert "hmac_key" not in gone.json
    again = live.request("DELETE", f"{EAB}/{kid}", token=live.admin_token)
    assert again.status == 200 and again.json == gone.json
    assert live.request("GET", f"{EAB}/{kid}", token=live.admin_token).json == gone.json
    revocations = [e for e in _events(live, "acme.eab.revoke") if e["target"] == f"eab:{kid}"]
    assert len(revocations) == 1 and revocations[0]["request_id"] == rid

    for unknown in ("eab_" + "Z" * 22, "eab_short", "nothing-like-a-kid", "x" * 200):
        for method in ("GET", "DELETE"):
            reply = live.request(method, f"{EAB}/{unknown}", token=live.admin_token)
            assert_problem(reply, 404)


@pytest.mark.parametrize("role", ["issuer", "reader"])
def test_only_admins_and_each_refusal_is_audited(live: LiveServer, role: str) -> None:
    extra = {"allowed_names": ["*.eab-api.example.test"]} if role == "issuer" else {}
    token, token_id = create_token(live, role, name=f"eab-{role}", **extra)
    kid = _create(live, name=f"target for {role}")["kid"]
    rows = _rows(live)
    attempts = [
        ("POST", EAB, {"name": "mine", "allowed_names": ["*.eab-api.example.test"]}),
        ("GET", EAB, None),
        ("GET", f"{EAB}/{kid}", None),
        ("DELETE", f"{EAB}/{kid}", None),
    ]
    refused = _events(live, "auth.refused")
    for method, path, body in attempts:
        rid = _rid()
        reply = live.request(method, path, token=token, body=body, headers={"X-Request-Id": rid})
        problem = assert_problem(reply, 403)
        assert problem["rule"] == "caller.role"
        refused = _events(live, "auth.refused")
        mine = [e for e in refused if e["request_id"] == rid]
        assert len(mine) == 1, (method, path)
        assert mine[0]["actor"] == f"token:{token_id}"
        assert mine[0]["target"] == f"{method} {path}"
    assert _rows(live) == rows
    assert live.request("GET", f"{EAB}/{kid}", token=live.admin_token).json["revoked_at"] is None


def test_no_token_is_401(live: LiveServer) -> None:
    rows = _rows(live)
    for method, path, body in (
        ("POST", EAB, {"name": "x", "allowed_names": ["a.example.test"]}),
        ("GET", EAB, None),
        ("GET", f"{EAB}/eab_{'A' * 22}", None),
        ("DELETE", f"{EAB}/eab_{'A' * 22}", None),
    ):
        reply = live.request(method, path, body=body)
        assert_problem(reply, 401)
        assert "bearer" in reply.headers["www-authenticate"].lower()
    assert _rows(live) == rows


GOOD = {"name": "bad-body", "allowed_names": ["*.eab-api.example.test"]}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**GOOD, "role": "admin"}, "role"),
        ({**GOOD, "hmac_key": "mine"}, "hmac_key"),
        ({"name": "no names"}, "allowed_names"),
        ({"allowed_names": ["a.example.test"]}, "name"),
        ({**GOOD, "allowed_names": []}, "allowed name"),
        ({**GOOD, "allowed_names": "a.example.test"}, "allowed_names"),
        ({**GOOD, "allowed_names": ["bad pattern!"]}, "bad pattern"),
        ({**GOOD, "allowed_names": [5]}, "allowed_names"),
        ({**GOOD, "profiles": ["no-such-profile"]}, "unknown profile"),
        ({**GOOD, "authorities": ["no-such-ca"]}, "unknown authority"),
        ({**GOOD, "max_validity_days": 0}, "max_validity_days"),
        ({**GOOD, "max_validity_days": -1}, "max_validity_days"),
        ({**GOOD, "max_validity_days": "x"}, "max_validity_days"),
        ({**GOOD, "max_validity_days": "30"}, "max_validity_days"),
        ({**GOOD, "max_validity_days": True}, "max_validity_days"),
        ({**GOOD, "allow_wildcards": "yes"}, "allow_wildcards"),
        ({**GOOD, "profiles": None}, "profiles"),
        ({**GOOD, "name": "n" * 129}, "name"),
        ({**GOOD, "name": ""}, "name"),
        ({**GOOD, "name": "tab\there"}, "name"),
        ([GOOD], ""),
    ],
)
def test_bad_bodies_are_400_and_write_nothing(live: LiveServer, body: Any, words: str) -> None:
    rows = _rows(live)
    created = len(_events(live, "acme.eab.create"))
    reply = live.request("POST", EAB, token=live.admin_token, body=body)
    problem = assert_problem(reply, 400)
    assert words in problem["detail"], problem
    assert _rows(live) == rows
    assert len(_events(live, "acme.eab.create")) == created


def test_bodies_that_are_not_json(live: LiveServer) -> None:
    rows = _rows(live)
    empty = live.request("POST", EAB, token=live.admin_token)
    assert_problem(empty, 400)
    broken = live.request(
        "POST",
        EAB,
        token=live.admin_token,
        raw=b'{"name": "x", ',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(broken, 400)
    text = live.request(
        "POST", EAB, token=live.admin_token, raw=b"name=x", headers={"Content-Type": "text/plain"}
    )
    assert_problem(text, 415)
    assert _rows(live) == rows


def test_the_server_logged_no_traceback(live: LiveServer) -> None:
    # Last in the module: every request above went through the same server.
    _create(live, name="last")
    assert "Traceback" not in live.log()
