"""The ``ca-service`` command line. It calls the core and never imports the web layer.

Every failure is one line on stderr and a non-zero exit: 1 for a refused or bad request, 2 for
usage errors (click's own), 3 for configuration or start-up problems.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ca_service.authority import CertificateAuthority, HierarchySpec
from ca_service.config import Settings, check_mtls_authorities, load_settings
from ca_service.domain import (
    Actor,
    AuthorityRecord,
    CallerPolicy,
    CertificateRecord,
    CertStatus,
    IssuedCertificate,
    KeyType,
    RevocationReason,
)
from ca_service.errors import BadRequest, CAError, ConfigError, Unavailable
from ca_service.policy import authorization
from ca_service.policy.names import NameConstraintsSpec
from ca_service.storage import migrate
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.repositories import CertificateFilter, CertificateRepository
from ca_service.tokens import Role, TokenService, build_policy
from ca_service.wiring import build_authority, open_database

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ca_service.cli")

KEY_TYPES = [k.value for k in KeyType]
REASONS = [r.value for r in RevocationReason]
# renew --all-due reads the certificates that may be due this many at a time.
RENEW_PAGE_SIZE = 1000


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(identity=f"cli:{user}")


def _settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if obj is None:
        obj = load_settings()
        ctx.find_root().obj = obj
    assert isinstance(obj, Settings)
    return obj


def _database() -> Database:
    """Open the database for this command; its connections are closed when the command ends."""
    db = open_database(_settings())
    click.get_current_context().call_on_close(db.dispose)
    return db


def _authority(*, migrate_first: bool = False) -> CertificateAuthority:
    settings = _settings()
    settings.require_passphrase()
    return build_authority(settings, db=_database(), apply_migrations=migrate_first)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn every failure into one clear line; a traceback is never what a user should see."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, Unavailable) as exc:
            _fail(exc.detail, 3)
        except CAError as exc:
            _fail(exc.detail, 1)
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unknown error"
            _fail(f"the database is unreachable or refused the operation: {reason}", 3)
        except SQLAlchemyError as exc:
            log.debug("database error", exc_info=True)
            _fail(f"database error ({type(exc).__name__}); nothing was changed", 3)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", 1)
        return None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ca-service")
def cli() -> None:
    """ca-service: a self-hosted certificate authority.

    Settings come from CA_* environment variables (see config/ca-service.example.toml); the CA
    keys are encrypted with CA_KEY_PASSPHRASE or the file named by CA_KEY_PASSPHRASE_FILE.
    """
    logging.basicConfig(level=os.environ.get("CA_LOG_LEVEL", "WARNING").upper())


# ---------------------------------------------------------------------------- init


@cli.command()
@click.option("--name", default="default", show_default=True, help="Name of the issuing CA.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ecdsa-p256", show_default=True)
@click.option(
    "--root-subject", help="Root subject as an RFC 4514 string, e.g. 'CN=Acme Root,O=Acme'."
)
@click.option("--subject", "inter_subject", help="Issuing CA subject (RFC 4514).")
@click.option("--root-days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@click.option("--intermediate-days", type=click.IntRange(1, 36500), default=1825, show_default=True)
@click.option(
    "--permit",
    multiple=True,
    help="Name constraint to permit (example.test, 10.0.0.0/8, @example.test). Repeatable.",
)
@click.option("--exclude", multiple=True, help="Name constraint to exclude. Repeatable.")
@click.option(
    "--import-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Adopt this CA certificate instead of creating one.",
)
@click.option(
    "--import-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key of --import-cert (PEM or DER).",
)
@click.option(
    "--import-key-passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--import-chain",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM issuers above an imported intermediate.",
)
@click.option("--exist-ok", is_flag=True, help="Succeed without change when the authority exists.")
@handle_errors
def init(
    name: str,
    key_type: str,
    root_subject: str | None,
    inter_subject: str | None,
    root_days: int,
    intermediate_days: int,
    permit: tuple[str, ...],
    exclude: tuple[str, ...],
    import_cert: Path | None,
    import_key: Path | None,
    import_key_passphrase_file: Path | None,
    import_chain: Path | None,
    exist_ok: bool,
) -> None:
    """Create (or adopt) a root CA and an issuing intermediate, and the database."""
    ca = _authority(migrate_first=True)
    # Open every existing key first: a wrong passphrase must stop init before it writes new keys
    # under that passphrase next to the old ones.
    existing = set(ca.load_keys())
    if name in existing:
        if exist_ok:
            click.echo(f"authority {name!r} exists already; nothing changed")
            _print_authorities(
                [a for a in ca.list_authorities() if a.name in (name, f"{name}-root")]
            )
            return
        raise ConfigError(
            f"authority {name!r} exists already; nothing was changed (see --exist-ok)"
        )
    if import_cert or import_key:
        if not (import_cert and import_key):
            raise BadRequest("--import-cert and --import-key go together")
        passphrase = (
            import_key_passphrase_file.read_bytes().strip() if import_key_passphrase_file else None
        )
        records = ca.import_authority(
            name,
            import_cert.read_bytes(),
            import_key.read_bytes(),
            passphrase,
            import_chain.read_bytes() if import_chain else None,
            _actor(),
            intermediate_days=intermediate_days,
        )
    else:
        spec = HierarchySpec(
            name=name,
            key_type=KeyType(key_type),
            root_subject=_parse_subject(root_subject),
            intermediate_subject=_parse_subject(inter_subject),
            root_days=root_days,
            intermediate_days=intermediate_days,
            constraints=NameConstraintsSpec.parse(permit, exclude),
        )
        # Only after the options are checked, so that a bad option is the one line printed.
        click.echo(f"creating root and issuing CA {name!r} ({key_type}) ...", err=True)
        records = ca.create_hierarchy(spec, _actor())
    ca.load_keys()
    for record in records:
        if not record.is_root:
            ca.generate_crl(record.name)
    _print_authorities(records)


def _parse_subject(text: str | None) -> x509.Name | None:
    if not text:
        return None
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise BadRequest(f"subject {text!r} is not an RFC 4514 name: {exc}") from None
    if not name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        raise BadRequest("a CA subject needs a CN")
    return name


def _print_authorities(records: list[AuthorityRecord]) -> None:
    now = dt.datetime.now(dt.UTC)
    for r in records:
        cert = x509.load_der_x509_certificate(r.cert_der)
        kind = "root" if r.is_root else "issuing"
        default = " (default)" if r.is_default else ""
        click.echo(f"{r.name}{default}: {kind} CA, {r.key_type}")
        click.echo(f"  subject:     {r.subject}")
        click.echo(f"  valid:       {r.not_before:%Y-%m-%d} to {r.not_after:%Y-%m-%d}")
        status = r.status_at(now).value
        if r.revoked_at is not None:
            status += f" ({r.revocation_reason}) at {r.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        click.echo(f"  status:      {status}")
        click.echo(f"  serial:      {cert.serial_number:x}")
        fp = cert.fingerprint(hashes.SHA256()).hex()
        click.echo(f"  sha256:      {fp}")


# ---------------------------------------------------------------------------- issue


@cli.command()
@click.option(
    "--csr",
    "csr_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PKCS#10 request (PEM or DER).",
)
@click.option("--cn", help="Common name (a host name is also added to the SANs).")
@click.option(
    "--san",
    multiple=True,
    help="Subject alternative name: host, IP, e-mail or URI, optionally prefixed "
    "dns:/ip:/email:/uri:. Repeatable.",
)
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="ecdsa-p256",
    show_default=True,
    help="Key to generate when no --csr is given.",
)
@click.option("--profile", default="server", show_default=True)
@click.option("--days", type=int, help="Validity in days (default: the profile's).")
@click.option("--authority", help="Issuing authority (default: the default one).")
@click.option(
    "--out",
    "out_prefix",
    type=click.Path(path_type=Path),
    help="Write PREFIX.crt, PREFIX.chain.pem (intermediates), PREFIX.fullchain.pem (certificate "
    "and intermediates), PREFIX.root.pem (and PREFIX.key). "
    "Default: the CN or serial, in the current directory.",
)
@click.option(
    "--p12-passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also write PREFIX.p12 protected by this passphrase (generated keys only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@handle_errors
def issue(
    csr_file: Path | None,
    cn: str | None,
    san: tuple[str, ...],
    key_type: str,
    profile: str,
    days: int | None,
    authority: str | None,
    out_prefix: Path | None,
    p12_passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Issue a certificate from a CSR, or with a key pair generated here (never stored)."""
    ca = _authority()
    ca.load_keys()
    if csr_file:
        if cn:
            raise BadRequest("--cn comes from the CSR; use --san to add names")
        if p12_passphrase_file:
            raise BadRequest("a PKCS#12 file needs the private key; it is only for generated keys")
        issued = ca.issue_from_csr(
            csr_file.read_bytes(),
            _actor(),
            profile=profile,
            validity_days=days,
            authority=authority,
            extra_names=san,
        )
    else:
        if not cn and not san:
            raise BadRequest("give --csr, or --cn and/or --san for a generated key")
        p12_pass = p12_passphrase_file.read_bytes().strip() if p12_passphrase_file else None
        issued = ca.issue_with_new_key(
            _actor(),
            common_name=cn,
            names=san,
            key_type=KeyType(key_type),
            profile=profile,
            validity_days=days,
            authority=authority,
            pkcs12_passphrase=p12_pass,
        )
    written = _write_issued(issued, out_prefix)
    if as_json:
        data = _record_json(issued.record)
        data["files"] = [str(p) for p in written]
        click.echo(json.dumps(data, indent=2))
        return
    r = issued.record
    click.echo(
        f"issued {r.serial} for {', '.join(r.sans) or r.common_name} (profile {r.profile}, "
        f"valid until {r.not_after:%Y-%m-%d %H:%M} UTC)"
    )
    for path in written:
        click.echo(f"  wrote {path}")


