"""The core's one door: ``Core`` is the object every front end calls (HTTP API, CLI, mutual
TLS, TLS serving, the scheduler, and later ACME and OIDC), and nothing else issues, revokes or
signs.

Each method that acts runs policy, then signing, then storage, in one transaction of its own,
and returns only after that transaction has committed: no caller can hand out a certificate
that the store does not hold. A refusal (a policy rule, or a caller acting on a certificate
that is not its own) is audited here once, whichever front end asked. The work itself is done
by the parts behind it; this module holds no rule of its own and must never hand out a key,
a Signer or a stored row: front ends get records, certificates and DER.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509

from ca_service.clock import Clock, SystemClock
from ca_service.config import Settings
from ca_service.core.catalog import Catalog
from ca_service.core.context import Context
from ca_service.core.crl_publisher import CRLPublisher
from ca_service.core.expiry import ExpiryWarnings
from ca_service.core.hierarchy import Hierarchy, HierarchySpec
from ca_service.core.issuance import Issuance
from ca_service.core.ocsp_service import OCSPAnswer, OCSPService
from ca_service.core.readiness import Readiness, readiness
from ca_service.core.refusal_audit import audits_refusals, certificate_target, issuing_target
from ca_service.core.registry import Registry
from ca_service.core.revocation import Revocation
from ca_service.domain import (
    Actor,
    AuthorityRecord,
    CertificateRecord,
    IssuedCertificate,
    KeyType,
    RevocationReason,
    StoredCRL,
)
from ca_service.notify import Events, NoEvents
from ca_service.refusals import RefusalLog
from ca_service.signing.keystore import Keystore
from ca_service.signing.serials import random_serial
from ca_service.storage.db import Database


class Core:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keystore: Keystore,
        clock: Clock | None = None,
        serials: Callable[[], int] = random_serial,
        events: Events | None = None,
    ) -> None:
        self._ctx = Context(settings, db, keystore, clock or SystemClock(), serials)
        self._ctx.events = events or NoEvents()  # notify.py: told after each commit
        self._expiry = ExpiryWarnings(self._ctx)
        self._registry = Registry(self._ctx)
        self._hierarchy = Hierarchy(self._ctx, self._registry)
        self._issuance = Issuance(self._ctx, self._registry)
        self._crls = CRLPublisher(self._ctx, self._registry)
        self._ocsp = OCSPService(self._ctx, self._registry)
        self._revocation = Revocation(self._ctx, self._registry, self._crls, self._ocsp)
        self._catalog = Catalog(db)
        self.refusals = RefusalLog(db, lambda: self._ctx.clock.now())

    # ------------------------------------------------------------------ shared collaborators

    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    @property
    def db(self) -> Database:
        return self._ctx.db

    @property
    def catalog(self) -> Catalog:
        """Reads of the store for front ends (core/catalog.py), so none opens a session."""
        return self._catalog

    @property
    def clock(self) -> Clock:
        return self._ctx.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._ctx.clock = clock

    @property
    def serials(self) -> Callable[[], int]:
        return self._ctx.serials

    @serials.setter
    def serials(self, serials: Callable[[], int]) -> None:
        self._ctx.serials = serials

    # ------------------------------------------------------------------ authorities

    def urls(self, authority: str) -> tuple[str, str, str]:
        """CRL, caIssuers and OCSP URLs that certificates issued by ``authority`` carry."""
        return self._registry.urls(authority)

    def create_hierarchy(self, spec: HierarchySpec, actor: Actor) -> list[AuthorityRecord]:
        """Create ``<name>-root`` and the issuing CA ``<name>``; refuse if either exists."""
        return self._hierarchy.create_hierarchy(spec, actor)

    def import_authority(
        self, name: str, cert_pem: bytes, key_data: bytes, key_passphrase: bytes | None,
        chain_pem: bytes | None, actor: Actor, *, intermediate_days: int = 1825,
        key_reference: str | None = None,
    ) -> list[AuthorityRecord]:  # fmt: skip
        """Adopt an existing CA. A root gets a new issuing intermediate; an intermediate issues.
        ``key_reference``: its key is in the token already (a pkcs11: URI), not in ``key_data``."""
        return self._hierarchy.import_authority(
            name, cert_pem, key_data, key_passphrase, chain_pem, actor,
            intermediate_days=intermediate_days, key_reference=key_reference,
        )  # fmt: skip

    def list_authorities(self) -> list[AuthorityRecord]:
        return self._registry.list_authorities()

    def get_authority(self, name: str) -> AuthorityRecord:
        return self._registry.get_authority(name)

    def set_default(self, name: str, actor: Actor) -> None:
        self._registry.set_default(name, actor)

    def default_authority(self) -> str:
        """The authority a request without one goes to (cached for a few seconds)."""
        return self._registry.default_authority()

    def load_keys(self) -> list[str]:
        """Load and check every CA key now, so a wrong passphrase stops the service at start."""
        return self._registry.load_keys()

    def authority_certificate(self, name: str | None = None) -> x509.Certificate:
        """The authority's own certificate (NotFound when this service holds no such CA)."""
        return self._registry.load(name or self.default_authority()).certificate

    def chain_pem(self, name: str | None = None) -> tuple[str, ...]:
        """The authority's certificate and the ones above it, up to the root, as PEM."""
        return self._registry.load(name or self.default_authority()).chain_pem

    def issuer_chain(self, name: str | None = None) -> tuple[tuple[str, ...], str | None]:
        """For certificates ``name`` issued: the intermediates a server sends after its own
        certificate (``name`` and the CAs above it, without the root), and the root (None when
        this service does not hold it)."""
        loaded = self._registry.load(name or self.default_authority())
        return loaded.intermediates_pem, loaded.root_pem

    def readiness(self) -> Readiness:
        """Can this process issue? See core/readiness.py."""
        return readiness(self._registry, self._ctx.clock)

    # ------------------------------------------------------------------ issuance

    @audits_refusals("certificate.issue", issuing_target)
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
        """Issue for the key and names of a CSR, whose signature proves possession of the key;
        ``replaces`` links a predecessor (see Issuance.issue_from_csr)."""
        return self._issuance.issue_from_csr(
            csr, actor, profile=profile, validity_days=validity_days, authority=authority,
            extra_names=extra_names, replaces=replaces,
        )  # fmt: skip

    @audits_refusals("certificate.order", issuing_target)
    def preflight(
        self, names: Sequence[str], actor: Actor, *, profile: str = "server",
        authority: str | None = None,
    ) -> None:  # fmt: skip
        """Refuse now, naming the rule, what issuance would refuse for these names later."""
        self._issuance.preflight(names, actor, profile=profile, authority=authority)

    @audits_refusals("certificate.issue", issuing_target)
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
        return self._issuance.issue_with_new_key(
            actor, common_name=common_name, names=names, key_type=key_type, profile=profile,
            validity_days=validity_days, authority=authority, pkcs12_passphrase=pkcs12_passphrase,
        )  # fmt: skip

    @audits_refusals("certificate.renew", certificate_target)
    def renew(
        self,
        serial: str,
        actor: Actor,
        *,
        csr: bytes | str | None = None,
        authority: str | None = None,
        validity_days: int | None = None,
    ) -> IssuedCertificate:
        """Issue a successor with the same names, profile and authority (see Issuance.renew)."""
        return self._issuance.renew(
            serial, actor, csr=csr, authority=authority, validity_days=validity_days
        )

    def get_certificate(self, serial: str, authority: str | None = None) -> CertificateRecord:
        return self._registry.get_certificate(serial, authority)

    # ------------------------------------------------------------------ revocation

    @audits_refusals("certificate.revoke", certificate_target)
    def revoke(
        self,
        serial: str,
        reason: RevocationReason,
        actor: Actor,
        *,
        authority: str | None = None,
        requester_only: bool = False,
    ) -> CertificateRecord:
        """Revoke (or put on hold); see Revocation.revoke for the rules."""
        return self._revocation.revoke(
            serial, reason, actor, authority=authority, requester_only=requester_only
        )

    @audits_refusals("certificate.release_hold", certificate_target)
    def release_hold(
        self, serial: str, actor: Actor, *, authority: str | None = None
    ) -> CertificateRecord:
        """Lift certificateHold: the certificate is valid again and leaves the next CRL."""
        return self._revocation.release_hold(serial, actor, authority=authority)

    @audits_refusals("authority.revoke", lambda _, arguments: str(arguments["name"]))
    def revoke_authority(
        self, name: str, reason: RevocationReason, actor: Actor
    ) -> AuthorityRecord:
        """Revoke an issuing CA for good; see Revocation.revoke_authority."""
        return self._revocation.revoke_authority(name, reason, actor)

    def warn_expiring(self) -> int:
        """For the scheduler: certificate.expiring, once per leaf (see core/expiry.py)."""
        return self._expiry.warn()

    # ------------------------------------------------------------------ CRLs

    def publish_crls_in_background(self, from_bytes: int) -> None:
        """For servers: re-sign CRLs of at least ``from_bytes`` after a revocation in a thread."""
        self._crls.publish_in_background(from_bytes)

    def generate_crl(
        self, authority: str | None = None, *, unless_beyond: int | None = None
    ) -> StoredCRL:
        """Sign a new CRL under the next number (see CRLPublisher.generate_crl)."""
        return self._crls.generate_crl(authority, unless_beyond=unless_beyond)

    def refresh_crls(self) -> dict[str, int]:
        """Re-sign every CRL past half its life; the current CRL number of each authority."""
        return self._crls.refresh_crls()

    def current_crl(
        self, authority: str | None = None, *, known_number: int | None = None, part: str = ""
    ) -> StoredCRL | None:
        """The CRL to publish; None when ``known_number`` is still the current one. ``part``: a
        shard or delta CRL instead of the full one: "<k>", "delta", "<k>/delta" (docs/crl.md)."""
        return self._crls.current_crl(authority, known_number=known_number, part=part)

    def crl_stamp(self, name: str, *, announce: bool = False) -> int:
        """Changes when this host publishes a CRL of ``name`` or ``announce``s one (0: never)."""
        return self._crls.crl_stamp(name, announce=announce)

    # ------------------------------------------------------------------ OCSP

    def answer_ocsp(self, request_der: bytes) -> OCSPAnswer:
        """The DER answer to an OCSP request, signed (or an unsigned error status)."""
        return self._ocsp.respond(request_der)

    def ocsp_issuer(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> str | None:
        """The authority a CertID's issuer hashes name, or None when it is not ours."""
        return self._ocsp.issuer(hash_name, name_hash, key_hash)

    def refresh_ocsp(self) -> int:
        """Re-sign a batch of pre-signed OCSP answers before their nextUpdate (the scheduler)."""
        return self._ocsp.refresh()
