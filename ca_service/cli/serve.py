"""``ca-service serve``: prepare the store, the keys and a first admin token, then hand the
process to gunicorn.

The options reach gunicorn as its own command-line arguments (which win over the settings module
``ca_service.gunicorn_conf``), never through this process's environment: the settings a command
was given are its arguments, not a side effect on whatever it starts afterwards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ca_service.cli.context import _actor
from ca_service.cli.output import handle_errors
from ca_service.config import Settings, check_mtls_authorities, load_settings
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import CallerPolicy
from ca_service.logs import configure as configure_logging
from ca_service.logs import emit
from ca_service.tokens import Role, TokenService
from ca_service.wiring import build_authority, first_start_lock


@click.command()
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
    # Validated as the same settings from the environment would be (a bad --bind is one line).
    settings = load_settings(
        overrides={"bind": bind, "workers": workers, "timeout": timeout, "tls": tls or None}
    )
    say = settings.log_format
    if say == "json":
        configure_logging(say, settings.log_level)
    ca = build_authority(settings, apply_migrations=True)
    # Replicas started together on an empty database take turns: the first makes the CA and
    # the admin token, the others find them.
    with first_start_lock(ca.db):
        if not ca.list_authorities():
            emit(say, "first start: creating the root and issuing CA 'default' ...")
            ca.create_hierarchy(HierarchySpec(), _actor())
            ca.load_keys()
            ca.generate_crl("default")
        service = TokenService(ca.db)
        if service.count() == 0:
            plain, record = service.create(
                "first admin", Role.ADMIN, CallerPolicy.unrestricted(), _actor()
            )
            if say == "json":
                # The one line that shows a secret, by design and once: what the text form prints.
                emit(
                    say,
                    "first admin token (shown once, stored only as a hash; keep it safe)",
                    err=False,
                    token=plain,
                    token_id=record.id,
                )
            else:
                click.echo("=" * 72)
                click.echo("First admin token (shown once, stored only as a hash; keep it safe):")
                click.echo(f"  {plain}")
                click.echo(
                    f"  (token id {record.id}; revoke with 'ca-service token revoke {record.id}')"
                )
                click.echo("=" * 72)
    ca.load_keys()
    # Here too, so that a bad rule is one line on stderr, not a worker that fails to boot.
    check_mtls_authorities(settings.mtls_rules, {a.name for a in ca.list_authorities()})
    scheme = "http"
    certfile: Path | None = None
    if settings.tls:
        from ca_service.tls.serving import bundle_path, ensure_server_certificate, tls_directory

        cert, _ = ensure_server_certificate(
            ca, settings.tls_hostnames, tls_directory(settings), days=settings.tls_cert_days
        )
        scheme = "https"
        certfile = bundle_path(settings)
        emit(
            say,
            f"HTTPS certificate for {', '.join(settings.tls_hostnames)} valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; client certificates: "
            f"{settings.tls_client_auth}",
        )
    if settings.certificate_url.startswith("https://"):
        emit(
            say,
            f"warning: certificates carry https revocation URLs ({settings.certificate_url}); "
            "most clients fetch CRLs and OCSP only over http: set revocation_url "
            "(CA_REVOCATION_URL) to an http URL that reaches /ca/ and /ocsp (a proxy's http "
            "side, say)",
        )
    ca.db.dispose()
    emit(say, f"serving on {scheme}://{settings.bind} ({settings.worker_count} workers)")
    sys.stdout.flush()
    # exec: gunicorn's master becomes this process, so SIGTERM reaches it for a graceful stop.
    os.execv(sys.executable, gunicorn_argv(settings, certfile))  # noqa: S606 (no shell)


def gunicorn_argv(settings: Settings, certfile: Path | None) -> list[str]:
    """The gunicorn command line for these settings.

    The settings module is part of this package (found wherever it is installed) and reads the
    rest (hooks, body limit, log level, no control socket) from the same CA_* settings; the
    options that ``serve`` may change are given here, where they win over that module. HTTPS
    is the module's server certificate bundle passed as ``--certfile``: the module installs its
    TLS hooks for exactly that file.
    """
    args = [sys.executable, "-m", "gunicorn", "-c", "python:ca_service.gunicorn_conf"]
    args += ["--bind", settings.bind, "--workers", str(settings.worker_count)]
    args += ["--timeout", str(settings.timeout)]
    if certfile is not None:
        args += ["--certfile", str(certfile)]
    return [*args, "ca_service.wsgi:app"]
