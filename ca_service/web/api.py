"""The /api/v1 endpoints. Kept thin so that every front end gets the same behaviour from the
core: each handler validates its input (its declared request model), authenticates the caller,
calls the core and answers through a response model; rules live below, not here."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, request, url_for

from ca_service import api_models as wire
from ca_service.api_models import (
    AuditPage,
    AuthorityList,
    AuthorityRevokeRequest,
    CertificatePage,
    CertificateWithPem,
    IssueRequest,
    RenewRequest,
    RevokeRequest,
    TokenList,
    TokenRequest,
)
from ca_service.domain import (
    Actor,
    CertificateFilter,
    CertStatus,
    IssuedCertificate,
    KeyType,
    RevocationReason,
    Role,
)
from ca_service.errors import BadRequest, Conflict, Forbidden, NotFound, PolicyRejected
from ca_service.policy import authorization
from ca_service.web.auth import actor_for_request, principal, require
from ca_service.web.body import decode_cursor, encode_cursor, int_arg
from ca_service.web.contract import Answer, answer, operation, query_param
from ca_service.web.extensions import core, tokens

api = Blueprint("api", __name__, url_prefix="/api/v1")

PEM_CHAIN = "application/pem-certificate-chain"
PEM_FILE = "application/x-pem-file"
_TEXT = {"schema": {"type": "string"}}
_LOCATION = {"Location": {"schema": {"type": "string"}}}
# What a handler that looks a certificate up and acts on it may meet in the core: a bad or
# ambiguous serial, none such, a policy or rule refusal, a state that forbids the action.
_CERTIFICATE_ERRORS = (BadRequest, NotFound, PolicyRejected, Forbidden, Conflict)


def _wants_pem() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", PEM_CHAIN, PEM_FILE])
    return (
        best in (PEM_CHAIN, PEM_FILE)
        and request.accept_mimetypes[best] > request.accept_mimetypes["application/json"]
    )


@api.post("/certificates")
@require(Role.ISSUER, oidc_operation="issue", confirm_in_store=True)
@operation(
    "Issue a certificate",
    description="From a CSR, or with a key pair generated here. Needs the issuer or admin "
    "role; an issuer token is held to its policy. With Accept: "
    "application/pem-certificate-chain the answer is the PEM chain (preceded by the private "
    "key, as application/x-pem-file, when the key was generated here).",
    tags=("certificates",),
    body=IssueRequest,
    answers={
        201: Answer(
            "Issued and stored",
            wire.IssuedCertificate,
            media={PEM_CHAIN: _TEXT, PEM_FILE: _TEXT},
            headers=_LOCATION,
        )
    },
    raises=_CERTIFICATE_ERRORS,
)
def issue_certificate(body: IssueRequest) -> Response:
    ca = core()
    actor = actor_for_request()
    profile: str = body.profile or "server"
    if body.csr is not None:
        if body.common_name is not None or body.key_type is not None:
            raise BadRequest(
                "with a csr, the names and key come from the CSR; drop common_name and key_type"
            )
        result = ca.issue_from_csr(
            body.csr,
            actor,
            extra_names=body.sans or (),
            profile=profile,
            validity_days=body.validity_days,
            authority=body.authority,
        )
    else:
        if not body.common_name and not body.sans:
            raise BadRequest("send a csr, or common_name and/or sans for a key generated here")
        result = ca.issue_with_new_key(
            actor,
            common_name=body.common_name,
            names=body.sans or (),
            key_type=KeyType.parse(body.key_type or "ecdsa-p256"),
            profile=profile,
            validity_days=body.validity_days,
            authority=body.authority,
        )
    return _created(result)


def _created(result: IssuedCertificate) -> Response:
    """201 with the new certificate (PEM when asked for) and its Location."""
    # What url_for("api.get_certificate", serial=...) gives (tests/web/test_api_answers.py
    # holds them equal, under a mount point too), without its 2.4 % of an issuance's time.
    location = f"{request.script_root}{api.url_prefix}/certificates/{result.record.serial}"
    if _wants_pem():
        return _pem_response(result, 201, location)
    response = answer(wire.issued(result, core().clock.now()), 201)
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
@operation(
    "List certificates, newest first",
    tags=("certificates",),
    query=(
        query_param(
            "status",
            "valid, revoked or expired",
            {"type": "string", "enum": [s.value for s in CertStatus]},
        ),
        query_param(
            "q",
            "Case-insensitive substring of the common name or of a SAN written as"
            " kind:value (dns:, ip:, email:, uri:); % _ and \\ are plain characters."
            " Terms of 3 or more characters search every certificate through an index."
            " Shorter terms search one window of 20,000 certificates, newest first, per"
            " request: a page may then hold fewer items than limit, even none, while"
            " next_cursor is set; follow next_cursor until it is null to see every match.",
        ),
        query_param("expires_before", "ISO 8601 time", {"type": "string", "format": "date-time"}),
        query_param("authority", "Authority name"),
        query_param(
            "limit",
            "Page size (1-500, default 100)",
            {"type": "integer", "minimum": 1, "maximum": 500},
        ),
        query_param("cursor", "next_cursor of the previous page"),
    ),
    answers={200: Answer("A page", CertificatePage)},
    raises=(BadRequest,),
)
def list_certificates() -> Response:
    ca = core()
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
    records, next_id = ca.catalog.list_certificates(flt, now)
    page = CertificatePage(
        items=[wire.certificate(r, now) for r in ca.catalog.with_acme_orders(records)],
        next_cursor=encode_cursor(next_id) if next_id is not None else None,
    )
    return answer(page)


def _parse_time(text: str, name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@api.get("/certificates/<serial>")
@require(Role.READER)
@operation(
    "One certificate (JSON, or PEM with Accept: application/pem-certificate-chain)",
    tags=("certificates",),
    query=(query_param("authority", "Authority, when a serial is ambiguous"),),
    answers={200: Answer("The certificate", CertificateWithPem, media={PEM_CHAIN: _TEXT})},
    raises=(BadRequest, NotFound, Conflict),
)
def get_certificate(serial: str) -> Response:
    ca = core()
    record = ca.get_certificate(serial, request.args.get("authority") or None)
    record = ca.catalog.with_acme_orders([record])[0]
    pem = x509.load_der_x509_certificate(record.der).public_bytes(serialization.Encoding.PEM)
    chain, root = ca.issuer_chain(record.authority)
    if _wants_pem():
        return Response(pem.decode() + "".join(chain), mimetype=PEM_CHAIN)
    data = wire.certificate_with_pem(record, ca.clock.now(), pem.decode(), chain, root)
    return answer(data)


@api.post("/certificates/<serial>/revoke")
@require(Role.ISSUER)
@operation(
    "Revoke a certificate",
    description="Admin, or the issuer token that issued it. Same reason again is a no-op; "
    "another reason is a conflict, except from certificateHold.",
    tags=("certificates",),
    body=RevokeRequest,
    answers={200: Answer("The updated record", wire.Certificate)},
    raises=_CERTIFICATE_ERRORS,
)
def revoke_certificate(serial: str, body: RevokeRequest) -> Response:
    reason = RevocationReason.parse(body.reason or "unspecified")
    ca = core()
    who = principal()
    record = ca.get_certificate(serial, body.authority)
    updated = ca.revoke(
        record.serial,
        reason,
        actor_for_request(),
        authority=record.authority,
        requester_only=authorization.revokes_only_own(who),
    )
    return answer(wire.certificate(updated, ca.clock.now()))


@api.post("/certificates/<serial>/renew")
@require(None, oidc_operation="renew")
@operation(
    "Renew a certificate: a successor with the same names and profile",
    description="For a new CSR's key, or the same public key. Allowed to the certificate "
    "itself over mutual TLS (HTTPS with that client certificate and no Authorization header; "
    "no role needed), to admins, and to the issuer token that issued it. The old record's "
    "successor is the new serial. A revoked certificate cannot be renewed (409); as a client "
    "certificate it is refused at once (401).",
    tags=("certificates",),
    body=RenewRequest,
    answers={
        201: Answer(
            "The successor, issued and stored",
            wire.IssuedCertificate,
            media={PEM_CHAIN: _TEXT},
            headers=_LOCATION,
        )
    },
    raises=_CERTIFICATE_ERRORS,
)
def renew_certificate(serial: str, body: RenewRequest) -> Response:
    """A successor with the same names and profile, for a new CSR's key or the same key.

    Allowed to the certificate itself over mutual TLS (a client may renew its own credential
    before it expires, whatever its mapped role), to admins, and to the issuer that issued it.
    """
    ca = core()
    who = principal()
    record = ca.get_certificate(serial, body.authority)
    actor = actor_for_request()
    if authorization.check_may_renew(who, record) is authorization.Renewal.SELF:
        # The core keeps names, profile and authority; only the profile's limits apply.
        actor = Actor(who.identity, actor.request_id, actor.client_address)
    result = ca.renew(
        record.serial,
        actor,
        csr=body.csr,
        authority=record.authority,
        validity_days=body.validity_days,
    )
    return _created(result)


@api.get("/authorities")
@require(Role.READER)
@operation(
    "The authorities this service holds",
    tags=("authorities",),
    answers={200: Answer("Authorities", AuthorityList)},
)
def list_authorities() -> Response:
    ca = core()
    now = ca.clock.now()
    items = AuthorityList(items=[wire.authority(a, now) for a in ca.list_authorities()])
    return answer(items)


@api.post("/authorities/<name>/revoke")
@require(Role.ADMIN)
@operation(
    "Revoke an issuing authority (admin)",
    description="Lists the authority's certificate in its root's CRL and OCSP answers; from "
    "then on issuance from it is refused (409, rule authority.revoked) and /readyz reports it "
    "when it is the default. Final: certificateHold is refused, and so is a root (403, rule "
    "authority.revoke.root: a root cannot be listed in its own CRL). Same reason again is a "
    "no-op; another reason is a conflict. Audited as authority.revoke. A CA's certificate is "
    "never revoked through /api/v1/certificates/{serial}/revoke (403, rule "
    "revoke.authority_certificate).",
    tags=("authorities",),
    body=AuthorityRevokeRequest,
    body_required=True,
    answers={200: Answer("The authority, revoked", wire.Authority)},
    raises=(BadRequest, NotFound, Forbidden, Conflict),
)
def revoke_authority(name: str, body: AuthorityRevokeRequest) -> Response:
    """Revoke an issuing CA: an explicit admin action, never the leaf endpoint (see the core)."""
    reason = RevocationReason.parse(body.reason)
    ca = core()
    record = ca.revoke_authority(name, reason, actor_for_request())
    return answer(wire.authority(record, ca.clock.now()))


@api.post("/tokens")
@require(Role.ADMIN)
@operation(
    "Create an API token (admin); the token is shown once",
    tags=("tokens",),
    body=TokenRequest,
    body_required=True,
    answers={201: Answer("Created", wire.Token)},
    raises=(BadRequest,),
)
def create_token(body: TokenRequest) -> Response:
    role = Role.parse(body.role)
    policy = authorization.build_policy(
        role,
        names=body.allowed_names,
        profiles=body.profiles,
        max_validity_days=body.max_validity_days,
        authorities=body.authorities,
        allow_wildcards=bool(body.allow_wildcards),
        subjects=body.allowed_subjects,
    )
    ca = core()
    authorization.check_token_targets(
        policy, ca.settings.profiles, {a.name for a in ca.list_authorities()}
    )
    expires_at = None
    if body.expires_in_days is not None:
        days = body.expires_in_days
        if not 1 <= days <= 3650:
            raise BadRequest("expires_in_days must be between 1 and 3650")
        expires_at = core().clock.now() + dt.timedelta(days=days)
    plain, record = tokens().create(
        body.name, role, policy, actor_for_request(), expires_at=expires_at
    )
    data = wire.token(record, core().clock.now(), secret=plain)
    response = answer(data, 201)
    response.headers["Location"] = url_for("api.list_tokens") + "/" + record.id
    return response


@api.get("/tokens")
@require(Role.ADMIN)
@operation(
    "List API tokens (admin); secrets are never shown",
    tags=("tokens",),
    answers={200: Answer("Tokens", TokenList)},
)
def list_tokens() -> Response:
    now = core().clock.now()
    return answer(TokenList(items=[wire.token(t, now) for t in tokens().list()]))


@api.delete("/tokens/<token_id>")
@require(Role.ADMIN)
@operation(
    "Revoke an API token (admin)",
    tags=("tokens",),
    answers={200: Answer("The revoked token", wire.Token)},
    raises=(NotFound,),
)
def revoke_token(token_id: str) -> Response:
    record = tokens().revoke(token_id, actor_for_request())
    return answer(wire.token(record, core().clock.now()))


@api.get("/audit")
@require(Role.ADMIN)
@operation(
    "The audit log (admin), newest first",
    tags=("audit",),
    query=(
        query_param("actor", "e.g. token:<id>"),
        query_param(
            "action",
            "e.g. certificate.issue, certificate.revoke, token.create, auth.refused, "
            "policy.refused",
        ),
        query_param(
            "limit", "Page size (1-500)", {"type": "integer", "minimum": 1, "maximum": 500}
        ),
        query_param("cursor", "next_cursor of the previous page"),
    ),
    answers={200: Answer("A page of events", AuditPage)},
    raises=(BadRequest,),
)
def list_audit() -> Response:
    ca = core()
    limit = int_arg("limit", 100, 1, 500)
    events = ca.catalog.audit_events(
        actor=request.args.get("actor") or None,
        action=request.args.get("action") or None,
        after_id=decode_cursor(request.args.get("cursor")),
        limit=limit + 1,
    )
    page = list(events[:limit])
    next_cursor = encode_cursor(page[-1].id) if len(events) > limit and page[-1].id else None
    data = AuditPage(items=[wire.audit(e) for e in page], next_cursor=next_cursor)
    return answer(data)
