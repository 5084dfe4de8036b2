"""Every page of the UI, registered on the app. The views import the blueprint and this module
imports the views, so the imports run one way (blueprint <- views <- pages <- app factory)."""

from __future__ import annotations

from flask import Flask

from ca_service.ui import admin, certificates, dashboard, format, login
from ca_service.ui.blueprint import ui

__all__ = ["admin", "certificates", "dashboard", "format", "login", "register_ui"]


def register_ui(app: Flask) -> None:
    """Pages under /ui/ and / redirecting there (the app factory calls this)."""
    app.register_blueprint(ui)
