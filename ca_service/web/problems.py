"""Errors to RFC 9457 problem+json, in exactly one place.

Expected failures are CAError subclasses and keep their user-safe detail. Anything else becomes a
generic 500 whose detail names only the request id; the exception is logged with that id.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json
from werkzeug.exceptions import HTTPException

from ca_service.errors import (
    BadRequest,
    CAError,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyRejected,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("ca_service.web")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:ca-service:problem:"

_STATUS: list[tuple[type[CAError], int]] = [
    (PolicyRejected, 403),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (Unauthorized, 401),
    (Forbidden, 403),
    (ConfigError, 503),
    (Unavailable, 503),
]

_HTTP_CODES = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
    }
    request_id = getattr(g, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ca-service"'
    return response


def status_of(exc: CAError) -> int:
    return status_for(type(exc))


def status_for(exc: type[CAError]) -> int:
    """The status of an error class; also what the OpenAPI document lists for it."""
    for cls, status in _STATUS:
        if issubclass(exc, cls):
            return status
    return 400


def register(app: Flask) -> None:
    @app.errorhandler(CAError)
    def _ca_error(exc: CAError) -> Response:
        status = status_of(exc)
        if isinstance(exc, ConfigError):
            log.error("service misconfigured: %s (request %s)", exc.detail, g.get("request_id"))
            return problem(503, "unavailable", "Service unavailable", "the service is not ready")
        if isinstance(exc, Unavailable):
            # Expected during a database restart: one line, no traceback, nothing written.
            log.warning("request %s: %s", g.get("request_id"), exc.detail)
            response = problem(
                503,
                exc.code,
                exc.title,
                exc.public_detail,
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        return problem(status, exc.code, exc.title, exc.detail, rule=exc.rule)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http-error")
        detail = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the request body is larger than the limit of {limit} bytes"
        response = problem(status, code, exc.name, detail)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = g.get("request_id")
        log.exception("unhandled error in request %s", request_id)
        return problem(
            500,
            "internal",
            "Internal error",
            f"an unexpected error occurred; quote request id {request_id} to the operator",
        )
