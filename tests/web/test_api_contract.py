"""Issue 10 item 5: the OpenAPI document is generated from the typed models and the views'
declared contracts, and covers the app as it runs.

Derived from the app itself, not from a list kept here: every rule of the URL map of
``create_app`` (the served app, with its services) is an operation of the document and the other
way round; every error status a view can answer, as its decorators say (``@require``, a request
model, what it declares it raises), is among its documented responses, as are the 400/413/503
that any request may get; and request bodies are refused exactly as the request models say.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ca_service import api_models
from ca_service.cli.output import certificate_json
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.web.app import create_app
from ca_service.web.contract import contract_of, error_statuses
from ca_service.web.openapi import PROTOCOL_BLUEPRINTS, document, path_template

from ..conftest import ADMIN

PATH_ARGUMENT = re.compile(r"\{[^}]+\}")


@pytest.fixture
def app(settings: Settings, ca: Core) -> Flask:
    """The served app, with its services, as gunicorn's workers build it."""
    return create_app(settings, authority=ca)


def _operations(app: Flask) -> Iterator[tuple[str, str, Any]]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(PROTOCOL_BLUEPRINTS):
            continue  # ACME's contract is RFC 8555 (tests/acme), not the OpenAPI document
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield path_template(rule.rule), method.lower(), app.view_functions[rule.endpoint]


def test_every_route_is_documented_and_every_operation_is_a_route(app: Flask) -> None:
    spec = document()
    served = {(path, method) for path, method, _ in _operations(app)}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented
    assert len(served) >= 25


def test_every_error_a_route_can_answer_is_documented(app: Flask) -> None:
    spec = document()
    checked = 0
    for path, method, view in _operations(app):
        assert contract_of(view) is not None, f"{method.upper()} {path} declares no contract"
        responses = spec["paths"][path][method]["responses"]
        expected = error_statuses(view) | {400, 413, 503}
        missing = sorted(str(s) for s in expected if str(s) not in responses)
        assert not missing, f"{method.upper()} {path}: {missing} not documented"
        for status in expected:
            assert responses[str(status)], (path, method, status)
        checked += 1
    assert checked == len(list(_operations(app)))


def test_authenticated_routes_document_401_and_403(app: Flask) -> None:
    """The statuses come from the decorators: a view behind @require answers 401 and 403."""
    spec = document()
    protected = [(p, m) for p, m, v in _operations(app) if hasattr(v, "ca_role")]
    # 11 before ACME, the four /api/v1/acme/eab operations (web/acme_admin.py) and the four
    # /api/v1/provisioners operations (web/provisioners.py).
    assert len(protected) == 19
    for path, method in protected:
        assert {"401", "403"} <= set(spec["paths"][path][method]["responses"]), (path, method)
    public = [(p, m) for p, m, v in _operations(app) if not hasattr(v, "ca_role")]
    for path, method in public:
        assert spec["paths"][path][method]["security"] == [], (path, method)


def test_request_bodies_are_the_models_that_validate_them(app: Flask) -> None:
    spec = document()
    bodies = {}
    for path, method, view in _operations(app):
        contract = contract_of(view)
        assert contract is not None
        op = spec["paths"][path][method]
        if contract.body is None:
            assert "requestBody" not in op or "application/json" not in str(op["requestBody"])
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{contract.body.__name__}"}
        assert {"400", "413", "415"} <= set(op["responses"])
        bodies[(path, method)] = contract.body
    assert set(bodies.values()) == set(api_models.REQUEST_MODELS)


@pytest.mark.parametrize("model", api_models.REQUEST_MODELS, ids=lambda m: m.__name__)
def test_request_models_are_strict_and_refuse_unknown_fields(model: type[BaseModel]) -> None:
    assert model.model_config.get("strict") is True
    assert model.model_config.get("extra") == "forbid"
    schema = document()["components"]["schemas"][model.__name__]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(model.model_fields)
    assert set(schema.get("required", [])) == {
        n for n, f in model.model_fields.items() if f.is_required()
    }
    with pytest.raises(ValidationError):
        model.model_validate({"not_a_field": "x"})


def test_strict_models_refuse_what_json_would_coerce() -> None:
    for bad in ({"validity_days": "30"}, {"validity_days": True}, {"validity_days": 1.5}):
        with pytest.raises(ValidationError):
            api_models.IssueRequest.model_validate(bad)
    with pytest.raises(ValidationError):
        api_models.IssueRequest.model_validate({"sans": "a.example.test"})
    with pytest.raises(ValidationError):
        api_models.TokenRequest.model_validate({"name": "x", "role": "reader", "profiles": [1]})


def test_the_document_is_generated_not_written() -> None:
    """No shape is spelt out in openapi.py: its components are the models' JSON Schema."""
    source = Path(api_models.__file__).with_name("web").joinpath("openapi.py").read_text()
    for field in ("fingerprint_sha256", "allowed_subjects", "fullchain", "next_cursor"):
        assert field not in source
    schemas = document()["components"]["schemas"]
    for model in (*api_models.REQUEST_MODELS, *api_models.RESPONSE_MODELS):
        assert model.__name__ in schemas
    assert set(schemas["Certificate"]["properties"]) == set(api_models.Certificate.model_fields)
    assert "allowed_subjects" in schemas["TokenPolicy"]["properties"]
    for field in ("chain", "fullchain", "root"):
        assert field in schemas["CertificateWithPem"]["required"]


def _schema_validator(name: str) -> jsonschema.Draft202012Validator:
    spec = document()
    registry: Registry[Any] = Registry().with_resource(
        "urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry
    )


def test_the_cli_record_is_the_api_record(ca: Core) -> None:
    """What the CLI prints with --json (cli.output.certificate_json) is the API's
    Certificate: it validates against the document, and it is the issuance answer less the PEM."""
    result = ca.issue_with_new_key(ADMIN, common_name="cli.contract.example.test")
    now = ca.clock.now()
    record = certificate_json(result.record, now)
    _schema_validator("Certificate").validate(record)
    answer = api_models.as_json(api_models.issued(result, now))
    _schema_validator("IssuedCertificate").validate(answer)
    pem_fields = {"certificate", "chain", "fullchain", "root", "private_key"}
    assert {k: v for k, v in answer.items() if k not in pem_fields} == record
    assert answer["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert record["not_after"].endswith("Z") and record["status"] == "valid"
    # A certificate whose key was not made here has no private_key member at all.
    renewed = ca.renew(result.record.serial, ADMIN, authority=result.record.authority)
    assert "private_key" not in api_models.as_json(api_models.issued(renewed, now))
