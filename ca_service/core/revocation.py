"""Revocation: a certificate revoked, put on hold or released, and an issuing CA revoked, each
decided under the lock of the certificate's row and audited in the same transaction; the CRL
is then re-signed (see crl_publisher).

It guards CA certificates: a CA's own certificate is never revoked as a leaf, a root is never
revoked, and a CA is never put on hold. It must never sign anything itself and never touch a
stored row except through the repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography import x509

from ca_service import metrics
from ca_service.core.context import Context
from ca_service.core.crl_publisher import CRLPublisher
from ca_service.core.ocsp_service import OCSPService
from ca_service.core.registry import Registry
from ca_service.domain import (
    Actor,
    AuditEvent,
    AuthorityRecord,
    CertificateRecord,
    CertStatus,
    RevocationReason,
)
from ca_service.errors import BadRequest, Conflict, NotFound, PolicyRejected
from ca_service.notify import REVOKED
from ca_service.policy import authorization
from ca_service.signing.crl import entry_der
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
)


@dataclass(frozen=True)
class _Locked:
    """A certificate as it stands under its row's lock, and the repositories of that lock's
    transaction."""

    current: CertificateRecord
    seen_number: int  # the authority's CRL number when the lock was taken
    certs: CertificateRepository
    authorities: AuthorityRepository
    audit: AuditRepository


class Revocation:
    def __init__(
        self, ctx: Context, registry: Registry, crls: CRLPublisher, ocsp: OCSPService
    ) -> None:
        self.ctx = ctx
        self.registry = registry
        self.crls = crls
        self.ocsp = ocsp  # told of each change, so this process's kept answers go at once

    def revoke(
        self,
        serial: str,
        reason: RevocationReason,
        actor: Actor,
        *,
        authority: str | None = None,
        requester_only: bool = False,
    ) -> CertificateRecord:
        """Revoke (or put on hold). Same reason again: no-op. Another reason: conflict, but a
        certificate on hold may be revoked for good. An authority's own certificate is refused:
        see revoke_authority. ``requester_only``: the actor may revoke only the certificates it
        requested (an issuer, not an admin)."""
        target = self.registry.get_certificate(serial, authority)
        labels = {
            "authority": target.authority,
            "profile": metrics.bounded(target.profile, (*self.ctx.settings.profiles, "ca")),
            "requester_kind": metrics.requester_kind(actor.identity),
        }
        with metrics.counted(metrics.REVOKED, "revoked", **labels):
            record, changed = self._revoke(target, reason, actor, requester_only)
        if changed:  # committed
            self.ctx.events.publish(REVOKED, record, reason=reason.value)
        return record

    def _revoke(
        self, target: CertificateRecord, reason: RevocationReason, actor: Actor, own_only: bool
    ) -> tuple[CertificateRecord, bool]:
        """The record as it stands after the revocation, and whether it changed."""
        authorization.check_may_revoke(actor.identity, target, own_only=own_only)
        self._refuse_authority_certificate(target)
        now = self.ctx.clock.now()
        with self._locked(target) as locked:
            current = locked.current
            if current.status is CertStatus.REVOKED:
                if current.revocation_reason is reason:
                    return current, False
                if current.revocation_reason is not RevocationReason.CERTIFICATE_HOLD:
                    raise Conflict(
                        f"certificate {target.serial} is already revoked "
                        f"({current.revocation_reason}); it cannot be revoked again as {reason}"
                    )
            record = locked.certs.set_revocation(
                current,
                CertStatus.REVOKED,
                now,
                reason,
                entry_der(current.serial, now, reason.value),
            )
            locked.audit.add(
                AuditEvent.of(
                    actor,
                    "certificate.revoke",
                    f"{target.authority}/{target.serial}",
                    now,
                    {"reason": reason.value},
                )
            )
        self.ocsp.status_changed(target.authority, target.serial)
        self.crls.after_revocation(target.authority, locked.seen_number)
        return record, True

    def release_hold(
        self, serial: str, actor: Actor, *, authority: str | None = None
    ) -> CertificateRecord:
        """Lift certificateHold: the certificate is valid again and leaves the next CRL."""
        target = self.registry.get_certificate(serial, authority)
        self._refuse_authority_certificate(target)
        now = self.ctx.clock.now()
        with self._locked(target) as locked:
            current = locked.current
            if (
                current.status is not CertStatus.REVOKED
                or current.revocation_reason is not RevocationReason.CERTIFICATE_HOLD
            ):
                raise Conflict(f"certificate {target.serial} is not on hold")
            record = locked.certs.set_revocation(current, CertStatus.VALID, None, None, None)
            locked.audit.add(
                AuditEvent.of(
                    actor,
                    "certificate.release_hold",
                    f"{target.authority}/{target.serial}",
                    now,
                    None,
                )
            )
        self.ocsp.status_changed(target.authority, target.serial)
        self.crls.after_revocation(target.authority, locked.seen_number)
        return record

    def revoke_authority(
        self, name: str, reason: RevocationReason, actor: Actor
    ) -> AuthorityRecord:
        """Revoke an issuing CA: its certificate enters its issuer's CRL and OCSP answers, and
        it issues nothing more (checked against the store at every issuance, in every process).
        Same reason again: no-op. It cannot be undone, so certificateHold is refused, and a root
        is refused: nothing above it can say it is revoked (remove it from the trust stores)."""
        record = self.registry.get_authority(name)
        if record.is_root:
            raise PolicyRejected(
                f"{name!r} is a root: it cannot be listed in its own CRL; withdraw it by "
                "removing it from the trust stores",
                rule="authority.revoke.root",
            )
        if record.parent is None:
            raise PolicyRejected(
                f"{name!r} was imported and its issuer is not held here; revoke it at its issuer",
                rule="authority.revoke.external_issuer",
            )
        if reason is RevocationReason.CERTIFICATE_HOLD:
            raise BadRequest(
                "an authority cannot be put on hold: its revocation is final; "
                "choose another reason (rule: authority.revoke.hold)",
                rule="authority.revoke.hold",
            )
        cert = x509.load_der_x509_certificate(record.cert_der)
        target = self.registry.get_certificate(serial_hex(cert.serial_number), record.parent)
        now = self.ctx.clock.now()
        with self._locked(target) as locked:
            current = locked.current
            if current.status is CertStatus.REVOKED:
                if current.revocation_reason is reason:
                    return locked.authorities.get(name)
                raise Conflict(
                    f"authority {name!r} is already revoked ({current.revocation_reason}); it "
                    f"cannot be revoked again as {reason}"
                )
            locked.certs.set_revocation(
                current,
                CertStatus.REVOKED,
                now,
                reason,
                entry_der(current.serial, now, reason.value),
            )
            locked.audit.add(
                AuditEvent.of(
                    actor,
                    "authority.revoke",
                    name,
                    now,
                    {"reason": reason.value, "issuer": record.parent, "serial": target.serial},
                )
            )
            updated = locked.authorities.get(name)
        self.ocsp.status_changed(record.parent, target.serial)
        self.crls.after_revocation(record.parent, locked.seen_number)
        return updated

    def _refuse_authority_certificate(self, target: CertificateRecord) -> None:
        """A CA's own certificate is not revoked like a leaf: revoking an issuing CA stops all
        its issuance and invalidates everything it issued, so it is a separate, explicit admin
        action; and a root listed in its own CRL means nothing to anyone."""
        for record in self.registry.list_authorities():
            if record.cert_der == target.der:
                raise PolicyRejected(
                    f"certificate {target.serial} is the certificate of authority "
                    f"{record.name!r}; a CA is revoked with 'ca-service authority revoke' or "
                    f"POST /api/v1/authorities/{record.name}/revoke (admin), never as a leaf",
                    rule="revoke.authority_certificate",
                )

    @contextmanager
    def _locked(self, target: CertificateRecord) -> Iterator[_Locked]:
        """A write transaction holding the lock on the authority's row (which orders it against
        CRL generation: any CRL numbered above the yielded number is made after this commits)
        and on ``target``'s row (so revocations of one certificate are decided in turn); yields
        ``target`` as it stands under that lock."""
        with unit_of_work(self.ctx.db, write=True) as s:
            authorities = AuthorityRepository(s)
            seen_number = authorities.lock_crl_number(target.authority)
            certs = CertificateRepository(s)
            current = certs.find_for_update(target.serial, target.authority)
            if current is None:
                raise NotFound(f"no certificate with serial {target.serial}")
            yield _Locked(current, seen_number, certs, authorities, AuditRepository(s))
