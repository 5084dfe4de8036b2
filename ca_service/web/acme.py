"""The ACME routes (RFC 8555): thin, as every front end here is. Each view reads the raw body,
has it authenticated by acme/service.py, calls the ACME server and writes the answer with
the headers the RFC asks for (Replay-Nonce on every answer, Location, Link rel="index").

The protocol is RFC 8555's, not an OpenAPI contract: these routes are left out of
/openapi.json (web/openapi.py skips this blueprint). ACME is served only when public_url is
https (section 6.1): behind `serve --tls`, or a TLS-terminating proxy whose URL public_url is.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ca_service import metrics
from ca_service.acme.jws import SignedRequest
from ca_service.acme.problems import ACMEProblem, from_ca_error
from ca_service.acme.revocation import revoke_certificate
from ca_service.acme.server import ACMEServer
from ca_service.acme.service import RequestContext
from ca_service.domain import ACMEAccountRecord, Actor
from ca_service.errors import CAError
from ca_service.web.extensions import core

acme = Blueprint("acme", __name__, url_prefix="/acme")
log = logging.getLogger("ca_service.acme")

JOSE = "application/jose+json"
PROBLEM = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"


def server() -> ACMEServer:
    found = current_app.extensions["ca_acme"]
    assert isinstance(found, ACMEServer)
    return found


def _context() -> RequestContext:
    return RequestContext(g.get("request_id"), request.remote_addr)


def _authority(authority: str | None) -> str:
    if not core().settings.public_url.startswith("https://"):
        raise ACMEProblem(
            "malformed",
            "ACME is served over HTTPS only (RFC 8555 section 6.1): set public_url to the "
            "https URL clients use (ca-service serve --tls, or a TLS proxy in front)",
            status=404,
        )
    return server().accounts.authority(authority)


def _url(authority: str, path: str) -> str:
    return f"{server().accounts.urls(authority).base}/{path}"


def _answer(
    body: Any,
    status: int = 200,
    *,
    authority: str | None = None,
    location: str | None = None,
    content_type: str = "application/json",
) -> Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response = Response(data, status=status, content_type=content_type)
    response.headers["Replay-Nonce"] = server().accounts.new_nonce()
    response.headers["Cache-Control"] = "no-store"
    if location:
        response.headers["Location"] = location
    if authority:
        response.headers["Link"] = f'<{server().accounts.urls(authority).directory}>;rel="index"'
    return response


# ACME errors that refuse the request's credential (its JWS, its account or its key), for the
# authentication failure counter; "unauthorized": the account may not do this (RFC 8555 6.7).
_CREDENTIAL_FAILURES = frozenset(
    {"badSignature", "badSignatureAlgorithm", "accountDoesNotExist", "unauthorized",
     "externalAccountRequired", "badPublicKey"}
)  # fmt: skip


@acme.errorhandler(CAError)
def _problem(exc: CAError) -> Response:
    problem = from_ca_error(exc)
    if problem.acme_type in _CREDENTIAL_FAILURES:
        reason = "forbidden" if problem.acme_type == "unauthorized" else "unauthenticated"
        metrics.AUTH_FAILURES.labels(kind="acme", reason=reason).inc()
    if problem.rule and not exc.audited:
        # A refusal with a rule is audited once, whichever layer raised it (RefusalLog).
        try:
            actor = Actor(
                g.get("acme_identity", "acme:anonymous"), g.get("request_id"), request.remote_addr
            )
            core().refusals.record(actor, request.path[:255], exc, attempted="acme")
        except CAError:
            log.warning("request %s: the refusal could not be audited", g.get("request_id"))
    if problem.status >= 500:
        log.warning("request %s: ACME %s: %s", g.get("request_id"), problem.acme_type, exc.detail)
    response = Response(json.dumps(problem.as_json()), status=problem.status, content_type=PROBLEM)
    with contextlib.suppress(CAError):  # the store is away: the client asks newNonce again
        response.headers["Replay-Nonce"] = server().accounts.new_nonce()
    if problem.retry_after:
        response.headers["Retry-After"] = str(problem.retry_after)
    elif problem.status == 503:
        response.headers["Retry-After"] = "5"
    response.headers["Cache-Control"] = "no-store"
    if problem.location:
        response.headers["Location"] = problem.location
    return response


@acme.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Response:
    """A body over the limit is refused before any view runs; on an ACME route it is still an
    ACME problem with a fresh nonce (RFC 8555 section 6.5: every answer to a POST has one)."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return _problem(
        ACMEProblem(
            "malformed", f"the request body is larger than the limit of {limit} bytes", status=413
        )
    )


def _signed(authority: str, path: str, *, key_by: str = "kid") -> tuple[SignedRequest, Any]:
    if request.mimetype != JOSE:
        raise ACMEProblem("malformed", f"ACME requests are POSTed as {JOSE}", status=415)
    signed, account = server().accounts.authenticate(
        request.get_data(cache=False), _url(authority, path), authority, key_by=key_by
    )
    if account is not None:
        g.acme_identity = f"acme:{account.id}"
    return signed, account


def _account(authority: str, path: str) -> tuple[SignedRequest, ACMEAccountRecord]:
    signed, account = _signed(authority, path)
    assert account is not None  # key_by="kid"
    return signed, account


