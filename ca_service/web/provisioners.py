"""/api/v1/provisioners: the OIDC provisioners (admin only). Thin, like web/api.py: the checks
live in ca_service.oidc.provisioners, the same ones `ca-service provisioner` runs."""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from ca_service import api_models as wire
from ca_service.api_models import ProvisionerList, ProvisionerRequest
from ca_service.domain import Role
from ca_service.errors import BadRequest, Conflict, NotFound
from ca_service.oidc.provisioners import ProvisionerSpec
from ca_service.web.auth import actor_for_request, require
from ca_service.web.contract import Answer, answer, operation
from ca_service.web.extensions import core, provisioners, settings

bp = Blueprint("provisioners", __name__, url_prefix="/api/v1")


@bp.post("/provisioners")
@require(Role.ADMIN)
@operation(
    "Create an OIDC provisioner (admin)",
    description="Which issuer's ID tokens (audience, claims) may ask for certificates, for "
    "which names. Issuers must be https (unless oidc_allow_http_issuers). Audited as "
    "provisioner.create.",
    tags=("provisioners",),
    body=ProvisionerRequest,
    body_required=True,
    answers={201: Answer("Created", wire.Provisioner)},
    raises=(BadRequest, Conflict),
)
def create_provisioner(body: ProvisionerRequest) -> Response:
    ca = core()
    spec = ProvisionerSpec(
        name=body.name,
        type=body.type or "oidc",
        preset=body.preset,
        issuer=body.issuer,
        audience=body.audience,
        jwks_uri=body.jwks_uri,
        claims=body.claims,
        allowed_names=tuple(body.allowed_names),
        profiles=tuple(body.profiles) if body.profiles is not None else None,
        max_validity_days=body.max_validity_days,
        authorities=tuple(body.authorities) if body.authorities is not None else None,
    )
    record = provisioners().create(
        spec,
        actor_for_request(),
        allow_http=settings().oidc_allow_http_issuers,
        known_profiles=ca.settings.profiles,
        known_authorities={a.name for a in ca.list_authorities()},
    )
    response = answer(wire.provisioner(record), 201)
    response.headers["Location"] = url_for("provisioners.get_provisioner", name=record.name)
    return response


@bp.get("/provisioners")
@require(Role.ADMIN)
@operation(
    "List the OIDC provisioners (admin)",
    tags=("provisioners",),
    answers={200: Answer("Provisioners", ProvisionerList)},
)
def list_provisioners() -> Response:
    items = [wire.provisioner(r) for r in provisioners().list()]
    return answer(ProvisionerList(items=items))


@bp.get("/provisioners/<name>")
@require(Role.ADMIN)
@operation(
    "One OIDC provisioner (admin)",
    tags=("provisioners",),
    answers={200: Answer("The provisioner", wire.Provisioner)},
    raises=(NotFound,),
)
def get_provisioner(name: str) -> Response:
    return answer(wire.provisioner(provisioners().get(name)))


@bp.delete("/provisioners/<name>")
@require(Role.ADMIN)
@operation(
    "Delete an OIDC provisioner (admin)",
    description="Its tokens are refused from then on; certificates it issued stay valid. "
    "Audited as provisioner.delete.",
    tags=("provisioners",),
    answers={200: Answer("The deleted provisioner", wire.Provisioner)},
    raises=(NotFound,),
)
def delete_provisioner(name: str) -> Response:
    record = provisioners().delete(name, actor_for_request())
    return answer(wire.provisioner(record))
