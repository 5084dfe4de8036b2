"""``ca-service probe HOST:PORT``: check a live TLS endpoint against this CA.

The probing itself is ``ca_service.tls.probing``; this module only turns a target and options
into a probe and its report into text, JSON and an exit code.

Exit codes: 0 the endpoint is fine; 1 problems found (invalid chain, revoked, wrong name,
expires within --warn-days) or a refused request; 2 usage; 3 no TLS session could be made
(DNS, TCP, handshake) or a configuration problem.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import click
from cryptography import x509

from ca_service.cli.context import _settings
from ca_service.cli.output import handle_errors
from ca_service.errors import NotFound
from ca_service.tls.probing import (
    DEFAULT_WARN_DAYS,
    ProbeConnectError,
    format_report,
)
from ca_service.tls.probing import probe as run_probe
from ca_service.wiring import build_authority


def parse_target(target: str) -> tuple[str, int]:
    """HOST:PORT, with IPv6 literals in brackets ([::1]:443)."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise click.BadParameter("expected HOST:PORT, e.g. example.test:443", param_hint="TARGET")
    port = int(port_text)
    if not 0 < port < 65536:
        raise click.BadParameter(f"port {port} is out of range", param_hint="TARGET")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise click.BadParameter(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise click.BadParameter("write IPv6 addresses in brackets: [::1]:443")
    return host, port


def _local_trust() -> tuple[list[str], list[bytes]]:
    """Roots and current CRLs of every authority this ca-service holds.

    Only self-signed roots become trust anchors: a server that fails to send its intermediate
    must fail here as it fails for every other client. CRLs come from all authorities, roots
    included, so that the intermediate is checked too (CRL_CHECK_ALL).
    """
    ca = build_authority(_settings())
    try:
        records = ca.list_authorities()
        if not records:
            raise NotFound("no certificate authority exists yet: run 'ca-service init' or --ca")
        # Self-signed certificates from every authority's chain: our roots, and the external
        # root above an imported intermediate when its chain was given.
        roots: dict[str, str] = {}
        for r in records:
            for pem in ca.chain_pem(r.name):
                cert = x509.load_pem_x509_certificate(pem.encode())
                if cert.issuer == cert.subject:
                    roots.setdefault(pem, pem)
        crls = []
        for r in records:
            stored = ca.current_crl(r.name)
            if stored is not None:
                crls.append(stored.der)
    finally:
        ca.db.dispose()
    return list(roots), crls


@click.command()
@click.argument("target", metavar="HOST:PORT")
@click.option("--servername", help="Name to send as SNI and to check (default: HOST).")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust these PEM certificates instead of this ca-service's roots.",
)
@click.option(
    "--crl",
    "crl_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CRL (DER or PEM) to check against; repeatable. Default with --ca: none.",
)
@click.option(
    "--warn-days",
    type=click.IntRange(0, 3650),
    default=DEFAULT_WARN_DAYS,
    show_default=True,
    help="Fail when the certificate expires within this many days.",
)
@click.option(
    "--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True, help="Seconds."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def probe(
    target: str,
    servername: str | None,
    ca_file: Path | None,
    crl_files: tuple[Path, ...],
    warn_days: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Connect to HOST:PORT over TLS 1.2+ and check the certificate chain it presents.

    Verifies the chain with OpenSSL against this CA's roots (or --ca), checks revocation with
    the current CRLs (or --crl), the host name, days to expiry, protocol and cipher. Exit code
    0 only when all is well; 1 when problems were found; 3 when no connection could be made.
    """
    host, port = parse_target(target)
    handle_errors(_run)(host, port, servername, ca_file, crl_files, warn_days, timeout, as_json)


def _run(
    host: str,
    port: int,
    servername: str | None,
    ca_file: Path | None,
    crl_files: tuple[Path, ...],
    warn_days: int,
    timeout: float,
    as_json: bool,
) -> None:
    if ca_file is not None:
        trust: list[str] | bytes = ca_file.read_bytes()
        crls = [p.read_bytes() for p in crl_files]
    else:
        trust, crls = _local_trust()
        crls.extend(p.read_bytes() for p in crl_files)
    try:
        report = run_probe(
            host,
            port,
            trust_pem=trust,
            crls=crls,
            servername=servername,
            warn_days=warn_days,
            timeout=timeout,
        )
    except (ProbeConnectError, TimeoutError) as exc:
        if as_json:
            click.echo(json.dumps({"host": host, "port": port, "ok": False, "error": str(exc)}))
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    click.echo(report.dumps() if as_json else format_report(report))
    sys.exit(0 if report.ok else 1)
