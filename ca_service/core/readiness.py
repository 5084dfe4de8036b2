"""Readiness: whether this process can do its work, and if not, why, in user-safe sentences.

It only reads (the store, the loaded keys, the authorities' status); it must never change
anything, and never put a file name or a driver's message in an answer anonymous callers see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ca_service.clock import Clock
from ca_service.core.registry import Registry
from ca_service.domain import AuthorityRecord, CertStatus
from ca_service.errors import CAError, NotFound, Unavailable

log = logging.getLogger(__name__)


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


def readiness(registry: Registry, clock: Clock) -> Readiness:
    """Can this process issue? The store answers, every CA key is loaded, and the default
    issuing authority is neither revoked nor expired, nor is any CA above it. Other
    authorities are reported (revoked, expired) but do not make the service unready:
    one may be kept revoked on purpose, for its CRL and OCSP."""
    try:
        return _readiness(registry, clock)
    except Unavailable as exc:
        log.warning("readiness: the database does not answer: %s", exc.detail)
        return Readiness(
            ("the database is unreachable or its schema is missing",),
            {"database": "unreachable"},
            transient=True,
        )


def _readiness(registry: Registry, clock: Clock) -> Readiness:
    checks: dict[str, Any] = {}
    records = {r.name: r for r in registry.list_authorities()}
    checks["database"] = "ok"
    problems: list[str] = []
    try:
        registry.load_keys()
        checks["keys"] = "ok"
    except CAError as exc:
        # The detail may name files: the log has it, the anonymous answer does not.
        log.error("readiness: a CA key cannot be loaded: %s", exc.detail)
        checks["keys"] = "not loaded"
        problems.append("a CA key cannot be loaded (the server log says which and why)")
    now = clock.now()
    try:
        default = registry.default_authority()
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
