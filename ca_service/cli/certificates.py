"""Commands on certificates: issue, renew, list, show, revoke, release-hold, crl and export."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.cli.context import _actor, _authority, _database, _require_schema
from ca_service.cli.output import certificate_json, handle_errors
from ca_service.core.catalog import Catalog
from ca_service.core.facade import Core
from ca_service.domain import (
    CertificateFilter,
    CertificateRecord,
    CertStatus,
    IssuedCertificate,
    KeyType,
    RevocationReason,
)
from ca_service.errors import BadRequest, ConfigError

KEY_TYPES = [k.value for k in KeyType]
REASONS = [r.value for r in RevocationReason]
# renew --all-due reads the certificates that may be due this many at a time.
RENEW_PAGE_SIZE = 1000


# ---------------------------------------------------------------------------- issue


@click.command()
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
        data = certificate_json(issued.record)
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


@click.command()
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


def _renewal_candidates(ca: Core, now: dt.datetime, page_size: int) -> Iterator[CertificateRecord]:
    """Every certificate ``renew --all-due`` should consider, the most due first, a page per
    read transaction (none is held while renewing); those issued by this run are left out."""
    up_to_id = ca.catalog.last_certificate_id()
    after = None
    while True:
        page, after = ca.catalog.renewal_candidates(
            now, up_to_id=up_to_id, after=after, limit=page_size
        )
        yield from page
        if after is None:
            return


# ---------------------------------------------------------------------------- list / show


@click.command("list")
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
    # Only the catalog, not the whole core: listing needs no CA key (nor its passphrase).
    catalog = Catalog(db)
    records = catalog.with_acme_orders(catalog.collect_certificates(flt, now))
    if as_json:
        click.echo(json.dumps([certificate_json(r, now) for r in records], indent=2))
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


@click.command()
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
    data = certificate_json(r)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key:20} {value if value is not None else '-'}")


# ---------------------------------------------------------------------------- revoke / crl


@click.command()
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


@click.command("release-hold")
@click.argument("serial")
@click.option("--authority")
@handle_errors
def release_hold(serial: str, authority: str | None) -> None:
    """Take a certificate off hold: it is valid again and leaves the next CRL."""
    ca = _authority()
    ca.load_keys()
    r = ca.release_hold(serial, _actor(), authority=authority)
    click.echo(f"{r.serial}: released from hold; status {r.status}")


@click.command()
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


@click.command()
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