def _write_issued(issued: IssuedCertificate, prefix: Path | None) -> list[Path]:
    stem = prefix or Path(
        (issued.record.common_name or issued.record.serial).replace("*", "_wildcard")
    )
    # As certbot names them: chain = the intermediates (no root), fullchain = leaf + chain.
    files: list[tuple[Path, bytes, int]] = [
        (stem.with_name(stem.name + ".crt"), issued.certificate_pem.encode(), 0o644),
        (stem.with_name(stem.name + ".chain.pem"), "".join(issued.chain_pem).encode(), 0o644),
        (stem.with_name(stem.name + ".fullchain.pem"), issued.fullchain_pem.encode(), 0o644),
    ]
    if issued.root_pem is not None:
        files.append((stem.with_name(stem.name + ".root.pem"), issued.root_pem.encode(), 0o644))
    if issued.private_key_pem:
        files.append((stem.with_name(stem.name + ".key"), issued.private_key_pem.encode(), 0o600))
    if issued.pkcs12:
        files.append((stem.with_name(stem.name + ".p12"), issued.pkcs12, 0o600))
    for path, _, _ in files:
        if path.exists():
            raise ConfigError(
                f"{path} exists; not overwriting it (the certificate {issued.record.serial} was "
                "issued and stored: use 'ca-service show' to get it, or pass --out)"
            )
    written = []
    for path, data, mode in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        written.append(path)
    return written


