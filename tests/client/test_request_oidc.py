"""`ca-service request --oidc`: the ID token comes from GitHub Actions' token endpoint (simulated
on loopback: it checks the runtime's bearer and the audience asked for) or from a GitLab
``id_tokens`` variable, and is sent unchanged as ``Authorization: Bearer`` to the server.

The server here is a loopback fake that records what it is sent (tests/client/fakes.py), so
the test can see the exact header; the real server's OIDC check is the other half, in
test_request_oidc_live.py once the server side is merged.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from .fakes import Reply, Seen, TinyCA, ca_service_route, fake_jwt, json_reply, serve
from .helpers import request

RUNTIME_TOKEN = "ghs_runtime_request_token"


def github_route(jwt: str, audience: Callable[[], str]) -> object:
    def route(req: Seen) -> Reply:
        if req.headers.get("authorization") != f"bearer {RUNTIME_TOKEN}":
            return json_reply(401, {"message": "Bad credentials"})
        if f"audience={audience()}" not in req.path or "api-version=2.0" not in req.path:
            return json_reply(400, {"message": "wrong audience"})
        return json_reply(200, {"count": 1, "value": jwt})

    return route


@pytest.mark.slow
def test_github_actions_token_is_sent_as_bearer(tmp_path: Path) -> None:
    ca = TinyCA()
    jwt = fake_jwt({"iss": "https://token.actions.githubusercontent.com"})
    audience: list[str] = []
    route = github_route(jwt, lambda: audience[0])
    with (
        serve(route) as github,  # type: ignore[arg-type]
        serve(ca_service_route(ca), ca.server_context(tmp_path)) as server,
    ):
        # The default audience is the server's URL, as given to --server.
        audience.append(urllib.parse.quote(server.url, safe=""))
        env = {
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{github.url}/_apis/idtoken?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": RUNTIME_TOKEN,
        }
        fp = ca.cert.fingerprint(hashes.SHA256()).hex()
        args = ["--server", server.url, "--name", "ci.example.test", "--out", str(tmp_path / "ci")]
        result = request(*args, "--oidc", "--root-fingerprint", fp, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["action"] == "issued"
        posts = [r for r in server.seen if r.method == "POST"]
        assert len(posts) == 1 and posts[0].headers["authorization"] == f"Bearer {jwt}"
        assert len(github.seen) == 1
        assert jwt not in result.stderr and RUNTIME_TOKEN not in result.stderr
        # Nothing to do: no ID token is asked for, no request is made at all.
        again = request(*args, "--oidc", env=env)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert len(github.seen) == 1 and len(server.seen) == 2
        # Another audience is asked for when told.
        refused = request(*args, "--oidc", "--audience", "other", "--renew-within", "1", env=env)
        assert refused.returncode == 1 and "GitHub Actions refused" in refused.stderr


def test_gitlab_id_token_variable(tmp_path: Path) -> None:
    ca = TinyCA()
    jwt = fake_jwt({"iss": "https://gitlab.example.test", "aud": "ca-service"})  # another aud
    with serve(ca_service_route(ca), ca.server_context(tmp_path)) as server:
        result = request(
            "--server", server.url, "--name", "ci.example.test", "--out", str(tmp_path / "g"),
            "--oidc-token-env", "CA_ID_TOKEN",
            "--root-fingerprint", ca.cert.fingerprint(hashes.SHA256()).hex(),
            env={"CA_ID_TOKEN": jwt},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        posts = [r for r in server.seen if r.method == "POST"]
        assert posts[0].headers["authorization"] == f"Bearer {jwt}"
        # Its audience is not the server URL: said, not refused (the server decides).
        assert "warning: the ID token's audience is 'ca-service'" in result.stderr


def test_oidc_without_a_source_is_a_usage_error(tmp_path: Path) -> None:
    result = request(
        "--server", "https://127.0.0.1:1", "--name", "x.test", "--out", str(tmp_path / "o"),
        "--oidc",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "ACTIONS_ID_TOKEN_REQUEST_URL" in result.stderr
