"""The authorities this service holds: their records, the default one, and each one loaded for
use (its Signer, the view policy checks against, its chain), cached for the process's life:
none of that ever changes for a name (a revocation is read from the store at each issuance).

Also the lookup of a certificate by serial, which issuance and revocation both start from. It
must never sign, revoke or write anything but the choice of the default authority; a CA's key
reaches it only as the Signer that the keystore makes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.core import crl_shards
from ca_service.core.context import STORE_RECHECK_SECONDS, Context, normalize_serial
from ca_service.crypto.keys import fingerprint_sha256
from ca_service.domain import (
    Actor,
    ApprovedTemplate,
    AuditEvent,
    AuthorityRecord,
    CertificateRecord,
    KeyType,
)
from ca_service.errors import BadRequest, Conflict, NotFound
from ca_service.policy.check import AuthorityView
from ca_service.policy.names import NameConstraintsSpec
from ca_service.signing.signer import Signer
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import (
    AuditRepository,
    AuthorityRepository,
    CertificateRepository,
)

DEFAULT_TTL = STORE_RECHECK_SECONDS


@dataclass(frozen=True)
class LoadedAuthority:
    """An authority ready to sign: fixed for its life, so made once per process."""

    signer: Signer
    # Issuer certificates above it, nearest first, up to and including the root if held.
    parents: tuple[x509.Certificate, ...]
    view: AuthorityView
    record: AuthorityRecord
    authority_id: int
    chain_pem: tuple[str, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.signer.certificate

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the authority's certificate: the key of its row under its issuer."""
        return fingerprint_sha256(self.signer.certificate)

    @cached_property
    def root_pem(self) -> str | None:
        """The self-signed certificate that ends the chain, if the chain reaches one."""
        top = (self.signer.certificate, *self.parents)[-1]
        return self.chain_pem[-1] if top.issuer == top.subject else None

    @cached_property
    def intermediates_pem(self) -> tuple[str, ...]:
        """The authority and the CAs above it, without the root: what a server sends."""
        return self.chain_pem[:-1] if self.root_pem is not None else self.chain_pem


class Registry:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._loaded: dict[str, LoadedAuthority] = {}
        self._default: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def urls(self, authority: str) -> tuple[str, str, str]:
        """CRL, caIssuers and OCSP URLs that certificates issued by ``authority`` carry."""
        base = self.ctx.settings.certificate_url
        return f"{base}/ca/{authority}/crl", f"{base}/ca/{authority}/ca.cer", f"{base}/ocsp"

    def crl_pointers(self, template: ApprovedTemplate) -> tuple[ApprovedTemplate, int | None]:
        """A leaf's template with the CRL pointers of its shard and delta, and the shard to
        store with it (None: the full CRL); see core/crl_shards.py."""
        return crl_shards.place(self.ctx.settings, template)

    def list_authorities(self) -> list[AuthorityRecord]:
        with unit_of_work(self.ctx.db) as s:
            return AuthorityRepository(s).list()

    def get_authority(self, name: str) -> AuthorityRecord:
        with unit_of_work(self.ctx.db) as s:
            return AuthorityRepository(s).get(name)

    def set_default(self, name: str, actor: Actor) -> None:
        with unit_of_work(self.ctx.db, write=True) as s:
            repo = AuthorityRepository(s)
            record = repo.get(name)
            if record.is_root:
                raise BadRequest(f"{name!r} is a root; the default must be an issuing authority")
            repo.set_default(name)
            AuditRepository(s).add(
                AuditEvent.of(actor, "authority.default", name, self.ctx.clock.now(), None)
            )
        self._default = None

    def default_authority(self) -> str:
        """The authority a request without one goes to. Read from the store at most twice a
        second: it is asked on every issuance and changes once in a blue moon (another process
        or replica changing it is seen within DEFAULT_TTL)."""
        if self.ctx.settings.default_authority:
            return self.ctx.settings.default_authority
        cached = self._default
        if cached is not None and time.monotonic() - cached[0] < DEFAULT_TTL:
            return cached[1]
        with unit_of_work(self.ctx.db) as s:
            name = AuthorityRepository(s).default_name()
        if name is None:
            raise NotFound("no certificate authority exists yet; run 'ca-service init'")
        self._default = (time.monotonic(), name)
        return name

    def load_keys(self) -> list[str]:
        """Load and check every CA key now, so a wrong passphrase stops the service at start."""
        names = [a.name for a in self.list_authorities()]
        for name in names:
            self.load(name)
        return names

    def load(self, name: str) -> LoadedAuthority:
        """``name`` ready to sign (NotFound when there is no such authority)."""
        with self._lock:
            cached = self._loaded.get(name)
        if cached is not None:
            return cached
        with unit_of_work(self.ctx.db) as s:
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
        signer = self.ctx.keystore.signer(
            record.key_file, cert, KeyType(record.key_type), f"authority {name!r}"
        )
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
        loaded = LoadedAuthority(signer, tuple(chain), view, record, authority_id, chain_pem)
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def get_certificate(self, serial: str, authority: str | None = None) -> CertificateRecord:
        normalized = normalize_serial(serial)
        with unit_of_work(self.ctx.db) as s:
            found = CertificateRepository(s).find(normalized, authority)
        if not found:
            raise NotFound(f"no certificate with serial {serial}")
        if len(found) > 1:
            names = ", ".join(r.authority for r in found)
            raise Conflict(f"serial {serial} exists in several authorities ({names}); name one")
        return found[0]
