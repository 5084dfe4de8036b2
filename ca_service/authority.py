"""THE generation core: every certificate, CRL and revocation of ca-service passes through here.

The CLI, the HTTP API and (later) ACME and OCSP call these methods and nothing else signs.
Each public method runs policy, then signing, then storage, in one transaction of its own, and
returns only after that transaction has committed: no caller can hand out a certificate that the
store does not hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca_service.clock import Clock, SystemClock
from ca_service.config import Settings
from ca_service.crypto.csr import parse_csr
from ca_service.crypto.fields import certificate_names, common_name_of
from ca_service.crypto.keys import (
    SigningKey,
    fingerprint_sha256,
    generate_private_key,
    key_type_of,
    load_any_private_key,
    private_key_pem,
    public_key_matches,
)
from ca_service.crypto.names import parse_name
from ca_service.crypto.ocsp_wire import SignerInfo, spki_bits
from ca_service.domain import (
    Actor,
    AuthorityRecord,
    CertificateRecord,
    CertStatus,
    IssuanceRequest,
    IssuedCertificate,
    KeyType,
    RevocationReason,
)
from ca_service.errors import (
    BadRequest,
    CAError,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyRejected,
    Unavailable,
)
from ca_service.policy.check import AuthorityView, check, responder_template
from ca_service.policy.names import NameConstraintsSpec
from ca_service.refusals import RefusalLog
from ca_service.signing.crl import sign_crl
from ca_service.signing.issuer import sign_intermediate, sign_leaf, sign_root
from ca_service.signing.keystore import FileKeystore
from ca_service.signing.material import CAMaterial
from ca_service.signing.ocsp import signer_info
from ca_service.signing.serials import parse_serial, random_serial, serial_hex
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.models import CertificateRow
from ca_service.storage.ocsp_repository import OCSPRepository, ResponderRecord, SerialStatus
from ca_service.storage.repositories import (
    AuditEvent,
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
    CRLRepository,
    StoredCRL,
)

log = logging.getLogger("ca_service.authority")

SERIAL_ATTEMPTS = 4
DEFAULT_TTL = 5.0  # seconds
PKCS12_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
# The public key of a request whose key pair is generated only after policy approved it; it is
# replaced in the approved template and never signed (a fixed, valid Ed25519 point).
_KEY_NOT_YET_MADE = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()


P = ParamSpec("P")
R = TypeVar("R")


def _audits_refusals(
    attempted: str, target: Callable[[CertificateAuthority, dict[str, Any]], str]
) -> Callable[
    [Callable[Concatenate[CertificateAuthority, P], R]],
    Callable[Concatenate[CertificateAuthority, P], R],
]:
    """A refusal escaping the method (a policy rule, or a caller acting on a certificate that
    is not its own) is audited once, with its rule, in a transaction of its own (the refused
    action has written nothing), whichever front end called: API, CLI or mutual TLS."""

    def decorate(
        method: Callable[Concatenate[CertificateAuthority, P], R],
    ) -> Callable[Concatenate[CertificateAuthority, P], R]:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def wrapper(ca: CertificateAuthority, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(ca, *args, **kwargs)
            except (PolicyRejected, Forbidden) as exc:
                arguments = signature.bind(ca, *args, **kwargs).arguments
                actor = arguments["actor"]
                assert isinstance(actor, Actor)
                ca.refusals.record(actor, target(ca, arguments), exc, attempted=attempted)
                raise

        return wrapper

    return decorate


def _issuing_target(ca: CertificateAuthority, arguments: dict[str, Any]) -> str:
    """The authority asked to issue (refusals of an issuance have no serial yet)."""
    if arguments.get("authority"):
        return str(arguments["authority"])
    try:
        return ca.default_authority()
    except CAError:
        return "(default)"


def _certificate_target(_: CertificateAuthority, arguments: dict[str, Any]) -> str:
    """authority/serial, as certificate events name their target."""
    serial = str(arguments["serial"])
    with suppress(CAError):
        serial = _normalize_serial(serial)
    authority = arguments.get("authority")
    return f"{authority}/{serial}" if authority else serial


@dataclass(frozen=True)
class HierarchySpec:
    """What ``init`` asks for: a root and an issuing intermediate under it."""

    name: str = "default"
    key_type: KeyType = KeyType.ECDSA_P256
    root_subject: x509.Name | None = None
    intermediate_subject: x509.Name | None = None
    root_days: int = 3650
    intermediate_days: int = 1825
    constraints: NameConstraintsSpec = field(default_factory=NameConstraintsSpec)


@dataclass(frozen=True)
class OCSPSigner:
    """The key that signs one authority's OCSP answers, and when to replace it."""

    authority: str
    serial: str
    info: SignerInfo
    rotate_at: dt.datetime


