"""Typed access to what the app factory keeps in ``app.extensions`` (the core, the token
service, the admin UI's sessions, the EAB keys, the OIDC services, the settings), so that views
(of the API and of the UI) get checked types instead of untyped dictionary reads."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ca_service.acme.eab import EABKeys
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.core.ui_sessions import UISessions
from ca_service.oidc.provisioners import ProvisionerService
from ca_service.oidc.verify import OIDCVerifier
from ca_service.tokens import TokenService


def core() -> Core:
    """The service core this app was built with (a CA record is an "authority"; this is not)."""
    found = current_app.extensions["ca_core"]
    assert isinstance(found, Core)
    return found


def settings() -> Settings:
    value = current_app.extensions["ca_settings"]
    assert isinstance(value, Settings)
    return value


def tokens() -> TokenService:
    service = current_app.extensions["ca_tokens"]
    assert isinstance(service, TokenService)
    return service


def ui_sessions() -> UISessions:
    """The admin UI's sessions (ca_service.core.ui_sessions)."""
    service = current_app.extensions["ca_ui_sessions"]
    assert isinstance(service, UISessions)
    return service


def eab_keys() -> EABKeys:
    """The External Account Binding keys of ACME (ca_service.acme.eab)."""
    service = current_app.extensions["ca_eab"]
    assert isinstance(service, EABKeys)
    return service


def provisioners() -> ProvisionerService:
    service = current_app.extensions["ca_provisioners"]
    assert isinstance(service, ProvisionerService)
    return service


def oidc() -> OIDCVerifier:
    """The ID token verifier, with this process's JWKS cache."""
    verifier = current_app.extensions["ca_oidc"]
    assert isinstance(verifier, OIDCVerifier)
    return verifier


def api_document() -> dict[str, Any]:
    """The OpenAPI document (web/openapi.document, handed over by the app factory)."""
    generate = current_app.extensions["ca_openapi"]
    document = generate()
    assert isinstance(document, dict)
    return document
