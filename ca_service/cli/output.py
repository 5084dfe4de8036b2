"""How the CLI speaks: records as text or JSON, and every failure as one line on stderr.

Exit codes: 1 for a refused or bad request, 2 for usage errors (click's own), 3 for
configuration or start-up problems. A traceback is never what a user should see.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca_service import api_models
from ca_service.domain import AuthorityRecord, CertificateRecord
from ca_service.errors import CAError, ConfigError, Unavailable
from ca_service.storage.db import StoreError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ca_service.cli")


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
        except StoreError as exc:
            # A lost or refused connection is already Unavailable (storage/db.py); this is the rest.
            log.debug("database error", exc_info=True)
            _fail(f"database error ({type(exc).__name__}); nothing was changed", 3)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", 1)
        return None

    return wrapper  # type: ignore[return-value]


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


def certificate_json(r: CertificateRecord, now: dt.datetime | None = None) -> dict[str, Any]:
    """A stored certificate as ``--json`` prints it: the API's ``Certificate`` record, built by
    the same model, so the two outputs cannot drift apart."""
    return api_models.as_json(api_models.certificate(r, now or dt.datetime.now(dt.UTC)))