@cli.command()
@click.argument("serials", nargs=-1)
@click.option("--all-due", is_flag=True, help="Renew every valid certificate that is due.")
@click.option("--force", is_flag=True, help="Renew even with more than a third of its life left.")
@click.option(
    "--csr",
    "csr_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="New key: a CSR with the same names (one serial only).",
)
@click.option("--days", type=int, help="Validity in days (default: the profile's).")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write <name>.<serial>.crt and chain files.",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 100_000),
    default=RENEW_PAGE_SIZE,
    hidden=True,
    help="Certificates read per query with --all-due.",
)
@handle_errors
def renew(
    serials: tuple[str, ...],
    all_due: bool,
    force: bool,
    csr_file: Path | None,
    days: int | None,
    out_dir: Path,
    page_size: int,
) -> None:
    """Renew certificates: same names, profile and key (or --csr's key); the old record links
    to the new one. A certificate with more than a third of its life left is skipped."""
    if bool(serials) == all_due:
        raise BadRequest("name one or more serials, or --all-due")
    if csr_file and len(serials) != 1:
        raise BadRequest("--csr renews exactly one serial")
    ca = _authority()
    ca.load_keys()
    now = ca.clock.now()
    targets: Iterable[CertificateRecord]
    if all_due:
        targets = _renewal_candidates(ca, now, page_size)
    else:
        targets = [ca.get_certificate(serial) for serial in serials]
    renewed = skipped = 0
    for record in targets:
        life = record.not_after - record.not_before
        if not force and record.not_after - now > life / 3:
            skipped += 1
            if not all_due:
                click.echo(
                    f"{record.serial}: skipped, {(record.not_after - now).days} days left "
                    "(more than a third of its life; --force to renew anyway)"
                )
            continue
        issued = ca.renew(
            record.serial,
            _actor(),
            csr=csr_file.read_bytes() if csr_file else None,
            authority=record.authority,
            validity_days=days,
        )
        stem = (record.common_name or record.serial).replace("*", "_wildcard")
        written = _write_issued(issued, out_dir / f"{stem}.{issued.record.serial[:12]}")
        renewed += 1
        click.echo(
            f"{record.serial}: renewed as {issued.record.serial} "
            f"(valid until {issued.record.not_after:%Y-%m-%d}); wrote {written[0]}"
        )
    click.echo(f"renewed {renewed}, skipped {skipped}", err=True)