# ---------------------------------------------------------------------------- directory, nonces


@acme.get("/directory")
@acme.get("/<authority>/directory")
def directory(authority: str | None = None) -> Response:
    name = _authority(authority)
    response = Response(json.dumps(server().directory(name)), content_type="application/json")
    return response


@acme.route("/<authority>/new-nonce", methods=["GET", "HEAD"])
def new_nonce(authority: str) -> Response:
    name = _authority(authority)
    response = _answer("", 204 if request.method == "GET" else 200, authority=name)
    return response


# ---------------------------------------------------------------------------- accounts


@acme.post("/<authority>/new-account")
def new_account(authority: str) -> Response:
    name = _authority(authority)
    signed, _ = _signed(name, "new-account", key_by="jwk")
    account, created = server().accounts.new_account(signed, name, _context())
    return _answer(
        server().accounts.account_json(account),
        201 if created else 200,
        authority=name,
        location=server().accounts.urls(name).account(account.id),
    )


@acme.post("/<authority>/account/<account_id>")
def account(authority: str, account_id: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"account/{account_id}")
    if found.id != account_id:
        raise ACMEProblem("unauthorized", "a request for another account")
    updated = server().accounts.update_account(signed, found, _context())
    return _answer(server().accounts.account_json(updated), authority=name)


@acme.post("/<authority>/account/<account_id>/orders")
def account_orders(authority: str, account_id: str) -> Response:
    name = _authority(authority)
    path = f"account/{account_id}/orders"
    cursor = request.args.get("cursor")
    if cursor:
        path += f"?cursor={cursor}"
    signed, found = _account(name, path)
    if found.id != account_id or not signed.post_as_get:
        raise ACMEProblem("unauthorized", "orders are listed by POST-as-GET of their account")
    urls, after = server().orders.orders_of(found, cursor)
    response = _answer({"orders": urls}, authority=name)
    if after:
        next_url = f"{server().accounts.urls(name).orders(found.id)}?cursor={after}"
        response.headers.add("Link", f'<{next_url}>;rel="next"')
    return response


@acme.post("/<authority>/key-change")
def key_change(authority: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, "key-change")
    updated = server().accounts.key_change(signed, found, _context())
    return _answer(
        server().accounts.account_json(updated),
        authority=name,
        location=server().accounts.urls(name).account(updated.id),
    )


# ---------------------------------------------------------------------------- orders


@acme.post("/<authority>/new-order")
def new_order(authority: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, "new-order")
    order = server().orders.new_order(signed, found, _context())
    return _answer(
        server().orders.order_json(order),
        201,
        authority=name,
        location=server().accounts.urls(name).order(order.id),
    )


@acme.post("/<authority>/order/<order_id>")
def order(authority: str, order_id: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"order/{order_id}")
    if not signed.post_as_get:
        raise ACMEProblem("malformed", "an order is read by POST-as-GET")
    current = server().orders.order(found, order_id)
    return _answer(server().orders.order_json(current), authority=name)


@acme.post("/<authority>/order/<order_id>/finalize")
def finalize(authority: str, order_id: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"order/{order_id}/finalize")
    done = server().orders.finalize(signed, found, order_id, _context())
    return _answer(
        server().orders.order_json(done),
        authority=name,
        location=server().accounts.urls(name).order(done.id),
    )


@acme.post("/<authority>/authz/<authz_id>")
def authorization(authority: str, authz_id: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"authz/{authz_id}")
    authz = server().orders.deactivate_authz(signed, found, authz_id)
    return _answer(server().orders.authz_json(authz), authority=name)


@acme.post("/<authority>/chall/<challenge_id>")
def challenge(authority: str, challenge_id: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"chall/{challenge_id}")
    current, authz = server().orders.answer_challenge(signed, found, challenge_id)
    response = _answer(server().orders.challenge_json(authz, current), authority=name)
    response.headers.add("Link", f'<{server().accounts.urls(name).authz(authz.id)}>;rel="up"')
    if current.status == "processing":
        response.headers["Retry-After"] = "1"
    return response


@acme.post("/<authority>/cert/<serial>")
def certificate(authority: str, serial: str) -> Response:
    name = _authority(authority)
    signed, found = _account(name, f"cert/{serial}")
    if not signed.post_as_get:
        raise ACMEProblem("malformed", "a certificate is downloaded by POST-as-GET")
    chain = server().orders.certificate_chain(found, serial)
    return _answer(chain, authority=name, content_type=PEM_CHAIN)


@acme.post("/<authority>/revoke-cert")
def revoke_cert(authority: str) -> Response:
    name = _authority(authority)
    signed, found = _signed(name, "revoke-cert", key_by="either")
    revoke_certificate(server().accounts, signed, found, name, _context())
    return _answer("", authority=name)


# ---------------------------------------------------------------------------- ARI (RFC 9773)


@acme.get("/<authority>/renewal-info/<cert_id>")
def renewal_info(authority: str, cert_id: str) -> Response:
    _authority(authority)
    body, retry_after = server().renewal_info(cert_id)
    response = Response(json.dumps(body), content_type="application/json")
    response.headers["Retry-After"] = str(retry_after)
    return response
