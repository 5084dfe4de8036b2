"""`ca-service request --oidc` end to end against the real server: a loopback OIDC issuer
(tests/oidc/issuer.py) signs the ID tokens, a loopback stand-in for GitHub Actions' token
endpoint hands them out (checking the runtime's bearer and minting for the audience asked
for), and `ca-service serve --tls` verifies them against an OIDC provisioner (SQLite and
PostgreSQL).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ..live import LiveServer, start_server
from ..oidc.issuer import OIDCIssuer
from .fakes import Reply, Seen, json_reply, serve
from .helpers import request
from .test_request import fingerprint

RUNTIME_TOKEN = "ghs_runtime_request_token"
NAME = "acme.ci.client.test"


@pytest.fixture(scope="module")
def oidc_live(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[tuple[LiveServer, OIDCIssuer]]:
    with OIDCIssuer() as issuer:
        server = start_server(
            tmp_path_factory.mktemp("client-oidc") / "data",
            module_db_url,
            tls=True,
            extra_env={"CA_OIDC_ALLOW_HTTP_ISSUERS": "true"},
        )
        try:
            reply = server.request(
                "POST",
                "/api/v1/provisioners",
                token=server.admin_token,
                body={
                    "name": "ci",
                    "issuer": issuer.url,
                    "audience": server.base_url,  # what the client asks for by default
                    "claims": {"repository": "acme/*"},
                    "allowed_names": ["{repository_owner}.ci.client.test"],
                },
            )
            assert reply.status == 201, reply.body
            yield server, issuer
        finally:
            server.stop()


def github(issuer: OIDCIssuer, claims: dict[str, Any]) -> Any:
    """GitHub Actions' token endpoint: a fresh JWT per call, for the audience asked for."""

    def route(req: Seen) -> Reply:
        if req.headers.get("authorization") != f"bearer {RUNTIME_TOKEN}":
            return json_reply(401, {"message": "Bad credentials"})
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.path).query))
        if "audience" not in query:
            return json_reply(400, {"message": "no audience"})
        return json_reply(
            200, {"count": 1, "value": issuer.token({**claims, "aud": query["audience"]})}
        )

    return serve(route)


ACME = {
    "sub": "repo:acme/app:ref:refs/heads/main",
    "repository": "acme/app",
    "repository_owner": "acme",
}


def env_for(url: str) -> dict[str, str]:
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{url}/_apis/idtoken?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": RUNTIME_TOKEN,
    }


@pytest.mark.slow
def test_github_actions_oidc_issue_nothing_to_do_renew(
    oidc_live: tuple[LiveServer, OIDCIssuer], tmp_path: Path
) -> None:
    live, issuer = oidc_live
    out = tmp_path / "ci"
    args = ("--server", live.base_url, "--name", NAME, "--out", str(out), "--oidc")
    with github(issuer, ACME) as gh:
        env = env_for(gh.url)
        first = request(*args, "--root-fingerprint", fingerprint(live), "--json", env=env)
        assert first.returncode == 0, first.stderr
        record = json.loads(first.stdout)
        assert record["action"] == "issued" and record["names"] == [f"dns:{NAME}"]
        shown = live.request(
            "GET", f"/api/v1/certificates/{record['serial']}", token=live.admin_token
        )
        assert "ci" in shown.json["requester"], shown.json["requester"]
        assert len(gh.seen) == 1
        again = request(*args, env=env)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert len(gh.seen) == 1  # no ID token asked for
        renewed = request(*args, "--renew-within", "1", "--json", env=env)
        assert renewed.returncode == 0, renewed.stderr
        new = json.loads(renewed.stdout)
        # Through the renew endpoint, with a fresh ID token (each may be used once).
        assert new["action"] == "renewed" and new["renewed_from"] == record["serial"]
        assert new["serial"] != record["serial"] and len(gh.seen) == 2
        cert = x509.load_pem_x509_certificate(Path(new["files"]["certificate"]).read_bytes())
        assert format(cert.serial_number, "x") == new["serial"]
        old = live.request(
            "GET", f"/api/v1/certificates/{record['serial']}", token=live.admin_token
        )
        assert old.json["successor"] == new["serial"]


def test_an_id_token_outside_the_provisioner_is_refused(
    oidc_live: tuple[LiveServer, OIDCIssuer], tmp_path: Path
) -> None:
    live, issuer = oidc_live
    other = {
        "sub": "repo:evil/app:ref:refs/heads/main",
        "repository": "evil/app",
        "repository_owner": "evil",
    }
    with github(issuer, other) as gh:
        result = request(
            "--server", live.base_url, "--name", "evil.ci.client.test",
            "--out", str(tmp_path / "e"),
            "--oidc", "--root-fingerprint", fingerprint(live), env=env_for(gh.url),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "error: refused by" in result.stderr
    assert not (tmp_path / "e.crt").exists()


def test_an_id_token_for_another_audience_is_refused(
    oidc_live: tuple[LiveServer, OIDCIssuer], tmp_path: Path
) -> None:
    live, issuer = oidc_live
    with github(issuer, ACME) as gh:
        result = request(
            "--server", live.base_url, "--name", NAME, "--out", str(tmp_path / "a"), "--oidc",
            "--audience", "someone-else", "--root-fingerprint", fingerprint(live),
            env=env_for(gh.url),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "401" in result.stderr
