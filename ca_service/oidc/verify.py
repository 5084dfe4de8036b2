"""An ID token checked end to end, and the caller it makes.

PyJWT does every JOSE check (signature, algorithm, exp/nbf/iat with leeway, iss, aud, required
claims); this module picks the provisioner, maps PyJWT's refusals to named rules, applies the
claim rules, fills the names, and uses up the ``jti``. Two steps, so that the web layer can
refuse an endpoint the token may not call before its ``jti`` is spent:

- ``verify``: the token is authentic, current, for us, and its claims entitle it
  (Unauthorized for a credential that proves nothing, Forbidden for an authentic token that
  the provisioner does not admit);
- ``consume``: record its ``jti`` (Unauthorized on a replay, on every worker and replica).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ca_service.clock import Clock, SystemClock
from ca_service.domain import Actor, CallerPolicy, ProvisionerRecord, Role
from ca_service.errors import CAError, Forbidden, Unauthorized
from ca_service.oidc.claims import check_claims, claim_text
from ca_service.oidc.jwks import JWKSCache
from ca_service.oidc.names import fill
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.oidc import ProvisionerRepository, UsedTokenRepository

log = logging.getLogger(__name__)

# Asymmetric algorithms only: "none" proves nothing, and an HMAC algorithm would let anyone who
# knows the issuer's public key (everyone) sign with it as the "secret".
ALGORITHMS = ("RS256", "ES256", "EdDSA")
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]
MAX_TOKEN = 16 * 1024
MAX_SUB = 180  # oidc:<provisioner (64)>:<sub> fits the 255 characters of a requester
PURGE_SECONDS = 60
# Claims kept in the audit event of every action the token's caller takes (GitHub, GitLab).
AUDIT_CLAIMS = (
    "jti",
    "repository",
    "ref",
    "workflow",
    "job_workflow_ref",
    "run_id",
    "environment",
    "project_path",
    "pipeline_id",
    "pipeline_source",
    "ci_config_ref_uri",
)


@dataclass(frozen=True)
class OIDCPrincipal:
    """A caller authenticated by an ID token; shaped like ``TokenRecord`` where the handlers
    use it (identity, role, policy, actor). Its role is issuer, bounded by ``policy`` and by
    authorization.check_oidc_operation to issuing and renewing."""

    provisioner: str
    subject: str
    issuer: str
    jti: str
    expires_at: dt.datetime
    policy: CallerPolicy
    credential: tuple[tuple[str, str], ...]

    @property
    def identity(self) -> str:
        return f"oidc:{self.provisioner}:{self.subject}"

    @property
    def role(self) -> Role:
        return Role.ISSUER

    def actor(self, request_id: str | None, client_address: str | None) -> Actor:
        return Actor(self.identity, request_id, client_address, self.policy, self.credential)


class TokenRefused(Forbidden):
    """An authentic token that no provisioner admits; ``identity`` names its caller for the
    audit log (the token is verified, so its ``sub`` is the issuer's word)."""

    def __init__(self, cause: Forbidden, identity: str) -> None:
        super().__init__(cause.detail, rule=cause.rule)
        self.identity = identity


def _refused(rule: str, detail: str) -> Unauthorized:
    return Unauthorized(f"{detail} (rule: {rule})", rule=rule)


def _translate(exc: jwt.PyJWTError) -> CAError:
    """PyJWT's refusal as ours, with a named rule (the subclasses first: they inherit)."""
    pairs: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
        (jwt.ExpiredSignatureError, "oidc.expired", "the ID token has expired"),
        (jwt.ImmatureSignatureError, "oidc.not_yet_valid", "the ID token is not valid yet"),
        (jwt.InvalidAudienceError, "oidc.audience", "the ID token is for another audience"),
        (jwt.InvalidIssuerError, "oidc.issuer", "the ID token names another issuer"),
        (jwt.InvalidIssuedAtError, "oidc.not_yet_valid", "the ID token's iat is not valid"),
        (jwt.MissingRequiredClaimError, "oidc.claim_missing", "the ID token lacks a claim"),
        (jwt.InvalidSignatureError, "oidc.signature", "the ID token's signature is not valid"),
        (jwt.InvalidAlgorithmError, "oidc.algorithm", "the ID token's algorithm is refused"),
    )
    for kind, rule, detail in pairs:
        if isinstance(exc, kind):
            if isinstance(exc, jwt.MissingRequiredClaimError):
                detail = f"the ID token lacks the {exc.claim!r} claim"
            return _refused(rule, detail)
    return _refused("oidc.malformed", "the ID token cannot be decoded")


