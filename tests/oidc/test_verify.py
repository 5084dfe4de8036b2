"""The token checks in process: real keys from the loopback issuer, a real database (SQLite and
PostgreSQL), the JWKS cache with its fetches counted at the issuer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ca_service.core.facade import Core
from ca_service.domain import Actor
from ca_service.errors import BadRequest, CAError, Conflict, Forbidden, Unauthorized, Unavailable
from ca_service.oidc.jwks import JWKSCache
from ca_service.oidc.provisioners import ProvisionerService, ProvisionerSpec
from ca_service.oidc.verify import OIDCVerifier

from .issuer import OIDCIssuer, new_key, unsigned_token

ADMIN = Actor("test:admin")
AUD = "ca-service-test"


class Ticks:
    """A monotonic clock the test moves by hand (the refetch window without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def verifier(ca: Core, oidc_issuer: OIDCIssuer, ticks: Ticks) -> Iterator[OIDCVerifier]:
    ProvisionerService(ca.db).create(
        ProvisionerSpec(
            name="ci",
            issuer=oidc_issuer.url,
            audience=AUD,
            claims={"repository": "octo/*"},
            allowed_names=("{repository_owner}-{run_id}.ci.example.test",),
        ),
        ADMIN,
        allow_http=True,
        known_profiles=ca.settings.profiles,
        known_authorities=set(),
    )
    jwks = JWKSCache(cache_seconds=300, refetch_seconds=30, allow_http=True, monotonic=ticks)
    yield OIDCVerifier(ca.db, jwks, leeway_seconds=30)


def claims(**extra: Any) -> dict[str, Any]:
    base = {
        "sub": "repo:octo/app:ref:refs/heads/main",
        "aud": AUD,
        "repository": "octo/app",
        "repository_owner": "Octo",
        "run_id": "42",
        "ref": "refs/heads/main",
        "workflow": "build",
    }
    base.update(extra)
    return base


def refused(verifier: OIDCVerifier, token: str) -> CAError:
    with pytest.raises(CAError) as info:
        verifier.verify(token)
    return info.value


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_valid_token_makes_a_caller(
    verifier: OIDCVerifier, oidc_issuer: OIDCIssuer, alg: str
) -> None:
    found = verifier.verify(oidc_issuer.token(claims(), alg=alg))
    assert found.identity == "oidc:ci:repo:octo/app:ref:refs/heads/main"
    assert found.policy.allowed_names == ("octo-42.ci.example.test",)
    credential = dict(found.credential)
    assert credential["repository"] == "octo/app" and credential["workflow"] == "build"
    assert credential["jti"] == found.jti and credential["provisioner"] == "ci"
    verifier.consume(found)
    # The same token again verifies, but its jti is spent.
    again = verifier.verify(oidc_issuer.token(claims(jti=found.jti), alg=alg))
    with pytest.raises(Unauthorized) as info:
        verifier.consume(again)
    assert info.value.rule == "oidc.replay"


def test_time_audience_issuer_and_claims(verifier: OIDCVerifier, oidc_issuer: OIDCIssuer) -> None:
    now = int(time.time())
    cases: list[tuple[dict[str, Any], type[CAError], str]] = [
        (claims(exp=now - 120, iat=now - 600, nbf=now - 600), Unauthorized, "oidc.expired"),
        (claims(nbf=now + 600), Unauthorized, "oidc.not_yet_valid"),
        (claims(iat=now + 600), Unauthorized, "oidc.not_yet_valid"),
        (claims(aud="someone-else"), Unauthorized, "oidc.audience"),
        (claims(iss="https://elsewhere.example.test"), Unauthorized, "oidc.issuer"),
        (claims(jti=None), Unauthorized, "oidc.claim_missing"),
        (claims(repository="evil/app"), Forbidden, "oidc.claim_mismatch"),
        (claims(repository=None), Forbidden, "oidc.claim_missing"),
        (claims(run_id="///"), Forbidden, "oidc.claim_label"),
        (claims(run_id=None), Forbidden, "oidc.claim_label"),
    ]
    for body, kind, rule in cases:
        exc = refused(verifier, oidc_issuer.token(body))
        assert isinstance(exc, kind) and exc.rule == rule, (body, exc, exc.rule)
        assert rule in exc.detail


def test_leeway_accepts_a_token_just_expired(
    verifier: OIDCVerifier, oidc_issuer: OIDCIssuer
) -> None:
    now = int(time.time())
    found = verifier.verify(oidc_issuer.token(claims(exp=now - 5, iat=now - 300, nbf=now - 300)))
    assert found.subject.startswith("repo:")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_forged_signatures_and_algorithms(verifier: OIDCVerifier, oidc_issuer: OIDCIssuer) -> None:
    rsa = oidc_issuer.keys["RS256"]
    # A key not in the JWKS, claiming a kid that is: the signature fails.
    stranger = new_key("RS256")
    exc = refused(verifier, oidc_issuer.token(claims(), key=stranger, kid=rsa.kid))
    assert exc.rule == "oidc.signature"
    # alg none, with and without a kid.
    for kid in (rsa.kid, None):
        exc = refused(verifier, unsigned_token(oidc_issuer.claims(**claims()), kid=kid))
        assert isinstance(exc, Unauthorized) and exc.rule == "oidc.algorithm"
    # HS256 with the issuer's public key (PEM, as everyone can have it) as the secret.
    pem = rsa.private.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        header = _b64(json.dumps({"alg": alg, "kid": rsa.kid, "typ": "JWT"}).encode())
        payload = _b64(json.dumps(oidc_issuer.claims(**claims())).encode())
        mac = hmac.new(pem, f"{header}.{payload}".encode(), digest).digest()
        exc = refused(verifier, f"{header}.{payload}.{_b64(mac)}")
        assert exc.rule == "oidc.algorithm", alg
    # An RS256 header over an ES256 key's kid: the key decides the algorithm.
    es = oidc_issuer.keys["ES256"]
    exc = refused(verifier, oidc_issuer.token(claims(), alg="RS256", kid=es.kid))
    assert exc.rule == "oidc.algorithm"
    assert refused(verifier, "a.b.c").rule == "oidc.malformed"


def test_unknown_kid_refetch_is_rate_limited(
    verifier: OIDCVerifier, oidc_issuer: OIDCIssuer, ticks: Ticks
) -> None:
    verifier.verify(oidc_issuer.token(claims()))
    assert oidc_issuer.jwks_fetches == 1
    for i in range(20):
        exc = refused(verifier, oidc_issuer.token(claims(), kid=f"made-up-{i}"))
        assert exc.rule == "oidc.unknown_kid"
    # The first unknown kid came within the window of the first fetch: no refetch at all.
    assert oidc_issuer.jwks_fetches == 1
    ticks.now += 31
    for i in range(20):
        refused(verifier, oidc_issuer.token(claims(), kid=f"again-{i}"))
    assert oidc_issuer.jwks_fetches == 2


def test_key_rotation(verifier: OIDCVerifier, oidc_issuer: OIDCIssuer, ticks: Ticks) -> None:
    verifier.verify(oidc_issuer.token(claims()))
    old = oidc_issuer.rotate()
    ticks.now += 31
    # The new kid is unknown to the cache: one refetch, and the new key works.
    found = verifier.verify(oidc_issuer.token(claims(), alg="ES256"))
    assert found.subject and oidc_issuer.jwks_fetches == 2
    # The old key left the JWKS: its tokens are refused now (its kid is unknown).
    ticks.now += 31
    exc = refused(verifier, oidc_issuer.token(claims(), key=old["RS256"]))
    assert exc.rule == "oidc.unknown_kid"


def test_the_cache_expires(ca: Core, oidc_issuer: OIDCIssuer, ticks: Ticks) -> None:
    cache = JWKSCache(cache_seconds=60, refetch_seconds=30, allow_http=True, monotonic=ticks)
    kid = oidc_issuer.keys["EdDSA"].kid
    cache.key(oidc_issuer.url, None, kid)
    cache.key(oidc_issuer.url, None, kid)
    assert (oidc_issuer.jwks_fetches, oidc_issuer.discovery_fetches) == (1, 1)
    ticks.now += 61
    cache.key(oidc_issuer.url, None, kid)
    assert oidc_issuer.jwks_fetches == 2


def test_an_http_jwks_is_refused_without_the_flag(oidc_issuer: OIDCIssuer) -> None:
    cache = JWKSCache(cache_seconds=60, refetch_seconds=30, allow_http=False)
    with pytest.raises(CAError) as info:
        cache.key(oidc_issuer.url, None, oidc_issuer.keys["RS256"].kid)
    assert info.value.rule == "oidc.jwks_fetch"
    assert oidc_issuer.jwks_fetches == 0


def _spec(**extra: Any) -> ProvisionerSpec:
    base: dict[str, Any] = {
        "name": "p",
        "issuer": "https://issuer.example.test",
        "audience": AUD,
        "allowed_names": ("{repo}.example.test",),
    }
    base.update(extra)
    return ProvisionerSpec(**base)


def test_provisioner_checks(ca: Core) -> None:
    service = ProvisionerService(ca.db)

    def create(spec: ProvisionerSpec, *, allow_http: bool = False) -> Any:
        return service.create(
            spec,
            ADMIN,
            allow_http=allow_http,
            known_profiles=ca.settings.profiles,
            known_authorities={a.name for a in ca.list_authorities()},
        )

    bad = [
        (_spec(issuer="http://issuer.example.test"), "provisioner.https"),
        (_spec(jwks_uri="http://issuer.example.test/jwks"), "provisioner.https"),
        (_spec(allowed_names=("{",)), "provisioner.placeholder"),
        (_spec(profiles=("nope",)), "provisioner.unknown_profile"),
        (_spec(authorities=("nope",)), "provisioner.unknown_authority"),
        (_spec(preset="github-actions", issuer=None), "provisioner.preset_claims"),
        (_spec(name="Bad:Name"), None),
        (_spec(claims={"ref": 3}), None),
        (_spec(claims={"ref": []}), None),
        (_spec(allowed_names=()), None),
        (_spec(max_validity_days=0), None),
        (_spec(issuer="https://issuer.example.test/?q=1"), None),
        (_spec(issuer="https://[::1"), None),
        (_spec(issuer="https://issuer.example.test:port"), None),
        (_spec(issuer="https://user@issuer.example.test"), None),
    ]
    for spec, rule in bad:
        with pytest.raises(BadRequest) as info:
            create(spec)
        assert info.value.rule == rule, (spec, info.value)
    assert service.list() == []
    made = create(_spec(issuer="http://127.0.0.1:1"), allow_http=True)
    assert made.issuer == "http://127.0.0.1:1"
    with pytest.raises(Conflict) as conflict:
        create(_spec())
    assert conflict.value.rule == "provisioner.exists"
    gh = create(
        _spec(name="gh", preset="github-actions", issuer=None, claims={"repository": "o/r"})
    )
    assert gh.issuer == "https://token.actions.githubusercontent.com"
    gl = create(
        _spec(
            name="gl",
            preset="gitlab",
            issuer="https://gitlab.example.test",
            claims={"project_path": ["g/a", "g/b"]},
        )
    )
    assert gl.issuer == "https://gitlab.example.test" and gl.claims["project_path"] == (
        "g/a",
        "g/b",
    )
    assert [p.name for p in service.list()] == ["gh", "gl", "p"]
    assert service.delete("gh", ADMIN).name == "gh"
    assert [p.name for p in service.list()] == ["gl", "p"]
    actions = [e.action for e in ca.catalog.audit_events(limit=50)]
    assert actions.count("provisioner.create") == 3 and actions.count("provisioner.delete") == 1


def test_a_jwks_body_is_bounded(oidc_issuer: OIDCIssuer) -> None:
    oidc_issuer.extra_jwks = [{"kty": "oct", "k": "A" * (300 * 1024)}]
    cache = JWKSCache(cache_seconds=60, refetch_seconds=30, allow_http=True)
    with pytest.raises(Unavailable) as info:
        cache.key(oidc_issuer.url, None, oidc_issuer.keys["RS256"].kid)
    assert "bytes" in info.value.detail and info.value.rule == "oidc.jwks_fetch"


def test_symmetric_keys_in_a_jwks_are_never_used(oidc_issuer: OIDCIssuer) -> None:
    oidc_issuer.extra_jwks = [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]
    cache = JWKSCache(cache_seconds=60, refetch_seconds=30, allow_http=True)
    assert cache.key(oidc_issuer.url, None, oidc_issuer.keys["RS256"].kid).key_id
    with pytest.raises(Unauthorized) as info:
        cache.key(oidc_issuer.url, None, "hmac")
    assert info.value.rule == "oidc.unknown_kid"


def test_an_unreachable_issuer_is_unavailable_and_rate_limited(ticks: Ticks) -> None:
    calls: list[str] = []

    def down(url: str) -> Any:
        calls.append(url)
        raise Unavailable("down", rule="oidc.jwks_fetch")

    cache = JWKSCache(
        cache_seconds=60, refetch_seconds=30, allow_http=True, fetch=down, monotonic=ticks
    )
    for _ in range(5):
        with pytest.raises(Unavailable):
            cache.key("https://issuer.example.test", None, "k")
    assert len(calls) == 1
    ticks.now += 31
    with pytest.raises(Unavailable):
        cache.key("https://issuer.example.test", None, "k")
    assert len(calls) == 2
