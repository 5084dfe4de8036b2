"""Bringing authorities into existence: a new root with its issuing intermediate, or an
existing CA adopted, each recorded with its key file and audited in one transaction.

Keys are made or adopted by the keystore, which returns only the names the store keeps (a file
name, a pkcs11: URI), public keys and Signers; a key made here whose records do not commit is
removed again. This part must never issue leaf certificates, and it never sees a private key.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca_service.core.context import Context, record_for
from ca_service.core.registry import Registry
from ca_service.crypto.keys import key_type_of
from ca_service.domain import Actor, AuditEvent, AuthorityRecord, KeyType
from ca_service.errors import BadRequest, Conflict
from ca_service.policy.names import NameConstraintsSpec
from ca_service.signing.issuer import IntermediateTemplate
from ca_service.signing.keystore import NewKey
from ca_service.signing.signer import Signer
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
)


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
    # Keys in the keystore already (token keys from a key ceremony, as pkcs11: URIs), or None.
    root_key: str | None = None
    intermediate_key: str | None = None


# One authority to record: name, parent, certificate, key file, name constraints (None for a
# root), and the PEM chain above an imported intermediate.
_Entry = tuple[str, str | None, x509.Certificate, str, NameConstraintsSpec | None, str | None]


class Hierarchy:
    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry

    def create_hierarchy(self, spec: HierarchySpec, actor: Actor) -> list[AuthorityRecord]:
        """Create ``<name>-root`` and the issuing CA ``<name>``; refuse if either exists."""
        _check_authority_name(spec.name)
        root_name = f"{spec.name}-root"
        self._refuse_taken((spec.name, root_name))
        if spec.root_days < 1 or spec.intermediate_days < 1:
            raise BadRequest("validity must be at least one day")
        if spec.intermediate_days > spec.root_days:
            raise BadRequest("the intermediate cannot outlive the root")
        keystore = self.ctx.keystore
        now = self.ctx.clock.now()
        with self._removing_keys_on_failure() as written:
            root_key = self._key(root_name, spec.key_type, spec.root_key, written)
            root_cert = keystore.sign_root(
                root_key.key_file,
                spec.key_type,
                spec.root_subject or _default_subject(f"{spec.name} Root CA"),
                self.ctx.serials(),
                now - dt.timedelta(minutes=1),
                now + dt.timedelta(days=spec.root_days),
            )
            root = keystore.signer(root_key.key_file, root_cert, spec.key_type, root_name)
            inter_cert, inter_file = self._intermediate(
                root,
                root_name,
                spec.name,
                spec.intermediate_subject or _default_subject(f"{spec.name} Issuing CA"),
                min(now + dt.timedelta(days=spec.intermediate_days), root_cert.not_valid_after_utc),
                spec.constraints,
                now,
                written,
                spec.intermediate_key,
            )
            return self._register(
                [
                    (root_name, None, root_cert, root_key.key_file, None, None),
                    (spec.name, root_name, inter_cert, inter_file, spec.constraints, None),
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
        key_reference: str | None = None,
    ) -> list[AuthorityRecord]:
        """Adopt an existing CA. A root gets a new issuing intermediate; an intermediate issues.
        ``key_reference``: its key is in the keystore already (a token key), not in key_data."""
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
        self_signed = cert.issuer == cert.subject
        root_name = f"{name}-root"
        with self._removing_keys_on_failure() as written:
            key_type = key_type_of(cert.public_key())  # refuses a key type this service lacks
            if key_reference is not None:
                key_file = self.ctx.keystore.existing(key_reference, key_type, cert).key_file
            else:
                key_file = self.ctx.keystore.adopt(
                    _key_id(root_name if self_signed else name), key_data, key_passphrase, cert
                )
                written.append(key_file)
            now = self.ctx.clock.now()
            if cert.not_valid_after_utc <= now:
                raise BadRequest("the CA certificate has expired")
            try:
                cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                raise BadRequest("the CA certificate has no subjectKeyIdentifier") from None
            self._refuse_taken((name, root_name))
            if not self_signed:
                chain = chain_pem.decode() if chain_pem else None
                if chain:
                    try:
                        x509.load_pem_x509_certificates(chain.encode())
                    except ValueError:
                        raise BadRequest("the chain file is not valid PEM") from None
                return self._register(
                    [(name, None, cert, key_file, NameConstraintsSpec(), chain)],
                    actor,
                    action="authority.import",
                )
            if bc.path_length == 0:
                raise BadRequest(
                    "the imported root has pathLen 0 and cannot certify an intermediate"
                )
            root = self.ctx.keystore.signer(key_file, cert, key_type, root_name)
            inter_cert, inter_file = self._intermediate(
                root,
                root_name,
                name,
                _default_subject(f"{name} Issuing CA"),
                min(now + dt.timedelta(days=intermediate_days), cert.not_valid_after_utc),
                NameConstraintsSpec(),
                now,
                written,
            )
            return self._register(
                [
                    (root_name, None, cert, key_file, None, None),
                    (name, root_name, inter_cert, inter_file, NameConstraintsSpec(), None),
                ],
                actor,
                action="authority.import",
            )

    def _intermediate(
        self,
        root: Signer,
        root_name: str,
        name: str,
        subject: x509.Name,
        not_after: dt.datetime,
        constraints: NameConstraintsSpec,
        now: dt.datetime,
        written: list[str],
        existing_key: str | None = None,
    ) -> tuple[x509.Certificate, str]:
        """A new key (or ``existing_key``) for the issuing CA ``name``, certified by ``root``."""
        key = self._key(name, root.key_type, existing_key, written)
        crl_url, issuers_url, ocsp_url = self.registry.urls(root_name)
        template = IntermediateTemplate(
            public_key=key.public_key,
            subject=subject,
            serial=self.ctx.serials(),
            not_before=now - dt.timedelta(minutes=1),
            not_after=not_after,
            constraints=constraints,
            crl_url=crl_url,
            ca_issuers_url=issuers_url,
            ocsp_url=ocsp_url,
        )
        return root.sign_intermediate(template), key.key_file

    def _key(self, name: str, key_type: KeyType, existing: str | None, made: list[str]) -> NewKey:
        if existing is not None:
            return self.ctx.keystore.existing(existing, key_type)
        key = self.ctx.keystore.generate(_key_id(name), key_type)
        made.append(key.key_file)
        return key

    def _refuse_taken(self, names: Sequence[str]) -> None:
        with unit_of_work(self.ctx.db) as s:
            repo = AuthorityRepository(s)
            for name in names:
                if repo.find(name) is not None:
                    raise Conflict(f"authority {name!r} exists already; nothing was changed")

    @contextmanager
    def _removing_keys_on_failure(self) -> Iterator[list[str]]:
        """Key files appended to the yielded list are removed if the block fails."""
        written: list[str] = []
        try:
            yield written
        except BaseException:
            for key_file in written:
                self.ctx.keystore.remove(key_file)
            raise

    def _register(
        self, entries: Sequence[_Entry], actor: Actor, action: str
    ) -> list[AuthorityRecord]:
        """Write the records of the authorities (their key files are stored) in one transaction."""
        now = self.ctx.clock.now()
        with unit_of_work(self.ctx.db, write=True) as s:
            repo = AuthorityRepository(s)
            certs = CertificateRepository(s)
            audit = AuditRepository(s)
            records = []
            for name, parent, cert, key_file, constraints, chain in entries:
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
                # Every certificate we hold the issuer of is stored, CA ones too, under that
                # issuer (a root under itself), so that a CA can be revoked like a leaf.
                issuer = parent or (name if record.is_root else None)
                if issuer is not None:
                    certs.add(
                        record_for(cert, issuer, "ca", actor.identity, now), repo.id_of(issuer)
                    )
                audit.add(AuditEvent.of(actor, action, name, now, {"subject": record.subject}))
                records.append(record)
            if repo.default() is None:
                repo.set_default(records[-1].name)
                records[-1] = repo.get(records[-1].name)
        return records


def _key_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


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
