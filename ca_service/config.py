"""Settings: read once at start from CA_* environment variables and an optional TOML file.

Strict on purpose: an unknown key or a bad value stops the service at start with a message naming
it, rather than running with a silently ignored typo. Secrets come from the environment or from
``*_FILE`` paths, never from the TOML file, so the file can be committed and shared.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from ca_service.errors import CAError, ConfigError
from ca_service.policy.profiles import Profile, load_profiles

ENV_PREFIX = "CA_"

# Keys accepted both as CA_<KEY> env vars and as top-level keys of the TOML file.
_PLAIN_KEYS = {
    "data_dir",
    "database_url",
    "public_url",
    "default_authority",
    "crl_next_update_hours",
    "log_level",
    "bind",
    "workers",
    "timeout",
    "max_body_bytes",
    "ocsp_next_update_minutes",
    "ocsp_responder_days",
    "ocsp_sign_with_ca",
    "tls",
    "tls_hostnames",
    "tls_cert_days",
    "tls_client_auth",
}
_ROLES = ("admin", "issuer", "reader")
_MTLS_KINDS = ("subject", "san", "profile", "extension")
_CLIENT_AUTH = ("off", "optional", "required")
# Secret keys: environment only (value or *_FILE), never the TOML file.
_SECRET_KEYS = {"key_passphrase"}
_ENV_ONLY = {"config_file"}


@dataclass(frozen=True)
class MTLSRule:
    """One ``[[mtls]]`` rule: a client certificate that matches gets ``role`` and the policy.

    ``kind``/``value`` come from ``match = "<kind>:<value>"``: ``subject`` (the RFC 4514 subject,
    exactly), ``san`` (a name pattern as in token policies: host, *.domain, CIDR, *@domain; any
    SAN of the certificate matching it), ``profile`` (client or peer) or ``extension`` (a dotted
    OID the certificate carries). Validated at start like every other setting.

    ``issued_by`` (an authority) and ``certificate_profile`` (client or peer) bind the rule to
    the certificates one authority issues under one profile. A rule must not grant more than it
    took to obtain a matching certificate: a SAN is checked against every issuer's
    ``allowed_names`` and the authority's name constraints, so a ``san:`` rule may stand alone;
    subject text, a profile or an extension says nothing of who asked for the certificate, so
    those rules must be bound (``profile:`` to its authority, the others to both).
    """

    kind: str
    value: str
    role: str
    allowed_names: tuple[str, ...] | None = None
    profiles: tuple[str, ...] | None = None
    max_validity_days: int | None = None
    authorities: tuple[str, ...] | None = None
    allow_wildcards: bool = False
    issued_by: str | None = None
    certificate_profile: str | None = None
    allowed_subjects: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Refuse an unbound rule wherever one is built, not only in the TOML loader."""
        if self.certificate_profile not in (None, "client", "peer"):
            raise ConfigError(
                f"mtls rule {self.kind}:{self.value}: certificate_profile must be client or peer"
            )
        if self.kind == "san":
            return
        needs_profile = self.kind != "profile" and self.certificate_profile is None
        if self.issued_by is None or needs_profile:
            binding = 'issued_by = "<authority>"' + (
                ', certificate_profile = "client" or "peer"' if self.kind != "profile" else ""
            )
            raise ConfigError(
                f"mtls rule {self.kind}:{self.value} matches on {self.kind} text alone, which "
                "any caller allowed to request it could obtain from any authority: bind it with "
                f"{binding}, or match on a SAN identity (match = \"san:<pattern>\")"
            )


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("ca-data")
    database_url: str | None = None
    key_passphrase: bytes | None = field(default=None, repr=False)
    public_url: str = "http://127.0.0.1:8000"
    default_authority: str | None = None
    crl_next_update_hours: int = 24
    log_level: str = "INFO"
    # HTTP serving (gunicorn); loopback by default so a first start exposes nothing.
    bind: str = "127.0.0.1:8000"
    workers: int = 4
    timeout: int = 30
    max_body_bytes: int = 64 * 1024
    # OCSP: answers are good for this long and re-signed when half of it has passed.
    ocsp_next_update_minutes: int = 60
    # Life of a delegated responder certificate; it is replaced when two thirds have passed.
    ocsp_responder_days: int = 7
    # Sign OCSP answers with the CA key itself instead of a delegated responder.
    ocsp_sign_with_ca: bool = False
    profiles: Mapping[str, Profile] = field(default_factory=lambda: load_profiles(None))
    # HTTPS (`serve --tls`): the server certificate is issued by the default authority for these
    # names, for tls_cert_days, and renewed when two thirds of its life have passed.
    tls: bool = False
    tls_hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    tls_cert_days: int = 30
    # Client certificates: off (never asked), optional (asked; a token also works), required.
    tls_client_auth: str = "optional"
    # Ordered [[mtls]] rules mapping a client certificate to a role and policy; first match wins.
    mtls_rules: tuple[MTLSRule, ...] = ()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ca.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def require_passphrase(self) -> bytes:
        if not self.key_passphrase:
            raise ConfigError(
                "no CA key passphrase: set CA_KEY_PASSPHRASE or CA_KEY_PASSPHRASE_FILE "
                "(the CA private keys are stored encrypted with it)"
            )
        return self.key_passphrase


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build Settings from the environment (and the TOML file it names); fail fast on errors.

    ``overrides`` (a command's options, by key; None means not given) win over both and are
    checked like them."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    profiles_raw: dict[str, Any] | None = None
    mtls_raw: Any = None

    config_file = env.get("CA_CONFIG_FILE")
    if config_file:
        file_values = _read_toml(Path(config_file))
        profiles_raw = file_values.pop("profiles", None)
        mtls_raw = file_values.pop("mtls", None)
        for key in file_values:
            if key not in _PLAIN_KEYS:
                hint = " (secrets belong in the environment)" if key in _SECRET_KEYS else ""
                raise ConfigError(f"{config_file}: unknown setting {key!r}{hint}")
        values.update(file_values)

    known_env = {ENV_PREFIX + k.upper() for k in _PLAIN_KEYS | _SECRET_KEYS | _ENV_ONLY}
    known_env |= {ENV_PREFIX + k.upper() + "_FILE" for k in _SECRET_KEYS}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known_env:
            raise ConfigError(f"unknown setting {name} in the environment")
    for key in _PLAIN_KEYS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = env[ENV_PREFIX + key.upper()]

    for key, value in (overrides or {}).items():
        if key not in _PLAIN_KEYS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value

    passphrase = _secret(env, "key_passphrase")
    settings = _build(values, passphrase, profiles_raw)
    if mtls_raw is not None:
        settings = replace(settings, mtls_rules=_mtls_rules(mtls_raw, settings))
    return settings


def _secret(env: Mapping[str, str], key: str) -> bytes | None:
    direct = env.get(ENV_PREFIX + key.upper())
    path = env.get(ENV_PREFIX + key.upper() + "_FILE")
    if direct and path:
        raise ConfigError(f"set only one of CA_{key.upper()} and CA_{key.upper()}_FILE")
    if direct:
        return direct.encode()
    if path:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read CA_{key.upper()}_FILE {path}: {exc.strerror}") from None
        if not data:
            raise ConfigError(f"CA_{key.upper()}_FILE {path} is empty")
        return data
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _build(values: dict[str, Any], passphrase: bytes | None, profiles_raw: Any) -> Settings:
    kwargs: dict[str, Any] = {"key_passphrase": passphrase}
    if "data_dir" in values:
        kwargs["data_dir"] = Path(str(values["data_dir"]))
    if values.get("database_url"):
        url = str(values["database_url"])
        if not url.startswith(("sqlite", "postgresql")):
            raise ConfigError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        kwargs["database_url"] = url
    if "public_url" in values:
        url = str(values["public_url"]).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"public_url must be an absolute http(s) URL, not {url!r}")
        kwargs["public_url"] = url
    if values.get("default_authority"):
        kwargs["default_authority"] = str(values["default_authority"])
    if "crl_next_update_hours" in values:
        try:
            hours = int(values["crl_next_update_hours"])
        except (TypeError, ValueError):
            raise ConfigError("crl_next_update_hours must be an integer") from None
        if not 1 <= hours <= 24 * 31:
            raise ConfigError("crl_next_update_hours must be between 1 and 744")
        kwargs["crl_next_update_hours"] = hours
    if "log_level" in values:
        level = str(values["log_level"]).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
        kwargs["log_level"] = level
    if "bind" in values:
        bind = str(values["bind"]).strip()
        host, sep, port = bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bind must be HOST:PORT, not {bind!r}")
        kwargs["bind"] = bind
    for key, low, high in (
        ("workers", 1, 64),
        ("timeout", 1, 3600),
        ("max_body_bytes", 1024, 16 << 20),
        ("ocsp_next_update_minutes", 5, 7 * 24 * 60),
        ("ocsp_responder_days", 1, 90),
    ):
        if key in values:
            kwargs[key] = _int_in_range(key, values[key], low, high)
    if "ocsp_sign_with_ca" in values:
        kwargs["ocsp_sign_with_ca"] = _bool("ocsp_sign_with_ca", values["ocsp_sign_with_ca"])
    if "tls" in values:
        kwargs["tls"] = _bool("tls", values["tls"])
    if "tls_hostnames" in values:
        kwargs["tls_hostnames"] = _hostnames(values["tls_hostnames"])
    if "tls_cert_days" in values:
        kwargs["tls_cert_days"] = _int_in_range("tls_cert_days", values["tls_cert_days"], 1, 397)
    if "tls_client_auth" in values:
        mode = str(values["tls_client_auth"]).strip().lower()
        if mode not in _CLIENT_AUTH:
            raise ConfigError("tls_client_auth must be off, optional or required")
        kwargs["tls_client_auth"] = mode
    if profiles_raw is not None and not isinstance(profiles_raw, dict):
        raise ConfigError("[profiles] must be a table of tables")
    kwargs["profiles"] = load_profiles(profiles_raw)
    return Settings(**kwargs)


