"""The Flask application factory: the one place that builds the web app from its settings (tests
pass theirs), loads the CA keys at start and installs the checks every request goes through."""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import sys
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ca_service.acme.eab import EABKeys
from ca_service.acme.server import ACMEServer
from ca_service.config import Settings, check_mtls_authorities, load_settings
from ca_service.core.facade import Core
from ca_service.core.ui_sessions import UISessions
from ca_service.errors import Unavailable
from ca_service.logs import REQUEST_ID
from ca_service.logs import configure as configure_logging
from ca_service.oidc.jwks import JWKSCache
from ca_service.oidc.provisioners import ProvisionerService
from ca_service.oidc.verify import OIDCVerifier
from ca_service.tokens import TokenService
from ca_service.ui.pages import register_ui
from ca_service.web import openapi, problems
from ca_service.web.body import check_url
from ca_service.web.gunicorn_logging import ENV_ACTION, ENV_ACTOR, ENV_REQUEST_ID
from ca_service.web.metrics import install_request_metrics
from ca_service.web.routes import register_routes
from ca_service.wiring import build_authority

log = logging.getLogger("ca_service.web")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app_when_the_database_answers() -> Flask:
    """The app for a gunicorn worker (ca_service.wsgi). A database outage while a worker boots
    (a restart, a failover) is waited out for a while, then ends the worker with one line and
    exit status 1, which the master answers by starting another. Left to gunicorn, the error
    would be a traceback and a "boot error", on which the master stops the whole service."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    # Within the worker timeout, which also bounds a boot.
    deadline = time.monotonic() + max(1, min(20, settings.timeout // 2))
    while True:
        try:
            return create_app(settings)
        except Unavailable as exc:
            if time.monotonic() >= deadline:
                log.error("worker not started: %s; the master starts another", exc.detail)
                sys.exit(1)
            log.warning("worker waiting for the database: %s", exc.detail)
            time.sleep(1)


def create_app(settings: Settings | None = None, authority: Core | None = None) -> Flask:
    """Build the app. Keys are loaded here, so a wrong passphrase stops the worker at start."""
    settings = settings or load_settings()
    configure_logging(settings.log_format, settings.log_level)
    # Alembic's schema check at start logs at INFO in every worker; that is noise, not news.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ca = authority or build_authority(settings)
    ca.load_keys()
    check_mtls_authorities(settings.mtls_rules, {a.name for a in ca.list_authorities()})

    app = Flask("ca_service")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["ca_core"] = ca
    app.extensions["ca_tokens"] = TokenService(ca.db, ca.clock, ca.refusals)
    app.extensions["ca_ui_sessions"] = UISessions(
        ca.db,
        ca.clock,
        app.extensions["ca_tokens"],
        idle_minutes=settings.ui_session_idle_minutes,
        max_hours=settings.ui_session_max_hours,
    )
    app.extensions["ca_settings"] = settings
    # Seals and opens the EAB HMAC keys under the CA key passphrase (never stored in the DB):
    # the admin API makes them, newAccount opens them to verify a binding.
    eab = EABKeys(ca.db, ca.clock, settings.require_passphrase())
    app.extensions["ca_eab"] = eab
    app.extensions["ca_acme"] = ACMEServer(ca, eab)
    app.extensions["ca_provisioners"] = ProvisionerService(ca.db, ca.clock)
    # One JWKS cache per process, shared by its threads (each worker fetches for itself).
    jwks = JWKSCache(
        cache_seconds=settings.oidc_jwks_cache_seconds,
        refetch_seconds=settings.oidc_jwks_refetch_seconds,
        allow_http=settings.oidc_allow_http_issuers,
    )
    app.extensions["ca_oidc"] = OIDCVerifier(
        ca.db, jwks, leeway_seconds=settings.oidc_leeway_seconds, clock=ca.clock
    )
    if settings.oidc_allow_http_issuers:
        log.warning(
            "INSECURE: oidc_allow_http_issuers = true: OIDC provisioners may trust plain-http "
            "issuers, whose keys anyone on the path can replace. For tests only; never in "
            "production."
        )
    # Given to /openapi.json and /docs here, so that those views need not import the generator
    # that reads them (web/openapi.py reads every route).
    app.extensions["ca_openapi"] = openapi.document

    proxies = tuple(ipaddress.ip_network(n) for n in settings.trusted_proxies)

    @app.before_request
    def _request_context() -> None:
        supplied = request.headers.get("X-Request-Id", "")
        trusted = _from_trusted_proxy(proxies) and _REQUEST_ID.match(supplied)
        g.request_id = supplied if trusted else secrets.token_hex(8)
        g.request_id_token = REQUEST_ID.set(g.request_id)
        # For gunicorn's access line (web/gunicorn_logging.py), written after the answer.
        request.environ[ENV_REQUEST_ID] = g.request_id
        request.environ[ENV_ACTION] = request.endpoint or "unmatched"

    @app.teardown_request
    def _end_request_context(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)

    @app.before_request
    def _check_input() -> None:
        # Once for every endpoint, before any view (or authentication) reads the input.
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise RequestEntityTooLarge()
        check_url()

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        request.environ[ENV_ACTOR] = _actor_identity()
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            # API answers may carry private keys or tokens: no cache may keep them.
            response.headers["Cache-Control"] = "no-store"
        return response

    install_request_metrics(app)
    problems.register(app)
    register_routes(app)
    # The admin web UI (ui/): HTML pages at /ui/ over the same core, and / leading there.
    register_ui(app)
    return app


def _from_trusted_proxy(
    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    """Did the connection come from a proxy of ``trusted_proxies``? The peer address is the
    socket's, even where a ProxyFix middleware has put the client's in REMOTE_ADDR."""
    if not proxies:
        return False
    original = request.environ.get("werkzeug.proxy_fix.orig") or {}
    peer = original.get("REMOTE_ADDR") or request.remote_addr or ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def _actor_identity() -> str:
    """Who the request was from, for the access log: the authenticated caller, else the
    identity a refused credential claimed, else anonymous. Never a credential."""
    principal = g.get("principal")
    if principal is not None:
        return str(principal.identity)
    return str(g.get("acme_identity") or g.get("auth_identity") or "anonymous")
