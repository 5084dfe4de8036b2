"""WSGI entry point for gunicorn or any WSGI server: ``ca_service.wsgi:app``."""

from __future__ import annotations

from ca_service.web.app import create_app

app = create_app()
