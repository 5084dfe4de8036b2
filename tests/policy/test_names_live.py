"""Issue 9 items 2 and 3 through a real server (SQLite and PostgreSQL) and the CLI, where the
token policy is stored: the reproductions of the issue, each answered 4xx with its rule, with
nothing written and no traceback. The pure policy tests are in test_subject_policy.py and
test_uri_wildcard_policy.py (the ones mutation testing runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509

from ..conftest import make_settings
from ..helpers import cli_run
from ..live import LiveServer, Reply, assert_problem, create_token, db_engine, server_tracebacks
from .test_subject_policy import HOSTILE_CNS
from .test_uri_wildcard_policy import ESCAPES

# ---------------------------------------------------------------------------- subjects


def _client(live: LiveServer, token: str, cn: str, *sans: str) -> Reply:
    return live.request(
        "POST",
        "/api/v1/certificates",
        token=token,
        body={"common_name": cn, "sans": list(sans), "profile": "client"},
    )


def test_api_refuses_each_reproduced_subject_to_a_restricted_issuer(live: LiveServer) -> None:
    token, _ = create_token(live, "issuer", name="ci", allowed_names=["*.ci.example.test"])
    before = live.request("GET", "/api/v1/certificates?limit=500", token=live.admin_token)
    tracebacks = server_tracebacks(live)
    for cn in HOSTILE_CNS:
        reply = _client(live, token, cn, "build.ci.example.test")
        status = 403 if cn.isprintable() else 400
        problem = assert_problem(reply, status)
        rule = "caller.allowed_subjects" if status == 403 else "name.unprintable"
        assert problem["rule"] == rule, problem
    after = live.request("GET", "/api/v1/certificates?limit=500", token=live.admin_token)
    assert len(after.json["items"]) == len(before.json["items"])
    assert server_tracebacks(live) == tracebacks


def test_api_allowed_subjects_are_stored_shown_and_enforced(live: LiveServer) -> None:
    token, token_id = create_token(
        live,
        "issuer",
        name="builds",
        allowed_names=["*.ci.example.test"],
        allowed_subjects=["CN=build-*"],
    )
    listed = live.request("GET", "/api/v1/tokens", token=live.admin_token)
    [shown] = [t for t in listed.json["items"] if t["id"] == token_id]
    assert shown["policy"]["allowed_subjects"] == ["CN=build-*"]
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT policy FROM api_tokens WHERE id = :id"), {"id": token_id}
            ).scalar_one()
    finally:
        engine.dispose()
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored["allowed_subjects"] == ["CN=build-*"]
    issued = _client(live, token, "build-9", "b9.ci.example.test")
    assert issued.status == 201, issued.body
    leaf = x509.load_pem_x509_certificate(issued.json["certificate"].encode())
    assert leaf.subject.rfc4514_string() == "CN=build-9"
    problem = assert_problem(_client(live, token, "Ops Team", "b9.ci.example.test"), 403)
    assert problem["rule"] == "caller.allowed_subjects"


def test_api_person_name_cn_stays_as_given(live: LiveServer) -> None:
    reply = _client(live, live.admin_token, "Bob", "email:bob@example.test")
    assert reply.status == 201
    data = reply.json
    assert data["subject"] == "CN=Bob" and data["common_name"] == "Bob"
    assert data["sans"] == ["email:bob@example.test"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "t", "role": "issuer", "allowed_names": ["*.a.test"], "allowed_subjects": ["x"]},
        {"name": "t", "role": "admin", "allowed_subjects": ["CN=x"]},
        {"name": "t", "role": "issuer", "allowed_names": ["*.a.test"], "allowed_subjects": "CN=x"},
    ],
)
def test_api_bad_allowed_subjects_are_a_400(live: LiveServer, body: dict[str, object]) -> None:
    reply = live.request("POST", "/api/v1/tokens", token=live.admin_token, body=body)
    assert_problem(reply, 400)


def test_cli_token_create_takes_subject_patterns(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert cli_run(settings, ["init"]).exit_code == 0
    created = cli_run(
        settings,
        [
            "token", "create", "--name", "builds", "--role", "issuer",
            "--names", "*.ci.example.test", "--subject", "CN=build-*",
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    from ca_service.tokens import TokenService
    from ca_service.wiring import build_authority

    ca = build_authority(settings)
    try:
        [record] = TokenService(ca.db).list()
    finally:
        ca.db.dispose()
    assert record.policy.allowed_subjects == ("CN=build-*",)
    bad = cli_run(
        settings,
        ["token", "create", "--name", "b", "--role", "issuer", "--names", "*.a.test",
         "--subject", "nonsense"],
    )  # fmt: skip
    assert bad.exit_code == 1 and "ATTR=value" in bad.output


# ---------------------------------------------------------------------------- URIs, wildcards


def test_api_reproduction_uri_escapes_are_refused(live: LiveServer) -> None:
    token, _ = create_token(
        live, "issuer", name="ci-uris", allowed_names=["spiffe://cluster/ns/ci/*"]
    )
    tracebacks = server_tracebacks(live)
    for value in ESCAPES[:8]:
        reply = live.request(
            "POST",
            "/api/v1/certificates",
            token=token,
            body={"sans": [f"uri:{value}"], "profile": "client"},
        )
        problem = assert_problem(reply, 400)
        assert problem.get("rule") in ("uri.dot_segments", "name.unprintable"), problem
    good = live.request(
        "POST",
        "/api/v1/certificates",
        token=token,
        body={"sans": ["uri:spiffe://cluster/ns/ci/sa/build"], "profile": "client"},
    )
    assert good.status == 201, good.body
    assert good.json["sans"] == ["uri:spiffe://cluster/ns/ci/sa/build"]
    assert server_tracebacks(live) == tracebacks


def test_api_wildcard_on_a_public_suffix(live: LiveServer) -> None:
    body = {"name": "w", "role": "issuer", "allowed_names": ["*.com"], "allow_wildcards": True}
    problem = assert_problem(
        live.request("POST", "/api/v1/tokens", token=live.admin_token, body=body), 400
    )
    assert problem["rule"] == "names.public_suffix_wildcard"
