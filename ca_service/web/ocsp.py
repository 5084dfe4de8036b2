"""POST /ocsp and GET /ocsp/{base64 request}: RFC 6960 over HTTP (RFC 5019 profile).

Separate from the JSON API because OCSP has its own rules: DER in and out, protocol errors as
OCSP answers with HTTP 200, and GET answers cacheable by HTTP caches until their nextUpdate."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.routing import PathConverter

from ca_service import metrics
from ca_service.core.ocsp_service import OCSPAnswer
from ca_service.crypto.ocsp_wire import unsuccessful
from ca_service.web.contract import Answer, operation
from ca_service.web.extensions import core

ocsp = Blueprint("ocsp", __name__)

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
# A request for 64 certificates is under 6 KiB; anything far larger is not an OCSP request.
MAX_OCSP_REQUEST = 16 * 1024
# DER in and out, not JSON: the content of these operations is written here by hand.
_DER = {"schema": {"type": "string", "format": "binary"}}
_CACHE_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
    "Cache-Control": {"schema": {"type": "string"}},
}


class _AnyText(PathConverter):
    """The rest of the path, newlines included: werkzeug's ``path`` stops at one, which made a
    GET with %0A in it a 404 instead of the malformedRequest answer any other garbage gets."""

    regex = r"[^/][\s\S]*?"


@ocsp.record_once
def _register_converter(state: BlueprintSetupState) -> None:
    # Before the routes below are added to the app's URL map, which needs the converter.
    state.app.url_map.converters.setdefault("ocsp_request", _AnyText)


@ocsp.post("/ocsp")
@operation(
    "OCSP (RFC 6960): status of one or more certificates",
    description="Body: a DER OCSPRequest. Protocol errors (malformed request, foreign issuer) "
    "are OCSP responses with HTTP 200, as RFC 6960 wants.",
    tags=("public",),
    answers={
        200: Answer(
            "A DER OCSPResponse; without a nonce, with the caching headers of a GET",
            media={OCSP_RESPONSE: _DER},
            headers=_CACHE_HEADERS,
        )
    },
    raises=(UnsupportedMediaType, RequestEntityTooLarge),
)
def ocsp_post() -> Response:
    if request.mimetype != OCSP_REQUEST:
        raise UnsupportedMediaType(f"send the OCSP request as {OCSP_REQUEST}")
    if request.content_length is not None and request.content_length > MAX_OCSP_REQUEST:
        raise RequestEntityTooLarge()
    data = request.get_data(cache=False)
    if len(data) > MAX_OCSP_REQUEST:
        raise RequestEntityTooLarge()
    # RFC 5019 section 6 names GET for HTTP caches; the same headers on a POST answer cost
    # nothing and let a client that keeps answers know until when.
    return _response(core().answer_ocsp(data), cache=True)


@ocsp.get("/ocsp/<ocsp_request:encoded>")
@operation(
    "OCSP by GET (RFC 6960 A.1, RFC 5019): base64 DER request in the path",
    tags=("public",),
    answers={
        200: Answer(
            "A DER OCSPResponse, cacheable until its nextUpdate",
            media={OCSP_RESPONSE: _DER},
            headers=_CACHE_HEADERS,
        )
    },
    raises=(RequestEntityTooLarge,),
    # /ocsp/ with nothing after it matches no route.
    also=(404,),
)
def ocsp_get(encoded: str) -> Response:
    """RFC 6960 appendix A.1: the DER request, base64 and URL-encoded, as the last path part."""
    if len(encoded) > MAX_OCSP_REQUEST:
        raise RequestEntityTooLarge()
    try:
        data = base64.b64decode(encoded.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        metrics.ocsp_answer("malformed")
        return _response(OCSPAnswer(unsuccessful("malformedRequest")), cache=False)
    return _response(core().answer_ocsp(data), cache=True)


def _response(answer: OCSPAnswer, *, cache: bool) -> Response:
    response = Response(answer.der, mimetype=OCSP_RESPONSE)
    if cache and answer.cacheable:
        assert answer.this_update is not None and answer.next_update is not None
        now = core().clock.now()
        max_age = max(0, int((answer.next_update - now).total_seconds()))
        # RFC 5019 section 6: let HTTP caches keep the answer until its nextUpdate.
        response.headers["Cache-Control"] = (
            f"max-age={max_age}, public, no-transform, must-revalidate"
        )
        kept = answer.served  # a pre-signed answer: its headers were worked out once
        if kept is not None:
            response.headers["Last-Modified"] = kept.last_modified
            response.headers["Expires"] = kept.expires
            response.headers["ETag"] = kept.etag
            return response
        response.headers["Last-Modified"] = email.utils.format_datetime(
            answer.this_update, usegmt=True
        )
        response.headers["Expires"] = email.utils.format_datetime(answer.next_update, usegmt=True)
        response.headers["ETag"] = '"' + hashlib.sha256(answer.der).hexdigest()[:32] + '"'
    else:
        response.headers["Cache-Control"] = "no-cache, no-store"
    return response
