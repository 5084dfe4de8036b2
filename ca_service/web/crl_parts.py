"""Public shard and delta CRLs (docs/crl.md): the URLs that certificates' CRL Distribution
Point and Freshest CRL name when ``crl_shards`` or ``crl_deltas`` is on.

Apart from the full CRL's routes (web/public.py) because these CRLs are small by design (one
shard, or the changes since a base): they are read from the store on each fetch, which also
checks that nothing in their scope changed since they were signed, so every replica serves a
revocation's delta as soon as it is committed, without a cache to invalidate. DER only (what
the URLs in certificates must answer): `openssl crl -inform DER` makes the PEM.
"""

from __future__ import annotations

import email.utils

from flask import Blueprint, Response, request

from ca_service.domain import StoredCRL
from ca_service.web.extensions import core
from ca_service.web.public import PKIX_CRL, _crl_operation, _known

crl_parts = Blueprint("crl_parts", __name__)


def _part_response(name: str, part: str) -> Response:
    ca = core()
    crl: StoredCRL | None = ca.current_crl(_known(name), part=part)
    assert crl is not None  # no known_number given: always a CRL
    # The number is unique across every CRL of the authority (one sequence), so it names
    # these bytes.
    etag = f'"{name}-{crl.number}"'
    if request.if_none_match.contains_weak(etag.strip('"')):
        response = Response(status=304)
    else:
        response = Response(crl.der, mimetype=PKIX_CRL)
    # At most a minute: a delta is re-signed at every revocation.
    remaining = int((crl.next_update - ca.clock.now()).total_seconds())
    response.headers["Cache-Control"] = f"public, max-age={max(0, min(60, remaining))}"
    response.headers["ETag"] = etag
    response.headers["Last-Modified"] = email.utils.format_datetime(crl.this_update, usegmt=True)
    response.headers["Expires"] = email.utils.format_datetime(crl.next_update, usegmt=True)
    return response


@crl_parts.get("/ca/<name>/crl/<int:shard>")
@_crl_operation("A shard CRL of an authority (DER): the URL in its certificates", PKIX_CRL)
def shard_crl(name: str, shard: int) -> Response:
    return _part_response(name, str(shard))


@crl_parts.get("/ca/<name>/crl/delta")
@_crl_operation("The delta CRL of an authority's full CRL (DER)", PKIX_CRL)
def delta_crl(name: str) -> Response:
    return _part_response(name, "delta")


@crl_parts.get("/ca/<name>/crl/<int:shard>/delta")
@_crl_operation("The delta CRL of a shard CRL (DER)", PKIX_CRL)
def shard_delta_crl(name: str, shard: int) -> Response:
    return _part_response(name, f"{shard}/delta")
