"""The OpenAPI 3.1 description of the HTTP API, generated: the public contract, errors included.

Nothing here restates a shape. The schemas are the pydantic models of ``ca_service.api_models``
(the same ones that validate requests and build answers); the operations are the contracts each
view declares with ``web/contract.operation``, found through the app's URL map, so a route
cannot exist undocumented; each operation's error answers are those its decorators imply
(``@require``: 401/403, a body: 400/413/415, what it ``raises``) plus those any request may get.
apispec (marshmallow-code's maintained generator) assembles and checks the document: it refuses a
duplicate component and a malformed operation, and it resolves component references.
The only content written by hand is that of the answers that are not JSON (PEM, DER, OCSP),
declared next to their views.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from ca_service import __version__
from ca_service.api_models import REQUEST_MODELS, RESPONSE_MODELS
from ca_service.web.contract import JSON, Answer, Contract, contract_of, error_statuses
from ca_service.web.routes import register_routes

PROBLEM = {"$ref": "#/components/responses/Problem"}
UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
# Answers any operation may give besides its own: a URL (path or query) with a NUL or an unpaired
# surrogate, or a body over the size limit, is refused before any view runs (400, 413); and while
# the database is unreachable, anything that needs it answers 503 with Retry-After.
COMMON_RESPONSES: dict[int, dict[str, str]] = {400: PROBLEM, 413: PROBLEM, 503: UNAVAILABLE}
PATH_PARAMETERS = {"serial": "Hexadecimal serial (colons allowed)."}
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def path_template(rule: str) -> str:
    """A werkzeug rule (``/ca/<name>/crl``) as an OpenAPI path (``/ca/{name}/crl``)."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


class _Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every field (the name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _drop_null_defaults(schema: Any) -> Any:
    """An optional request field defaults to "not given", which is not the JSON value null."""
    if isinstance(schema, dict):
        return {
            k: _drop_null_defaults(v)
            for k, v in schema.items()
            if not (k == "default" and v is None)
        }
    if isinstance(schema, list):
        return [_drop_null_defaults(v) for v in schema]
    return schema


def _component_schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in REQUEST_MODELS]
    models += [(m, "serialization") for m in RESPONSE_MODELS]
    _, top = models_json_schema(
        models, ref_template="#/components/schemas/{model}", schema_generator=_Schemas
    )
    schemas: dict[str, Any] = _drop_null_defaults(top["$defs"])
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _answer(answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.headers:
        out["headers"] = answer.headers
    content: dict[str, Any] = {}
    if answer.model is not None:
        content[answer.model_media] = {"schema": _ref(answer.model)}
    content.update(answer.media)
    if content:
        out["content"] = content
    return out


def _operation(rule_arguments: list[str], view: Any, contract: Contract) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": contract.summary}
    if contract.description:
        op["description"] = contract.description
    op["tags"] = list(contract.tags)
    if not hasattr(view, "ca_role"):
        op["security"] = []
    elif view.ca_role is None:
        # Any authenticated caller, the certificate itself over mutual TLS included.
        op["security"] = [*BEARER, {"mutualTLS": []}]
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            **({"description": PATH_PARAMETERS[name]} if name in PATH_PARAMETERS else {}),
            "schema": {"type": "string"},
        }
        for name in rule_arguments
    ]
    parameters += [dict(q) for q in contract.query]
    if parameters:
        op["parameters"] = parameters
    if contract.body is not None:
        op["requestBody"] = {
            "required": contract.body_required,
            "content": {JSON: {"schema": _ref(contract.body)}},
        }
    responses: dict[str, Any] = {str(s): _answer(a) for s, a in contract.answers.items()}
    for status in sorted(error_statuses(view)):
        responses.setdefault(str(status), PROBLEM)
    for status, response in COMMON_RESPONSES.items():
        if responses.get(str(status), PROBLEM) == PROBLEM:
            responses[str(status)] = response
    op["responses"] = responses
    return op


def _routes_app() -> Flask:
    """The app's routes without its services: enough to read the URL map and the views."""
    app = Flask("ca_service.openapi")
    register_routes(app)
    return app


@functools.cache
def _document() -> dict[str, Any]:
    spec = APISpec(
        title="ca-service",
        version=__version__,
        openapi_version="3.1.0",
        info={
            "description": "A self-hosted certificate authority. Errors are "
            "application/problem+json (RFC 9457), including 404 for a path not listed here and "
            "405 (with an Allow header) for a method a path does not list."
        },
        servers=[{"url": "/"}],
        # Over HTTPS (`serve --tls`) a client certificate of this CA may stand in for a token.
        security=[*BEARER, {"mutualTLS": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme(
        "mutualTLS",
        {
            "type": "mutualTLS",
            "description": "HTTPS with a client or peer certificate of this CA; the [[mtls]] "
            "rules of the configuration map it to a role and policy.",
        },
    )
    for name, schema in _component_schemas().items():
        spec.components.schema(name, schema)
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    spec.components.response(
        "Problem", {"description": "An error (RFC 9457)", "content": problem_content}
    )
    spec.components.response(
        "Unavailable",
        {
            "description": "The database is unavailable for now (a restart, a failover); "
            "nothing was changed, and the request may be retried after Retry-After seconds. "
            "Also: the service is not ready (no Retry-After).",
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
            "content": problem_content,
        },
    )
    app = _routes_app()
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(PROTOCOL_BLUEPRINTS):
            continue
        view = app.view_functions[rule.endpoint]
        contract = contract_of(view)
        if contract is None:
            raise LookupError(f"the view of {rule.rule} declares no contract (web/contract.py)")
        template = path_template(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = _operation(_RULE_ARGUMENT.findall(rule.rule), view, contract)
            paths.setdefault(template, {})[method.lower()] = operation
    for template, operations in paths.items():
        spec.path(path=template, operations=operations)
    return spec.to_dict()


# Routes whose contract is not this document: ACME (RFC 8555) speaks JWS, not JSON bodies, and
# its clients read its directory, not OpenAPI; the admin UI (ui/) answers HTML to browsers.
PROTOCOL_BLUEPRINTS = ("acme.", "ui.")


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change theirs)."""
    return copy.deepcopy(_document())
