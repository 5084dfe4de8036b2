"""Certificate profiles: what each kind of leaf certificate may contain and for how long."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ca_service.domain import KeyType
from ca_service.errors import ConfigError

EKU_BY_NAME: dict[str, ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
}

ALL_KEY_TYPES: tuple[KeyType, ...] = tuple(KeyType)


@dataclass(frozen=True)
class Profile:
    name: str
    extended_key_usages: tuple[str, ...]
    default_validity_days: int
    max_validity_days: int
    key_types: tuple[KeyType, ...] = ALL_KEY_TYPES
    # A TLS server is found by name: a server certificate without a DNS or IP name is useless.
    require_dns_or_ip: bool = False
    allow_wildcards: bool = False

    @property
    def eku_oids(self) -> tuple[ObjectIdentifier, ...]:
        return tuple(EKU_BY_NAME[e] for e in self.extended_key_usages)


# Defaults follow the CA/B Forum's 397-day ceiling even though this is a private CA: shorter
# lives make revocation matter less, and clients increasingly refuse longer ones.
DEFAULT_PROFILES: dict[str, Profile] = {
    "server": Profile(
        name="server",
        extended_key_usages=("serverAuth",),
        default_validity_days=90,
        max_validity_days=397,
        require_dns_or_ip=True,
    ),
    "client": Profile(
        name="client",
        extended_key_usages=("clientAuth",),
        default_validity_days=90,
        max_validity_days=397,
    ),
    "peer": Profile(
        name="peer",
        extended_key_usages=("serverAuth", "clientAuth"),
        default_validity_days=90,
        max_validity_days=397,
        require_dns_or_ip=True,
    ),
}

# What a new profile of the config file gets for the keys it does not name (it must name its
# extended_key_usages).
NEW_PROFILE_DEFAULTS = Profile(
    name="", extended_key_usages=(), default_validity_days=90, max_validity_days=397
)

_PROFILE_KEYS = {
    "extended_key_usages",
    "default_validity_days",
    "max_validity_days",
    "key_types",
    "require_dns_or_ip",
    "allow_wildcards",
}


def profile_from_mapping(name: str, raw: dict[str, Any], base: Profile | None) -> Profile:
    """Build a profile from a config table; keys not given fall back to ``base``."""
    unknown = set(raw) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(f"profile {name!r}: unknown keys {sorted(unknown)}")
    if base is None:
        if "extended_key_usages" not in raw:
            raise ConfigError(f"profile {name!r}: extended_key_usages is required")
        base = NEW_PROFILE_DEFAULTS
    ekus = tuple(raw.get("extended_key_usages", base.extended_key_usages))
    for eku in ekus:
        if eku not in EKU_BY_NAME:
            raise ConfigError(f"profile {name!r}: unknown EKU {eku!r}; use {sorted(EKU_BY_NAME)}")
    if not ekus:
        raise ConfigError(f"profile {name!r}: at least one extended key usage is required")
    try:
        key_types = tuple(KeyType.parse(k) for k in raw.get("key_types", base.key_types))
    except Exception as exc:
        raise ConfigError(f"profile {name!r}: {exc}") from None
    default_days = _positive_int(name, "default_validity_days", raw, base.default_validity_days)
    max_days = _positive_int(name, "max_validity_days", raw, base.max_validity_days)
    if default_days > max_days:
        raise ConfigError(f"profile {name!r}: default_validity_days exceeds max_validity_days")
    return Profile(
        name=name,
        extended_key_usages=ekus,
        default_validity_days=default_days,
        max_validity_days=max_days,
        key_types=key_types,
        require_dns_or_ip=bool(raw.get("require_dns_or_ip", base.require_dns_or_ip)),
        allow_wildcards=bool(raw.get("allow_wildcards", base.allow_wildcards)),
    )


def _positive_int(profile: str, key: str, raw: dict[str, Any], default: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"profile {profile!r}: {key} must be a positive integer")
    return value


def load_profiles(raw: dict[str, Any] | None) -> dict[str, Profile]:
    profiles = dict(DEFAULT_PROFILES)
    for name, table in (raw or {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"profile {name!r} must be a table")
        profiles[name] = profile_from_mapping(name, table, DEFAULT_PROFILES.get(name))
    return profiles


__all__ = ["DEFAULT_PROFILES", "Profile", "load_profiles"]
