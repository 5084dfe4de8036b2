"""Every page of the UI, imported once so that its views register on the blueprint."""

from __future__ import annotations

from ca_service.ui import admin, certificates, dashboard, format, login

__all__ = ["admin", "certificates", "dashboard", "format", "login"]
