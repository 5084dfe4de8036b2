"""The /api/v1 endpoints: thin handlers that parse, authorize, call the core and serialize."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, jsonify, request, url_for

from ca_service.domain import (
    Actor,
    CertStatus,
    IssuedCertificate,
    KeyType,
    RevocationReason,
    Role,
)
from ca_service.errors import BadRequest
from ca_service.policy import authorization
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import (
    AuditRepository,
    CertificateFilter,
    CertificateRepository,
)
from ca_service.web import serialize
from ca_service.web.auth import actor_for_request, principal, require, tokens
from ca_service.web.body import decode_cursor, encode_cursor, int_arg, json_object
from ca_service.web.services import authority

api = Blueprint("api", __name__, url_prefix="/api/v1")

PEM_CHAIN = "application/pem-certificate-chain"
PEM_FILE = "application/x-pem-file"


def _wants_pem() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", PEM_CHAIN, PEM_FILE])
    return (
        best in (PEM_CHAIN, PEM_FILE)
        and request.accept_mimetypes[best] > request.accept_mimetypes["application/json"]
    )


@api.post("/certificates")
@require(Role.ISSUER)
def issue_certificate() -> Response:
    body = json_object(
        {
            "csr": str,
            "common_name": str,
            "sans": list,
            "key_type": str,
            "profile": str,
            "validity_days": int,
            "authority": str,
        }
    )
    ca = authority()
    actor = actor_for_request()
    profile: str = body.get("profile") or "server"
    validity_days: int | None = body.get("validity_days")
    issuing: str | None = body.get("authority")
    if body.get("csr") is not None:
        if body.get("common_name") is not None or body.get("key_type") is not None:
            raise BadRequest(
                "with a csr, the names and key come from the CSR; drop common_name and key_type"
            )
        result = ca.issue_from_csr(
            body["csr"],
            actor,
            extra_names=body.get("sans") or (),
            profile=profile,
            validity_days=validity_days,
            authority=issuing,
        )
    else:
        if not body.get("common_name") and not body.get("sans"):
            raise BadRequest("send a csr, or common_name and/or sans for a key generated here")
        result = ca.issue_with_new_key(
            actor,
            common_name=body.get("common_name"),
            names=body.get("sans") or (),
            key_type=KeyType.parse(body.get("key_type") or "ecdsa-p256"),
            profile=profile,
            validity_days=validity_days,
            authority=issuing,
        )
    return _created(result)


def _created(result: IssuedCertificate) -> Response:
    """201 with the new certificate (PEM when asked for) and its Location."""
    location = url_for("api.get_certificate", serial=result.record.serial)
    if _wants_pem():
        return _pem_response(result, 201, location)
    response = jsonify(serialize.issued(result, authority().clock.now()))
    response.status_code = 201
    response.headers["Location"] = location
    return response


def _pem_response(result: IssuedCertificate, status: int, location: str) -> Response:
    text = result.fullchain_pem
    mimetype = PEM_CHAIN
    if result.private_key_pem is not None:
        # The key was made here and exists nowhere else: hand it over with the chain.
        text = result.private_key_pem + text
        mimetype = PEM_FILE
    response = Response(text, status=status, mimetype=mimetype)
    response.headers["Location"] = location
    return response


@api.get("/certificates")
@require(Role.READER)
def list_certificates() -> Response:
    ca = authority()
    now = ca.clock.now()
    # A typed parameter given empty is refused like any other invalid value, not ignored.
    status_text = request.args.get("status")
    status = None
    if status_text is not None:
        try:
            status = CertStatus(status_text)
        except ValueError:
            raise BadRequest("status must be valid, revoked or expired") from None
    expires_before = None
    if request.args.get("expires_before") is not None:
        expires_before = _parse_time(request.args["expires_before"], "expires_before")
    q = request.args.get("q") or None
    if q is not None and len(q) > 255:
        raise BadRequest("q is longer than 255 characters")
    flt = CertificateFilter(
        authority=request.args.get("authority") or None,
        status=status,
        name=q,
        expires_before=expires_before,
        after_id=decode_cursor(request.args.get("cursor")),
        limit=int_arg("limit", 100, 1, 500),
    )
    with unit_of_work(ca.db) as s:
        records, next_id = CertificateRepository(s).list(flt, now)
    return jsonify(
        {
            "items": [serialize.certificate(r, now) for r in records],
            "next_cursor": encode_cursor(next_id) if next_id is not None else None,
        }
    )


def _parse_time(text: str, name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@api.get("/certificates/<serial>")
@require(Role.READER)
def get_certificate(serial: str) -> Response:
    ca = authority()
    record = ca.get_certificate(serial, request.args.get("authority") or None)
    data = serialize.certificate(record, ca.clock.now(), pem=True)
    chain, root = ca.issuer_chain(record.authority)
    if _wants_pem():
        return Response(data["certificate"] + "".join(chain), mimetype=PEM_CHAIN)
    return jsonify(serialize.with_chain(data, data["certificate"], chain, root))


@api.post("/certificates/<serial>/revoke")
@require(Role.ISSUER)
def revoke_certificate(serial: str) -> Response:
    body = json_object({"reason": str, "authority": str})
    reason = RevocationReason.parse(body.get("reason") or "unspecified")
    ca = authority()
    who = principal()
    record = ca.get_certificate(serial, body.get("authority"))
    updated = ca.revoke(
        record.serial,
        reason,
        actor_for_request(),
        authority=record.authority,
        requester_only=authorization.revokes_only_own(who),
    )
    return jsonify(serialize.certificate(updated, ca.clock.now()))


@api.post("/certificates/<serial>/renew")
@require(None)
def renew_certificate(serial: str) -> Response:
    """A successor with the same names and profile, for a new CSR's key or the same key.

    Allowed to the certificate itself over mutual TLS (a client may renew its own credential
    before it expires, whatever its mapped role), to admins, and to the issuer that issued it.
    """
    body = json_object({"csr": str, "validity_days": int, "authority": str})
    ca = authority()
    who = principal()
    record = ca.get_certificate(serial, body.get("authority"))
    actor = actor_for_request()
    if authorization.check_may_renew(who, record) is authorization.Renewal.SELF:
        # The core keeps names, profile and authority; only the profile's limits apply.
        actor = Actor(who.identity, actor.request_id, actor.client_address)
    result = ca.renew(
        record.serial,
        actor,
        csr=body.get("csr"),
        authority=record.authority,
        validity_days=body.get("validity_days"),
    )
    return _created(result)


@api.get("/authorities")
@require(Role.READER)
def list_authorities() -> Response:
    ca = authority()
    now = ca.clock.now()
    return jsonify({"items": [serialize.authority(a, now) for a in ca.list_authorities()]})


@api.post("/authorities/<name>/revoke")
@require(Role.ADMIN)
def revoke_authority(name: str) -> Response:
    """Revoke an issuing CA: an explicit admin action, never the leaf endpoint (see the core)."""
    body = json_object({"reason": str}, required=("reason",))
    reason = RevocationReason.parse(body["reason"])
    ca = authority()
    record = ca.revoke_authority(name, reason, actor_for_request())
    return jsonify(serialize.authority(record, ca.clock.now()))


@api.post("/tokens")
@require(Role.ADMIN)
def create_token() -> Response:
    body = json_object(
        {
            "name": str,
            "role": str,
            "allowed_names": list,
            "profiles": list,
            "max_validity_days": int,
            "authorities": list,
            "allow_wildcards": bool,
            "allowed_subjects": list,
            "expires_in_days": int,
        },
        required=("name", "role"),
    )
    role = Role.parse(body["role"])
    policy = authorization.build_policy(
        role,
        names=body.get("allowed_names"),
        profiles=body.get("profiles"),
        max_validity_days=body.get("max_validity_days"),
        authorities=body.get("authorities"),
        allow_wildcards=bool(body.get("allow_wildcards")),
        subjects=body.get("allowed_subjects"),
    )
    ca = authority()
    authorization.check_token_targets(
        policy, ca.settings.profiles, {a.name for a in ca.list_authorities()}
    )
    expires_at = None
    if body.get("expires_in_days") is not None:
        days = body["expires_in_days"]
        if not 1 <= days <= 3650:
            raise BadRequest("expires_in_days must be between 1 and 3650")
        expires_at = authority().clock.now() + dt.timedelta(days=days)
    plain, record = tokens().create(
        body["name"], role, policy, actor_for_request(), expires_at=expires_at
    )
    data = serialize.token(record, authority().clock.now())
    data["token"] = plain
    response = jsonify(data)
    response.status_code = 201
    response.headers["Location"] = url_for("api.list_tokens") + "/" + record.id
    return response


@api.get("/tokens")
@require(Role.ADMIN)
def list_tokens() -> Response:
    now = authority().clock.now()
    return jsonify({"items": [serialize.token(t, now) for t in tokens().list()]})


@api.delete("/tokens/<token_id>")
@require(Role.ADMIN)
def revoke_token(token_id: str) -> Response:
    record = tokens().revoke(token_id, actor_for_request())
    return jsonify(serialize.token(record, authority().clock.now()))


@api.get("/audit")
@require(Role.ADMIN)
def list_audit() -> Response:
    ca = authority()
    limit = int_arg("limit", 100, 1, 500)
    with unit_of_work(ca.db) as s:
        events = AuditRepository(s).list(
            actor=request.args.get("actor") or None,
            action=request.args.get("action") or None,
            after_id=decode_cursor(request.args.get("cursor")),
            limit=limit + 1,
        )
    page = list(events[:limit])
    next_cursor = encode_cursor(page[-1].id) if len(events) > limit and page[-1].id else None
    return jsonify({"items": [serialize.audit(e) for e in page], "next_cursor": next_cursor})
