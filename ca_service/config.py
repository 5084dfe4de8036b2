"""Settings: read once at start from CA_* environment variables and an optional TOML file.

Every setting is defined once, as a field of :class:`Settings`: its name (the TOML key; CA_<NAME>
in the environment), type, default and explanation, with the function that checks a raw value.
The loader, the unknown-key check and ``config/ca-service.example.toml`` (``python -m
ca_service.config --example``, compared with the committed file by the tests) all read that one
definition, so none of them can drift from it.

Strict on purpose: an unknown key or a bad value stops the service at start with a message naming
it, rather than running with a silently ignored typo. Secrets come from the environment or from
``*_FILE`` paths, never from the TOML file, so the file can be committed and shared.

The loader is ours rather than pydantic-settings: that library has no per-secret ``*_FILE``
source, parses lists from the environment as JSON, ignores unknown prefixed variables and words
its errors differently from the one-line messages users and tests rely on; adapting each of those
would take more code than the small table here.
"""

from __future__ import annotations

import os
import sys
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from ca_service.errors import CAError, ConfigError
from ca_service.policy.profiles import Profile, load_profiles

ENV_PREFIX = "CA_"
# Read from the environment only: it names the TOML file.
CONFIG_FILE_ENV = "CA_CONFIG_FILE"

_ROLES = ("admin", "issuer", "reader")
_MTLS_KINDS = ("subject", "san", "profile", "extension")
_CLIENT_AUTH = ("off", "optional", "required")


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
                f'{binding}, or match on a SAN identity (match = "san:<pattern>")'
            )


# ---------------------------------------------------------------------------- the definition

Parse = Callable[[str, Any], Any]


@dataclass(frozen=True)
class SettingInfo:
    """How one field of :class:`Settings` is read and explained (kept in the field's metadata).

    ``parse`` turns a raw value (an environment string or a TOML value) into the field's type,
    or None for "not set", and raises :class:`ConfigError` naming the key. ``secret`` keys come
    from CA_<NAME> or CA_<NAME>_FILE only; ``table`` keys are TOML tables (profiles, mtls).
    ``example`` is what the example file shows, commented out, for a key whose default is None.
    """

    help: str
    parse: Parse | None = None
    secret: bool = False
    table: str | None = None
    example: Any = None

    @property
    def plain(self) -> bool:
        return self.parse is not None


def _setting(default: Any, help: str, parse: Parse, *, example: Any = None) -> Any:
    return field(default=default, metadata={"setting": SettingInfo(help, parse, example=example)})


def _secret_setting(help: str) -> Any:
    """A secret: from CA_<NAME> or CA_<NAME>_FILE only, never shown by repr()."""
    return field(default=None, repr=False, metadata={"setting": SettingInfo(help, secret=True)})


def _path(key: str, value: Any) -> Path:
    return Path(str(value))


def _database_url(key: str, value: Any) -> str | None:
    if not value:
        return None
    url = str(value)
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
    return url


def _public_url(key: str, value: Any) -> str:
    url = str(value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"public_url must be an absolute http(s) URL, not {url!r}")
    return url


def _optional_public_url(key: str, value: Any) -> str | None:
    if not value:
        return None
    url = str(value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key} must be an absolute http(s) URL, not {url!r}")
    return url


def _optional_text(key: str, value: Any) -> str | None:
    return str(value) if value else None


def _log_level(key: str, value: Any) -> str:
    level = str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
    return level


def _bind(key: str, value: Any) -> str:
    bind = str(value).strip()
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bind must be HOST:PORT, not {bind!r}")
    return bind


def _int(low: int, high: int) -> Parse:
    def parse(key: str, value: Any) -> int:
        return _int_in_range(key, value, low, high)

    return parse


def _client_auth(key: str, value: Any) -> str:
    mode = str(value).strip().lower()
    if mode not in _CLIENT_AUTH:
        raise ConfigError("tls_client_auth must be off, optional or required")
    return mode


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{key} must be {' or '.join(repr(c) for c in choices)}, not {value!r}")
    return text


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false")


