"""``ca-service request``: get a certificate from a remote ca-service, where it is needed.

The library is ``ca_service.client`` (no Flask, no store, no CA key); this module turns options
into a ``client.flow.Request`` and its outcome or failure into a line, JSON and an exit code.

Exit codes: 0 issued, renewed, or nothing to do; 1 refused by the server (its detail and rule
are printed) or the files cannot be written; 2 usage; 3 the server cannot be reached or
verified (connection, TLS, a root whose fingerprint differs, an answer that does not chain to
the root, a 5xx after the retries).
"""

from __future__ import annotations

import json
import os
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from ca_service.client import flow
from ca_service.client.credentials import choose
from ca_service.client.errors import ClientError, UsageError
from ca_service.client.files import Layout
from ca_service.client.transport import Endpoint
from ca_service.crypto.names import parse_name
from ca_service.domain import KeyType, SubjectName
from ca_service.errors import CAError

KEY_TYPES = [k.value for k in KeyType]
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$|^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_fraction(text: str) -> float:
    """'1/3', '0.33' or '33%': a share of the certificate's lifetime, from 0 to 1."""
    m = _FRACTION.match(text)
    if m is None:
        raise click.BadParameter(f"{text!r}: write a fraction such as 1/3, 0.25 or 30%")
    if m.group(3) is not None:
        if int(m.group(4)) == 0:
            raise click.BadParameter(f"{text!r}: division by zero")
        value = Fraction(int(m.group(3)), int(m.group(4)))
    else:
        value = Fraction(m.group(1)) / (100 if m.group(2) else 1)
    if not 0 <= value <= 1:
        raise click.BadParameter(f"{text!r} is not between 0 and 1")
    return float(value)


def _names(values: tuple[str, ...]) -> tuple[SubjectName, ...]:
    out: list[SubjectName] = []
    for value in values:
        try:
            name = parse_name(value)
        except CAError as exc:
            raise click.BadParameter(exc.detail, param_hint="--name") from None
        if name not in out:
            out.append(name)
    return tuple(out)


def _passphrase(path: Path | None) -> bytes | None:
    if path is not None:
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        return text.rstrip(b"\r\n") or None
    env = os.environ.get("CA_P12_PASSPHRASE")
    return env.encode() if env else None


@click.command()
@click.option(
    "--server",
    envvar="CA_SERVER",
    required=True,
    metavar="URL",
    help="The ca-service, https://HOST[:PORT] ($CA_SERVER).",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    required=True,
    help="A name for the certificate: host, IP, e-mail or URI (dns:/ip:/email:/uri: "
    "prefixes accepted). Repeatable; the first is also the CN.",
)
@click.option(
    "--out",
    "prefix",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PREFIX",
    help="Write PREFIX.key, .crt, .chain.pem and .fullchain.pem (or PREFIX.p12).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "p12"]),
    default="pem",
    show_default=True,
    help="PEM files, or one PKCS#12 file with the key, certificate and chain.",
)
@click.option(
    "--p12-passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Passphrase of the PKCS#12 file (default: $CA_P12_PASSPHRASE).",
)
@click.option(
    "--token",
    envvar="CA_TOKEN",
    metavar="TOKEN",
    help="API token ($CA_TOKEN; on the command line it is visible in ps).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the API token from this file.",
)
@click.option("--oidc", is_flag=True, help="Authenticate with an OIDC ID token (CI).")
@click.option(
    "--oidc-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ID token is in this file (implies --oidc).",
)
@click.option(
    "--oidc-token-env",
    metavar="NAME",
    help="The ID token is in this variable, e.g. a GitLab id_tokens one (implies --oidc).",
)
@click.option(
    "--audience",
    metavar="AUD",
    help="Audience to ask GitHub Actions for (and to expect in the ID token). Default: the "
    "--server URL, as the server's provisioner names it.",
)
@click.option(
    "--root-fingerprint",
    envvar="CA_ROOT_FINGERPRINT",
    metavar="SHA256",
    help="SHA-256 of the root: fetch /ca/root.pem and keep it only if it matches.",
)
@click.option(
    "--root",
    "root_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The trusted root (PEM); written there on bootstrap. Default: PREFIX.root.pem.",
)
@click.option(
    "--renew-within",
    default="1/3",
    show_default=True,
    metavar="FRACTION",
    help="Renew when less than this share of the lifetime is left; otherwise do nothing. "
    "1 renews every time.",
)
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ecdsa-p256", show_default=True)
@click.option("--profile", help="Certificate profile (default: the server's, 'server').")
@click.option("--validity-days", type=click.IntRange(1, 36500), help="Default: the profile's.")
@click.option("--authority", help="Issuing authority (default: the server's default).")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 300),
    default=30.0,
    show_default=True,
    help="Seconds per connection.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=3,
    show_default=True,
    help="Tries again after a refused connection or a 503/429 (with backoff, Retry-After).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.pass_context
def request(
    ctx: click.Context,
    server: str,
    names: tuple[str, ...],
    prefix: Path,
    fmt: str,
    p12_passphrase_file: Path | None,
    token: str | None,
    token_file: Path | None,
    oidc: bool,
    oidc_token_file: Path | None,
    oidc_token_env: str | None,
    audience: str | None,
    root_fingerprint: str | None,
    root_file: Path | None,
    renew_within: str,
    key_type: str,
    profile: str | None,
    validity_days: int | None,
    authority: str | None,
    timeout: float,
    retries: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Get a certificate from a remote ca-service, or renew it when it is due.

    The key is generated here and never leaves this machine; only a CSR is sent. Run it
    again at any time: with a certificate on disk that has more than --renew-within of its
    life left it does nothing and exits 0. Exit codes: 0 done or nothing to do, 1 refused,
    2 usage, 3 cannot reach or verify the server.
    """
    fraction = parse_fraction(renew_within)
    subject_names = _names(names)
    quiet = quiet or as_json

    def progress(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    if ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE:
        warn("--token is visible to other users in ps and in shell history; use CA_TOKEN")
    layout = Layout(prefix, p12=fmt == "p12")
    try:
        endpoint = Endpoint.parse(server)
        passphrase = _passphrase(p12_passphrase_file) if layout.p12 else None
        if layout.p12 and not passphrase:
            raise UsageError(
                "--format p12 needs a passphrase: --p12-passphrase-file or CA_P12_PASSPHRASE"
            )
        credential = choose(
            token=token,
            token_file=token_file,
            oidc=oidc,
            oidc_token_file=oidc_token_file,
            oidc_token_env=oidc_token_env,
            # The server's own URL by default: a token minted for one CA cannot be replayed
            # at another, as it could if every deployment shared one fixed audience.
            audience=audience or endpoint.url,
            environ=os.environ,
            warn=warn,
            timeout=timeout,
        )
        outcome = flow.run(
            flow.Request(
                server=endpoint,
                names=subject_names,
                layout=layout,
                root_file=root_file or layout.root,
                root_fingerprint=root_fingerprint,
                credential=credential,
                key_type=KeyType(key_type),
                renew_within=fraction,
                profile=profile,
                validity_days=validity_days,
                authority=authority,
                p12_passphrase=passphrase,
                timeout=timeout,
                attempts=retries + 1,
                progress=progress,
            )
        )
    except ClientError as exc:
        _fail(exc.message, exc.exit_code, as_json)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", 1, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **outcome.as_json()}))
    else:
        click.echo(outcome.summary())


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    if as_json:
        record: dict[str, Any] = {"ok": False, "error": message, "exit_code": code}
        click.echo(json.dumps(record))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