@dataclass(frozen=True)
class _Loaded:
    material: CAMaterial
    view: AuthorityView
    record: AuthorityRecord
    # Fixed for the authority's life, so computed once per process rather than per issuance.
    authority_id: int
    chain_pem: tuple[str, ...]

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the authority's certificate: the key of its row under its issuer."""
        return fingerprint_sha256(self.material.certificate)

    @cached_property
    def root_pem(self) -> str | None:
        """The self-signed certificate that ends the chain, if the chain reaches one."""
        top = (self.material.certificate, *self.material.parents)[-1]
        return self.chain_pem[-1] if top.issuer == top.subject else None

    @cached_property
    def intermediates_pem(self) -> tuple[str, ...]:
        """The authority and the CAs above it, without the root: what a server sends."""
        return self.chain_pem[:-1] if self.root_pem is not None else self.chain_pem


@dataclass(frozen=True)
class Readiness:
    """Whether this process can do its work, and if not, each reason in a user-safe sentence."""

    problems: tuple[str, ...]
    # database, keys: "ok" or what is wrong; authority: the default issuing CA's name; chain:
    # that CA and each above it, with its status (valid, revoked, expired).
    checks: dict[str, Any]
    # True when a retry may succeed without an operator (the database was away).
    transient: bool = False
    authorities: int = 0

    @property
    def ready(self) -> bool:
        return not self.problems