class OIDCVerifier:
    """Checks ID tokens against the stored provisioners (one per process, shared by threads)."""

    def __init__(
        self,
        db: Database,
        jwks: JWKSCache,
        *,
        leeway_seconds: int,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.jwks = jwks
        self.leeway = leeway_seconds
        self.clock = clock or SystemClock()
        self._purge_lock = threading.Lock()
        self._purged_at = -1e9

    def verify(self, token: str) -> OIDCPrincipal:
        """The principal for an authentic, current token that a provisioner admits."""
        if len(token) > MAX_TOKEN:
            raise _refused("oidc.malformed", "the ID token is too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refused("oidc.malformed", "the bearer credential is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _refused(
                "oidc.algorithm",
                f"the ID token's algorithm {str(alg)[:16]!r} is refused; accepted: "
                f"{', '.join(ALGORITHMS)}",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("oidc.malformed", "the ID token's kid is not a string")
        candidates = self._candidates(unverified)
        first_error: TokenRefused | None = None
        for record in candidates:
            # Signature and times first: nothing of an unverified token is trusted below.
            claims = self._decode(token, record, kid, alg)
            try:
                return self._admit(record, claims)
            except Forbidden as exc:
                if first_error is None:
                    first_error = TokenRefused(exc, f"oidc:{record.name}:{claims['sub']!s:.180}")
        assert first_error is not None
        raise first_error

    def _candidates(self, unverified: Mapping[str, Any]) -> list[ProvisionerRecord]:
        """The provisioners for the token's ``iss`` and ``aud``, by name: several may share
        them (one per repository, say), and the first whose claim rules match admits it."""
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise _refused("oidc.issuer", "the ID token names no issuer")
        with unit_of_work(self.db) as s:
            records = ProvisionerRepository(s).by_issuer(issuer)
        if not records:
            raise _refused("oidc.issuer", f"no provisioner trusts the issuer {issuer[:200]!r}")
        aud = unverified.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        matching = [r for r in records if r.audience in audiences]
        if not matching:
            raise _refused(
                "oidc.audience",
                f"no provisioner of the issuer {issuer[:200]!r} has the ID token's audience",
            )
        return matching

    def _decode(
        self, token: str, record: ProvisionerRecord, kid: str | None, alg: str
    ) -> dict[str, Any]:
        key = self.jwks.key(record.issuer, record.jwks_uri, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=record.audience,
                issuer=record.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise _translate(exc) from None
        return claims

    def _admit(self, record: ProvisionerRecord, claims: Mapping[str, Any]) -> OIDCPrincipal:
        sub, jti = claims["sub"], claims["jti"]
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB:
            raise _refused("oidc.subject", f"the ID token's sub must be 1 to {MAX_SUB} characters")
        if not isinstance(jti, str) or not 1 <= len(jti) <= 255:
            raise _refused("oidc.jti", "the ID token's jti must be 1 to 255 characters")
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _refused("oidc.malformed", "the ID token's exp is not a number")
        check_claims(record.claims, claims)
        names = tuple(dict.fromkeys(fill(p, claims) for p in record.allowed_names))
        policy = CallerPolicy(
            allowed_names=names,
            profiles=record.profiles,
            max_validity_days=record.max_validity_days,
            authorities=record.authorities,
        )
        credential: list[tuple[str, str]] = [("provisioner", record.name)]
        for name in AUDIT_CLAIMS:
            text = claim_text(claims.get(name))
            if text is not None:
                credential.append((name, text[:255]))
        return OIDCPrincipal(
            provisioner=record.name,
            subject=sub,
            issuer=record.issuer,
            jti=jti,
            expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
            policy=policy,
            credential=tuple(credential),
        )

    def consume(self, principal: OIDCPrincipal) -> None:
        """Use up the token's ``jti`` (kept until the token expires, plus the leeway, so that
        it cannot come back while PyJWT would still accept it)."""
        until = principal.expires_at + dt.timedelta(seconds=self.leeway)
        with unit_of_work(self.db, write=True) as s:
            fresh = UsedTokenRepository(s).use(principal.issuer, principal.jti, until)
        if not fresh:
            raise _refused("oidc.replay", "this ID token was used before")
        self._purge()

    def _purge(self) -> None:
        """Drop expired jtis now and then (once a minute per process, a bounded batch)."""
        with self._purge_lock:
            if time.monotonic() - self._purged_at < PURGE_SECONDS:
                return
            self._purged_at = time.monotonic()
        try:
            with unit_of_work(self.db, write=True) as s:
                UsedTokenRepository(s).purge(self.clock.now())
        except Exception as exc:  # housekeeping must never fail the request it follows
            log.warning("could not purge used OIDC token ids: %s", exc)
