"""WSGI entry point for gunicorn or any WSGI server: ``ca_service.wsgi:app``.

Each process that imports it (every gunicorn worker) also keeps the CRLs current in the
background, so they are republished before nextUpdate even when nobody fetches them.
"""

from __future__ import annotations

from ca_service.scheduler import start_crl_refresher
from ca_service.web.app import create_app

app = create_app()
_stop_crl_refresher = start_crl_refresher(app.extensions["ca_authority"])