def _renewal_candidates(
    ca: CertificateAuthority, now: dt.datetime, page_size: int
) -> Iterator[CertificateRecord]:
    """Every certificate ``renew --all-due`` should consider, the most due first, a page per
    read transaction (none is held while renewing); those issued by this run are left out."""
    with unit_of_work(ca.db) as s:
        up_to_id = CertificateRepository(s).last_id()
    after = None
    while True:
        with unit_of_work(ca.db) as s:
            page, after = CertificateRepository(s).renewal_candidates(
                now, up_to_id=up_to_id, after=after, limit=page_size
            )
        yield from page
        if after is None:
            return


# ---------------------------------------------------------------------------- list / show


def _record_json(r: CertificateRecord, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    return {
        "authority": r.authority,
        "serial": r.serial,
        "subject": r.subject,
        "common_name": r.common_name,
        "sans": list(r.sans),
        "key_type": r.key_type,
        "profile": r.profile,
        "not_before": r.not_before.isoformat(),
        "not_after": r.not_after.isoformat(),
        "status": r.status_at(now).value,
        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        "revocation_reason": r.revocation_reason.value if r.revocation_reason else None,
        "fingerprint_sha256": r.fingerprint_sha256,
        "requester": r.requester,
        "created_at": r.created_at.isoformat(),
        "successor": r.successor,
    }


@cli.command("list")
@click.option("--status", type=click.Choice([s.value for s in CertStatus]))
@click.option(
    "--name",
    help="Case-insensitive substring of the common name or a SAN (kind:value, e.g. dns:www).",
)
@click.option(
    "--expiring-within",
    type=click.IntRange(0, None),
    metavar="DAYS",
    help="Only certificates that expire within DAYS days.",
)
@click.option("--authority")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def list_(
    status: str | None,
    name: str | None,
    expiring_within: int | None,
    authority: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored certificates, newest first."""
    db = _database()
    _require_schema(db)
    now = dt.datetime.now(dt.UTC)
    flt = CertificateFilter(
        authority=authority,
        status=CertStatus(status) if status else None,
        name=name,
        expires_before=now + dt.timedelta(days=expiring_within)
        if expiring_within is not None
        else None,
        limit=limit,
    )
    records: list[CertificateRecord] = []
    with unit_of_work(db) as s:
        repo = CertificateRepository(s)
        # A short --name is searched window by window (pages may come back short): go on
        # until the limit is reached or the listing ends, so the command misses nothing.
        while True:
            page, cursor = repo.list(flt, now)
            records += page
            if cursor is None or len(records) >= limit:
                break
            flt = dataclasses.replace(flt, after_id=cursor, limit=limit - len(records))
    if as_json:
        click.echo(json.dumps([_record_json(r, now) for r in records], indent=2))
        return
    if not records:
        click.echo("no certificates match")
        return
    rows = [("SERIAL", "AUTHORITY", "STATUS", "NOT AFTER", "PROFILE", "NAMES")]
    for r in records:
        names = ", ".join(s.split(":", 1)[1] for s in r.sans) or (r.common_name or "")
        rows.append(
            (
                r.serial[:16] + "…",
                r.authority,
                r.status_at(now).value,
                f"{r.not_after:%Y-%m-%d}",
                r.profile,
                names[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _require_schema(db: Any) -> None:
    if migrate.pending(db):
        raise ConfigError("the database schema is behind; run 'ca-service db upgrade'")


@cli.command()
@click.argument("serial")
@click.option("--authority")
@click.option("--pem", is_flag=True, help="Print the certificate PEM only.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def show(serial: str, authority: str | None, pem: bool, as_json: bool) -> None:
    """Show one certificate by serial (hex, colons allowed)."""
    ca = _authority()
    r = ca.get_certificate(serial, authority)
    if pem:
        cert = x509.load_der_x509_certificate(r.der)
        click.echo(cert.public_bytes(serialization.Encoding.PEM).decode(), nl=False)
        return
    data = _record_json(r)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key:20} {value if value is not None else '-'}")


# ---------------------------------------------------------------------------- revoke / crl


@cli.command()
@click.argument("serial")
@click.option(
    "--reason",
    type=click.Choice(REASONS, case_sensitive=False),
    default="unspecified",
    show_default=True,
)
@click.option("--authority")
@handle_errors
def revoke(serial: str, reason: str, authority: str | None) -> None:
    """Revoke a certificate (certificateHold puts it on hold; see release-hold)."""
    ca = _authority()
    ca.load_keys()
    r = ca.revoke(serial, RevocationReason.parse(reason), _actor(), authority=authority)
    click.echo(
        f"{r.serial}: revoked ({r.revocation_reason}) at {r.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
    )


@cli.command("release-hold")
@click.argument("serial")
@click.option("--authority")
@handle_errors
def release_hold(serial: str, authority: str | None) -> None:
    """Take a certificate off hold: it is valid again and leaves the next CRL."""
    ca = _authority()
    ca.load_keys()
    r = ca.release_hold(serial, _actor(), authority=authority)
    click.echo(f"{r.serial}: released from hold; status {r.status}")


@cli.command()
@click.option("--authority", help="Default: the default authority.")
@click.option(
    "--format", "fmt", type=click.Choice(["der", "pem"]), default="pem", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: stdout for PEM).",
)
@handle_errors
def crl(authority: str | None, fmt: str, out: Path | None) -> None:
    """Sign a fresh CRL for an authority and write it."""
    if fmt == "der" and out is None:
        raise BadRequest("DER is binary: pass --out FILE")
    ca = _authority()
    stored = ca.generate_crl(authority)
    data = stored.der
    if fmt == "pem":
        parsed = x509.load_der_x509_crl(data)
        data = parsed.public_bytes(serialization.Encoding.PEM)
    if out:
        out.write_bytes(data)
        click.echo(
            f"CRL #{stored.number} of {stored.authority} written to {out} "
            f"(next update {stored.next_update:%Y-%m-%d %H:%M} UTC)",
            err=True,
        )
    else:
        click.echo(data.decode(), nl=False)


# ---------------------------------------------------------------------------- export / authorities


@cli.command()
@click.argument("what", type=click.Choice(["chain", "root", "cert"]))
@click.option("--authority")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def export(what: str, authority: str | None, out: Path | None) -> None:
    """Export CA certificates as PEM: the issuing CA's chain, its root, or its own certificate."""
    ca = _authority()
    chain = ca.chain_pem(authority)
    text = {"chain": "".join(chain), "root": chain[-1], "cert": chain[0]}[what]
    if out:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def authorities(as_json: bool) -> None:
    """List the authorities this service holds."""
    ca = _authority()
    records = ca.list_authorities()
    now = ca.clock.now()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "parent": r.parent,
                        "is_root": r.is_root,
                        "is_default": r.is_default,
                        "subject": r.subject,
                        "key_type": r.key_type,
                        "not_after": r.not_after.isoformat(),
                        "status": r.status_at(now).value,
                        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                        "revocation_reason": r.revocation_reason.value
                        if r.revocation_reason
                        else None,
                    }
                    for r in records
                ],
                indent=2,
            )
        )
        return
    if not records:
        click.echo("no authorities yet; run 'ca-service init'")
    _print_authorities(records)


