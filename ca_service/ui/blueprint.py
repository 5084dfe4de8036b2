"""The admin web UI's blueprint: pages under /ui/, rendered on the server from the templates
in this package, with the headers every one of them carries and the error pages.

Every flow is a plain HTML form (GET to search, POST to change), so all of it works with
JavaScript off; the one script (static/ui.js) only adds conveniences. The Content-Security-Policy
allows no inline script or style at all, which the tests check on every page. Errors become
HTML pages with the status the API would answer (web/problems.status_of): never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, g, render_template, request
from werkzeug.exceptions import HTTPException

from ca_service.errors import BadRequest, CAError, ConfigError, Unavailable
from ca_service.ui import session as ui_session
from ca_service.web.body import has_bad_text
from ca_service.web.problems import status_of

log = logging.getLogger("ca_service.ui")

ui = Blueprint(
    "ui",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui/static",
)

CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def render(template: str, status: int = 200, **context: Any) -> Response:
    """A page, with who is signed in (for the navigation) and whether they may act."""
    body = render_template(
        f"ui/{template}",
        session=g.get("ui_session"),
        is_admin=ui_session.is_admin(),
        **context,
    )
    return Response(body, status=status, mimetype="text/html")


def given(values: dict[str, str]) -> dict[str, Any]:
    """The filters that were given, as URL parameters of another page of the same list."""
    return {k: v for k, v in values.items() if v}


def error_page(status: int, title: str, detail: str) -> Response:
    return render(
        "error.html",
        status,
        title=title,
        detail=detail,
        status_code=status,
        request_id=g.get("request_id"),
    )


@ui.before_request
def _check_form() -> None:
    """A form field with text no store can keep (a NUL, an unpaired surrogate) is refused for
    every form at once, as the API refuses it in JSON (web/body.py), before any view reads it."""
    if request.method == "POST":
        for key, value in request.form.items(multi=True):
            if has_bad_text(key) or has_bad_text(value):
                raise BadRequest(
                    f"the form field {key[:40]!r} holds a NUL or an unpaired surrogate"
                )


@ui.after_app_request
def _headers(response: Response) -> Response:
    """On every answer under /ui (and the / that redirects there), errors included."""
    if request.path == "/" or request.path.startswith("/ui"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if not request.path.startswith("/ui/static/"):
            # Pages show certificates, the audit log and once a token's secret: kept nowhere.
            response.headers["Cache-Control"] = "no-store"
    return response


@ui.errorhandler(CAError)
def _ca_error(exc: CAError) -> Response:
    if isinstance(exc, ConfigError):
        log.error("service misconfigured: %s (request %s)", exc.detail, g.get("request_id"))
        return error_page(503, "Service unavailable", "The service is not ready.")
    if isinstance(exc, Unavailable):
        log.warning("request %s: %s", g.get("request_id"), exc.detail)
        response = error_page(503, exc.title, exc.public_detail)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return error_page(status_of(exc), exc.title, exc.detail)


@ui.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return error_page(status, exc.name, exc.description or exc.name)


@ui.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    request_id = g.get("request_id")
    log.exception("unhandled error in UI request %s", request_id)
    return error_page(
        500,
        "Internal error",
        f"An unexpected error occurred; quote request id {request_id} to the operator.",
    )