class CertificateAuthority:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keystore: FileKeystore,
        clock: Clock | None = None,
        serials: Callable[[], int] = random_serial,
    ) -> None:
        self.settings = settings
        self.db = db
        self.keystore = keystore
        self.clock = clock or SystemClock()
        self.serials = serials
        self._loaded: dict[str, _Loaded] = {}
        self._ocsp_signers: dict[str, OCSPSigner] = {}
        self._default: tuple[float, str] | None = None
        self._crl_sizes: dict[str, int] = {}  # bytes of the last CRL this process signed
        self._crl_executor: ThreadPoolExecutor | None = None
        self._crl_background_from = 0
        self._issuer_hashes: dict[tuple[str, bytes, bytes], str] = {}
        self._lock = threading.Lock()
        self.refusals = RefusalLog(db, lambda: self.clock.now())

    # ------------------------------------------------------------------ authorities

    def urls(self, authority: str) -> tuple[str, str, str]:
        """CRL, caIssuers and OCSP URLs that certificates issued by ``authority`` carry."""
        base = self.settings.public_url
        return f"{base}/ca/{authority}/crl", f"{base}/ca/{authority}/ca.cer", f"{base}/ocsp"

    def create_hierarchy(self, spec: HierarchySpec, actor: Actor) -> list[AuthorityRecord]:
        """Create ``<name>-root`` and the issuing CA ``<name>``; refuse if either exists."""
        _check_authority_name(spec.name)
        root_name = f"{spec.name}-root"
        with unit_of_work(self.db) as s:
            repo = AuthorityRepository(s)
            for name in (spec.name, root_name):
                if repo.find(name) is not None:
                    raise Conflict(f"authority {name!r} exists already; nothing was changed")
        if spec.root_days < 1 or spec.intermediate_days < 1:
            raise BadRequest("validity must be at least one day")
        if spec.intermediate_days > spec.root_days:
            raise BadRequest("the intermediate cannot outlive the root")
        now = self.clock.now()
        root_key = generate_private_key(spec.key_type)
        root_subject = spec.root_subject or _default_subject(f"{spec.name} Root CA")
        root_cert = sign_root(
            root_key,
            spec.key_type,
            root_subject,
            self.serials(),
            now - dt.timedelta(minutes=1),
            now + dt.timedelta(days=spec.root_days),
        )
        root_material = CAMaterial(root_name, root_cert, root_key, spec.key_type)
        inter_key = generate_private_key(spec.key_type)
        crl_url, issuers_url, ocsp_url = self.urls(root_name)
        inter_cert = sign_intermediate(
            inter_key.public_key(),
            spec.intermediate_subject or _default_subject(f"{spec.name} Issuing CA"),
            root_material,
            self.serials(),
            now - dt.timedelta(minutes=1),
            min(now + dt.timedelta(days=spec.intermediate_days), root_cert.not_valid_after_utc),
            spec.constraints,
            crl_url,
            issuers_url,
            ocsp_url,
        )
        return self._register(
            [
                (root_name, None, root_cert, root_key, None, None),
                (spec.name, root_name, inter_cert, inter_key, spec.constraints, None),
            ],
            actor,
            action="authority.create",
        )

    def import_authority(
        self,
        name: str,
        cert_pem: bytes,
        key_data: bytes,
        key_passphrase: bytes | None,
        chain_pem: bytes | None,
        actor: Actor,
        *,
        intermediate_days: int = 1825,
    ) -> list[AuthorityRecord]:
        """Adopt an existing CA. A root gets a new issuing intermediate; an intermediate issues."""
        _check_authority_name(name)
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            try:
                cert = x509.load_der_x509_certificate(cert_pem)
            except ValueError:
                raise BadRequest("the CA certificate is not valid PEM or DER") from None
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise BadRequest("the certificate to import is not a CA certificate (basicConstraints)")
        key = load_any_private_key(key_data, key_passphrase, "imported CA key")
        if not public_key_matches(key, cert.public_key()):
            raise BadRequest("the private key does not belong to the certificate")
        key_type = key_type_of(cert.public_key())
        now = self.clock.now()
        if cert.not_valid_after_utc <= now:
            raise BadRequest("the CA certificate has expired")
        try:
            cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            raise BadRequest("the CA certificate has no subjectKeyIdentifier") from None
        self_signed = cert.issuer == cert.subject
        with unit_of_work(self.db) as s:
            repo = AuthorityRepository(s)
            for taken in (name, f"{name}-root"):
                if repo.find(taken) is not None:
                    raise Conflict(f"authority {taken!r} exists already; nothing was changed")
        if not self_signed:
            chain = chain_pem.decode() if chain_pem else None
            if chain:
                try:
                    x509.load_pem_x509_certificates(chain.encode())
                except ValueError:
                    raise BadRequest("the chain file is not valid PEM") from None
            return self._register(
                [(name, None, cert, key, NameConstraintsSpec(), chain)],
                actor,
                action="authority.import",
            )
        if bc.path_length == 0:
            raise BadRequest("the imported root has pathLen 0 and cannot certify an intermediate")
        root_name = f"{name}-root"
        root_material = CAMaterial(root_name, cert, key, key_type)
        inter_key = generate_private_key(key_type)
        crl_url, issuers_url, ocsp_url = self.urls(root_name)
        inter_cert = sign_intermediate(
            inter_key.public_key(),
            _default_subject(f"{name} Issuing CA"),
            root_material,
            self.serials(),
            now - dt.timedelta(minutes=1),
            min(now + dt.timedelta(days=intermediate_days), cert.not_valid_after_utc),
            NameConstraintsSpec(),
            crl_url,
            issuers_url,
            ocsp_url,
        )
        return self._register(
            [
                (root_name, None, cert, key, None, None),
                (name, root_name, inter_cert, inter_key, NameConstraintsSpec(), None),
            ],
            actor,
            action="authority.import",
        )

    def _register(
        self,
        entries: Sequence[
            tuple[
                str,
                str | None,
                x509.Certificate,
                SigningKey,
                NameConstraintsSpec | None,
                str | None,
            ]
        ],
        actor: Actor,
        action: str,
    ) -> list[AuthorityRecord]:
        """Write key files, then the records in one transaction; remove the files if it fails."""
        written: list[str] = []
        try:
            key_files = []
            for name, _, _, key, _, _ in entries:
                key_file = self.keystore.store(f"{name}-{secrets.token_hex(4)}", key)
                written.append(key_file)
                key_files.append(key_file)
            now = self.clock.now()
            with unit_of_work(self.db, write=True) as s:
                repo = AuthorityRepository(s)
                certs = CertificateRepository(s)
                audit = AuditRepository(s)
                records = []
                for (name, parent, cert, _, constraints, chain), key_file in zip(
                    entries, key_files, strict=True
                ):
                    record = repo.add(
                        name=name,
                        parent=parent,
                        is_root=cert.issuer == cert.subject,
                        subject=cert.subject.rfc4514_string(),
                        key_type=key_type_of(cert.public_key()).value,
                        cert_der=cert.public_bytes(serialization.Encoding.DER),
                        key_file=key_file,
                        not_before=cert.not_valid_before_utc,
                        not_after=cert.not_valid_after_utc,
                        name_constraints=constraints.to_json() if constraints else None,
                        created_at=now,
                        external_chain_pem=chain,
                    )
                    # Every certificate we hold the issuer of is stored, CA ones too, under
                    # that issuer (a root under itself), so that a CA can be revoked like a leaf.
                    issuer = parent or (name if record.is_root else None)
                    if issuer is not None:
                        certs.add(
                            _record_for(cert, issuer, "ca", actor.identity, now),
                            repo.id_of(issuer),
                        )
                    audit.add(AuditEvent.of(actor, action, name, now, {"subject": record.subject}))
                    records.append(record)
                if repo.default() is None:
                    repo.set_default(records[-1].name)
                    records[-1] = repo.get(records[-1].name)
        except BaseException:
            for key_file in written:
                self.keystore.remove(key_file)
            raise
        return records

    def list_authorities(self) -> list[AuthorityRecord]:
        with unit_of_work(self.db) as s:
            return AuthorityRepository(s).list()

    def set_default(self, name: str, actor: Actor) -> None:
        with unit_of_work(self.db, write=True) as s:
            repo = AuthorityRepository(s)
            record = repo.get(name)
            if record.is_root:
                raise BadRequest(f"{name!r} is a root; the default must be an issuing authority")
            repo.set_default(name)
            AuditRepository(s).add(
                AuditEvent.of(actor, "authority.default", name, self.clock.now(), None)
            )
        self._default = None

    def default_authority(self) -> str:
        """The authority a request without one goes to. Read from the store at most every few
        seconds: it is asked on every issuance and changes once in a blue moon (another process
        changing it is seen within DEFAULT_TTL)."""
        if self.settings.default_authority:
            return self.settings.default_authority
        cached = self._default
        if cached is not None and time.monotonic() - cached[0] < DEFAULT_TTL:
            return cached[1]
        with unit_of_work(self.db) as s:
            record = AuthorityRepository(s).default()
        if record is None:
            raise NotFound("no certificate authority exists yet; run 'ca-service init'")
        self._default = (time.monotonic(), record.name)
        return record.name

    def load_keys(self) -> list[str]:
        """Load and check every CA key now, so a wrong passphrase stops the service at start."""
        names = [a.name for a in self.list_authorities()]
        for name in names:
            self._load(name)
        return names

    def _load(self, name: str) -> _Loaded:
        with self._lock:
            cached = self._loaded.get(name)
        if cached is not None:
            return cached
        with unit_of_work(self.db) as s:
            repo = AuthorityRepository(s)
            record = repo.get(name)
            authority_id = repo.id_of(name)
            chain = []
            parent = record.parent
            while parent is not None:
                parent_record = repo.get(parent)
                chain.append(x509.load_der_x509_certificate(parent_record.cert_der))
                parent = parent_record.parent
        if record.external_chain_pem:
            chain.extend(x509.load_pem_x509_certificates(record.external_chain_pem.encode()))
        cert = x509.load_der_x509_certificate(record.cert_der)
        key = self.keystore.load(record.key_file, f"authority {name!r}")
        if not public_key_matches(key, cert.public_key()):
            raise ConfigError(f"authority {name!r}: the key file does not match its certificate")
        material = CAMaterial(name, cert, key, KeyType(record.key_type), tuple(chain))
        crl_url, issuers_url, ocsp_url = self.urls(name)
        view = AuthorityView(
            name=name,
            not_after=record.not_after,
            constraints=NameConstraintsSpec.from_json(record.name_constraints),
            crl_url=crl_url,
            ca_issuers_url=issuers_url,
            ocsp_url=ocsp_url,
        )
        chain_pem = tuple(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, *chain)
        )
        loaded = _Loaded(material, view, record, authority_id, chain_pem)
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def material(self, name: str | None = None) -> CAMaterial:
        return self._load(name or self.default_authority()).material

    def chain_pem(self, name: str | None = None) -> tuple[str, ...]:
        """The authority's certificate and the ones above it, up to the root, as PEM."""
        return self._load(name or self.default_authority()).chain_pem

    def issuer_chain(self, name: str | None = None) -> tuple[tuple[str, ...], str | None]:
        """For certificates ``name`` issued: the intermediates a server sends after its own
        certificate (``name`` and the CAs above it, without the root), and the root (None when
        this service does not hold it)."""
        loaded = self._load(name or self.default_authority())
        return loaded.intermediates_pem, loaded.root_pem

    # ------------------------------------------------------------------ issuance

    @_audits_refusals("certificate.issue", _issuing_target)
    def issue_from_csr(
        self,
        csr: bytes | str,
        actor: Actor,
        *,
        profile: str = "server",
        validity_days: int | None = None,
        authority: str | None = None,
        extra_names: Sequence[str] = (),
    ) -> IssuedCertificate:
        """Issue for the key and names of a CSR, whose signature proves possession of the key."""
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
        return self._issue(request, actor)

    @_audits_refusals("certificate.issue", _issuing_target)
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
        private_key: SigningKey | None = None
        name = request.authority or self.default_authority()
        loaded = self._load(name)
        if loaded.record.is_root:
            raise PolicyRejected(
                f"{name!r} is a root CA; issue from its intermediate", rule="authority.is_root"
            )
        for attempt in range(SERIAL_ATTEMPTS):
            now = self.clock.now()
            template = check(
                request, self.settings.profiles, loaded.view, actor.policy, now, self.serials()
            )
            if new_key:
                private_key = private_key or generate_private_key(request.key_type)
                template = dataclasses.replace(template, public_key=private_key.public_key())
            cert = sign_leaf(template, loaded.material)
            record = _record_for(cert, name, template.profile, actor.identity, now)
            try:
                with unit_of_work(self.db, write=True) as s:
                    _refuse_if_revoked(AuthorityRepository(s), name, loaded.fingerprint)
                    certs = CertificateRepository(s)
                    certs.add(record, loaded.authority_id)
                    details: dict[str, Any] = {
                        "profile": record.profile,
                        "names": list(record.sans),
                    }
                    if renews is not None:
                        certs.set_successor(renews.serial, loaded.authority_id, record.serial)
                        details["renews"] = renews.serial
                    AuditRepository(s).add(
                        AuditEvent.of(
                            actor,
                            "certificate.renew" if renews else "certificate.issue",
                            f"{name}/{record.serial}",
                            now,
                            details,
                        )
                    )
            except IntegrityError:
                # Only a serial collision can break a unique constraint here (2**-159 odds).
                if attempt == SERIAL_ATTEMPTS - 1:
                    raise
                continue
            break
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        p12 = None
        if private_key is not None and pkcs12_passphrase:
            assert isinstance(private_key, PKCS12_KEYS)
            p12 = pkcs12.serialize_key_and_certificates(
                (record.common_name or record.serial).encode(),
                private_key,
                cert,
                [loaded.material.certificate, *loaded.material.parents],
                serialization.BestAvailableEncryption(pkcs12_passphrase),
            )
        return IssuedCertificate(
            record=record,
            certificate_pem=pem,
            chain_pem=loaded.intermediates_pem,
            private_key_pem=private_key_pem(private_key) if private_key is not None else None,
            pkcs12=p12,
            root_pem=loaded.root_pem,
        )

    @_audits_refusals("certificate.renew", _certificate_target)
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
        old = self.get_certificate(serial, authority)
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

    # ------------------------------------------------------------------ lookups

    def get_certificate(self, serial: str, authority: str | None = None) -> CertificateRecord:
        normalized = _normalize_serial(serial)
        with unit_of_work(self.db) as s:
            found = CertificateRepository(s).find(normalized, authority)
        if not found:
            raise NotFound(f"no certificate with serial {serial}")
        if len(found) > 1:
            names = ", ".join(r.authority for r in found)
            raise Conflict(f"serial {serial} exists in several authorities ({names}); name one")
        return found[0]

    # ------------------------------------------------------------------ revocation

    @_audits_refusals("certificate.revoke", _certificate_target)
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
        target = self.get_certificate(serial, authority)
        if requester_only and target.requester != actor.identity:
            raise Forbidden(
                "an issuer token may revoke only the certificates it issued",
                rule="caller.own_certificates",
            )
        self._refuse_authority_certificate(target)
        now = self.clock.now()
        with self._locked_row(target) as (s, repo, row, seen_number):
            current = CertStatus(row.status)
            current_reason = (
                RevocationReason(row.revocation_reason) if row.revocation_reason else None
            )
            if current is CertStatus.REVOKED:
                if current_reason is reason:
                    return repo.set_revocation(row, current, row.revoked_at, current_reason)
                if current_reason is not RevocationReason.CERTIFICATE_HOLD:
                    raise Conflict(
                        f"certificate {target.serial} is already revoked "
                        f"({current_reason}); it cannot be revoked again as {reason}"
                    )
            record = repo.set_revocation(row, CertStatus.REVOKED, now, reason)
            AuditRepository(s).add(
                AuditEvent.of(
                    actor,
                    "certificate.revoke",
                    f"{target.authority}/{target.serial}",
                    now,
                    {"reason": reason.value},
                )
            )
        self._refresh_crl_quietly(target.authority, seen_number)
        return record

    @_audits_refusals("certificate.release_hold", _certificate_target)
    def release_hold(
        self, serial: str, actor: Actor, *, authority: str | None = None
    ) -> CertificateRecord:
        """Lift certificateHold: the certificate is valid again and leaves the next CRL."""
        target = self.get_certificate(serial, authority)
        self._refuse_authority_certificate(target)
        now = self.clock.now()
        with self._locked_row(target) as (s, repo, row, seen_number):
            if (
                row.status != CertStatus.REVOKED.value
                or row.revocation_reason != RevocationReason.CERTIFICATE_HOLD.value
            ):
                raise Conflict(f"certificate {target.serial} is not on hold")
            record = repo.set_revocation(row, CertStatus.VALID, None, None)
            AuditRepository(s).add(
                AuditEvent.of(
                    actor,
                    "certificate.release_hold",
                    f"{target.authority}/{target.serial}",
                    now,
                    None,
                )
            )
        self._refresh_crl_quietly(target.authority, seen_number)
        return record

    def _refuse_authority_certificate(self, target: CertificateRecord) -> None:
        """A CA's own certificate is not revoked like a leaf: revoking an issuing CA stops all
        its issuance and invalidates everything it issued, so it is a separate, explicit admin
        action; and a root listed in its own CRL means nothing to anyone."""
        for record in self.list_authorities():
            if record.cert_der == target.der:
                raise PolicyRejected(
                    f"certificate {target.serial} is the certificate of authority "
                    f"{record.name!r}; a CA is revoked with 'ca-service authority revoke' or "
                    f"POST /api/v1/authorities/{record.name}/revoke (admin), never as a leaf",
                    rule="revoke.authority_certificate",
                )

    @_audits_refusals("authority.revoke", lambda _, arguments: str(arguments["name"]))
    def revoke_authority(
        self, name: str, reason: RevocationReason, actor: Actor
    ) -> AuthorityRecord:
        """Revoke an issuing CA: its certificate enters its issuer's CRL and OCSP answers, and
        it issues nothing more (checked against the store at every issuance, in every process).
        Same reason again: no-op. It cannot be undone, so certificateHold is refused, and a root
        is refused: nothing above it can say it is revoked (remove it from the trust stores)."""
        record = self.get_authority(name)
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
        target = self.get_certificate(serial_hex(cert.serial_number), record.parent)
        now = self.clock.now()
        with self._locked_row(target) as (s, repo, row, seen_number):
            if row.status == CertStatus.REVOKED.value:
                if row.revocation_reason == reason.value:
                    return AuthorityRepository(s).get(name)
                raise Conflict(
                    f"authority {name!r} is already revoked ({row.revocation_reason}); it "
                    f"cannot be revoked again as {reason}"
                )
            repo.set_revocation(row, CertStatus.REVOKED, now, reason)
            AuditRepository(s).add(
                AuditEvent.of(
                    actor,
                    "authority.revoke",
                    name,
                    now,
                    {"reason": reason.value, "issuer": record.parent, "serial": target.serial},
                )
            )
            updated = AuthorityRepository(s).get(name)
        self._refresh_crl_quietly(record.parent, seen_number)
        return updated

    def get_authority(self, name: str) -> AuthorityRecord:
        with unit_of_work(self.db) as s:
            return AuthorityRepository(s).get(name)

    def readiness(self) -> Readiness:
        """Can this process issue? The store answers, every CA key is loaded, and the default
        issuing authority is neither revoked nor expired, nor is any CA above it. Other
        authorities are reported (revoked, expired) but do not make the service unready:
        one may be kept revoked on purpose, for its CRL and OCSP."""
        try:
            return self._readiness()
        except Unavailable as exc:
            log.warning("readiness: the database does not answer: %s", exc.detail)
            return Readiness(
                ("the database is unreachable or its schema is missing",),
                {"database": "unreachable"},
                transient=True,
            )

    def _readiness(self) -> Readiness:
        checks: dict[str, Any] = {}
        records = {r.name: r for r in self.list_authorities()}
        checks["database"] = "ok"
        problems: list[str] = []
        try:
            self.load_keys()
            checks["keys"] = "ok"
        except CAError as exc:
            # The detail may name files: the log has it, the anonymous answer does not.
            log.error("readiness: a CA key cannot be loaded: %s", exc.detail)
            checks["keys"] = "not loaded"
            problems.append("a CA key cannot be loaded (the server log says which and why)")
        now = self.clock.now()
        try:
            default = self.default_authority()
        except NotFound:
            checks["authority"] = None
            problems.append("no issuing authority exists yet")
            return Readiness(tuple(problems), checks)
        record: AuthorityRecord | None = records.get(default)
        if record is None:
            checks["authority"] = None
            problems.append(f"the default authority {default!r} does not exist")
            return Readiness(tuple(problems), checks)
        checks["authority"] = default
        chain: list[dict[str, str]] = []
        checks["chain"] = chain
        while record is not None:
            status = record.status_at(now)
            if status is CertStatus.REVOKED:
                problems.append(
                    f"authority {record.name!r} is revoked ({record.revocation_reason}) since "
                    f"{record.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
                )
            elif status is CertStatus.EXPIRED:
                problems.append(
                    f"authority {record.name!r} expired at {record.not_after:%Y-%m-%d %H:%M:%S} UTC"
                )
            chain.append({"name": record.name, "status": status.value})
            record = records.get(record.parent) if record.parent else None
        return Readiness(tuple(problems), checks, authorities=len(records))

    @contextmanager
    def _locked_row(
        self, target: CertificateRecord
    ) -> Iterator[tuple[Session, CertificateRepository, CertificateRow, int]]:
        """A write transaction holding the lock on the authority's row (which orders it against
        CRL generation: any CRL numbered above the yielded number is made after this commits)
        and on ``target``'s row (so revocations of one certificate are decided in turn)."""
        with unit_of_work(self.db, write=True) as s:
            seen_number = AuthorityRepository(s).lock_crl_number(target.authority)
            repo = CertificateRepository(s)
            row = repo.find_for_update(target.serial, target.authority)
            if row is None:
                raise NotFound(f"no certificate with serial {target.serial}")
            yield s, repo, row, seen_number

    def publish_crls_in_background(self, from_bytes: int) -> None:
        """For servers: after a revocation, a CRL whose last edition was at least ``from_bytes``
        long is re-signed by a background thread, so the revoking request does not wait the
        seconds a CRL of a million entries takes (OCSP shows the revocation at once anyway).
        One thread per process; revocations that pile up meanwhile share one new CRL."""
        self._crl_background_from = from_bytes
        if self._crl_executor is None:
            self._crl_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crl")

    def _refresh_crl_quietly(self, authority: str, seen_number: int) -> None:
        executor = self._crl_executor
        if executor is not None and self._crl_sizes.get(authority, 0) >= self._crl_background_from:
            executor.submit(self._regenerate_after_revocation, authority, seen_number)
        else:
            self._regenerate_after_revocation(authority, seen_number)

    def _regenerate_after_revocation(self, authority: str, seen_number: int) -> None:
        # The revocation is committed whatever happens here, so nothing may escape to the
        # caller as a failure of the revocation. The scheduler re-signs the CRL at half-life.
        try:
            self.generate_crl(authority, unless_beyond=seen_number)
        except Exception:
            log.exception("the CRL of %s was not re-signed after a revocation", authority)

    def generate_crl(
        self, authority: str | None = None, *, unless_beyond: int | None = None
    ) -> StoredCRL:
        """Sign a new CRL. The number comes from an atomic UPDATE whose row lock is held until
        commit, so concurrent generators of one authority are ordered and numbers never repeat.

        ``unless_beyond``: a revocation passes the CRL number it saw under the same lock; if a
        CRL numbered above it exists already, that CRL was made after the revocation committed
        and lists it, so a burst of revocations yields one CRL, not one each.
        """
        name = authority or self.default_authority()
        loaded = self._load(name)
        with unit_of_work(self.db, write=True) as s:
            repo = AuthorityRepository(s)
            crls = CRLRepository(s)
            if unless_beyond is not None:
                current = repo.lock_crl_number(name)
                latest = crls.latest(name) if current > unless_beyond else None
                if latest is not None and latest.number > unless_beyond:
                    # Made and committed by another process, which touches the stamp only
                    # after its commit: touch it here too, so no server answers from a cache
                    # older than this revocation in between.
                    self._touch_crl_stamp(name)
                    return latest
            number = repo.next_crl_number(name)
            now = self.clock.now()
            next_update = now + dt.timedelta(hours=self.settings.crl_next_update_hours)
            own = serial_hex(loaded.material.certificate.serial_number)
            # A root is stored under itself; whatever its row says, a CA never lists itself.
            rows = (
                r
                for r in CertificateRepository(s).revoked_rows(loaded.authority_id, now)
                if r[0] != own
            )
            der = sign_crl(loaded.material, number, now, next_update, rows)
            stored = StoredCRL(name, number, now, next_update, der)
            crls.save(loaded.authority_id, stored)
        self._crl_sizes[name] = len(der)
        self._touch_crl_stamp(name)
        return stored

    def refresh_crls(self) -> dict[str, int]:
        """Make sure every authority's CRL is current (none yet, or half its life gone: a new
        one), so CRLs are republished before nextUpdate even when nobody fetches them.
        Returns the current CRL number of each authority."""
        numbers: dict[str, int] = {}
        for record in self.list_authorities():
            crl = self.current_crl(record.name)
            assert crl is not None  # no known_number given: always a CRL
            numbers[record.name] = crl.number
        return numbers

    def _crl_stamp_path(self, name: str) -> Path:
        return self.settings.data_dir / "crl-stamps" / name

    def crl_stamp(self, name: str) -> int:
        """Changes whenever a process on this host publishes a CRL of ``name`` (0: never).

        Lets a server holding a CRL in memory know with one stat() that it is still current,
        instead of asking the store on every fetch. Each publication replaces the file, so the
        inode changes even when two fall in one tick of the file-system clock.
        """
        try:
            st = self._crl_stamp_path(name).stat()
        except OSError:
            return 0
        return hash((st.st_ino, st.st_mtime_ns))

    def _touch_crl_stamp(self, name: str) -> None:
        path = self._crl_stamp_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
            tmp.write_text(secrets.token_hex(8))
            os.replace(tmp, path)
        except OSError:
            pass  # servers then find the new CRL at their next periodic check

    def current_crl(
        self, authority: str | None = None, *, known_number: int | None = None
    ) -> StoredCRL | None:
        """The CRL to publish: the stored one, or a new one when none exists or half its life has
        passed. With ``known_number``, returns None when that is still the current CRL, so a
        server holding it in memory never reads a large CRL body from the store again."""
        name = authority or self.default_authority()
        self._load(name)
        with unit_of_work(self.db) as s:
            repo = CRLRepository(s)
            header = repo.latest_header(name)
            now = self.clock.now()
            if header is not None:
                number, this_update, next_update = header
                if now < this_update + (next_update - this_update) / 2:
                    if number == known_number:
                        return None
                    return repo.latest(name)
        return self.generate_crl(name)

    # ------------------------------------------------------------------ OCSP

    def ocsp_issuer(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> str | None:
        """The authority a CertID's issuer hashes name, or None when it is not ours."""
        key = (hash_name, name_hash, key_hash)
        with self._lock:
            found = self._issuer_hashes.get(key)
        if found is not None:
            return found
        # A miss may mean an authority created since; rebuild the map once.
        table: dict[tuple[str, bytes, bytes], str] = {}
        for record in self.list_authorities():
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

    def ocsp_statuses(self, authority: str, serials: Sequence[int]) -> dict[int, SerialStatus]:
        """Status of each serial that ``authority`` issued; serials it never issued are absent."""
        wanted = {serial_hex(s): s for s in serials}
        with unit_of_work(self.db) as s:
            found = OCSPRepository(s).statuses(authority, list(wanted))
        return {wanted[k]: v for k, v in found.items()}

    def ocsp_signer(self, name: str) -> OCSPSigner:
        """The current signer of ``name``'s OCSP answers: its delegated responder (issued here
        through the generation core and rotated at two thirds of its life), or the CA key."""
        now = self.clock.now()
        with self._lock:
            cached = self._ocsp_signers.get(name)
        if cached is not None and now < cached.rotate_at:
            return cached
        loaded = self._load(name)
        material = loaded.material
        if self.settings.ocsp_sign_with_ca:
            signer = OCSPSigner(
                name,
                serial_hex(material.certificate.serial_number),
                signer_info(material.certificate, material.key, material.key_type, False),
                material.certificate.not_valid_after_utc,
            )
        else:
            signer = self._responder_signer(name, loaded, now)
        with self._lock:
            self._ocsp_signers[name] = signer
        return signer

    def _responder_signer(self, name: str, loaded: _Loaded, now: dt.datetime) -> OCSPSigner:
        with unit_of_work(self.db) as s:
            current = OCSPRepository(s).latest_responder(name, now)
        if current is None or now >= _rotate_at(current):
            current = self._issue_responder(name, loaded, now)
        cert = x509.load_der_x509_certificate(current.cert_der)
        key = self.keystore.load(current.key_file, f"OCSP responder of {name!r}")
        return OCSPSigner(
            name,
            current.serial,
            signer_info(cert, key, loaded.material.key_type, True),
            _rotate_at(current),
        )

    def _issue_responder(self, name: str, loaded: _Loaded, now: dt.datetime) -> ResponderRecord:
        key_type = loaded.material.key_type
        key = generate_private_key(key_type)
        key_file = self.keystore.store(f"{name}-ocsp-{secrets.token_hex(4)}", key)
        lifetime = dt.timedelta(days=self.settings.ocsp_responder_days)
        try:
            with unit_of_work(self.db, write=True) as s:
                repo = OCSPRepository(s)
                authority_id = repo.lock_authority(name)
                # Another process may have rotated while we waited for the lock.
                existing = repo.latest_responder(name, now)
                if existing is not None and now < _rotate_at(existing):
                    self.keystore.remove(key_file)
                    return existing
                template = responder_template(
                    loaded.view, key.public_key(), key_type, now, self.serials(), lifetime
                )
                cert = sign_leaf(template, loaded.material)
                record = _record_for(cert, name, template.profile, "system:ocsp", now)
                CertificateRepository(s).add(record, authority_id)
                responder = ResponderRecord(
                    name, record.serial, record.der, key_file, record.not_before, record.not_after
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
        except BaseException:
            self.keystore.remove(key_file)
            raise
        return responder


def _refuse_if_revoked(repo: AuthorityRepository, name: str, fingerprint: str) -> None:
    """Inside an issuance's transaction: refuse when the issuing CA's certificate is revoked."""
    revoked = repo.revocation_of_certificate(fingerprint, share_lock=True)
    if revoked is not None:
        at, reason = revoked
        raise Conflict(
            f"authority {name!r} was revoked ({reason}) at {at:%Y-%m-%d %H:%M:%S} UTC and "
            "issues no more certificates (rule: authority.revoked)",
            rule="authority.revoked",
        )


def _rotate_at(record: ResponderRecord) -> dt.datetime:
    return record.not_before + (record.not_after - record.not_before) * 2 / 3


def _normalize_serial(serial: str) -> str:
    try:
        return serial_hex(parse_serial(serial))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _check_authority_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,46}", name):
        raise BadRequest(
            f"authority name {name!r}: use 1-47 lower-case letters, digits and hyphens"
        )


def _default_subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ca-service"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _record_for(
    cert: x509.Certificate, authority: str, profile: str, requester: str, now: dt.datetime
) -> CertificateRecord:
    return CertificateRecord(
        authority=authority,
        serial=serial_hex(cert.serial_number),
        subject=cert.subject.rfc4514_string(),
        common_name=common_name_of(cert),
        sans=certificate_names(cert),
        key_type=key_type_of(cert.public_key()).value,
        profile=profile,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        status=CertStatus.VALID,
        revoked_at=None,
        revocation_reason=None,
        fingerprint_sha256=fingerprint_sha256(cert),
        der=cert.public_bytes(serialization.Encoding.DER),
        requester=requester[:255],
        created_at=now,
    )
