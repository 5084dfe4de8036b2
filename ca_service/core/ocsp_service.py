"""The OCSP service (RFC 6960, RFC 5019 profile): request bytes in, signed response bytes out.

It finds the authority a request's issuer hashes name, reads each serial's status from the
store, picks the signer (the CA itself, or a delegated responder certificate that it issues
through the CA's Signer and rotates at two thirds of its life) and has signing/ocsp.py sign
the answer. It must never sign by itself or hold a key, and never answer for a CA it does
not hold.

Signing is kept off the hot path: an answer without a nonce for one certificate the store holds
is pre-signed, kept in the store and served from memory (core/ocsp_presigned.py, RFC 5019); a
revocation reaches every worker of every replica within a second, and at once in the process
that made it. Requests with a nonce or for several certificates are signed fresh.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from ca_service import metrics
from ca_service.core.context import STORE_RECHECK_SECONDS, Context, record_of_leaf
from ca_service.core.ocsp_presigned import PresignedAnswers, Served
from ca_service.core.registry import LoadedAuthority, Registry
from ca_service.crypto.ocsp_wire import (
    CertRef,
    MalformedRequest,
    SingleAnswer,
    parse_request,
    spki_bits,
    unsuccessful,
)
from ca_service.domain import Actor, AuditEvent, CertStatus, ResponderRecord, SerialStatus
from ca_service.policy.check import responder_template
from ca_service.signing.ocsp import OCSPSigner, sign_response
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import unit_of_work
from ca_service.storage.ocsp_repository import OCSPRepository
from ca_service.storage.repositories import AuditRepository, CertificateRepository

log = logging.getLogger("ca_service.ocsp")


@dataclass(frozen=True)
class OCSPAnswer:
    der: bytes
    # Set for successful answers without a nonce: what HTTP caches may keep, and until when.
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    # A pre-signed answer, its HTTP caching headers worked out when it was kept.
    served: Served | None = None

    @property
    def cacheable(self) -> bool:
        return self.next_update is not None


@dataclass(frozen=True)
class _Responder:
    """What signs one authority's OCSP answers, and when to replace it."""

    serial: str
    signer: OCSPSigner
    rotate_at: dt.datetime
    checked: float = 0.0  # time.monotonic() when the store last said it is the latest


