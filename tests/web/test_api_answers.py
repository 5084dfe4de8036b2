"""The API's JSON answers and a new certificate's Location, made without Flask's jsonify and
url_for (issue 15: both were on every issuance's path): the same text and the same URL as those
made, under a mount point too, on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient

from ca_service import api_models as wire
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import CallerPolicy, Role
from ca_service.tokens import TokenService
from ca_service.web.app import create_app

from ..conftest import ADMIN
from ..helpers import csr_pem, make_key


@pytest.fixture
def served(settings: Settings, ca: Core) -> Iterator[tuple[Flask, dict[str, str]]]:
    app = create_app(settings, authority=ca)
    admin, _ = TokenService(ca.db).create(
        "answers-équipe", Role.ADMIN, CallerPolicy.unrestricted(), ADMIN
    )
    yield app, {"Authorization": f"Bearer {admin}"}


def _issue(client: FlaskClient, auth: dict[str, str], mount: str = "") -> Any:
    name = "answer.example.test"
    body = {"csr": csr_pem(make_key(), name, [name]).decode()}
    return client.post(
        "/api/v1/certificates", json=body, headers=auth, base_url=f"http://localhost{mount}"
    )


@pytest.mark.parametrize("mount", ["", "/ca"])
def test_location_is_url_for_and_fetches_the_certificate(
    served: tuple[Flask, dict[str, str]], mount: str
) -> None:
    app, auth = served
    client = app.test_client()
    reply = _issue(client, auth, mount)
    assert reply.status_code == 201, reply.data
    serial = reply.json["serial"]
    with app.test_request_context(base_url=f"http://localhost{mount}"):
        expected = url_for("api.get_certificate", serial=serial)
    assert reply.headers["Location"] == expected == f"{mount}/api/v1/certificates/{serial}"
    fetched = client.get(
        expected.removeprefix(mount), headers=auth, base_url=f"http://localhost{mount}"
    )
    assert fetched.status_code == 200 and fetched.json["serial"] == serial


def test_issued_answer_is_the_models_json(served: tuple[Flask, dict[str, str]], ca: Core) -> None:
    app, auth = served
    reply = _issue(app.test_client(), auth)
    assert reply.status_code == 201 and reply.mimetype == "application/json"
    data = json.loads(reply.data)
    record = ca.get_certificate(data["serial"])
    # The optional member that was not given (the private key) is left out, not null.
    assert "private_key" not in data
    assert (
        data["sans"] == list(record.sans)
        and data["fingerprint_sha256"] == record.fingerprint_sha256
    )
    model = wire.IssuedCertificate.model_validate_json(reply.data)
    assert wire.as_json(model) == data


def test_new_key_answer_carries_the_key(
    served: tuple[Flask, dict[str, str]],
) -> None:
    app, auth = served
    reply = app.test_client().post(
        "/api/v1/certificates",
        json={"common_name": "bücher.example.test", "sans": ["dns:bücher.example.test"]},
        headers=auth,
    )
    assert reply.status_code == 201, reply.data
    data = json.loads(reply.data.decode("utf-8"))
    assert data["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert data["common_name"] == "xn--bcher-kva.example.test"
    assert data["sans"] == ["dns:xn--bcher-kva.example.test"]


def test_lists_and_errors_keep_their_shape(served: tuple[Flask, dict[str, str]]) -> None:
    app, auth = served
    client = app.test_client()
    _issue(client, auth)
    page = client.get("/api/v1/certificates?limit=1", headers=auth)
    assert page.status_code == 200 and page.mimetype == "application/json"
    assert set(page.json) >= {"items"} and len(page.json["items"]) == 1
    tokens = client.get("/api/v1/tokens", headers=auth)
    # Non-ASCII text is sent as UTF-8 (the JSON is pydantic-core's now, not json.dumps').
    assert tokens.status_code == 200 and "answers-équipe".encode() in tokens.data
    assert tokens.json["items"][0]["name"] == "answers-équipe"
    missing = client.get("/api/v1/certificates/abcdef", headers=auth)
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
