"""Issuance: a request becomes a certificate by policy, then signing, then storage, and is
returned only once its record has committed. Renewal and PKCS#12 packaging belong here too.

Policy approves the request before anything costly happens (a key pair asked for is made only
after approval). This part must never decide policy itself, never sign except through the
authority's Signer, and never keep the key pair it makes for a caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from ca_service import metrics
from ca_service.core.context import Context, record_of_leaf
from ca_service.core.issued_records import IssuedRecords, confirm_in_store
from ca_service.core.registry import LoadedAuthority, Registry
from ca_service.crypto.csr import parse_csr
from ca_service.crypto.keys import SigningKey, generate_private_key, key_type_of, private_key_pem
from ca_service.crypto.names import parse_name
from ca_service.domain import (
    Actor,
    CertificateRecord,
    CertStatus,
    IssuanceRequest,
    IssuedCertificate,
    KeyType,
)
from ca_service.errors import BadRequest, Conflict, PolicyRejected
from ca_service.notify import ISSUED
from ca_service.policy.check import check
from ca_service.storage.db import DuplicateRow

SERIAL_ATTEMPTS = 4
PKCS12_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
# Key types whose generation costs far more than a read of the store (an RSA key takes 50 ms
# to seconds; an EC or Ed25519 key less than the read): a caller's token accepted from a cache
# is confirmed before one is made, so a revoked token cannot spend the CPU.
_COSTLY_KEYS = frozenset({KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096})
# The public key of a request whose key pair is generated only after policy approved it; it is
# replaced in the approved template and never signed (a fixed, valid Ed25519 point).
_KEY_NOT_YET_MADE = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()


class Issuance:
    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.records = IssuedRecords(ctx)

    def issue_from_csr(
        self,
        csr: bytes | str,
        actor: Actor,
        *,
        profile: str = "server",
        validity_days: int | None = None,
        authority: str | None = None,
        extra_names: Sequence[str] = (),
        replaces: str | None = None,
    ) -> IssuedCertificate:
        """Issue for the key and names of a CSR, whose signature proves possession of the key.
        ``replaces``: the serial of a certificate of the same authority that this one succeeds
        (ACME's RFC 9773 ``replaces``); unlike ``renew`` it may be revoked, which is often why
        it is replaced."""
        parsed = parse_csr(csr)
        names = parsed.names + tuple(parse_name(n) for n in extra_names)
        request = IssuanceRequest(
            public_key=parsed.public_key,
            key_type=parsed.key_type,
            common_name=parsed.common_name,
            names=names,
            profile=profile,
            validity_days=validity_days,
            authority=authority,
        )
        renews = None
        if replaces is not None:
            renews = self.registry.get_certificate(replaces, authority)
        return self._issue(request, actor, renews=renews)

    def preflight(
        self,
        names: Sequence[str],
        actor: Actor,
        *,
        profile: str,
        authority: str | None = None,
    ) -> None:
        """Would the caller's policy and the profile allow a certificate for ``names``? The
        same check issuance runs, on a stand-in key, with nothing signed or stored: for front
        ends that must refuse a name before any work is done for it (ACME's newOrder)."""
        request = IssuanceRequest(
            public_key=_KEY_NOT_YET_MADE,
            key_type=KeyType.ECDSA_P256,
            common_name=None,
            names=tuple(parse_name(n) for n in names),
            profile=profile,
            validity_days=None,
            authority=authority,
        )
        name = authority or self.registry.default_authority()
        loaded = self.registry.load(name)
        if loaded.record.is_root:
            raise PolicyRejected(
                f"{name!r} is a root CA; issue from its intermediate", rule="authority.is_root"
            )
        now = self.ctx.clock.now()
        check(request, self.ctx.settings.profiles, loaded.view, actor.policy, now, 1)

    def issue_with_new_key(
        self,
        actor: Actor,
        *,
        common_name: str | None = None,
        names: Sequence[str] = (),
        key_type: KeyType = KeyType.ECDSA_P256,
        profile: str = "server",
        validity_days: int | None = None,
        authority: str | None = None,
        pkcs12_passphrase: bytes | None = None,
    ) -> IssuedCertificate:
        """Generate the key pair here and return it once with the certificate; it is not stored."""
        parsed_names = tuple(parse_name(n) for n in names)
        # Policy reads the key type, never the key: it approves the request before the key is
        # made, so a refused RSA-4096 request costs no key generation. The key then lives only
        # in this call and in the returned object.
        request = IssuanceRequest(
            public_key=_KEY_NOT_YET_MADE,
            key_type=key_type,
            common_name=common_name,
            names=parsed_names,
            profile=profile,
            validity_days=validity_days,
            authority=authority,
        )
        return self._issue(request, actor, new_key=True, pkcs12_passphrase=pkcs12_passphrase)

    def renew(
        self,
        serial: str,
        actor: Actor,
        *,
        csr: bytes | str | None = None,
        authority: str | None = None,
        validity_days: int | None = None,
    ) -> IssuedCertificate:
        """Issue a successor with the same names, profile and authority, for the same public key
        or the key of ``csr``; the old record links to it. Policy applies as to any issuance."""
        old = self.registry.get_certificate(serial, authority)
        if old.profile in ("ca", "ocsp-responder"):
            raise BadRequest(f"{old.profile} certificates are renewed by the service, not here")
        if old.status is CertStatus.REVOKED:
            raise Conflict(f"certificate {old.serial} is revoked and cannot be renewed")
        names = tuple(parse_name(n) for n in old.sans)
        if csr is not None:
            parsed = parse_csr(csr)
            if parsed.names and set(parsed.names) != set(names):
                raise BadRequest("a renewal keeps the names; the CSR asks for other names")
            public_key, key_type = parsed.public_key, parsed.key_type
        else:
            public_key = x509.load_der_x509_certificate(old.der).public_key()
            key_type = key_type_of(public_key)
        request = IssuanceRequest(
            public_key=public_key,
            key_type=key_type,
            common_name=old.common_name,
            names=names,
            profile=old.profile,
            validity_days=validity_days,
            authority=old.authority,
        )
        return self._issue(request, actor, renews=old)

    def _issue(
        self,
        request: IssuanceRequest,
        actor: Actor,
        *,
        new_key: bool = False,
        pkcs12_passphrase: bytes | None = None,
        renews: CertificateRecord | None = None,
    ) -> IssuedCertificate:
        """``new_key``: generate the key pair once policy has approved the request (whose
        public key is then only a stand-in) and return it with the certificate."""
        assert new_key == (request.public_key is _KEY_NOT_YET_MADE)
        name = request.authority or self.registry.default_authority()
        loaded = self.registry.load(name)
        labels = {
            "authority": name,
            "profile": metrics.bounded(request.profile, self.ctx.settings.profiles),
            "requester_kind": metrics.requester_kind(actor.identity),
        }
        with metrics.counted(metrics.ISSUED, "issued", **labels):
            record, cert, private_key = self._sign_and_store(
                request, actor, loaded, new_key=new_key, renews=renews
            )
        # Committed: now, and only now, receivers may hear of it.
        self.ctx.events.publish(ISSUED, record, renews=renews.serial if renews else None)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        p12 = None
        if private_key is not None and pkcs12_passphrase:
            p12 = _pkcs12(record, private_key, cert, loaded, pkcs12_passphrase)
        return IssuedCertificate(
            record=record,
            certificate_pem=pem,
            chain_pem=loaded.intermediates_pem,
            private_key_pem=private_key_pem(private_key) if private_key is not None else None,
            pkcs12=p12,
            root_pem=loaded.root_pem,
        )

    def _sign_and_store(
        self,
        request: IssuanceRequest,
        actor: Actor,
        loaded: LoadedAuthority,
        *,
        new_key: bool,
        renews: CertificateRecord | None,
    ) -> tuple[CertificateRecord, x509.Certificate, SigningKey | None]:
        """Policy, signature and the committed record (a new serial on a collision)."""
        ctx = self.ctx
        name = loaded.record.name
        if loaded.record.is_root:
            raise PolicyRejected(
                f"{name!r} is a root CA; issue from its intermediate", rule="authority.is_root"
            )
        private_key: SigningKey | None = None
        for attempt in range(SERIAL_ATTEMPTS):
            now = ctx.clock.now()
            template = check(
                request, ctx.settings.profiles, loaded.view, actor.policy, now, ctx.serials()
            )
            if new_key:
                if private_key is None and request.key_type in _COSTLY_KEYS:
                    _settle_cached_token(ctx, actor, now)
                private_key = private_key or generate_private_key(request.key_type)
                template = dataclasses.replace(template, public_key=private_key.public_key())
            template, crl_shard = self.registry.crl_pointers(template)
            cert = loaded.signer.sign_certificate(template)
            record = record_of_leaf(cert, template, actor.identity, now)
            try:
                self.records.commit(
                    record,
                    actor,
                    authority_id=loaded.authority_id,
                    authority_fingerprint=loaded.fingerprint,
                    crl_shard=crl_shard,
                    renews=renews,
                )
            except DuplicateRow:
                # Only a serial collision can break a unique constraint here (2**-159 odds).
                if attempt == SERIAL_ATTEMPTS - 1:
                    raise
                continue
            return record, cert, private_key
        raise AssertionError("unreachable")  # pragma: no cover


def _settle_cached_token(ctx: Context, actor: Actor, now: dt.datetime) -> None:
    """A token from the cache, not yet confirmed: confirm it now, in a read of its own (the
    issuance's transaction confirms it again, for a revocation in between)."""
    if actor.confirm is not None and not actor.confirm.confirmed:
        confirm_in_store(ctx.db, actor.confirm, now)


def _pkcs12(
    record: CertificateRecord,
    private_key: SigningKey,
    cert: x509.Certificate,
    loaded: LoadedAuthority,
    passphrase: bytes,
) -> bytes:
    """The caller's new key, its certificate and the chain above it, encrypted as one file."""
    assert isinstance(private_key, PKCS12_KEYS)
    return pkcs12.serialize_key_and_certificates(
        (record.common_name or record.serial).encode(),
        private_key,
        cert,
        [loaded.certificate, *loaded.parents],
        serialization.BestAvailableEncryption(passphrase),
    )
