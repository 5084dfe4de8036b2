"""Orders, authorizations and challenges (RFC 8555 sections 7.1.3-7.1.6, 7.4, 7.5), and
finalize, which issues through the core facade like every other front end.

Policy comes first: newOrder asks the core whether the account's policy allows each name
before any authorization exists, so nothing is validated for a name the account could never
get. Every status change is asked of states.py and made as a compare-and-set in the store, so
racing requests (two finalizes, two challenge answers) cannot both win. Time-driven moves
(expiry, an order whose authorizations are all valid becoming ready) are applied when a
resource is read, so no scheduler is needed and every replica sees the same state.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ca_service.acme import states
from ca_service.acme.identifiers import check_csr_matches, compound, parse_identifiers
from ca_service.acme.jws import SignedRequest, random_token, thumbprint
from ca_service.acme.problems import ACMEProblem, Subproblem, from_ca_error
from ca_service.acme.service import Accounts, RequestContext, _timestamp, validation_config
from ca_service.acme.validation import Identifier, ValidationFailed, validate
from ca_service.crypto.csr import parse_csr
from ca_service.domain import (
    ACMEAccountRecord,
    ACMEAuthzRecord,
    ACMEChallengeRecord,
    ACMEIdentifier,
    ACMEOrderRecord,
)
from ca_service.errors import CAError
from ca_service.storage.acme import AuthorizationRepository, OrderRepository
from ca_service.storage.db import unit_of_work

# How long a challenge may stay "processing" before a reader calls it interrupted (a worker
# that died mid-validation must not leave an authorization pending for its whole life).
STALE_VALIDATION = dt.timedelta(minutes=3)
Runner = Callable[[Callable[[], None]], None]


class _Pool:
    """Validations run off the request thread, a few at a time per process; a forked worker
    makes its own pool (threads do not survive fork)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._pid = 0
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, work: Callable[[], None]) -> None:
        import os

        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="acme-validate")
                self._pid = os.getpid()
            self._pool.submit(work)


def orderable_profiles(settings: Any) -> tuple[str, ...]:
    """The profiles an ACME order may name, as the directory's meta.profiles lists them: those
    for TLS servers (what ACME validates names for) and the configured default."""
    return tuple(
        name
        for name, profile in settings.profiles.items()
        if "serverAuth" in getattr(profile, "extended_key_usages", ())
        or name == settings.acme_default_profile
    )


def _challenge_types(identifier: ACMEIdentifier) -> tuple[str, ...]:
    if identifier.wildcard:
        return ("dns-01",)
    if identifier.type == "ip":
        return ("http-01", "tls-alpn-01")
    return ("http-01", "dns-01", "tls-alpn-01")


