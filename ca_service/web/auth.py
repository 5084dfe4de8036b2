"""Authentication (a bearer token, an OIDC ID token, or a client certificate over HTTPS) and
role checks for the HTTP layer. A request with an Authorization header is judged by its
credential alone: ``cas_...`` is an API token, three base64url parts an ID token (ca_service.oidc).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from ca_service import metrics
from ca_service.domain import Actor, Role, TokenRecord
from ca_service.errors import CAError, Forbidden, PolicyRejected, Unauthorized
from ca_service.oidc.verify import OIDCPrincipal, TokenRefused
from ca_service.policy import authorization
from ca_service.web.extensions import oidc, tokens
from ca_service.web.mtls import CertificatePrincipal, authenticate_certificate, peer_certificate_der

F = TypeVar("F", bound=Callable[..., Any])


Principal = TokenRecord | CertificatePrincipal | OIDCPrincipal

_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def principal() -> Principal:
    record = g.get("principal")
    assert isinstance(record, TokenRecord | CertificatePrincipal | OIDCPrincipal), (
        "route is missing @require"
    )
    return record


def _authenticate(oidc_operation: str | None, confirm_in_store: bool = False) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if not header:
        der = peer_certificate_der()
        if der is not None:
            return authenticate_certificate(der)
        raise Unauthorized("this endpoint needs an 'Authorization: Bearer <token>' header")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    presented = credentials.strip()
    if _JWT.match(presented):
        # Counted as "oidc" until verified: the claims of an unverified token are anyone's.
        g.auth_identity = "oidc"
        verifier = oidc()
        try:
            found = verifier.verify(presented)
        except TokenRefused as exc:
            g.auth_identity = exc.identity
            raise
        g.auth_identity = found.identity
        # Before the jti is spent: a token sent to the wrong endpoint stays usable.
        authorization.check_oidc_operation(oidc_operation)
        verifier.consume(found)
        return found
    if confirm_in_store:
        record, confirmation = tokens().authenticate_to_confirm(presented)
        g.token_confirmation = confirmation
        return record
    return tokens().authenticate(presented)


def _settle_confirmation() -> None:
    """A token taken from the cache that the store did not confirm (the request ended before
    its write transaction, or wrote nothing): check it in the store now, before answering, so
    a revoked token gets 401 and never a glimpse of what its request would have done."""
    confirmation = g.pop("token_confirmation", None)
    if confirmation is None or confirmation.confirmed:
        return
    header = request.headers.get("Authorization", "")
    try:
        tokens().authenticate(header.partition(" ")[2])
    except Unauthorized:
        tokens().forget(confirmation.token_id)
        raise


def require(
    role: Role | None, *, oidc_operation: str | None = None, confirm_in_store: bool = False
) -> Callable[[F], F]:
    """Authenticate the caller and check its role. Every refusal of the request, here or in
    the view (a role, a rule, a certificate that is not the caller's), is audited once.
    ``None``: any authenticated caller, and the view decides (e.g. a certificate renewing
    itself, which needs no role). ``oidc_operation`` names the operation for
    authorization.check_oidc_operation: without it, an OIDC ID token is refused here.
    ``confirm_in_store``: an API token may come from the process's cache of verified tokens,
    and the store confirms it is still active inside the request's write transaction
    (domain.TokenConfirmation) instead of a query of its own; for hot write routes."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            identity = "anonymous"
            try:
                record = _authenticate(oidc_operation, confirm_in_store)
                identity = record.identity
                try:
                    if role is not None:
                        authorization.check_role(record, role)
                    g.principal = record
                    answer = view(*args, **kwargs)
                except Exception:
                    # Any refusal or error (a role, a rule, a body werkzeug refused): a revoked
                    # token's 401 comes first.
                    _settle_confirmation()
                    raise
                _settle_confirmation()
                return answer
            except (Unauthorized, Forbidden, PolicyRejected) as exc:
                # A refused client certificate is named by its serial, not as "anonymous".
                refuse(g.get("auth_identity") or identity, exc)
                if not isinstance(exc, PolicyRejected):  # a policy rule is not a credential's
                    reason = "unauthenticated" if isinstance(exc, Unauthorized) else "forbidden"
                    metrics.AUTH_FAILURES.labels(kind=_credential_kind(), reason=reason).inc()
                raise

        # Read by web/contract.py: this route answers 401 and 403 (and is not public).
        wrapper.ca_role = role  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def _credential_kind() -> str:
    """What the refused request presented (never the credential itself)."""
    header = request.headers.get("Authorization", "")
    if not header:
        return "certificate" if peer_certificate_der() is not None else "missing"
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "malformed"
    return "oidc" if _JWT.match(credentials.strip()) else "token"


def refuse(identity: str, exc: CAError) -> None:
    """Audit the refusal of this request (ca_service.refusals: once, however many layers see
    it; counted per client address and minute while nobody is authenticated)."""
    actor = Actor(identity, g.get("request_id"), request.remote_addr)
    tokens().refusals.record(actor, f"{request.method} {request.path}", exc)


def actor_for_request() -> Any:
    actor = principal().actor(g.get("request_id"), request.remote_addr)
    confirmation = g.get("token_confirmation")
    return replace(actor, confirm=confirmation) if confirmation is not None else actor
