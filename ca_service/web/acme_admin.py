"""The admin side of ACME: External Account Binding keys (/api/v1/acme/eab).

Thin, like the rest of the API: the body is checked by its model, the caller by ``require``
(admin only, refusals audited there), and the rules (name, grant, known profiles and
authorities) by ca_service.acme.eab.EABKeys, which the CLI calls the same way.
"""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from ca_service import api_models as wire
from ca_service.api_models import EABKeyList, EABKeyRequest
from ca_service.domain import Role
from ca_service.errors import BadRequest, NotFound
from ca_service.web.auth import actor_for_request, require
from ca_service.web.contract import Answer, answer, operation
from ca_service.web.extensions import core, eab_keys

acme_admin = Blueprint("acme_admin", __name__, url_prefix="/api/v1/acme")

_TAGS = ("acme",)


@acme_admin.post("/eab")
@require(Role.ADMIN)
@operation(
    "Create an External Account Binding key (admin); the HMAC key is shown once",
    description="An ACME client binds its new account with the kid and HMAC key (RFC 8555 "
    "section 7.3.4); the account may then order only what the key's grant allows, like an "
    "issuer token with the same grant. A key binds one account. Audited as acme.eab.create.",
    tags=_TAGS,
    body=EABKeyRequest,
    body_required=True,
    answers={
        201: Answer(
            "Created; hmac_key is in this answer only",
            wire.EABKey,
            headers={"Location": {"schema": {"type": "string"}}},
        )
    },
    raises=(BadRequest,),
)
def create_eab_key(body: EABKeyRequest) -> Response:
    ca = core()
    record, hmac_key = eab_keys().create(
        name=body.name,
        allowed_names=body.allowed_names,
        profiles=body.profiles,
        max_validity_days=body.max_validity_days,
        authorities=body.authorities,
        allow_wildcards=bool(body.allow_wildcards),
        actor=actor_for_request(),
        known_profiles=ca.settings.profiles,
        known_authorities={a.name for a in ca.list_authorities()},
    )
    response = answer(wire.eab_key(record, hmac_key=hmac_key), 201)
    response.headers["Location"] = url_for("acme_admin.get_eab_key", kid=record.kid)
    return response


@acme_admin.get("/eab")
@require(Role.ADMIN)
@operation(
    "List External Account Binding keys (admin), oldest first; HMAC keys are never shown",
    tags=_TAGS,
    answers={200: Answer("EAB keys", EABKeyList)},
)
def list_eab_keys() -> Response:
    items = [wire.eab_key(r) for r in eab_keys().list()]
    return answer(EABKeyList(items=items))


@acme_admin.get("/eab/<kid>")
@require(Role.ADMIN)
@operation(
    "One External Account Binding key (admin), without its HMAC key",
    tags=_TAGS,
    answers={200: Answer("The key", wire.EABKey)},
    raises=(NotFound,),
)
def get_eab_key(kid: str) -> Response:
    return answer(wire.eab_key(eab_keys().get(kid)))


@acme_admin.delete("/eab/<kid>")
@require(Role.ADMIN)
@operation(
    "Revoke an External Account Binding key (admin)",
    description="From then on it binds no account; an account it already bound stays. "
    "Revoking a revoked key changes nothing. Audited as acme.eab.revoke.",
    tags=_TAGS,
    answers={200: Answer("The key, revoked", wire.EABKey)},
    raises=(NotFound,),
)
def revoke_eab_key(kid: str) -> Response:
    record = eab_keys().revoke(kid, actor_for_request())
    return answer(wire.eab_key(record))