def _int_in_range(key: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer") from None
    if not low <= number <= high:
        raise ConfigError(f"{key} must be between {low} and {high}")
    return number


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false")


def _hostnames(value: Any) -> tuple[str, ...]:
    """A comma-separated string (environment) or a list (TOML) of DNS names and IP addresses."""
    from ca_service.crypto.names import parse_name

    items = value if isinstance(value, list) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ConfigError("tls_hostnames needs at least one host name or IP address")
    for name in names:
        try:
            parsed = parse_name(name)
        except CAError as exc:
            raise ConfigError(f"tls_hostnames: {exc.detail}") from None
        if parsed.kind.value not in ("dns", "ip"):
            raise ConfigError(f"tls_hostnames: {name!r} is not a DNS name or IP address")
    return names


def check_mtls_authorities(rules: tuple[MTLSRule, ...], authorities: set[str]) -> None:
    """At start, once the store is open: every ``issued_by`` names one of its authorities (a
    typo would leave a bound rule matching nothing, silently)."""
    for index, rule in enumerate(rules, 1):
        if rule.issued_by is not None and rule.issued_by not in authorities:
            known = ", ".join(sorted(authorities)) or "none yet"
            raise ConfigError(
                f"[[mtls]] #{index}: issued_by {rule.issued_by!r} is not an authority of this "
                f"service (known: {known})"
            )


def _mtls_rules(raw: Any, settings: Settings) -> tuple[MTLSRule, ...]:
    """Parse and check ``[[mtls]]`` tables now, so a typo stops the service at start."""
    from ca_service.policy.names import validate_pattern, validate_subject_pattern

    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("mtls must be an array of tables ([[mtls]])")
    fields = {
        "match",
        "role",
        "allowed_names",
        "profiles",
        "max_validity_days",
        "authorities",
        "allow_wildcards",
        "issued_by",
        "certificate_profile",
        "allowed_subjects",
    }
    rules = []
    for index, table in enumerate(raw, 1):
        where = f"[[mtls]] #{index}"
        unknown = sorted(set(table) - fields)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        kind, sep, value = str(table.get("match", "")).partition(":")
        kind, value = kind.strip().lower(), value.strip()
        if not sep or kind not in _MTLS_KINDS or not value:
            raise ConfigError(
                f"{where}: match must be 'subject:<RFC 4514>', 'san:<pattern>', "
                "'profile:<client|peer>' or 'extension:<OID>'"
            )
        try:
            if kind == "san":
                value = validate_pattern(value)
            elif kind == "profile" and value not in ("client", "peer"):
                raise ConfigError(f"{where}: only client and peer certificates authenticate")
            elif kind == "extension":
                x509.ObjectIdentifier(value)
            elif kind == "subject":
                value = x509.Name.from_rfc4514_string(value).rfc4514_string()
        except (CAError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: bad match {table.get('match')!r}: {exc}") from None
        role = str(table.get("role", "")).strip().lower()
        if role not in _ROLES:
            raise ConfigError(f"{where}: role must be admin, issuer or reader")
        lists: dict[str, tuple[str, ...] | None] = {}
        for key in ("allowed_names", "profiles", "authorities", "allowed_subjects"):
            item = table.get(key)
            if item is not None and (
                not isinstance(item, list) or not all(isinstance(v, str) for v in item)
            ):
                raise ConfigError(f"{where}: {key} must be a list of strings")
            lists[key] = tuple(item) if item is not None else None
        if role == "admin" and any(v is not None for v in lists.values()):
            raise ConfigError(f"{where}: admin is unrestricted; a policy applies to issuer rules")
        if role == "issuer" and not lists["allowed_names"]:
            raise ConfigError(f"{where}: an issuer rule needs allowed_names")
        try:
            names = lists["allowed_names"]
            if names is not None:
                names = tuple(validate_pattern(n) for n in names)
            subjects = lists["allowed_subjects"]
            if subjects is not None:
                subjects = tuple(validate_subject_pattern(n) for n in subjects)
        except CAError as exc:
            raise ConfigError(f"{where}: {exc.detail}") from None
        bindings: dict[str, str | None] = {}
        for key in ("issued_by", "certificate_profile"):
            item = table.get(key)
            if item is not None and (not isinstance(item, str) or not item.strip()):
                raise ConfigError(f"{where}: {key} must be a non-empty string")
            bindings[key] = item.strip() if item is not None else None
        for profile in lists["profiles"] or ():
            if profile not in settings.profiles:
                raise ConfigError(f"{where}: unknown profile {profile!r}")
        days = table.get("max_validity_days")
        if days is not None:
            days = _int_in_range(f"{where}: max_validity_days", days, 1, 3650)
        wildcards = _bool(f"{where}: allow_wildcards", table.get("allow_wildcards", False))
        try:
            rule = MTLSRule(
                kind=kind,
                value=value,
                role=role,
                allowed_names=names,
                profiles=lists["profiles"],
                max_validity_days=days,
                authorities=lists["authorities"],
                allow_wildcards=wildcards,
                issued_by=bindings["issued_by"],
                certificate_profile=bindings["certificate_profile"],
                allowed_subjects=subjects,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.detail}") from None
        rules.append(rule)
    return tuple(rules)
