"""Typed access to the services the app factory attached."""

from __future__ import annotations

from flask import current_app

from ca_service.authority import CertificateAuthority
from ca_service.config import Settings


def authority() -> CertificateAuthority:
    ca = current_app.extensions["ca_authority"]
    assert isinstance(ca, CertificateAuthority)
    return ca


def settings() -> Settings:
    value = current_app.extensions["ca_settings"]
    assert isinstance(value, Settings)
    return value