class Orders:
    def __init__(self, accounts: Accounts, run_validation: Runner | None = None) -> None:
        self.accounts = accounts
        self.core = accounts.core
        self.run_validation: Runner = run_validation or _Pool()

    @property
    def settings(self) -> Any:
        return self.core.settings

    def now(self) -> dt.datetime:
        return self.core.clock.now()

    # ------------------------------------------------------------------ newOrder (7.4)

    def new_order(
        self, signed: SignedRequest, account: ACMEAccountRecord, context: RequestContext
    ) -> ACMEOrderRecord:
        payload = signed.json()
        unknown = set(payload) - {"identifiers", "notBefore", "notAfter", "replaces", "profile"}
        if unknown:
            raise ACMEProblem(
                "malformed", f"unknown newOrder field(s): {', '.join(sorted(unknown))}"
            )
        if payload.get("notBefore") is not None or payload.get("notAfter") is not None:
            raise ACMEProblem(
                "malformed", "notBefore and notAfter are not supported: the profile sets them"
            )
        identifiers = parse_identifiers(payload.get("identifiers"))
        profile = payload.get("profile", self.settings.acme_default_profile)
        if not isinstance(profile, str) or profile not in orderable_profiles(self.settings):
            known = ", ".join(sorted(orderable_profiles(self.settings)))
            raise ACMEProblem("malformed", f"unknown profile {profile!r}; known: {known}")
        self._limit_orders(account)
        actor = self.accounts.actor(account, context)
        problems = []
        for identifier in identifiers:
            try:
                self.core.preflight(
                    [f"{identifier.type}:{identifier.value}"],
                    actor,
                    profile=profile,
                    authority=account.authority,
                )
            except CAError as exc:
                problem = from_ca_error(exc)
                shown = {"type": identifier.type, "value": identifier.value}
                problems.append(Subproblem(problem.acme_type, problem.detail, shown))
        if problems:
            raise compound(problems)
        replaces = self._replaces(payload.get("replaces"), identifiers, account)
        now = self.now()
        expires = now + dt.timedelta(hours=self.settings.acme_order_lifetime_hours)
        with unit_of_work(self.core.db, write=True) as s:
            authzs = AuthorizationRepository(s)
            authz_ids = []
            for identifier in identifiers:
                reused = None
                if self.settings.acme_authz_reuse_hours > 0:
                    reused = authzs.reusable(account.id, account.authority, identifier, now)
                if reused is not None:
                    authz_ids.append(reused.id)
                    continue
                authz = self._new_authz(account, identifier, now, expires)
                authzs.add(authz)
                authz_ids.append(authz.id)
            status = (
                "ready" if all(a.status == "valid" for a in authzs.many(authz_ids)) else "pending"
            )
            order = ACMEOrderRecord(
                id=secrets.token_urlsafe(12),
                account_id=account.id,
                authority=account.authority,
                status=status,
                identifiers=identifiers,
                authz_ids=tuple(authz_ids),
                profile=profile,
                expires=expires,
                created_at=now,
                replaces=replaces,
            )
            OrderRepository(s).add(order)
        return order

    def _new_authz(
        self,
        account: ACMEAccountRecord,
        identifier: ACMEIdentifier,
        now: dt.datetime,
        expires: dt.datetime,
    ) -> ACMEAuthzRecord:
        authz_id = secrets.token_urlsafe(12)
        token = random_token(32)
        challenges = tuple(
            ACMEChallengeRecord(
                id=secrets.token_urlsafe(12),
                authz_id=authz_id,
                type=kind,
                token=token,
                status="pending",
            )
            for kind in _challenge_types(identifier)
        )
        return ACMEAuthzRecord(
            id=authz_id,
            account_id=account.id,
            authority=account.authority,
            identifier=identifier,
            status="pending",
            expires=expires,
            created_at=now,
            challenges=challenges,
        )

    def _limit_orders(self, account: ACMEAccountRecord) -> None:
        now = self.now()
        since = now - dt.timedelta(hours=1)
        with unit_of_work(self.core.db) as s:
            repo = OrderRepository(s)
            count = repo.count_since(account.id, since)
            oldest = repo.oldest_since(account.id, since) if count else None
        if count >= self.settings.acme_orders_per_hour:
            wait = int(((oldest or now) + dt.timedelta(hours=1) - now).total_seconds()) + 1
            raise ACMEProblem(
                "rateLimited",
                f"at most {self.settings.acme_orders_per_hour} new orders per account per hour",
                retry_after=max(wait, 1),
                rule="acme.orders_per_hour",
            )

    def _replaces(
        self, raw: Any, identifiers: tuple[ACMEIdentifier, ...], account: ACMEAccountRecord
    ) -> str | None:
        """RFC 9773 section 5: the serial of the certificate this order replaces."""
        if raw is None:
            return None
        from ca_service.acme.ari import certificate_of

        record = certificate_of(self.core, raw)
        if record.authority != account.authority:
            raise ACMEProblem("malformed", "replaces names a certificate of another authority")
        if record.requester != f"acme:{account.id}":
            # RFC 9773 section 5 (SHOULD): only the account a certificate was issued to may
            # replace it; another one could otherwise hold its renewal with alreadyReplaced.
            raise ACMEProblem("malformed", "replaces names a certificate of another account")
        theirs = set(record.sans)
        ours = {f"{i.type}:{i.value}" for i in identifiers}
        if not theirs & ours:
            raise ACMEProblem(
                "malformed", "replaces names a certificate that shares no identifier with the order"
            )
        if record.successor is not None:
            raise ACMEProblem("alreadyReplaced", f"certificate {record.serial} was replaced")
        with unit_of_work(self.core.db) as s:
            others = [
                o for o in OrderRepository(s).replacing(record.serial) if o.status != "invalid"
            ]
        if others:
            raise ACMEProblem(
                "alreadyReplaced", f"another order already replaces certificate {record.serial}"
            )
        return record.serial

    # ------------------------------------------------------------------ reads, with time applied

    def order(self, account: ACMEAccountRecord, order_id: str) -> ACMEOrderRecord:
        with unit_of_work(self.core.db) as s:
            order = OrderRepository(s).get(order_id)
        if order is None or order.account_id != account.id:
            raise ACMEProblem("malformed", "no such order", status=404)
        return self._refresh(order)

    def _refresh(self, order: ACMEOrderRecord) -> ACMEOrderRecord:
        """Apply what time and the authorizations decided since the order was last written."""
        if order.status not in ("pending", "ready"):
            return order
        now = self.now()
        new: str | None = None
        error: dict[str, Any] | None = None
        if order.expires <= now:
            new = "invalid"
            error = ACMEProblem("malformed", "the order expired").stored()
        else:
            # A ready order is checked too: an authorization that expired or was deactivated
            # since makes it invalid (section 7.1.6), or finalize would issue without one.
            authzs = [self._refresh_authz(a) for a in self._authzs(order.authz_ids)]
            failed = [a for a in authzs if a.status != "valid" and a.status != "pending"]
            if failed:
                new = "invalid"
                error = self._authz_error(failed)
            elif order.status == "pending" and authzs and all(a.status == "valid" for a in authzs):
                new = "ready"
        if new is None:
            return order
        with unit_of_work(self.core.db, write=True) as s:
            repo = OrderRepository(s)
            repo.move(order.id, states.sources("order", new) & {order.status}, new, error=error)
            moved = repo.get(order.id)
        assert moved is not None
        return moved

    def _authz_error(self, failed: list[ACMEAuthzRecord]) -> dict[str, Any]:
        problems = []
        for authz in failed:
            shown = {"type": authz.identifier.type, "value": authz.identifier.base}
            detail = f"the authorization is {authz.status}"
            kind = "unauthorized"
            for challenge in authz.challenges:
                if challenge.error:
                    detail = str(challenge.error.get("detail", detail))
                    kind = str(challenge.error.get("type", "")).rsplit(":", 1)[-1] or kind
            problems.append(Subproblem(kind if kind in _KNOWN else "unauthorized", detail, shown))
        return compound(problems).stored()

    def _authzs(self, ids: tuple[str, ...]) -> list[ACMEAuthzRecord]:
        with unit_of_work(self.core.db) as s:
            return AuthorizationRepository(s).many(ids)

    def authorization(self, account: ACMEAccountRecord, authz_id: str) -> ACMEAuthzRecord:
        with unit_of_work(self.core.db) as s:
            authz = AuthorizationRepository(s).get(authz_id)
        if authz is None or authz.account_id != account.id:
            raise ACMEProblem("malformed", "no such authorization", status=404)
        return self._refresh_authz(authz)

    def _refresh_authz(self, authz: ACMEAuthzRecord) -> ACMEAuthzRecord:
        now = self.now()
        if authz.status in ("pending", "valid") and authz.expires <= now:
            with unit_of_work(self.core.db, write=True) as s:
                repo = AuthorizationRepository(s)
                repo.move(authz.id, {authz.status}, "expired")
                return repo.get(authz.id) or authz
        if authz.status == "pending":
            for challenge in authz.challenges:
                started = challenge.validated_at
                if (
                    challenge.status == "processing"
                    and started
                    and now - started > STALE_VALIDATION
                ):
                    self._fail(
                        authz,
                        challenge,
                        ValidationFailed("connection", "the validation was interrupted; retry"),
                    )
                    with unit_of_work(self.core.db) as s:
                        return AuthorizationRepository(s).get(authz.id) or authz
        return authz

    def deactivate_authz(
        self, signed: SignedRequest, account: ACMEAccountRecord, authz_id: str
    ) -> ACMEAuthzRecord:
        authz = self.authorization(account, authz_id)
        if signed.post_as_get:
            return authz
        payload = signed.json()
        if payload != {"status": "deactivated"}:
            raise ACMEProblem("malformed", "an authorization can only be changed to deactivated")
        if not states.allowed("authorization", authz.status, "deactivated"):
            raise ACMEProblem("malformed", f"an authorization that is {authz.status} stays so")
        with unit_of_work(self.core.db, write=True) as s:
            repo = AuthorizationRepository(s)
            repo.move(authz.id, {authz.status}, "deactivated")
            return repo.get(authz.id) or authz

    # ------------------------------------------------------------------ challenges (7.5.1)

    def answer_challenge(
        self, signed: SignedRequest, account: ACMEAccountRecord, challenge_id: str
    ) -> tuple[ACMEChallengeRecord, ACMEAuthzRecord]:
        with unit_of_work(self.core.db) as s:
            repo = AuthorizationRepository(s)
            challenge = repo.get_challenge(challenge_id)
            authz = repo.get(challenge.authz_id) if challenge else None
        if challenge is None or authz is None or authz.account_id != account.id:
            raise ACMEProblem("malformed", "no such challenge", status=404)
        authz = self._refresh_authz(authz)
        if signed.post_as_get or challenge.status != "pending" or authz.status != "pending":
            current = next((c for c in authz.challenges if c.id == challenge.id), challenge)
            return current, authz
        if signed.json() != {}:
            raise ACMEProblem("malformed", "answer a challenge with an empty object {}")
        self._limit_failures(account)
        now = self.now()
        with unit_of_work(self.core.db, write=True) as s:
            won = AuthorizationRepository(s).move_challenge(
                challenge.id, {"pending"}, "processing", validated_at=now
            )
        if won:
            key_authorization = f"{challenge.token}.{thumbprint(signed.key)}"
            config = validation_config(self.settings)

            def work() -> None:
                self._validate(authz, challenge, key_authorization, config)

            self.run_validation(work)
        with unit_of_work(self.core.db) as s:
            repo = AuthorizationRepository(s)
            fresh = repo.get_challenge(challenge.id) or challenge
            fresh_authz = repo.get(authz.id) or authz
        return fresh, fresh_authz

    def _validate(
        self,
        authz: ACMEAuthzRecord,
        challenge: ACMEChallengeRecord,
        key_authorization: str,
        config: Any,
    ) -> None:
        identifier = Identifier(authz.identifier.type, authz.identifier.base)
        try:
            validate(
                challenge.type,
                identifier,
                challenge.token,
                key_authorization,
                wildcard=authz.identifier.wildcard,
                config=config,
                account_uri=self.accounts.urls(authz.authority).account(authz.account_id),
            )
        except ValidationFailed as failure:
            self._fail(authz, challenge, failure)
            return
        except Exception as exc:
            self._fail(authz, challenge, ValidationFailed("connection", type(exc).__name__))
            return
        now = self.now()
        reuse = dt.timedelta(hours=self.settings.acme_authz_reuse_hours)
        with unit_of_work(self.core.db, write=True) as s:
            repo = AuthorizationRepository(s)
            if repo.move_challenge(challenge.id, {"processing"}, "valid", validated_at=now):
                repo.move(authz.id, {"pending"}, "valid", expires=max(now + reuse, authz.expires))

    def _fail(
        self, authz: ACMEAuthzRecord, challenge: ACMEChallengeRecord, failure: ValidationFailed
    ) -> None:
        kind = failure.acme_type if failure.acme_type in _KNOWN else "unauthorized"
        error = ACMEProblem(kind, failure.detail).stored()
        with unit_of_work(self.core.db, write=True) as s:
            repo = AuthorizationRepository(s)
            if repo.move_challenge(
                challenge.id, {"processing"}, "invalid", validated_at=self.now(), error=error
            ):
                repo.move(authz.id, {"pending"}, "invalid")

    def _limit_failures(self, account: ACMEAccountRecord) -> None:
        now = self.now()
        with unit_of_work(self.core.db) as s:
            failures = AuthorizationRepository(s).failures_since(
                account.id, now - dt.timedelta(hours=1)
            )
        limit = self.settings.acme_failed_validations_per_hour
        if len(failures) >= limit:
            wait = int((failures[0] + dt.timedelta(hours=1) - now).total_seconds()) + 1
            raise ACMEProblem(
                "rateLimited",
                f"at most {limit} failed validations per account per hour",
                retry_after=max(wait, 1),
                rule="acme.failed_validations_per_hour",
            )

    # ------------------------------------------------------------------ finalize (7.4)

    def finalize(
        self,
        signed: SignedRequest,
        account: ACMEAccountRecord,
        order_id: str,
        context: RequestContext,
    ) -> ACMEOrderRecord:
        order = self.order(account, order_id)
        payload = signed.json()
        if order.status != "ready":
            raise ACMEProblem(
                "orderNotReady", f"the order is {order.status}, not ready to be finalized"
            )
        csr_der = _b64url(payload.get("csr"), "csr")
        try:
            parsed = parse_csr(csr_der)
        except CAError as exc:
            raise ACMEProblem("badCSR", exc.detail) from None
        check_csr_matches(parsed, order.identifiers)
        actor = self.accounts.actor(account, context)
        with unit_of_work(self.core.db, write=True) as s:
            if not OrderRepository(s).move(order.id, {"ready"}, "processing"):
                raise ACMEProblem("orderNotReady", "the order is being finalized already")
        try:
            issued = self.core.issue_from_csr(
                csr_der,
                actor,
                profile=order.profile,
                authority=order.authority,
                replaces=order.replaces,
            )
        except CAError as exc:
            problem = from_ca_error(exc)
            if problem.acme_type == "malformed" and problem.status == 400:
                problem = ACMEProblem("badCSR", problem.detail)
            with unit_of_work(self.core.db, write=True) as s:
                OrderRepository(s).move(order.id, {"processing"}, "invalid", error=problem.stored())
            raise problem from None
        except Exception:
            # A bug, not a refusal: the order must not stay "processing" for ever (the client
            # would poll it until it expires). It becomes invalid and the error propagates to
            # the generic 500 handler, which logs it with the request id.
            stored = ACMEProblem("serverInternal", "the certificate could not be issued").stored()
            with unit_of_work(self.core.db, write=True) as s:
                OrderRepository(s).move(order.id, {"processing"}, "invalid", error=stored)
            raise
        with unit_of_work(self.core.db, write=True) as s:
            repo = OrderRepository(s)
            repo.move(order.id, {"processing"}, "valid", certificate_serial=issued.record.serial)
            done = repo.get(order.id)
        assert done is not None
        return done

    # ------------------------------------------------------------------ answers

    def order_json(self, order: ACMEOrderRecord) -> dict[str, Any]:
        urls = self.accounts.urls(order.authority)
        body: dict[str, Any] = {
            "status": order.status,
            "expires": _timestamp(order.expires),
            "identifiers": [{"type": i.type, "value": i.value} for i in order.identifiers],
            "authorizations": [urls.authz(a) for a in order.authz_ids],
            "finalize": urls.finalize(order.id),
            "profile": order.profile,
        }
        if order.error:
            body["error"] = order.error
        if order.certificate_serial:
            body["certificate"] = urls.certificate(order.certificate_serial)
        if order.replaces:
            # RFC 9773 section 5: the order echoes the CertID it was given, not our serial.
            body["replaces"] = self._cert_id(order.replaces, order.authority)
        return body

    def _cert_id(self, serial: str, authority: str) -> str:
        from cryptography import x509

        from ca_service.acme.ari import cert_id

        record = self.core.get_certificate(serial, authority)
        return cert_id(x509.load_der_x509_certificate(record.der))

    def authz_json(self, authz: ACMEAuthzRecord) -> dict[str, Any]:
        body: dict[str, Any] = {
            "identifier": {"type": authz.identifier.type, "value": authz.identifier.base},
            "status": authz.status,
            "expires": _timestamp(authz.expires),
            "challenges": [self.challenge_json(authz, c) for c in authz.challenges],
        }
        if authz.identifier.wildcard:
            body["wildcard"] = True
        return body

    def challenge_json(
        self, authz: ACMEAuthzRecord, challenge: ACMEChallengeRecord
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": challenge.type,
            "url": self.accounts.urls(authz.authority).challenge(challenge.id),
            "status": challenge.status,
            "token": challenge.token,
        }
        if challenge.status == "valid" and challenge.validated_at:
            body["validated"] = _timestamp(challenge.validated_at)
        if challenge.error:
            body["error"] = challenge.error
        return body

    def orders_of(
        self, account: ACMEAccountRecord, after: str | None
    ) -> tuple[list[str], str | None]:
        """A page of the account's order URLs, and the cursor of the next page (7.1.2.1)."""
        page = 100
        with unit_of_work(self.core.db) as s:
            found = OrderRepository(s).for_account(account.id, after=after, limit=page + 1)
        urls = self.accounts.urls(account.authority)
        more = found[page].id if len(found) > page else None
        return [urls.order(o.id) for o in found[:page]], (found[page - 1].id if more else None)

    def certificate_chain(self, account: ACMEAccountRecord, serial: str) -> str:
        """The PEM chain (leaf, then intermediates) of a certificate this account's order got."""
        with unit_of_work(self.core.db) as s:
            order = OrderRepository(s).by_certificate(serial)
        if order is None or order.account_id != account.id:
            raise ACMEProblem("malformed", "no such certificate", status=404)
        record = self.core.get_certificate(serial, order.authority)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        leaf = x509.load_der_x509_certificate(record.der).public_bytes(serialization.Encoding.PEM)
        intermediates, _ = self.core.issuer_chain(order.authority)
        return leaf.decode() + "".join(intermediates)


_KNOWN = {
    "connection",
    "unauthorized",
    "incorrectResponse",
    "dns",
    "caa",
    "tls",
    "rejectedIdentifier",
}


def _b64url(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value or "=" in value:
        raise ACMEProblem("malformed", f"{what} must be base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise ACMEProblem("malformed", f"{what} is not base64url") from None
