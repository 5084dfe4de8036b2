"""The JWKS refetch is rate-limited on a live server (two workers): a burst of tokens naming
made-up kids costs the issuer at most one fetch per worker and window, counted at the issuer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..conftest import database
from ..live import LiveServer, assert_problem, certificate_count, server_tracebacks, start_server
from .issuer import OIDCIssuer

AUD = "jwks-test"
WORKERS = 2


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    module_issuer: OIDCIssuer,
) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp(f"jwks-{request.param}")
    # A window longer than the test: every fetch beyond the first per worker would be a bug.
    extra = {"CA_OIDC_ALLOW_HTTP_ISSUERS": "true", "CA_OIDC_JWKS_REFETCH_SECONDS": "3600"}
    with database(request.param, base) as url:
        live = start_server(base / "data", url, extra_env=extra, workers=WORKERS)
        try:
            reply = live.request(
                "POST",
                "/api/v1/provisioners",
                token=live.admin_token,
                body={
                    "name": "burst",
                    "issuer": module_issuer.url,
                    "jwks_uri": module_issuer.jwks_uri,
                    "audience": AUD,
                    "allowed_names": ["{run_id}.burst.example.test"],
                },
            )
            assert reply.status == 201, reply.body
            yield live
        finally:
            live.stop()


def test_unknown_kids_do_not_hammer_the_issuer(
    server: LiveServer, module_issuer: OIDCIssuer
) -> None:
    start = module_issuer.jwks_fetches
    token = module_issuer.token({"sub": "s", "aud": AUD, "run_id": "1"})
    reply = server.request(
        "POST", "/api/v1/certificates", token=token, body={"sans": ["1.burst.example.test"]}
    )
    assert reply.status == 201, reply.body
    before = certificate_count(server)
    for i in range(30):
        forged = module_issuer.token({"sub": "s", "aud": AUD, "run_id": "2"}, kid=f"forged-{i}")
        problem = assert_problem(
            server.request(
                "POST",
                "/api/v1/certificates",
                token=forged,
                body={"sans": ["2.burst.example.test"]},
            ),
            401,
        )
        assert problem["rule"] == "oidc.unknown_kid"
    # One fetch per worker at most (each fetches once for its first token), none for the burst.
    assert 1 <= module_issuer.jwks_fetches - start <= WORKERS
    # jwks_uri was given: discovery is never fetched.
    assert module_issuer.discovery_fetches == 0
    assert certificate_count(server) == before
    assert server_tracebacks(server) == 0
