"""External Account Binding keys (RFC 8555 section 7.3.4): made by an admin, used once by an
ACME client to bind its new account, whose policy is then the key's.

A key is a kid (``eab_`` + 22 url-safe characters, 128 random bits: it names the key and is not
secret) and an HMAC key of 256 random bits, handed to the admin once, base64url without
padding, as certbot's ``--eab-hmac-key`` takes it. The HMAC key must be read back to verify a
binding, so it is stored sealed (ca_service.crypto.sealed) under the CA key passphrase and bound
to its kid, never in clear and never in an audit event: a copy of the database alone binds
nothing.

The policy a key carries is an issuer's (``build_policy(Role.ISSUER, ...)``): at least one
allowed name pattern, and only profiles and authorities that exist, decided by the same
functions as a token's grant, so an account bound with it can never get more than an issuer
token with the same grant.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Collection

from ca_service.clock import Clock
from ca_service.crypto.sealed import Sealer, SealError
from ca_service.domain import Actor, AuditEvent, EABKeyRecord, Role
from ca_service.errors import BadRequest, ConfigError, NotFound
from ca_service.policy.authorization import build_policy, check_token_targets
from ca_service.storage.acme import EABKeyRepository
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import AuditRepository

# HKDF info of the sealing key: a key derived for EAB never opens another purpose's values.
SEAL_INFO = b"ca-service acme eab hmac v1"
KID_RE = re.compile(r"^eab_[A-Za-z0-9_-]{22}$")
HMAC_KEY_BYTES = 32
NAME_MAX = 128


def new_kid() -> str:
    # 16 random bytes are exactly 22 base64url characters without padding.
    return "eab_" + secrets.token_urlsafe(16)


def encode_hmac_key(key: bytes) -> str:
    """base64url without padding (RFC 8555 section 7.3.4's and certbot's form)."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def new_hmac_key(draw: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A random HMAC key whose text does not start with ``-``.

    certbot's argparse and lego's flag parser read ``--eab-hmac-key -x...`` as a missing value
    and a flag, so one key in 64 (a first byte of 0xF8-0xFB) would be refused by the command
    we print. Drawing again costs under 0.03 of the key's 256 bits."""
    while True:
        key = draw(HMAC_KEY_BYTES)
        if not encode_hmac_key(key).startswith("-"):
            return key


def _check_name(name: str) -> str:
    """The name as given, less surrounding spaces. The length is that of the text sent (the
    document's maxLength), so no name the document calls too long is accepted once stripped."""
    stripped = name.strip()
    if not stripped or len(name) > NAME_MAX or not name.isprintable():
        raise BadRequest(f"an EAB key needs a name of 1 to {NAME_MAX} printable characters")
    return stripped


def _audit_policy(record: EABKeyRecord) -> dict[str, object]:
    p = record.policy
    return {
        "name": record.name,
        "allowed_names": list(p.allowed_names or ()),
        "profiles": list(p.profiles) if p.profiles is not None else None,
        "max_validity_days": p.max_validity_days,
        "authorities": list(p.authorities) if p.authorities is not None else None,
        "allow_wildcards": p.allow_wildcards,
    }


class EABKeys:
    """Make, list and revoke EAB keys, and open one's HMAC key for newAccount."""

    def __init__(self, db: Database, clock: Clock, passphrase: bytes) -> None:
        self.db = db
        self.clock = clock
        # Derived on first seal or open: listing and revoking need no passphrase.
        self._sealer = Sealer(passphrase, SEAL_INFO)

    def create(
        self,
        *,
        name: str,
        allowed_names: list[str],
        profiles: list[str] | None,
        max_validity_days: int | None,
        authorities: list[str] | None,
        allow_wildcards: bool,
        actor: Actor,
        known_profiles: Collection[str],
        known_authorities: Collection[str],
    ) -> tuple[EABKeyRecord, str]:
        """Make a key; the returned HMAC key (base64url) is shown here once and never again."""
        name = _check_name(name)
        if not allowed_names:
            raise BadRequest("an EAB key needs at least one allowed name pattern")
        policy = build_policy(
            Role.ISSUER,
            names=list(allowed_names),
            profiles=list(profiles) if profiles else None,
            max_validity_days=max_validity_days,
            authorities=list(authorities) if authorities else None,
            allow_wildcards=allow_wildcards,
        )
        check_token_targets(policy, known_profiles, known_authorities)
        kid = new_kid()
        hmac_key = new_hmac_key()
        sealed = self._sealer.seal(hmac_key, kid.encode())
        now = self.clock.now()
        record = EABKeyRecord(
            kid=kid, name=name, policy=policy, created_by=actor.identity[:255], created_at=now
        )
        with unit_of_work(self.db, write=True) as s:
            EABKeyRepository(s).add(record, sealed)
            AuditRepository(s).add(
                AuditEvent.of(actor, "acme.eab.create", f"eab:{kid}", now, _audit_policy(record))
            )
        return record, encode_hmac_key(hmac_key)

    def list(self) -> list[EABKeyRecord]:
        """Every key, oldest first, without its HMAC key."""
        with unit_of_work(self.db) as s:
            return EABKeyRepository(s).list()

    def get(self, kid: str) -> EABKeyRecord:
        found = self._find(kid)
        if found is None:
            raise NotFound(f"no EAB key {kid!r}")
        return found[0]

    def revoke(self, kid: str, actor: Actor) -> EABKeyRecord:
        """Revoke a key (idempotent: a second call changes and audits nothing). An account it
        already bound keeps existing; the key binds nothing more."""
        if not KID_RE.match(kid):
            raise NotFound(f"no EAB key {kid!r}")
        now = self.clock.now()
        with unit_of_work(self.db, write=True) as s:
            result = EABKeyRepository(s).revoke(kid, now)
            if result is None:
                raise NotFound(f"no EAB key {kid!r}")
            record, changed = result
            if changed:
                AuditRepository(s).add(AuditEvent.of(actor, "acme.eab.revoke", f"eab:{kid}", now))
        return record

    def hmac_key(self, kid: str) -> tuple[EABKeyRecord, bytes] | None:
        """The key's record and its HMAC key in clear, to verify a binding; None for an unknown
        kid. Whether it may still bind (``revoked_at``, ``account_id``) is the caller's check.

        A stored value that does not open (the passphrase changed, or the row was altered or
        copied from another kid) is the operator's problem, not the client's: ConfigError."""
        found = self._find(kid)
        if found is None:
            return None
        record, sealed = found
        try:
            return record, self._sealer.open(sealed, kid.encode())
        except SealError:
            raise ConfigError(
                f"the HMAC key of EAB key {kid} does not open with this CA key passphrase "
                "(the passphrase changed, or the row was altered)"
            ) from None

    def _find(self, kid: str) -> tuple[EABKeyRecord, bytes] | None:
        if not KID_RE.match(kid):
            return None
        with unit_of_work(self.db) as s:
            return EABKeyRepository(s).get(kid)
