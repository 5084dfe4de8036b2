"""What the client authenticates with: an API token, or an OIDC ID token (a JWT).

A token never appears in a message, a log line or an exception: ``Credential`` hides its value
from ``repr``. A token given as ``--token`` is visible to every user of the machine in ``ps``
and in the shell's history, so the CLI warns about it; ``CA_TOKEN`` or ``--token-file`` is the
way in scripts.

OIDC ID tokens come from where CI systems put them:
- a file (``--oidc-token-file``): any issuer, e.g. a Kubernetes projected service account token;
- GitHub Actions: GET ``$ACTIONS_ID_TOKEN_REQUEST_URL&audience=<aud>`` with
  ``Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`` answers ``{"value": JWT}`` (the job
  needs ``permissions: id-token: write``);
- GitLab CI: an ``id_tokens:`` entry of the job puts the JWT in the variable it names
  (``--oidc-token-env NAME``), its ``aud:`` chosen in the pipeline file.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca_service.client.errors import Refused, Unreachable, UsageError

GITHUB_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
GITHUB_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 - a variable name
MAX_TOKEN = 16 * 1024


@dataclass(frozen=True)
class Credential:
    """A bearer credential and where it came from (``source`` is safe to print)."""

    source: str
    value: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def _clean(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise UsageError(f"{what} is empty")
    if len(value) > MAX_TOKEN or any(c.isspace() or not c.isprintable() for c in value):
        raise UsageError(f"{what} does not look like a token (space, control or too long)")
    return value


def api_token(value: str, source: str = "API token") -> Credential:
    return Credential(source, _clean(value, source))


def token_from_file(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()[: MAX_TOKEN + 1]
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not a token (not ASCII)") from None


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT's claims, NOT verified (the server verifies): for diagnostics only."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise UsageError("the OIDC ID token is not a JWT (three dot-separated parts)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        raise UsageError("the OIDC ID token's claims are not base64url JSON") from None
    if not isinstance(claims, dict):
        raise UsageError("the OIDC ID token's claims are not a JSON object")
    return claims


def check_id_token(token: str, audience: str, warn: Callable[[str], None]) -> None:
    """Say early what the server would refuse later, without refusing it here: the server
    holds the rules (an audience other than ``--audience`` may well be the right one)."""
    claims = jwt_claims(token)
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if aud is not None and audience not in auds:
        warn(f"the ID token's audience is {aud!r}, not {audience!r}")
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp < dt.datetime.now(dt.UTC).timestamp():
        warn("the ID token has expired")


def oidc_from_file(path: Path) -> Credential:
    return Credential(
        f"OIDC ID token from {path}",
        _clean(token_from_file(path, "ID token file"), "the ID token file"),
    )


def oidc_from_env(name: str, environ: Mapping[str, str]) -> Credential:
    value = environ.get(name)
    if value is None:
        raise UsageError(
            f"--oidc-token-env {name}: no such variable (GitLab: add 'id_tokens: {name}: aud: "
            "...' to the job)"
        )
    return Credential(f"OIDC ID token from ${name}", _clean(value, f"${name}"))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def oidc_from_github(
    environ: Mapping[str, str],
    audience: str,
    *,
    timeout: float = 30.0,
    context: ssl.SSLContext | None = None,
) -> Credential:
    """Ask the GitHub Actions runtime for an ID token for ``audience``."""
    url = environ.get(GITHUB_URL)
    request_token = environ.get(GITHUB_TOKEN)
    if not url or not request_token:
        raise UsageError(
            f"--oidc: no ID token source (give --oidc-token-file or --oidc-token-env; on GitHub "
            f"Actions {GITHUB_URL} and {GITHUB_TOKEN} need 'permissions: id-token: write')"
        )
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    # The request token is a secret too: plain HTTP only where nothing leaves the machine.
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
        raise UsageError(f"{GITHUB_URL} must be an https:// URL")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != "audience"] + [("audience", audience)]
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", urllib.parse.urlencode(query), ""))
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=context or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request(
            "GET",
            target,
            headers={"Authorization": f"bearer {request_token}", "Accept": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read(MAX_TOKEN * 2)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"cannot get an ID token from GitHub Actions ({host}): {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise Refused(
            f"GitHub Actions refused an ID token for audience {audience!r} ({resp.status})",
            status=resp.status,
        )
    try:
        value = json.loads(body)["value"]
    except (ValueError, KeyError, TypeError):
        raise Unreachable("GitHub Actions answered without a token ('value')") from None
    if not isinstance(value, str):
        raise Unreachable("GitHub Actions answered without a token ('value')")
    return Credential(
        f"GitHub Actions OIDC ID token (audience {audience})", _clean(value, "the ID token")
    )


def choose(
    *,
    token: str | None,
    token_file: Path | None,
    oidc: bool,
    oidc_token_file: Path | None,
    oidc_token_env: str | None,
    audience: str,
    environ: Mapping[str, str],
    warn: Callable[[str], None],
    timeout: float = 30.0,
) -> Callable[[], Credential]:
    """The one credential the options name, checked now; two at once is a usage error, not a
    guess. Only asking GitHub for a token waits until the credential is needed: a run with
    nothing to do makes no request at all."""
    oidc = oidc or oidc_token_file is not None or oidc_token_env is not None
    given = [n for n, v in (("--token", token), ("--token-file", token_file)) if v is not None]
    if oidc and given:
        raise UsageError(f"--oidc and {given[0]} exclude each other: pick one credential")
    if len(given) > 1:
        raise UsageError("--token and --token-file exclude each other")
    credential: Credential
    if token_file is not None:
        credential = api_token(
            token_from_file(token_file, "token file"), f"API token from {token_file}"
        )
    elif token is not None:
        credential = api_token(token)
    elif not oidc:
        raise UsageError("no credential: set CA_TOKEN (or --token-file), or use --oidc")
    elif oidc_token_file is not None and oidc_token_env is not None:
        raise UsageError("--oidc-token-file and --oidc-token-env exclude each other")
    elif oidc_token_file is not None or oidc_token_env is not None:
        if oidc_token_file is not None:
            credential = oidc_from_file(oidc_token_file)
        else:
            assert oidc_token_env is not None
            credential = oidc_from_env(oidc_token_env, environ)
        check_id_token(credential.value, audience, warn)
    else:
        if not environ.get(GITHUB_URL) or not environ.get(GITHUB_TOKEN):
            raise UsageError(
                "--oidc: no ID token source (give --oidc-token-file or --oidc-token-env; on "
                f"GitHub Actions {GITHUB_URL} and {GITHUB_TOKEN} need 'permissions: id-token: "
                "write')"
            )
        snapshot = dict(environ)
        return lambda: oidc_from_github(snapshot, audience, timeout=timeout)
    return lambda: credential
