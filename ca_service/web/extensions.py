"""Typed access to what the app factory keeps in ``app.extensions`` (the core, the token
service, the settings), so that views get checked types instead of untyped dictionary reads."""

from __future__ import annotations

from typing import Any

from flask import current_app

from ca_service.authority import CertificateAuthority
from ca_service.config import Settings
from ca_service.tokens import TokenService


def authority() -> CertificateAuthority:
    ca = current_app.extensions["ca_authority"]
    assert isinstance(ca, CertificateAuthority)
    return ca


def settings() -> Settings:
    value = current_app.extensions["ca_settings"]
    assert isinstance(value, Settings)
    return value


def tokens() -> TokenService:
    service = current_app.extensions["ca_tokens"]
    assert isinstance(service, TokenService)
    return service


def api_document() -> dict[str, Any]:
    """The OpenAPI document (web/openapi.document, handed over by the app factory)."""
    generate = current_app.extensions["ca_openapi"]
    document = generate()
    assert isinstance(document, dict)
    return document