@cli.group("authority")
def authority_group() -> None:
    """Actions on one authority (the list is 'ca-service authorities')."""


@authority_group.command("revoke")
@click.argument("name")
@click.option(
    "--reason",
    type=click.Choice([r for r in REASONS if r != "certificateHold"], case_sensitive=False),
    required=True,
    help="RFC 5280 reason; cACompromise when its key is lost or exposed.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def authority_revoke(name: str, reason: str, yes: bool) -> None:
    """Revoke the issuing CA NAME for good: it enters its root's CRL and OCSP answers, it issues
    nothing more, and every certificate it issued stops validating."""
    ca = _authority()
    ca.load_keys()
    if not yes:
        click.confirm(
            f"Revoke authority {name!r} ({reason})? It issues nothing more and every certificate "
            "it issued stops validating. This cannot be undone",
            abort=True,
        )
    r = ca.revoke_authority(name, RevocationReason.parse(reason), _actor())
    click.echo(
        f"authority {r.name}: revoked ({r.revocation_reason}) at "
        f"{r.revoked_at:%Y-%m-%d %H:%M:%S} UTC; listed in the CRL of {r.parent}"
    )


@cli.command("set-default")
@click.argument("name")
@handle_errors
def set_default(name: str) -> None:
    """Make NAME the default issuing authority."""
    _authority().set_default(name, _actor())
    click.echo(f"{name} is now the default authority")


# ---------------------------------------------------------------------------- serve / tokens


@cli.command()
@click.option("--bind", help="HOST:PORT to listen on (default 127.0.0.1:8000, or CA_BIND).")
@click.option("--workers", type=click.IntRange(1, 64), help="gunicorn worker processes.")
@click.option("--timeout", type=click.IntRange(1, 3600), help="Worker timeout in seconds.")
@click.option(
    "--tls",
    is_flag=True,
    default=None,
    help="Serve HTTPS with a server certificate from the default authority (or CA_TLS=true).",
)
@handle_errors
def serve(bind: str | None, workers: int | None, timeout: int | None, tls: bool | None) -> None:
    """Run the HTTP API under gunicorn; on first start, create the CA and an admin token."""
    for key, value in (("CA_BIND", bind), ("CA_WORKERS", workers), ("CA_TIMEOUT", timeout)):
        if value is not None:
            os.environ[key] = str(value)
    if tls:
        os.environ["CA_TLS"] = "true"
    settings = load_settings()
    ca = build_authority(settings, apply_migrations=True)
    if not ca.list_authorities():
        click.echo("first start: creating the root and issuing CA 'default' ...", err=True)
        ca.create_hierarchy(HierarchySpec(), _actor())
        ca.load_keys()
        ca.generate_crl("default")
    ca.load_keys()
    # Here too, so that a bad rule is one line on stderr, not a worker that fails to boot.
    check_mtls_authorities(settings.mtls_rules, {a.name for a in ca.list_authorities()})
    service = TokenService(ca.db)
    if service.count() == 0:
        plain, record = service.create(
            "first admin", Role.ADMIN, CallerPolicy.unrestricted(), _actor()
        )
        click.echo("=" * 72)
        click.echo("First admin token (shown once, stored only as a hash; keep it safe):")
        click.echo(f"  {plain}")
        click.echo(f"  (token id {record.id}; revoke with 'ca-service token revoke {record.id}')")
        click.echo("=" * 72)
    scheme = "http"
    if settings.tls:
        from ca_service.tls.serving import ensure_server_certificate, tls_directory

        cert, _ = ensure_server_certificate(
            ca, settings.tls_hostnames, tls_directory(settings), days=settings.tls_cert_days
        )
        scheme = "https"
        click.echo(
            f"HTTPS certificate for {', '.join(settings.tls_hostnames)} valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; client certificates: "
            f"{settings.tls_client_auth}",
            err=True,
        )
    ca.db.dispose()
    click.echo(f"serving on {scheme}://{settings.bind} ({settings.workers} workers)", err=True)
    sys.stdout.flush()
    # The gunicorn settings are a module of this package (found wherever it is installed),
    # read from the same CA_* environment this process has set above.
    conf = "python:ca_service.gunicorn_conf"
    args = [sys.executable, "-m", "gunicorn", "-c", conf, "ca_service.wsgi:app"]
    # exec: gunicorn's master becomes this process, so SIGTERM reaches it for a graceful stop.
    os.execv(sys.executable, args)  # noqa: S606 (fixed argv, no shell)


@cli.group()
def token() -> None:
    """API tokens: create, list, revoke."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. 'ci-builds'.")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option(
    "--names",
    multiple=True,
    help="Allowed name pattern (issuer): host, *.domain, CIDR, *@domain. Repeatable.",
)
@click.option("--profile", "profiles", multiple=True, help="Allowed profile. Repeatable.")
@click.option("--max-days", type=click.IntRange(1, None), help="Longest validity it may ask for.")
@click.option("--authority", "authorities", multiple=True, help="Allowed authority. Repeatable.")
@click.option("--allow-wildcards", is_flag=True)
@click.option(
    "--subject",
    "subjects",
    multiple=True,
    help="Allowed subject value besides a CN repeating a SAN (issuer): ATTR=glob, e.g. "
    "CN=build-*. Repeatable.",
)
@click.option(
    "--expires", type=click.IntRange(1, 3650), metavar="DAYS", help="Token lifetime in days."
)
@handle_errors
def token_create(
    name: str,
    role: str,
    names: tuple[str, ...],
    profiles: tuple[str, ...],
    max_days: int | None,
    authorities: tuple[str, ...],
    allow_wildcards: bool,
    subjects: tuple[str, ...],
    expires: int | None,
) -> None:
    """Create a token and print it once."""
    ca = _authority()
    r = Role(role)
    policy = build_policy(
        r,
        names=list(names) or None,
        profiles=list(profiles) or None,
        max_validity_days=max_days,
        authorities=list(authorities) or None,
        allow_wildcards=allow_wildcards,
        subjects=list(subjects) or None,
    )
    # The same decision as POST /api/v1/tokens: a token names only profiles and CAs that exist.
    authorization.check_token_targets(
        policy, ca.settings.profiles, {a.name for a in ca.list_authorities()}
    )
    expires_at = ca.clock.now() + dt.timedelta(days=expires) if expires else None
    plain, record = TokenService(ca.db).create(name, r, policy, _actor(), expires_at=expires_at)
    click.echo(plain)
    click.echo(
        f"token id {record.id}, role {record.role}"
        + (f", expires {record.expires_at:%Y-%m-%d}" if record.expires_at else ""),
        err=True,
    )


@token.command("list")
@handle_errors
def token_list() -> None:
    """List tokens (never their secrets)."""
    ca = _authority()
    now = ca.clock.now()
    for t in TokenService(ca.db).list():
        names = ",".join(t.policy.allowed_names or ()) or "-"
        click.echo(f"{t.id}  {t.role.value:7} {t.state(now):8} {t.name}  names={names}")


@token.command("revoke")
@click.argument("token_id")
@handle_errors
def token_revoke(token_id: str) -> None:
    """Revoke a token at once."""
    ca = _authority()
    TokenService(ca.db).revoke(token_id, _actor())
    click.echo(f"token {token_id} revoked")


# ---------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply pending Alembic migrations."""
    database = _database()
    waiting = migrate.pending(database)
    migrate.upgrade(database)
    click.echo(
        f"applied {len(waiting)} migration(s); schema is current"
        if waiting
        else "schema is current"
    )


def main() -> None:
    try:
        cli.main(prog_name="ca-service", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["cli", "main"]

from ca_service.tls.cli import probe  # noqa: E402  (registered last: it imports this module lazily)

cli.add_command(probe)
