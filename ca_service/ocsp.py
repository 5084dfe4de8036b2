"""The OCSP responder (RFC 6960, RFC 5019 profile): request bytes in, response bytes out.

Signing is kept off the hot path: an answer without a nonce for one certificate is cached per
certificate and reused until half of its validity has passed, but only while the certificate's
status in the store is still the status the answer states. The store is asked on every request,
so a revocation changes the very next answer in every worker and process.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from ca_service.authority import CertificateAuthority
from ca_service.crypto.ocsp_wire import (
    CertRef,
    MalformedRequest,
    SingleAnswer,
    encode_response,
    parse_request,
    unsuccessful,
)
from ca_service.domain import CertStatus, SerialStatus

CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class OCSPAnswer:
    der: bytes
    # Set for successful answers without a nonce: what HTTP caches may keep, and until when.
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None

    @property
    def cacheable(self) -> bool:
        return self.next_update is not None


@dataclass(frozen=True)
class _Cached:
    status: SerialStatus | None
    signer_serial: str
    answer: OCSPAnswer
    refresh_at: dt.datetime


class OCSPResponder:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self._cache: dict[bytes, _Cached] = {}
        self._lock = threading.Lock()

    def respond(self, data: bytes) -> OCSPAnswer:
        try:
            request = parse_request(data)
        except MalformedRequest:
            return OCSPAnswer(unsuccessful("malformedRequest"))
        if any(ref.hash_name.startswith("unsupported") for ref in request.refs):
            return OCSPAnswer(unsuccessful("malformedRequest"))
        authorities = {
            self.ca.ocsp_issuer(r.hash_name, r.issuer_name_hash, r.issuer_key_hash)
            for r in request.refs
        }
        # One signature covers the whole answer, and a responder speaks for one CA only.
        if None in authorities or len(authorities) != 1:
            return OCSPAnswer(unsuccessful("unauthorized"))
        authority = authorities.pop()
        assert authority is not None
        statuses = self.ca.ocsp_statuses(authority, [r.serial for r in request.refs])
        signer = self.ca.ocsp_signer(authority)
        now = self.ca.clock.now()

        single = len(request.refs) == 1 and request.nonce_extension_der is None
        if single:
            ref = request.refs[0]
            with self._lock:
                cached = self._cache.get(ref.der)
            status = statuses.get(ref.serial)
            if (
                cached is not None
                and cached.status == status
                and cached.signer_serial == signer.serial
                and now < cached.refresh_at
            ):
                return cached.answer

        validity = dt.timedelta(minutes=self.ca.settings.ocsp_next_update_minutes)
        next_update = now + validity
        answers = [_answer(ref, statuses.get(ref.serial), now, next_update) for ref in request.refs]
        der = encode_response(answers, now, signer.info, request.nonce_extension_der)
        if not single:
            return OCSPAnswer(der)
        answer = OCSPAnswer(der, now, next_update)
        with self._lock:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[request.refs[0].der] = _Cached(
                statuses.get(request.refs[0].serial), signer.serial, answer, now + validity / 2
            )
        return answer


def _answer(
    ref: CertRef, status: SerialStatus | None, now: dt.datetime, next_update: dt.datetime
) -> SingleAnswer:
    if status is None:
        return SingleAnswer(ref, "unknown", now, next_update)
    if status.status is CertStatus.REVOKED:
        return SingleAnswer(ref, "revoked", now, next_update, status.revoked_at, status.reason)
    return SingleAnswer(ref, "good", now, next_update)