class OCSPService:
    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self._responders: dict[str, _Responder] = {}
        self._issuer_hashes: dict[tuple[str, bytes, bytes], str] = {}
        self._lock = threading.Lock()  # the responders and the issuer hashes
        self.presigned = PresignedAnswers(ctx)

    def respond(self, data: bytes) -> OCSPAnswer:
        hit = self.presigned.lookup(data)
        if hit is not None:
            metrics.ocsp_answer(hit.label)
            return OCSPAnswer(hit.der, hit.this_update, hit.next_update, hit)
        try:
            request = parse_request(data)
        except MalformedRequest:
            metrics.ocsp_answer("malformed")
            return OCSPAnswer(unsuccessful("malformedRequest"))
        if any(ref.hash_name.startswith("unsupported") for ref in request.refs):
            metrics.ocsp_answer("malformed")
            return OCSPAnswer(unsuccessful("malformedRequest"))
        authorities = {
            self.issuer(r.hash_name, r.issuer_name_hash, r.issuer_key_hash) for r in request.refs
        }
        # One signature covers the whole answer, and a responder speaks for one CA only.
        if None in authorities or len(authorities) != 1:
            metrics.ocsp_answer("unauthorized")
            return OCSPAnswer(unsuccessful("unauthorized"))
        authority = authorities.pop()
        assert authority is not None
        single = len(request.refs) == 1 and request.nonce_extension_der is None
        if single:
            kept = self.presigned.answer(
                authority, request.refs[0], data, lambda: self._signer_of(authority)
            )
            if kept is not None:
                metrics.ocsp_answer(kept.label)
                return OCSPAnswer(kept.der, kept.this_update, kept.next_update, kept)
        statuses = self.statuses(authority, [r.serial for r in request.refs])
        for ref in request.refs:
            found = statuses.get(ref.serial)
            revoked = found is not None and found.status is CertStatus.REVOKED
            metrics.ocsp_answer("unknown" if found is None else "revoked" if revoked else "good")
        responder = self._responder(authority)
        now = self.ctx.clock.now()
        validity = dt.timedelta(minutes=self.ctx.settings.ocsp_next_update_minutes)
        next_update = now + validity
        answers = [_answer(ref, statuses.get(ref.serial), now, next_update) for ref in request.refs]
        der = sign_response(responder.signer, answers, now, request.nonce_extension_der)
        return OCSPAnswer(der, now, next_update) if single else OCSPAnswer(der)

    def status_changed(self, authority: str, serial: str) -> None:
        """A revocation, hold or release committed in this process: its cached answers go now,
        and the certificate's kept answers are signed again with the new status. That second
        step is a courtesy (the next request would re-sign a kept answer that no longer states
        the status): a failure is logged, never raised into the committed revocation."""
        self.presigned.status_changed()
        try:
            self.presigned.resign(authority, serial, lambda: self._signer_of(authority))
        except Exception:
            log.exception("re-signing the OCSP answers of %s/%s failed", authority, serial)

    def refresh(self) -> int:
        """Re-sign the kept answers due for it (the scheduler's tick); returns how many."""
        return self.presigned.refresh(self._signer_of)

    def _signer_of(self, authority: str) -> tuple[str, OCSPSigner]:
        responder = self._responder(authority)
        return responder.serial, responder.signer

    def issuer(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> str | None:
        """The authority a CertID's issuer hashes name, or None when it is not ours."""
        key = (hash_name, name_hash, key_hash)
        with self._lock:
            found = self._issuer_hashes.get(key)
        if found is not None:
            return found
        # A miss may mean an authority created since; rebuild the map once.
        table: dict[tuple[str, bytes, bytes], str] = {}
        for record in self.registry.list_authorities():
            cert = x509.load_der_x509_certificate(record.cert_der)
            name_der = cert.subject.public_bytes()
            bits = spki_bits(cert)
            for algo in ("sha1", "sha256"):
                table[
                    (algo, hashlib.new(algo, name_der).digest(), hashlib.new(algo, bits).digest())
                ] = record.name
        with self._lock:
            self._issuer_hashes = table
        return table.get(key)

    def statuses(self, authority: str, serials: Sequence[int]) -> dict[int, SerialStatus]:
        """Status of each serial that ``authority`` issued; serials it never issued are absent."""
        wanted = {serial_hex(s): s for s in serials}
        with unit_of_work(self.ctx.db) as s:
            found = OCSPRepository(s).statuses(authority, list(wanted))
        return {wanted[k]: v for k, v in found.items()}

    def _responder(self, name: str) -> _Responder:
        """The current signer of ``name``'s OCSP answers: its delegated responder (issued here
        and rotated at two thirds of its life), or the CA's own Signer."""
        now = self.ctx.clock.now()
        with self._lock:
            cached = self._responders.get(name)
        if cached is not None and now < cached.rotate_at and self._still_latest(name, cached, now):
            return cached
        loaded = self.registry.load(name)
        if self.ctx.settings.ocsp_sign_with_ca:
            responder = _Responder(
                serial_hex(loaded.certificate.serial_number),
                OCSPSigner.of(loaded.signer, delegated=False),
                loaded.certificate.not_valid_after_utc,
            )
        else:
            responder = self._delegated(name, loaded, now)
        with self._lock:
            self._responders[name] = responder
        return responder

    def _still_latest(self, name: str, cached: _Responder, now: dt.datetime) -> bool:
        """Whether ``cached`` is still the newest responder in the store, asked at most every
        STORE_RECHECK_SECONDS: another replica may have rotated first (its clock a little
        ahead), and then every replica should sign with the new one."""
        if self.ctx.settings.ocsp_sign_with_ca:
            return True  # the CA's own key: nothing another replica can replace
        mono = time.monotonic()
        if mono - cached.checked < STORE_RECHECK_SECONDS:
            return True
        with unit_of_work(self.ctx.db) as s:
            latest = OCSPRepository(s).latest_responder_serial(name, now)
        if latest != cached.serial:
            return False
        with self._lock:
            self._responders[name] = dataclasses.replace(cached, checked=mono)
        return True

    def _delegated(self, name: str, loaded: LoadedAuthority, now: dt.datetime) -> _Responder:
        with unit_of_work(self.ctx.db) as s:
            current = OCSPRepository(s).latest_responder(name, now)
        if current is None or now >= _rotate_at(current):
            current = self._issue_responder(name, loaded, now)
        cert = x509.load_der_x509_certificate(current.cert_der)
        signer = self.ctx.keystore.signer(
            current.key_file, cert, loaded.signer.key_type, f"OCSP responder of {name!r}"
        )
        delegated = OCSPSigner.of(signer, delegated=True)
        return _Responder(current.serial, delegated, _rotate_at(current), time.monotonic())

    def _issue_responder(
        self, name: str, loaded: LoadedAuthority, now: dt.datetime
    ) -> ResponderRecord:
        keystore = self.ctx.keystore
        key_type = loaded.signer.key_type
        key = keystore.generate(f"{name}-ocsp-{secrets.token_hex(4)}", key_type)
        lifetime = dt.timedelta(days=self.ctx.settings.ocsp_responder_days)
        try:
            with unit_of_work(self.ctx.db, write=True) as s:
                repo = OCSPRepository(s)
                authority_id = repo.lock_authority(name)
                # Another process or replica may have rotated while we waited for the lock:
                # its responder is the one; ours is dropped (below, once this transaction has
                # ended: the keystore may write to the same database).
                existing = repo.latest_responder(name, now)
                if existing is not None and now < _rotate_at(existing):
                    raise _Lost(existing)
                template = responder_template(
                    loaded.view, key.public_key, key_type, now, self.ctx.serials(), lifetime
                )
                cert = loaded.signer.sign_certificate(template)
                record = record_of_leaf(cert, template, "system:ocsp", now)
                CertificateRepository(s).add(record, authority_id)
                responder = ResponderRecord(
                    name,
                    record.serial,
                    record.der,
                    key.key_file,
                    record.not_before,
                    record.not_after,
                )
                repo.add_responder(authority_id, responder, now)
                AuditRepository(s).add(
                    AuditEvent.of(
                        Actor("system:ocsp"),
                        "ocsp.responder.issue",
                        f"{name}/{record.serial}",
                        now,
                        None,
                    )
                )
        except _Lost as lost:
            keystore.remove(key.key_file)
            return lost.winner
        except BaseException:
            keystore.remove(key.key_file)
            raise
        return responder


class _Lost(Exception):
    """Leaves the rotation's transaction (rolled back) when another process rotated first."""

    def __init__(self, winner: ResponderRecord) -> None:
        super().__init__(winner.serial)
        self.winner = winner


def _rotate_at(record: ResponderRecord) -> dt.datetime:
    return record.not_before + (record.not_after - record.not_before) * 2 / 3


def _answer(
    ref: CertRef, status: SerialStatus | None, now: dt.datetime, next_update: dt.datetime
) -> SingleAnswer:
    if status is None:
        return SingleAnswer(ref, "unknown", now, next_update)
    if status.status is CertStatus.REVOKED:
        return SingleAnswer(ref, "revoked", now, next_update, status.revoked_at, status.reason)
    return SingleAnswer(ref, "good", now, next_update)
