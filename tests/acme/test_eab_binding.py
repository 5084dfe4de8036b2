"""An EAB key made through the admin API binds an ACME account through newAccount, once.

End to end in one app (create_app with its real services, on SQLite and PostgreSQL): POST
/api/v1/acme/eab makes the key; an account key signs newAccount with the key's HMAC in its
externalAccountBinding (RFC 8555 section 7.3.4); the key then lists the account as bound, and
binds no other account; a revoked key and a wrong HMAC key bind nothing.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jwcrypto import jwk, jws
from jwcrypto.common import base64url_encode, json_encode

from ca_service.core.facade import Core
from ca_service.domain import CallerPolicy, Role
from ca_service.tokens import TokenService
from ca_service.web.app import create_app

from ..conftest import ADMIN, make_settings, new_ca

PUBLIC_URL = "https://127.0.0.1:8443"
NEW_ACCOUNT = f"{PUBLIC_URL}/acme/default/new-account"


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Any:
    settings = make_settings(tmp_path, db_url, public_url=PUBLIC_URL)
    ca = new_ca(settings)
    app = create_app(settings, authority=ca)
    admin, _ = TokenService(ca.db).create(
        "eab-admin", Role.ADMIN, CallerPolicy.unrestricted(), ADMIN
    )
    yield app, ca, admin
    ca.db.dispose()


def _nonce(client: FlaskClient) -> str:
    reply = client.head("/acme/default/new-nonce")
    assert reply.status_code == 200, reply.data
    return reply.headers["Replay-Nonce"]


def _binding(account: jwk.JWK, kid: str, hmac_key: str) -> dict[str, Any]:
    inner = jws.JWS(json.dumps(account.export_public(as_dict=True)).encode())
    inner.add_signature(
        jwk.JWK(kty="oct", k=hmac_key),
        alg="HS256",
        protected=json_encode({"alg": "HS256", "kid": kid, "url": NEW_ACCOUNT}),
    )
    result = json.loads(inner.serialize())
    assert isinstance(result, dict)
    return result


def _new_account(client: FlaskClient, account: jwk.JWK, binding: dict[str, Any]) -> Any:
    payload = {"termsOfServiceAgreed": True, "externalAccountBinding": binding}
    outer = jws.JWS(json.dumps(payload).encode())
    outer.add_signature(
        account,
        alg="ES256",
        protected=json_encode(
            {
                "alg": "ES256",
                "jwk": account.export_public(as_dict=True),
                "nonce": _nonce(client),
                "url": NEW_ACCOUNT,
            }
        ),
    )
    return client.post(
        "/acme/default/new-account",
        data=outer.serialize(),
        content_type="application/jose+json",
    )


def _make_key(client: FlaskClient, admin: str, **body: Any) -> dict[str, Any]:
    reply = client.post(
        "/api/v1/acme/eab",
        json={"name": "binding", "allowed_names": ["*.bind.example.test"], **body},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert reply.status_code == 201, reply.data
    data = reply.json
    assert isinstance(data, dict)
    return data


def _key(client: FlaskClient, admin: str, kid: str) -> dict[str, Any]:
    reply = client.get(f"/api/v1/acme/eab/{kid}", headers={"Authorization": f"Bearer {admin}"})
    assert reply.status_code == 200, reply.data
    data = reply.json
    assert isinstance(data, dict)
    return data


def test_a_key_binds_one_account_and_then_no_other(served: tuple[Flask, Core, str]) -> None:
    app, _, admin = served
    client = app.test_client()
    made = _make_key(client, admin)
    kid, hmac_key = made["kid"], made["hmac_key"]

    first = jwk.JWK.generate(kty="EC", crv="P-256")
    reply = _new_account(client, first, _binding(first, kid, hmac_key))
    assert reply.status_code == 201, reply.data
    account_id = reply.headers["Location"].rsplit("/", 1)[1]
    assert reply.json["externalAccountBinding"] == {"kid": kid}
    assert _key(client, admin, kid)["bound_account"] == account_id

    # Another account key with the same binding: refused, and the key stays bound to the first.
    second = jwk.JWK.generate(kty="EC", crv="P-256")
    refused = _new_account(client, second, _binding(second, kid, hmac_key))
    assert refused.status_code in (401, 403), refused.data
    assert "External Account Binding key" in refused.json["detail"]
    assert refused.json["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert _key(client, admin, kid)["bound_account"] == account_id


def test_a_revoked_key_or_a_wrong_hmac_key_binds_nothing(served: tuple[Flask, Core, str]) -> None:
    app, _, admin = served
    client = app.test_client()
    revoked = _make_key(client, admin, name="revoked")
    gone = client.delete(
        f"/api/v1/acme/eab/{revoked['kid']}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert gone.status_code == 200
    account = jwk.JWK.generate(kty="EC", crv="P-256")
    refused = _new_account(client, account, _binding(account, revoked["kid"], revoked["hmac_key"]))
    assert refused.status_code in (401, 403), refused.data
    assert "External Account Binding key" in refused.json["detail"]
    assert _key(client, admin, revoked["kid"])["bound_account"] is None

    live = _make_key(client, admin, name="guessed")
    wrong = base64url_encode(secrets.token_bytes(32))
    refused = _new_account(client, account, _binding(account, live["kid"], wrong))
    assert refused.status_code == 400, refused.data
    assert "EAB signature" in refused.json["detail"]
    assert _key(client, admin, live["kid"])["bound_account"] is None
    # The right key still binds afterwards: a failed attempt used nothing up.
    bound = _new_account(client, account, _binding(account, live["kid"], live["hmac_key"]))
    assert bound.status_code == 201, bound.data
    assert _key(client, admin, live["kid"])["bound_account"] is not None