def _hostnames_setting(key: str, value: Any) -> tuple[str, ...]:
    return _hostnames(value)


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    """A comma-separated string (environment) or a list (TOML) of name patterns, checked now."""
    from ca_service.policy.names import validate_pattern

    items = value if isinstance(value, list) else str(value).split(",")
    patterns = tuple(str(item).strip() for item in items if str(item).strip())
    try:
        return tuple(validate_pattern(p) for p in patterns)
    except CAError as exc:
        raise ConfigError(f"{key}: {exc.detail}") from None


def _words(key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(str(item).strip().lower() for item in items if str(item).strip())


def _resolver(key: str, value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must be HOST:PORT, not {text!r}")
    return text


def _optional_url(key: str, value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key} must be an absolute http(s) URL, not {text!r}")
    return text


def _networks(key: str, value: Any) -> tuple[str, ...]:
    """Addresses or CIDR networks, checked now (kept as text; compared with ipaddress)."""
    import ipaddress

    items = value if isinstance(value, list) else str(value).split(",")
    networks = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{key}: {item!r} is not an IP address or network") from None
    return tuple(networks)


def _urls(key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else str(value).split(",")
    urls = tuple(str(item).strip() for item in items if str(item).strip())
    for url in urls:
        if _optional_url(key, url) is None:
            raise ConfigError(f"{key}: empty URL")
    return urls


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, each defined once: name, type, default and explanation."""

    data_dir: Path = _setting(  # noqa: RUF009 (returns a dataclasses.field)
        Path("ca-data"),
        "Where CA key files (encrypted PKCS#8, mode 0600) and the default SQLite database live.",
        _path,
    )
    database_url: str | None = _setting(
        None,
        "SQLAlchemy URL of the store. Unset: SQLite at <data_dir>/ca.db (WAL mode). PostgreSQL: "
        "postgresql+psycopg://user@host/db.",
        _database_url,
        example="postgresql+psycopg://ca@db.internal/ca",
    )
    key_passphrase: bytes | None = field(
        default=None,
        repr=False,
        metadata={
            "setting": SettingInfo(
                "The passphrase that encrypts the CA private keys: CA_KEY_PASSPHRASE, or "
                "CA_KEY_PASSPHRASE_FILE naming a file that holds it. Environment only.",
                secret=True,
            )
        },
    )
    public_url: str = _setting(
        "http://127.0.0.1:8000",
        "The base URL clients reach this service at. It is written into every certificate (CRL "
        "Distribution Point, AIA caIssuers and OCSP), so choose it before issuing.",
        _public_url,
    )
    revocation_url: str | None = _setting(
        None,
        "The base URL written into certificates for the CRL Distribution Point, AIA caIssuers "
        "and OCSP (the service answers /ca/<name>/crl, /ca/<name>/ca.cer and /ocsp). Unset: "
        "public_url. Make it http when public_url is https (for ACME): the CA/Browser Forum "
        "requirements (7.1.2.7.7, 7.1.2.11.2) ask for http, and clients rarely fetch "
        "revocation over TLS, whose own certificate they would then have to check first.",
        _optional_public_url,
        example="http://ca.example.test",
    )
    default_authority: str | None = _setting(
        None,
        "Issuing authority used when a request names none (unset: the one marked default in "
        "the store).",
        _optional_text,
        example="default",
    )
    crl_next_update_hours: int = _setting(
        24,
        "Hours from a CRL's thisUpdate to its nextUpdate (1 to 744). A new CRL is also "
        "published at every revocation, and when half of this period has passed.",
        _int(1, 24 * 31),
    )
    crl_shards: int = _setting(
        0,
        "CRL partitioning (0 to 4096; 0 or 1: off). With N of 2 or more, each new leaf "
        "certificate's CRL Distribution Point names one of N shard CRLs, /ca/<name>/crl/<k> "
        "(k from 1 to N, chosen from its serial and stored with it, so it never moves even when "
        "N changes); the full CRL still lists every revocation. See docs/crl.md.",
        _int(0, 4096),
    )
    crl_deltas: bool = _setting(
        False,
        "Delta CRLs (RFC 5280 5.2.4), re-signed after every revocation at /ca/<name>/crl/delta "
        "(and /ca/<name>/crl/<k>/delta per shard); complete CRLs and new certificates then "
        "carry a Freshest CRL pointer to them. See docs/crl.md.",
        _bool,
    )
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR.", _log_level)
    bind: str = _setting(
        "127.0.0.1:8000",
        "HTTP serving (gunicorn): the HOST:PORT to listen on; loopback, so that a first start "
        "exposes nothing (`ca-service serve --bind`).",
        _bind,
    )
    workers: int = _setting(
        0,
        "gunicorn worker processes, 1 to 64, or 0 for one per CPU, at least 2 (`serve "
        "--workers`). Python's work here is CPU-bound under one lock per process, so one process "
        "per core does the most; the threads overlap the waits (bench/PROFILES.md).",
        _int(0, 64),
    )
    threads: int = _setting(
        16,
        "request threads per gunicorn worker, 1 to 64. Concurrent issuances of one worker share "
        "a commit (group commit), so more threads make larger groups under load.",
        _int(1, 64),
    )
    timeout: int = _setting(
        30, "gunicorn worker timeout in seconds, 1 to 3600 (`serve --timeout`).", _int(1, 3600)
    )
    max_body_bytes: int = _setting(
        64 * 1024,
        "Largest request body in bytes (1024 to 16 MiB); a larger one is refused with 413.",
        _int(1024, 16 << 20),
    )
    ocsp_next_update_minutes: int = _setting(
        60,
        "OCSP: answers are good for this many minutes (5 to 10080) and re-signed when half of "
        "it has passed.",
        _int(5, 7 * 24 * 60),
    )
    ocsp_responder_days: int = _setting(
        7,
        "Life in days (1 to 90) of a delegated OCSP responder certificate; it is replaced when "
        "two thirds have passed.",
        _int(1, 90),
    )
    ocsp_sign_with_ca: bool = _setting(
        False,
        "Sign OCSP answers with the CA key itself instead of a delegated responder.",
        _bool,
    )
    # -- CA key backend (issue 16): where the CA private keys live and sign.
    key_backend: str = _setting(
        "database",
        '"database": the CA and OCSP responder keys as passphrase-encrypted PKCS#8 in the '
        "database, so that every replica of one database signs with them (key files an older "
        "store made in <data_dir>/keys are copied in at start). "
        '"file": the same encrypted PKCS#8 as files in <data_dir>/keys, one node only (keeps '
        "the keys out of database backups). Both need the key passphrase. "
        '"pkcs11": keys made and kept inside a PKCS#11 token (HSM, cloud KMS, YubiHSM, '
        "SoftHSM), which signs every certificate, CRL and OCSP answer; see docs/key-ceremony.md "
        "and docs/replicas.md.",
        lambda key, value: _choice(key, value, ("database", "file", "pkcs11")),
    )
    pkcs11_module: str | None = _setting(
        None,
        "key_backend = pkcs11: path of the token vendor's PKCS#11 module (a shared library).",
        _optional_text,
        example="/usr/lib/softhsm/libsofthsm2.so",
    )
    pkcs11_token_label: str | None = _setting(
        None,
        "key_backend = pkcs11: the label of the token that holds the CA keys.",
        _optional_text,
        example="ca-service",
    )
    pkcs11_pin_file: Path | None = _setting(  # noqa: RUF009 (returns a dataclasses.field)
        None,
        "key_backend = pkcs11: a file holding the token's user PIN (mode 0600). The PIN itself "
        "is never a setting of this file nor a command-line option; CA_PKCS11_PIN in the "
        "environment wins over this file.",
        lambda key, value: Path(str(value)) if value else None,
        example="/run/secrets/pkcs11-pin",
    )
    pkcs11_pin: bytes | None = field(
        default=None,
        repr=False,
        metadata={
            "setting": SettingInfo(
                "The token's user PIN (key_backend = pkcs11): CA_PKCS11_PIN, or "
                "CA_PKCS11_PIN_FILE naming a file that holds it. Environment only.",
                secret=True,
            )
        },
    )
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: load_profiles(None),
        metadata={
            "setting": SettingInfo("Certificate profiles ([profiles.<name>]).", table="profiles")
        },
    )
    tls: bool = _setting(
        False,
        "HTTPS (`ca-service serve --tls`, or tls = true). The default authority issues the "
        "server certificate for tls_hostnames and renews it with a new key when two thirds of "
        "tls_cert_days have passed. The key is kept encrypted with the CA passphrase in "
        "<data_dir>/tls/server.pem.",
        _bool,
    )
    tls_hostnames: tuple[str, ...] = _setting(
        ("localhost", "127.0.0.1"),
        "DNS names and IP addresses of the HTTPS certificate; the first is also the CN. In the "
        "environment, comma-separated: CA_TLS_HOSTNAMES=localhost,127.0.0.1.",
        _hostnames_setting,
    )
    tls_cert_days: int = _setting(
        30, "Life in days of the HTTPS certificate (1 to 397).", _int(1, 397)
    )
    tls_client_auth: str = _setting(
        "optional",
        'Client certificates (mutual TLS): "optional" asks for one and still accepts bearer '
        'tokens; "required" refuses a connection without one; "off" never asks.',
        _client_auth,
    )
    # Ordered [[mtls]] rules mapping a client certificate to a role and policy; first match wins.
    mtls_rules: tuple[MTLSRule, ...] = field(
        default=(),
        metadata={"setting": SettingInfo("Mutual TLS rules ([[mtls]]).", table="mtls")},
    )

    # ------------------------------------------------------------------ ACME (RFC 8555)
    acme_require_eab: bool = _setting(
        True,
        "ACME: new accounts must be bound to an External Account Binding key (made with "
        "`ca-service acme eab create` or POST /api/v1/acme/eab), whose policy they inherit.",
        _bool,
    )
    acme_default_allowed_names: tuple[str, ...] = _setting(
        (),
        "ACME without EAB: the name patterns every account may order (like a token's "
        "allowed_names: host, *.domain, CIDR). Empty: such accounts may order nothing. In the "
        "environment, comma-separated.",
        _patterns,
    )
    acme_default_profile: str = _setting(
        "server",
        "ACME: the profile of certificates an order does not name one for.",
        _optional_text,
    )
    acme_terms_of_service: str | None = _setting(
        None,
        "ACME: URL of the terms of service (directory meta termsOfService).",
        _optional_url,
        example="https://ca.example.test/terms",
    )
    acme_website: str | None = _setting(
        None,
        "ACME: URL of a page about this CA (directory meta website).",
        _optional_url,
        example="https://ca.example.test/",
    )
    acme_default_allow_wildcards: bool = _setting(
        False,
        "ACME without EAB: whether accounts may order wildcard names (by dns-01 only) that "
        "acme_default_allowed_names cover.",
        _bool,
    )
    acme_caa_identities: tuple[str, ...] = _setting(
        (),
        "ACME: the issuer domain names a CAA record must name to allow this CA (RFC 8659). "
        "Empty: the host of public_url. In the environment, comma-separated.",
        _words,
    )
    acme_http01_port: int = _setting(
        80, "ACME: the port http-01 validation connects to (1 to 65535).", _int(1, 65535)
    )
    acme_tlsalpn01_port: int = _setting(
        443, "ACME: the port tls-alpn-01 validation connects to (1 to 65535).", _int(1, 65535)
    )
    acme_dns_resolver: str | None = _setting(
        None,
        "ACME: HOST:PORT of the DNS server used for A/AAAA, TXT and CAA lookups during "
        "validation. Unset: the system's resolvers.",
        _resolver,
        example="127.0.0.1:53",
    )
    acme_validation_timeout_seconds: int = _setting(
        5,
        "ACME: timeout of each network step of a validation (connect, read, DNS), 1 to 30.",
        _int(1, 30),
    )
    acme_validation_attempts: int = _setting(
        3, "ACME: tries of a failing validation before it is invalid (1 to 5).", _int(1, 5)
    )
    acme_order_lifetime_hours: int = _setting(
        24 * 7,
        "ACME: hours an order and its pending authorizations live (1 to 720).",
        _int(1, 720),
    )
    acme_authz_reuse_hours: int = _setting(
        24 * 30,
        "ACME: hours a valid authorization is reused for new orders of the same account "
        "(0 to 720; 0: never reused).",
        _int(0, 720),
    )
    acme_orders_per_hour: int = _setting(
        300,
        "ACME: new orders one account may place per hour (1 to 100000); more answer "
        "rateLimited with Retry-After.",
        _int(1, 100_000),
    )
    acme_failed_validations_per_hour: int = _setting(
        60,
        "ACME: failed validations one account may cause per hour (1 to 100000); more answer "
        "rateLimited with Retry-After.",
        _int(1, 100_000),
    )
    acme_nonce_lifetime_seconds: int = _setting(
        3600, "ACME: seconds a Replay-Nonce stays usable (60 to 86400).", _int(60, 86400)
    )

    # ------------------------------------------------------------------ OIDC provisioners
    oidc_allow_http_issuers: bool = _setting(
        False,
        "OIDC: accept provisioners whose issuer is plain http. For tests only: an attacker on "
        "the path could then mint tokens; the service logs a warning at start.",
        _bool,
    )
    oidc_leeway_seconds: int = _setting(
        60,
        "OIDC: clock skew allowed when checking exp, nbf and iat of an ID token (0 to 300).",
        _int(0, 300),
    )
    oidc_jwks_cache_seconds: int = _setting(
        300, "OIDC: seconds an issuer's JWKS is cached (10 to 86400).", _int(10, 86400)
    )
    oidc_jwks_refetch_seconds: int = _setting(
        30,
        "OIDC: the shortest time between two fetches of one JWKS when a token names an "
        "unknown kid (1 to 3600), so that forged kids cannot make us hammer the issuer.",
        _int(1, 3600),
    )

    # ------------------------------------------------------------------ admin web UI
    ui_session_idle_minutes: int = _setting(
        30,
        "Admin UI (/ui/): a session unused for this many minutes ends (1 to 1440); signing in "
        "again needs the token.",
        _int(1, 1440),
    )
    ui_session_max_hours: int = _setting(
        12,
        "Admin UI: a session ends this many hours after sign-in however busy it is (1 to 168).",
        _int(1, 168),
    )

    # ------------------------------------------------------------------ observability (issue 14)
    log_format: str = _setting(
        "text",
        '"text": plain lines. "json": one JSON object per line (time, level, request_id, '
        "actor, action, outcome, latency_ms, ...) for the application log and gunicorn's "
        "access and error logs alike; see docs/operations.md.",
        lambda key, value: _choice(key, value, ("text", "json")),
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "Addresses or CIDR networks of the proxies in front of the service (a load balancer). "
        "Only a request arriving from one of them may set its X-Request-Id (letters, digits, "
        "._- and at most 64 characters); anyone else's is replaced by a new id. In the "
        "environment, comma-separated.",
        _networks,
    )
    metrics_enabled: bool = _setting(
        False,
        "Serve Prometheus metrics at GET /metrics on the main port (off: 404). Protect it "
        "with metrics_token (CA_METRICS_TOKEN or CA_METRICS_TOKEN_FILE, a bearer token), or "
        "keep the port private.",
        _bool,
    )
    metrics_token: bytes | None = _secret_setting(
        "The bearer token GET /metrics requires (unset: none): CA_METRICS_TOKEN, or "
        "CA_METRICS_TOKEN_FILE naming a file that holds it. Environment only."
    )
    metrics_expiry_leaves: int = _setting(
        10,
        "ca_certificate_expiry_seconds reports the CA certificates and this many of the "
        "soonest-expiring valid leaves (0 to 1000), which bounds its series.",
        _int(0, 1000),
    )
    webhook_urls: tuple[str, ...] = _setting(
        (),
        "URLs that receive a signed JSON POST on certificate.issued, certificate.revoked and "
        "certificate.expiring events (needs CA_WEBHOOK_SECRET or CA_WEBHOOK_SECRET_FILE). In "
        "the environment, comma-separated.",
        _urls,
    )
    webhook_secret: bytes | None = _secret_setting(
        "The HMAC-SHA256 key that signs webhook bodies (X-CA-Signature): CA_WEBHOOK_SECRET, "
        "or CA_WEBHOOK_SECRET_FILE naming a file that holds it. Environment only."
    )
    webhook_expiry_days: int = _setting(
        14,
        "A certificate.expiring event is sent once per valid leaf whose notAfter is within "
        "this many days (1 to 365).",
        _int(1, 365),
    )
    webhook_attempts: int = _setting(
        6,
        "Tries of one webhook delivery (1 to 20); the waits between them double from "
        "webhook_backoff_seconds.",
        _int(1, 20),
    )
    webhook_backoff_seconds: int = _setting(
        2, "The wait before the first retry of a webhook (1 to 3600).", _int(1, 3600)
    )
    webhook_timeout_seconds: int = _setting(
        10, "Timeout of one webhook attempt in seconds (1 to 120).", _int(1, 120)
    )
    webhook_queue_size: int = _setting(
        1000,
        "Events waiting per webhook URL and worker (1 to 100000); when full, new events are "
        "dropped (logged, and counted in ca_webhook_events_dropped_total): issuance never waits.",
        _int(1, 100_000),
    )
    expiry_check_seconds: int = _setting(
        600,
        "How often each worker looks for certificates to send certificate.expiring for "
        "(1 to 86400; only with webhook_urls).",
        _int(1, 86400),
    )

    @property
    def worker_count(self) -> int:
        """``workers``, with 0 resolved to one per CPU (at least 2, at most 64)."""
        if self.workers:
            return self.workers
        return max(2, min(64, os.cpu_count() or 2))

    @property
    def certificate_url(self) -> str:
        """The base of the revocation and caIssuers URLs that certificates carry."""
        return self.revocation_url or self.public_url

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


def setting_fields() -> tuple[tuple[Field[Any], SettingInfo], ...]:
    """The fields of :class:`Settings` with their definitions, in declaration order."""
    defined = []
    for f in fields(Settings):
        info = f.metadata.get("setting")
        if not isinstance(info, SettingInfo):
            raise TypeError(f"Settings.{f.name} has no SettingInfo: define it with _setting()")
        defined.append((f, info))
    return tuple(defined)


_PLAIN_KEYS = tuple(f.name for f, info in setting_fields() if info.plain)
_SECRET_KEYS = tuple(f.name for f, info in setting_fields() if info.secret)


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

    config_file = env.get(CONFIG_FILE_ENV)
    if config_file:
        file_values = _read_toml(Path(config_file))
        profiles_raw = file_values.pop("profiles", None)
        mtls_raw = file_values.pop("mtls", None)
        for key in file_values:
            if key not in _PLAIN_KEYS:
                hint = " (secrets belong in the environment)" if key in _SECRET_KEYS else ""
                raise ConfigError(f"{config_file}: unknown setting {key!r}{hint}")
        values.update(file_values)

    known_env = {ENV_PREFIX + k.upper() for k in (*_PLAIN_KEYS, *_SECRET_KEYS)}
    known_env |= {ENV_PREFIX + k.upper() + "_FILE" for k in _SECRET_KEYS}
    known_env.add(CONFIG_FILE_ENV)
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

    secrets = {key: _secret(env, key) for key in _SECRET_KEYS}
    settings = _build(values, secrets, profiles_raw)
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


def _build(
    values: dict[str, Any], secrets: Mapping[str, bytes | None], profiles_raw: Any
) -> Settings:
    kwargs: dict[str, Any] = dict(secrets)
    for f, info in setting_fields():
        if info.parse is not None and f.name in values:
            value = info.parse(f.name, values[f.name])
            if value is not None:
                kwargs[f.name] = value
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


# ---------------------------------------------------------------------------- the example file

_EXAMPLE_HEADER = """\
ca-service settings. Point CA_CONFIG_FILE at a copy of this file; every key may also be given as
an environment variable CA_<KEY> (upper case), which wins over the file. Unknown keys stop the
service at start. Secrets never go here: {secrets} in the environment.

Generated from ca_service/config.py: python -m ca_service.config --example"""

_MTLS_EXAMPLE = """\
Mutual TLS rules, tried in order; the first that matches a client certificate gives it a role
(admin, issuer or reader) and, for issuer, a policy with the same keys as a token's
(allowed_names, allowed_subjects, profiles, max_validity_days, authorities, allow_wildcards).
Only valid client and peer certificates of this service authenticate. A certificate that
matches no rule has no role: it may only renew itself (POST /api/v1/certificates/<serial>/renew).
  match = "subject:CN=ops,O=Acme"       the RFC 4514 subject, exactly
  match = "san:*.ci.example.test"       any SAN matching a pattern (host, *.domain, CIDR, *@domain)
  match = "profile:peer"                the certificate's profile (client or peer)
  match = "extension:1.3.6.1.4.1.99.1"  the certificate carries this extension
issued_by = "<authority>" and certificate_profile = "client" (or "peer") bind a rule to the
certificates one authority issues under one profile. A SAN is checked against every caller's
allowed_names, so san: rules may stand alone; subject:, extension: (and profile:, which needs
issued_by only) say nothing of who asked for the certificate and are refused at start unbound.
[[mtls]]
match = "san:*.ci.example.test"
role = "issuer"
allowed_names = ["*.ci.example.test"]
max_validity_days = 30

[[mtls]]
match = "subject:CN=ops"
issued_by = "default"
certificate_profile = "client"
role = "reader\""""

_PROFILES_EXAMPLE = """\
Certificate profiles. The three below are built in with these defaults; a table here changes
the keys it names (or defines a new profile, which then needs extended_key_usages).
  extended_key_usages  serverAuth and/or clientAuth
  default_validity_days / max_validity_days  the lifetime given when none is asked / the most
  key_types            allowed leaf keys: {key_types}
  require_dns_or_ip    refuse a certificate without a DNS name or IP address
  allow_wildcards      allow "*.example.test" names (the caller's token must allow them too)"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value.value if hasattr(value, "value") else value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> list[str]:
    """``text`` as TOML comment lines, as it is laid out."""
    return [f"# {line}" if line.strip() else "#" for line in text.splitlines()]


def _wrapped(text: str) -> list[str]:
    """A setting's explanation as comment lines of at most 100 characters."""
    return textwrap.wrap(text, 98, initial_indent="# ", subsequent_indent="# ")


def example_toml() -> str:
    """``config/ca-service.example.toml``: every key with its explanation and its default (built
    from the definitions above, so it always states the defaults the loader applies)."""
    secrets = " or ".join(
        f"{ENV_PREFIX}{f.name.upper()} or {ENV_PREFIX}{f.name.upper()}_FILE"
        for f, info in setting_fields()
        if info.secret
    )
    out = [*_comment(_EXAMPLE_HEADER.format(secrets=secrets)), ""]
    for f, info in setting_fields():
        if not info.plain:
            continue
        out += _wrapped(info.help)
        if f.default is None:
            out.append(f"# {f.name} = {_toml_value(info.example)}")
        else:
            out.append(f"{f.name} = {_toml_value(f.default)}")
        out.append("")
    out += [*_comment(_MTLS_EXAMPLE), ""]
    from ca_service.domain import KeyType

    key_types = " ".join(k.value for k in KeyType)
    out += _comment(_PROFILES_EXAMPLE.format(key_types=key_types))
    for name, profile in load_profiles(None).items():
        out.append(f"[profiles.{name}]")
        for key in (f.name for f in fields(Profile) if f.name != "name"):
            out.append(f"{key} = {_toml_value(getattr(profile, key))}")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    """``python -m ca_service.config --example``: print the example settings file."""
    if argv != ["--example"]:
        print("usage: python -m ca_service.config --example", file=sys.stderr)
        return 2
    sys.stdout.write(example_toml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
