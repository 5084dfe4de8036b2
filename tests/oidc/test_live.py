"""OIDC end to end: a real `ca-service serve` (SQLite and PostgreSQL, two workers) trusting the
loopback issuer of tests/oidc/issuer.py. Every refusal is a problem with its rule, stores
nothing, and leaves no traceback in the server's log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ..conftest import database
from ..live import (
    CA_SERVICE,
    LiveServer,
    assert_problem,
    certificate_count,
    create_token,
    list_all,
    run_cli,
    server_tracebacks,
    start_server,
)
from .issuer import OIDCIssuer, new_key, unsigned_token

AUD = "https://ca.example.test"
PATTERN = "{repository_owner}-{run_id}.ci.example.test"


@dataclass
class Env:
    live: LiveServer
    issuer: OIDCIssuer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    module_issuer: OIDCIssuer,
) -> Iterator[Env]:
    base = tmp_path_factory.mktemp(f"oidc-{request.param}")
    extra = {
        "CA_OIDC_ALLOW_HTTP_ISSUERS": "true",
        "CA_OIDC_JWKS_REFETCH_SECONDS": "1",
        # The shortest cache, so that test_key_rotation_at_the_issuer can wait out every
        # worker's copy of the old JWKS.
        "CA_OIDC_JWKS_CACHE_SECONDS": "10",
    }
    with database(request.param, base) as url:
        live = start_server(base / "data", url, extra_env=extra)
        try:
            reply = live.request(
                "POST",
                "/api/v1/provisioners",
                token=live.admin_token,
                body={
                    "name": "ci",
                    "issuer": module_issuer.url,
                    "audience": AUD,
                    "claims": {"repository": ["octo/*"], "ref": "refs/heads/*"},
                    "allowed_names": [PATTERN],
                    "profiles": ["server"],
                    "max_validity_days": 30,
                },
            )
            assert reply.status == 201, reply.body
            yield Env(live, module_issuer)
        finally:
            live.stop()


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "repo:octo/app:ref:refs/heads/main",
        "aud": AUD,
        "repository": "octo/app",
        "repository_owner": "Octo",
        "run_id": "4711",
        "ref": "refs/heads/main",
        "workflow": "Build and deploy",
    }
    base.update(extra)
    return base


def post_issue(e: Env, token: str, **body: Any) -> Any:
    body = body or {"sans": ["octo-4711.ci.example.test"]}
    return e.live.request("POST", "/api/v1/certificates", token=token, body=body)


def test_the_insecure_flag_is_logged_loudly(env: Env) -> None:
    assert "INSECURE: oidc_allow_http_issuers = true" in env.live.log()


def test_a_valid_token_gets_a_certificate_named_from_its_claims(env: Env) -> None:
    token = env.issuer.token(claims(), alg="ES256")
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"]
    reply = post_issue(env, token)
    assert reply.status == 201, reply.body
    serial = reply.json["serial"]
    assert reply.json["sans"] == ["dns:octo-4711.ci.example.test"]
    assert reply.json["requester"] == "oidc:ci:repo:octo/app:ref:refs/heads/main"
    events = env.live.request(
        "GET", "/api/v1/audit?action=certificate.issue&limit=20", token=env.live.admin_token
    ).json["items"]
    mine = [ev for ev in events if ev["target"] and serial in ev["target"]]
    assert mine, events
    credential = mine[0]["details"]["credential"]
    assert credential["jti"] == jti and credential["repository"] == "octo/app"
    assert credential["ref"] == "refs/heads/main" and credential["workflow"] == "Build and deploy"
    assert mine[0]["actor"] == "oidc:ci:repo:octo/app:ref:refs/heads/main"


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_every_algorithm_of_the_issuer_works(env: Env, alg: str) -> None:
    reply = post_issue(
        env,
        env.issuer.token(claims(run_id=f"a-{alg}"), alg=alg),
        sans=[f"octo-a-{alg.lower()}.ci.example.test"],
    )
    assert reply.status == 201, reply.body


def _hs256_with_public_key(e: Env) -> str:
    rsa = e.issuer.keys["RS256"]
    pem = rsa.private.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": rsa.kid, "typ": "JWT"}).encode())
    payload = b64(json.dumps(e.issuer.claims(**claims())).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


def _replayed(e: Env) -> str:
    token = e.issuer.token(claims(run_id="replay"))
    assert post_issue(e, token, sans=["octo-replay.ci.example.test"]).status == 201
    return token


NOW = int(time.time())
CASES: dict[str, tuple[Any, int, str]] = {
    "expired": (
        lambda e: e.issuer.token(claims(exp=int(time.time()) - 600, iat=NOW - 900, nbf=NOW - 900)),
        401,
        "oidc.expired",
    ),
    "not-yet-valid": (
        lambda e: e.issuer.token(claims(nbf=int(time.time()) + 900)),
        401,
        "oidc.not_yet_valid",
    ),
    "wrong-audience": (lambda e: e.issuer.token(claims(aud="other")), 401, "oidc.audience"),
    "wrong-issuer": (
        lambda e: e.issuer.token(claims(iss="https://evil.example.test")),
        401,
        "oidc.issuer",
    ),
    "unknown-kid": (
        lambda e: e.issuer.token(claims(), kid="nobody-knows"),
        401,
        "oidc.unknown_kid",
    ),
    "key-not-in-jwks": (
        lambda e: e.issuer.token(claims(), key=new_key("RS256"), kid=e.issuer.keys["RS256"].kid),
        401,
        "oidc.signature",
    ),
    "alg-none": (
        lambda e: unsigned_token(e.issuer.claims(**claims()), kid=e.issuer.keys["RS256"].kid),
        401,
        "oidc.algorithm",
    ),
    "hs256-public-key": (_hs256_with_public_key, 401, "oidc.algorithm"),
    "replayed-jti": (_replayed, 401, "oidc.replay"),
    "no-jti": (lambda e: e.issuer.token(claims(jti=None)), 401, "oidc.claim_missing"),
    "missing-claim": (lambda e: e.issuer.token(claims(ref=None)), 403, "oidc.claim_missing"),
    "mismatching-claim": (
        lambda e: e.issuer.token(claims(repository="evil/app")),
        403,
        "oidc.claim_mismatch",
    ),
    "claim-not-a-label": (
        lambda e: e.issuer.token(claims(repository_owner="/// ///")),
        403,
        "oidc.claim_label",
    ),
    "claim-too-long": (
        lambda e: e.issuer.token(claims(run_id="9" * 64)),
        403,
        "oidc.claim_label",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusals_store_nothing(env: Env, case: str) -> None:
    make, status, rule = CASES[case]
    token = make(env)
    before = certificate_count(env.live)
    traces = server_tracebacks(env.live)
    body = assert_problem(post_issue(env, token), status)
    assert body.get("rule") == rule, body
    assert rule in body["detail"]
    assert certificate_count(env.live) == before
    assert server_tracebacks(env.live) == traces


def test_names_outside_the_claims_are_refused(env: Env) -> None:
    before = certificate_count(env.live)
    for sans in (["octo-9999.ci.example.test"], ["evil.example.test"], ["*.ci.example.test"]):
        token = env.issuer.token(claims())
        body = assert_problem(post_issue(env, token, sans=sans), 403)
        assert body.get("rule"), body
    assert certificate_count(env.live) == before
    events = env.live.request(
        "GET", "/api/v1/audit?action=policy.refused&limit=50", token=env.live.admin_token
    ).json["items"]
    assert any(ev["actor"].startswith("oidc:ci:") for ev in events), events


def test_limits_of_the_provisioner_apply(env: Env) -> None:
    token = env.issuer.token(claims(run_id="lim"))
    body = assert_problem(
        post_issue(env, token, sans=["octo-lim.ci.example.test"], validity_days=90), 403
    )
    assert body.get("rule"), body
    token = env.issuer.token(claims(run_id="lim"))
    reply = post_issue(env, token, sans=["octo-lim.ci.example.test"], profile="client")
    assert_problem(reply, 403)


@pytest.mark.slow  # waits out the JWKS cache (10 s)
def test_key_rotation_at_the_issuer(env: Env) -> None:
    assert (
        post_issue(
            env, env.issuer.token(claims(run_id="rot1")), sans=["octo-rot1.ci.example.test"]
        ).status
        == 201
    )
    old = env.issuer.rotate()
    # Past the refetch window (1 s here), the new kid makes each worker refetch the JWKS.
    time.sleep(1.2)
    for i in range(4):  # both workers, whichever answers
        token = env.issuer.token(claims(run_id=f"rot2-{i}"), alg="ES256")
        reply = post_issue(env, token, sans=[f"octo-rot2-{i}.ci.example.test"])
        assert reply.status == 201, reply.body
    # A worker that none of those requests reached still holds the old JWKS, by design, until
    # its cache expires (oidc_jwks_cache_seconds, 10 s here): past that, every worker refuses
    # the old key. (Seen in CI: with two workers, all four requests can reach one of them.)
    time.sleep(10.5)
    for _ in range(4):
        body = assert_problem(post_issue(env, env.issuer.token(claims(), key=old["RS256"])), 401)
        assert body["rule"] == "oidc.unknown_kid"


def test_an_oidc_token_may_only_issue_and_renew(env: Env) -> None:
    token = env.issuer.token(claims(run_id="only"))
    tokens_before = len(
        env.live.request("GET", "/api/v1/tokens", token=env.live.admin_token).json["items"]
    )
    for method, path, body in (
        ("GET", "/api/v1/certificates", None),
        ("GET", "/api/v1/authorities", None),
        ("POST", "/api/v1/tokens", {"name": "x", "role": "admin"}),
        ("GET", "/api/v1/provisioners", None),
        ("GET", "/api/v1/audit", None),
    ):
        problem = assert_problem(env.live.request(method, path, token=token, body=body), 403)
        assert problem["rule"] == "oidc.operation", (path, problem)
    after = env.live.request("GET", "/api/v1/tokens", token=env.live.admin_token).json["items"]
    assert len(after) == tokens_before
    # Refused before its jti was spent: the same token still issues.
    assert post_issue(env, token, sans=["octo-only.ci.example.test"]).status == 201
    events = env.live.request(
        "GET", "/api/v1/audit?action=auth.refused&limit=100", token=env.live.admin_token
    ).json["items"]
    assert any(
        ev["actor"] == "oidc:ci:repo:octo/app:ref:refs/heads/main"
        and ev["details"]["rule"] == "oidc.operation"
        for ev in events
    )


def test_renew_by_the_same_identity_only(env: Env) -> None:
    first = post_issue(
        env, env.issuer.token(claims(run_id="ren")), sans=["octo-ren.ci.example.test"]
    )
    assert first.status == 201, first.body
    serial = first.json["serial"]
    path = f"/api/v1/certificates/{serial}/renew"
    other = env.issuer.token(claims(run_id="ren", sub="repo:octo/other:ref:refs/heads/main"))
    before = certificate_count(env.live)
    problem = assert_problem(env.live.request("POST", path, token=other, body={}), 403)
    assert problem["rule"] == "caller.own_certificates"
    assert certificate_count(env.live) == before
    same = env.issuer.token(claims(run_id="ren"))
    renewed = env.live.request("POST", path, token=same, body={})
    assert renewed.status == 201, renewed.body
    assert renewed.json["serial"] != serial
    assert renewed.json["sans"] == ["dns:octo-ren.ci.example.test"]


def test_provisioner_endpoints_are_admin_only(env: Env) -> None:
    issuer, issuer_id = create_token(env.live, "issuer", allowed_names=["*.x.example.test"])
    reader, reader_id = create_token(env.live, "reader")
    body = {"name": "nope", "issuer": env.issuer.url, "audience": AUD, "allowed_names": ["a.b"]}
    for token, token_id in ((issuer, issuer_id), (reader, reader_id)):
        for method, path, payload in (
            ("POST", "/api/v1/provisioners", body),
            ("GET", "/api/v1/provisioners", None),
            ("GET", "/api/v1/provisioners/ci", None),
            ("DELETE", "/api/v1/provisioners/ci", None),
        ):
            problem = assert_problem(env.live.request(method, path, token=token, body=payload), 403)
            assert problem["rule"] == "caller.role"
        events = env.live.request(
            "GET",
            f"/api/v1/audit?actor=token:{token_id}&action=auth.refused",
            token=env.live.admin_token,
        ).json["items"]
        assert len(events) == 4
    names = [p["name"] for p in list_all_provisioners(env)]
    assert "nope" not in names and "ci" in names


def list_all_provisioners(e: Env) -> list[dict[str, Any]]:
    reply = e.live.request("GET", "/api/v1/provisioners", token=e.live.admin_token)
    assert reply.status == 200
    return list(reply.json["items"])


BAD_BODIES: dict[str, tuple[dict[str, Any], str | None]] = {
    "unknown-field": ({"colour": "red"}, None),
    "bad-pattern": ({"allowed_names": ["a*b.example.test"]}, None),
    "stray-brace": ({"allowed_names": ["{"]}, "provisioner.placeholder"),
    "unclosed-placeholder": ({"allowed_names": ["{repo.example.test"]}, "provisioner.placeholder"),
    "claims-not-strings": ({"claims": {"ref": 3}}, None),
    "claims-list-not-strings": ({"claims": {"ref": [True]}}, None),
    "unknown-profile": ({"profiles": ["nope"]}, "provisioner.unknown_profile"),
    "unknown-authority": ({"authorities": ["nope"]}, "provisioner.unknown_authority"),
    "bad-type": ({"type": "saml"}, None),
    "ftp-issuer": ({"issuer": "ftp://issuer.example.test"}, "provisioner.https"),
    "unknown-preset": ({"preset": "jenkins"}, None),
    "preset-without-repository-rule": (
        {"preset": "github-actions", "issuer": None},
        "provisioner.preset_claims",
    ),
    "no-names": ({"allowed_names": []}, None),
    "bad-name": ({"name": "has:colon"}, None),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_provisioner_bodies(env: Env, case: str) -> None:
    change, rule = BAD_BODIES[case]
    body: dict[str, Any] = {
        "name": f"bad-{case}"[:60],
        "issuer": "https://issuer.example.test",
        "audience": AUD,
        "allowed_names": ["{repository}.example.test"],
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    before = list_all_provisioners(env)
    problem = assert_problem(
        env.live.request("POST", "/api/v1/provisioners", token=env.live.admin_token, body=body), 400
    )
    if rule is not None:
        assert problem.get("rule") == rule, problem
    assert list_all_provisioners(env) == before


def test_provisioner_lifecycle_and_duplicates(env: Env) -> None:
    body = {
        "name": "gitlab-selfhosted",
        "preset": "gitlab",
        "issuer": "https://gitlab.example.test",
        "audience": AUD,
        "claims": {"project_path": "group/app", "ref_protected": "true"},
        "allowed_names": ["{project_path}.gl.example.test"],
    }
    created = env.live.request(
        "POST", "/api/v1/provisioners", token=env.live.admin_token, body=body
    )
    assert created.status == 201, created.body
    assert created.json["issuer"] == "https://gitlab.example.test"
    assert created.json["claims"] == {"project_path": ["group/app"], "ref_protected": ["true"]}
    again = env.live.request("POST", "/api/v1/provisioners", token=env.live.admin_token, body=body)
    assert assert_problem(again, 409)["rule"] == "provisioner.exists"
    one = env.live.request(
        "GET", "/api/v1/provisioners/gitlab-selfhosted", token=env.live.admin_token
    )
    assert one.status == 200 and one.json["name"] == "gitlab-selfhosted"
    gone = env.live.request(
        "DELETE", "/api/v1/provisioners/gitlab-selfhosted", token=env.live.admin_token
    )
    assert gone.status == 200
    missing = env.live.request(
        "DELETE", "/api/v1/provisioners/gitlab-selfhosted", token=env.live.admin_token
    )
    assert_problem(missing, 404)
    events = env.live.request("GET", "/api/v1/audit?limit=100", token=env.live.admin_token).json[
        "items"
    ]
    mine = [ev["action"] for ev in events if ev["target"] == "provisioner:gitlab-selfhosted"]
    assert mine == ["provisioner.delete", "provisioner.create"], mine


def test_a_deleted_provisioner_admits_no_token(env: Env) -> None:
    body = {
        "name": "short-lived",
        "issuer": env.issuer.url,
        "audience": "short-lived-aud",
        "allowed_names": ["{run_id}.sl.example.test"],
    }
    made = env.live.request("POST", "/api/v1/provisioners", token=env.live.admin_token, body=body)
    assert made.status == 201, made.body
    token = env.issuer.token(claims(aud="short-lived-aud", run_id="1"))
    assert post_issue(env, token, sans=["1.sl.example.test"]).status == 201
    gone = env.live.request(
        "DELETE", "/api/v1/provisioners/short-lived", token=env.live.admin_token
    )
    assert gone.status == 200
    token = env.issuer.token(claims(aud="short-lived-aud", run_id="2"))
    assert assert_problem(post_issue(env, token, sans=["2.sl.example.test"]), 401)["rule"] == (
        "oidc.audience"
    )


def test_cli_provisioners(env: Env, tmp_path: Path) -> None:
    created = run_cli(
        env.live,
        "provisioner", "create", "cli-gh",
        "--preset", "github-actions",
        "--audience", AUD,
        "--claim", "repository=octo/app",
        "--claim", "repository=octo/lib",
        "--allow", "{run_id}.gh.example.test",
        "--max-validity-days", "7",
        "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["issuer"] == "https://token.actions.githubusercontent.com"
    assert record["claims"] == {"repository": ["octo/app", "octo/lib"]}
    listed = run_cli(env.live, "provisioner", "list", "--json")
    assert listed.returncode == 0 and "cli-gh" in [p["name"] for p in json.loads(listed.stdout)]
    via_api = [p["name"] for p in list_all_provisioners(env)]
    assert "cli-gh" in via_api
    # Without the flag an http issuer is refused (the CLI reads the same settings).
    environ = {k: v for k, v in env.live.env.items() if k != "CA_BIND"}
    environ["CA_OIDC_ALLOW_HTTP_ISSUERS"] = "false"
    refused = subprocess.run(
        [CA_SERVICE, "provisioner", "create", "cli-http", "--issuer", env.issuer.url,
         "--audience", AUD, "--allow", "{run_id}.h.example.test"],
        env=environ, capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 1 and "provisioner.https" in refused.stderr, refused.stderr
    bad = run_cli(env.live, "provisioner", "create", "x", "--audience", "a", "--allow", "b.c",
                  "--issuer", "https://i.example.test", "--claim", "noequals")  # fmt: skip
    assert bad.returncode == 1 and "KEY=PATTERN" in bad.stderr
    deleted = run_cli(env.live, "provisioner", "delete", "cli-gh")
    assert deleted.returncode == 0, deleted.stderr
    again = run_cli(env.live, "provisioner", "delete", "cli-gh")
    assert again.returncode == 1 and "no provisioner" in again.stderr
    assert "Traceback" not in created.stderr + refused.stderr + again.stderr


def test_no_tracebacks(env: Env) -> None:
    assert server_tracebacks(env.live) == 0
    assert list_all(env.live, "/api/v1/certificates")
