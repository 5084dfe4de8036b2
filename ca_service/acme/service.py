"""The ACME server's accounts, nonces and request authentication: what every ACME resource
needs before it acts (RFC 8555 sections 6 and 7.3).

An account is a key (its RFC 7638 thumbprint) under one authority, and the caller the core
sees for it is ``acme:<account id>`` with the policy of the EAB key it was bound with (or the
configured default policy when EAB is off). The policy is read from the EAB key at every
request, so revoking the key stops its accounts at once. This module never issues: orders.py
finalizes through the core facade, like every other front end.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from jwcrypto import jwk

from ca_service.acme import jws
from ca_service.acme.algorithms import ACCOUNT_ALGORITHMS, EAB_ALGORITHMS
from ca_service.acme.nonces import Nonces, nonce_key
from ca_service.acme.problems import ACMEProblem
from ca_service.acme.urls import ACMEUrls
from ca_service.acme.validation import ValidationConfig
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import ACMEAccountRecord, Actor, AuditEvent, CallerPolicy, EABKeyRecord
from ca_service.errors import NotFound
from ca_service.storage.acme import AccountRepository, EABKeyRepository
from ca_service.storage.db import DuplicateRow, unit_of_work
from ca_service.storage.repositories import AuditRepository

_MAILTO = re.compile(r"^mailto:[^@\s,;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$")
MAX_CONTACTS = 10


class EABLookup(Protocol):
    """What account creation needs of the EAB keys (acme/eab.py::EABKeys)."""

    def hmac_key(self, kid: str) -> tuple[EABKeyRecord, bytes] | None: ...


@dataclass(frozen=True)
class RequestContext:
    """Who sent the request, for the audit log (the request id and the client's address)."""

    request_id: str | None = None
    client_address: str | None = None


def validation_config(settings: Settings) -> ValidationConfig:
    resolver = None
    if settings.acme_dns_resolver:
        host, _, port = settings.acme_dns_resolver.rpartition(":")
        resolver = (host.strip("[]"), int(port))
    identities = settings.acme_caa_identities or (urlsplit(settings.public_url).hostname or "",)
    return ValidationConfig(
        http01_port=settings.acme_http01_port,
        tlsalpn01_port=settings.acme_tlsalpn01_port,
        resolver=resolver,
        caa_identities=tuple(i for i in identities if i),
        timeout_seconds=float(settings.acme_validation_timeout_seconds),
        attempts=settings.acme_validation_attempts,
    )


class Accounts:
    """Nonces, accounts and the authentication of every signed ACME request."""

    def __init__(self, core: Core, eab: EABLookup) -> None:
        self.core = core
        self.eab = eab
        # The CA passphrase keys the nonces (and seals EAB keys) with every key backend:
        # replicas share it, and a PKCS#11 token offers no secret all of them can derive from.
        self.nonces = Nonces(
            core.db,
            lambda: nonce_key(core.settings.require_passphrase()),
            dt.timedelta(seconds=core.settings.acme_nonce_lifetime_seconds),
        )

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def now(self) -> dt.datetime:
        return self.core.clock.now()

    def urls(self, authority: str) -> ACMEUrls:
        return ACMEUrls(self.settings.public_url, authority)

    def authority(self, name: str | None) -> str:
        """The authority an ACME URL names (the default for ``/acme/directory``); it must be
        an issuing CA of this service."""
        chosen = name or self.core.default_authority()
        try:
            record = self.core.get_authority(chosen)
        except NotFound:
            raise ACMEProblem(
                "malformed", f"no ACME server for authority {chosen!r}", status=404
            ) from None
        if record.is_root:
            raise ACMEProblem(
                "malformed", f"{chosen!r} is a root CA; use its issuing CA", status=404
            )
        return chosen

    # ------------------------------------------------------------------ nonces

    def new_nonce(self) -> str:
        return self.nonces.issue(self.now())

    def _use_nonce(self, value: str) -> bool:
        return self.nonces.use(value, self.now())

    # ------------------------------------------------------------------ authentication

    def account(self, authority: str, account_id: str) -> ACMEAccountRecord:
        with unit_of_work(self.core.db) as s:
            account = AccountRepository(s).get(account_id)
        if account is None or account.authority != authority:
            raise ACMEProblem("accountDoesNotExist", "no such account", status=400)
        return account

    def _key_of(self, authority: str) -> Callable[[str], jwk.JWK]:
        def key_of(kid: str) -> jwk.JWK:
            account_id = self.urls(authority).account_id(kid)
            if account_id is None:
                raise ACMEProblem("accountDoesNotExist", "kid is not an account URL of this CA")
            account = self.account(authority, account_id)
            if account.status != "valid":
                raise ACMEProblem("unauthorized", f"the account is {account.status}")
            return jwk.JWK(**account.jwk)

        return key_of

    def authenticate(
        self, body: bytes, url: str, authority: str, *, key_by: str = "kid"
    ) -> tuple[jws.SignedRequest, ACMEAccountRecord | None]:
        """Check a signed request; the account it is signed by (None for a ``jwk`` request)."""
        signed = jws.authenticate(
            body,
            url=url,
            account_key=self._key_of(authority),
            use_nonce=self._use_nonce,
            key_by=key_by,
        )
        if signed.kid is None:
            return signed, None
        account_id = self.urls(authority).account_id(signed.kid)
        assert account_id is not None  # _key_of refused every other kid
        return signed, self.account(authority, account_id)

    # ------------------------------------------------------------------ policy

    def policy(self, account: ACMEAccountRecord) -> CallerPolicy:
        """The account's policy now: its EAB key's, or the configured default."""
        if account.eab_kid is None:
            names = self.settings.acme_default_allowed_names
            return CallerPolicy(
                allowed_names=tuple(names),
                profiles=None,
                authorities=(account.authority,),
                allow_wildcards=self.settings.acme_default_allow_wildcards,
            )
        with unit_of_work(self.core.db) as s:
            found = EABKeyRepository(s).get(account.eab_kid)
        if found is None or found[0].revoked_at is not None:
            raise ACMEProblem(
                "unauthorized",
                "the External Account Binding key of this account was revoked",
                rule="acme.eab_revoked",
            )
        policy = found[0].policy
        if policy.authorities is None:
            # An EAB key made for one directory must not reach another authority's.
            policy = CallerPolicy(
                allowed_names=policy.allowed_names,
                profiles=policy.profiles,
                max_validity_days=policy.max_validity_days,
                authorities=(account.authority,),
                allow_wildcards=policy.allow_wildcards,
                allowed_subjects=policy.allowed_subjects,
            )
        return policy

    def actor(self, account: ACMEAccountRecord, context: RequestContext) -> Actor:
        return Actor(
            identity=f"acme:{account.id}",
            request_id=context.request_id,
            client_address=context.client_address,
            policy=self.policy(account),
        )

    # ------------------------------------------------------------------ newAccount (7.3)

    def new_account(
        self, signed: jws.SignedRequest, authority: str, context: RequestContext
    ) -> tuple[ACMEAccountRecord, bool]:
        """The account of this key, made now unless it exists; True when made."""
        payload = signed.json()
        thumb = jws.thumbprint(signed.key)
        with unit_of_work(self.core.db) as s:
            existing = AccountRepository(s).by_thumbprint(authority, thumb)
        if existing is not None:
            if existing.status != "valid":
                raise ACMEProblem("unauthorized", f"the account of this key is {existing.status}")
            return existing, False
        if payload.get("onlyReturnExisting") is True:
            raise ACMEProblem("accountDoesNotExist", "no account exists for this key")
        contact = self._contacts(payload.get("contact", []))
        if self.settings.acme_terms_of_service and payload.get("termsOfServiceAgreed") is not True:
            raise ACMEProblem(
                "userActionRequired", "agree to the terms of service (termsOfServiceAgreed)"
            )
        binding = payload.get("externalAccountBinding")
        eab_kid = None
        if binding is not None:
            eab_kid = self._check_binding(binding, signed, authority)
        elif self.settings.acme_require_eab:
            raise ACMEProblem(
                "externalAccountRequired",
                "this CA binds every account to an External Account Binding key: ask an admin "
                "for one (ca-service acme eab create)",
            )
        account = ACMEAccountRecord(
            id=secrets.token_urlsafe(12),
            authority=authority,
            jwk=signed.jwk_json,
            thumbprint=thumb,
            status="valid",
            contact=contact,
            eab_kid=eab_kid,
            created_at=self.now(),
        )
        try:
            with unit_of_work(self.core.db, write=True) as s:
                AccountRepository(s).add(account)
                if eab_kid is not None and not EABKeyRepository(s).bind(eab_kid, account.id):
                    raise ACMEProblem(
                        "unauthorized",
                        "the External Account Binding key is revoked or bound to another account",
                        rule="acme.eab_used",
                    )
                self._audit(s, account, "acme.account.create", context, {"eab": eab_kid})
        except DuplicateRow:
            # Another request made this key's account between our read and our write.
            with unit_of_work(self.core.db) as s:
                raced = AccountRepository(s).by_thumbprint(authority, thumb)
            if raced is None:
                raise
            return raced, False
        return account, True

    def _check_binding(self, binding: Any, signed: jws.SignedRequest, authority: str) -> str:
        url = self.urls(authority).resource("new-account")
        outer, protected = jws.verify_inner(
            binding, url=url, alg_allowed=EAB_ALGORITHMS, what="externalAccountBinding"
        )
        kid = protected.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ACMEProblem("malformed", "externalAccountBinding needs a kid")
        found = self.eab.hmac_key(kid)
        if found is None or found[0].revoked_at is not None or found[0].account_id is not None:
            raise ACMEProblem(
                "unauthorized",
                "unknown, revoked or already used External Account Binding key",
                rule="acme.eab_unknown",
            )
        payload = jws.verify(outer, jws.hmac_key(found[1]), str(protected["alg"]), what="EAB")
        bound = jws.parse_object(payload, "externalAccountBinding payload")
        if jws.thumbprint_of(bound) != jws.thumbprint(signed.key):
            raise ACMEProblem("malformed", "externalAccountBinding must sign the account's own key")
        return kid

    def _contacts(self, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
            raise ACMEProblem("malformed", "contact must be a list of mailto: URLs")
        if len(raw) > MAX_CONTACTS:
            raise ACMEProblem("invalidContact", f"at most {MAX_CONTACTS} contacts")
        for contact in raw:
            if not contact.startswith("mailto:"):
                raise ACMEProblem("unsupportedContact", "only mailto: contacts are supported")
            if not _MAILTO.match(contact) or "?" in contact:
                raise ACMEProblem("invalidContact", f"{contact[:100]!r} is not a mailto: address")
        return tuple(raw)

    # ------------------------------------------------------------------ account update (7.3.2)

    def update_account(
        self, signed: jws.SignedRequest, account: ACMEAccountRecord, context: RequestContext
    ) -> ACMEAccountRecord:
        if signed.post_as_get:
            return account
        payload = signed.json()
        status = payload.get("status")
        contact = None
        if "contact" in payload:
            contact = self._contacts(payload["contact"])
        if status is not None and status != "deactivated":
            raise ACMEProblem("malformed", "an account can only be changed to deactivated")
        with unit_of_work(self.core.db, write=True) as s:
            repo = AccountRepository(s)
            if not repo.update(account.id, status=status, contact=contact):
                raise ACMEProblem("unauthorized", "the account is no longer valid")
            if status == "deactivated":
                self._audit(s, account, "acme.account.deactivate", context, None)
            updated = repo.get(account.id)
        assert updated is not None
        return updated

    # ------------------------------------------------------------------ keyChange (7.3.5)

    def key_change(
        self,
        signed: jws.SignedRequest,
        account: ACMEAccountRecord,
        context: RequestContext,
    ) -> ACMEAccountRecord:
        url = self.urls(account.authority).resource("key-change")
        outer, protected = jws.verify_inner(
            jws.parse_object(signed.payload, "payload"),
            url=url,
            alg_allowed=tuple(ACCOUNT_ALGORITHMS),
            what="keyChange",
        )
        if "kid" in protected or "jwk" not in protected:
            raise ACMEProblem("malformed", "the inner keyChange JWS needs a jwk and no kid")
        new_key = jws.import_account_key(protected["jwk"], str(protected["alg"]))
        inner = jws.parse_object(
            jws.verify(outer, new_key, str(protected["alg"]), what="keyChange"), "keyChange"
        )
        if inner.get("account") != self.urls(account.authority).account(account.id):
            raise ACMEProblem("malformed", "keyChange: account is not this account's URL")
        old = inner.get("oldKey")
        if not isinstance(old, dict) or jws.thumbprint_of(old) != account.thumbprint:
            raise ACMEProblem("malformed", "keyChange: oldKey is not the account's current key")
        new_thumb = jws.thumbprint(new_key)
        if new_thumb == account.thumbprint:
            raise ACMEProblem("malformed", "keyChange: the new key is the current key")
        try:
            with unit_of_work(self.core.db, write=True) as s:
                repo = AccountRepository(s)
                if not repo.update(account.id, jwk=jws.public_jwk(new_key), thumbprint=new_thumb):
                    raise ACMEProblem("unauthorized", "the account is no longer valid")
                self._audit(s, account, "acme.account.key_change", context, None)
                updated = repo.get(account.id)
        except DuplicateRow:
            with unit_of_work(self.core.db) as s:
                holder = AccountRepository(s).by_thumbprint(account.authority, new_thumb)
            where = self.urls(account.authority).account(holder.id) if holder else ""
            raise ACMEProblem(
                "malformed",
                f"the new key already belongs to an account {where}",
                status=409,
                location=where or None,
            ) from None
        assert updated is not None
        return updated

    # ------------------------------------------------------------------ answers

    def account_json(self, account: ACMEAccountRecord) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": account.status,
            "contact": list(account.contact),
            "orders": self.urls(account.authority).orders(account.id),
            "createdAt": _timestamp(account.created_at),
        }
        if account.eab_kid is not None:
            body["externalAccountBinding"] = {"kid": account.eab_kid}
        return body

    def _audit(
        self,
        session: Any,
        account: ACMEAccountRecord,
        action: str,
        context: RequestContext,
        details: dict[str, Any] | None,
    ) -> None:
        actor = Actor(f"acme:{account.id}", context.request_id, context.client_address)
        target = self.urls(account.authority).account(account.id)
        AuditRepository(session).add(AuditEvent.of(actor, action, target, self.now(), details))


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
