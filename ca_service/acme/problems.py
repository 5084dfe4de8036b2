"""ACME errors (RFC 8555 section 6.7): one registry of error types, each with its HTTP status.

ACME answers every error as ``application/problem+json`` whose ``type`` is
``urn:ietf:params:acme:error:<name>``. An ``ACMEProblem`` is a CAError, so a refusal raised
deep in the ACME code keeps its user-safe detail and never becomes a 500; web/acme.py turns
it (and every other CAError met on an ACME route) into that shape, with subproblems for
per-identifier failures and the headers (Retry-After, Replay-Nonce) the RFC asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ca_service.acme.algorithms import ACCOUNT_ALGORITHMS
from ca_service.errors import (
    BadRequest,
    CAError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyRejected,
    Unauthorized,
    Unavailable,
)

ACME_ERROR = "urn:ietf:params:acme:error:"

# RFC 8555 section 6.7 (+ RFC 9773's alreadyReplaced), with the status each is answered with.
STATUS: dict[str, int] = {
    "accountDoesNotExist": 400,
    "alreadyReplaced": 409,
    "alreadyRevoked": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "caa": 403,
    "compound": 403,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 400,
    "incorrectResponse": 400,
    "invalidContact": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
    "userActionRequired": 403,
}


@dataclass(frozen=True)
class Subproblem:
    """A failure of one identifier of a request that names several (RFC 8555 section 6.7.1)."""

    type: str
    detail: str
    identifier: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "type": ACME_ERROR + self.type,
            "detail": self.detail,
            "identifier": self.identifier,
        }


class ACMEProblem(CAError):
    """An ACME error: ``acme_type`` is the name after ``urn:ietf:params:acme:error:``."""

    code = "acme"
    title = "ACME error"

    def __init__(
        self,
        acme_type: str,
        detail: str,
        *,
        status: int | None = None,
        subproblems: tuple[Subproblem, ...] = (),
        retry_after: int | None = None,
        rule: str | None = None,
        location: str | None = None,
    ) -> None:
        if acme_type not in STATUS:
            raise ValueError(f"unknown ACME error type {acme_type!r}")
        super().__init__(detail, rule=rule)
        self.acme_type = acme_type
        self.status = status or STATUS[acme_type]
        self.subproblems = subproblems
        self.retry_after = retry_after
        # The resource the error is about, for the answer's Location (a keyChange conflict
        # names the account holding the key, RFC 8555 section 7.3.5).
        self.location = location

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ACME_ERROR + self.acme_type,
            "detail": self.detail,
            "status": self.status,
        }
        if self.subproblems:
            body["subproblems"] = [s.as_json() for s in self.subproblems]
        if self.acme_type == "badSignatureAlgorithm":
            # RFC 8555 section 6.2: the answer lists the algorithms that are accepted.
            body["algorithms"] = list(ACCOUNT_ALGORITHMS)
        return body

    def stored(self) -> dict[str, Any]:
        """The error as an order, authorization or challenge keeps it (the RFC's ``error``)."""
        return self.as_json()


def from_ca_error(exc: CAError) -> ACMEProblem:
    """The ACME form of an error the core or policy raised on an ACME request."""
    if isinstance(exc, ACMEProblem):
        return exc
    if isinstance(exc, PolicyRejected):
        return ACMEProblem("rejectedIdentifier", exc.detail, rule=exc.rule)
    if isinstance(exc, Unavailable):
        return ACMEProblem("serverInternal", "the service is not available now", status=503)
    if isinstance(exc, Unauthorized | Forbidden):
        return ACMEProblem("unauthorized", exc.detail, rule=exc.rule)
    if isinstance(exc, NotFound):
        return ACMEProblem("malformed", exc.detail, status=404)
    if isinstance(exc, Conflict):
        return ACMEProblem("malformed", exc.detail, status=409)
    if isinstance(exc, BadRequest):
        return ACMEProblem("malformed", exc.detail)
    return ACMEProblem("serverInternal", "the service could not complete the request", status=503)
