"""Every route of the service in one list: the app factory registers them, and web/openapi.py
reads the same URL map to generate the document, so the two cannot list different routes."""

from __future__ import annotations

from flask import Flask

from ca_service.web.acme import acme
from ca_service.web.acme_admin import acme_admin
from ca_service.web.api import api
from ca_service.web.crl_parts import crl_parts
from ca_service.web.docs import docs
from ca_service.web.metrics import bp as metrics
from ca_service.web.ocsp import ocsp
from ca_service.web.provisioners import bp as provisioners
from ca_service.web.public import public


def register_routes(app: Flask) -> None:
    app.register_blueprint(public)
    app.register_blueprint(crl_parts)
    app.register_blueprint(api)
    app.register_blueprint(acme_admin)
    app.register_blueprint(provisioners)
    app.register_blueprint(docs)
    app.register_blueprint(metrics)
    app.register_blueprint(ocsp)
    app.register_blueprint(acme)
