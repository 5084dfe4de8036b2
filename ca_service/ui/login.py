"""Signing in and out, and the / that leads to the UI.

The token arrives once, in the body of a POST (never a URL), is checked by the token service,
and is then forgotten: the browser keeps only a new session id. A failed sign-in re-shows the
form with one message for every kind of unknown token, linked to the field.
"""

from __future__ import annotations

from flask import g, redirect, request, url_for
from werkzeug.wrappers import Response

from ca_service.core.ui_sessions import Where
from ca_service.errors import Forbidden, NotFound, Unauthorized
from ca_service.ui import session as ui_session
from ca_service.ui.blueprint import render, ui
from ca_service.web.extensions import ui_sessions

SIGNED_OUT = "You are signed out."


@ui.get("/")
def root() -> Response:
    return redirect(url_for("ui.dashboard"), 302)


@ui.get("/ui/login")
def login() -> Response:
    if ui_sessions().resume(request.cookies.get(ui_session.COOKIE, "")) is not None:
        return redirect(url_for("ui.dashboard"), 303)
    notice = SIGNED_OUT if request.args.get("signed_out") == "1" else None
    return render("login.html", title="Sign in", notice=notice)


@ui.post("/ui/login")
def login_submit() -> Response:
    ui_session.check_origin()
    presented = request.form.get("token", "")
    if not presented.strip():
        return render("login.html", 400, title="Sign in", error="Enter a token.")
    where = Where(f"{request.method} {request.path}", g.get("request_id"), request.remote_addr)
    try:
        session_id, _ = ui_sessions().sign_in(presented, where)
    except (Unauthorized, Forbidden) as exc:
        status = 401 if isinstance(exc, Unauthorized) else 403
        return render("login.html", status, title="Sign in", error=exc.detail)
    # A new id at every sign-in: a session id planted before it (fixation) opens nothing,
    # and the one this browser held before ends here.
    previous = request.cookies.get(ui_session.COOKIE)
    if previous:
        ui_sessions().sign_out(previous)
    response = redirect(url_for("ui.dashboard"), 303)
    ui_session.set_cookie(response, session_id)
    return response


@ui.post("/ui/logout")
@ui_session.signed_in()
def logout() -> Response:
    ui_sessions().sign_out(request.cookies.get(ui_session.COOKIE, ""))
    response = redirect(url_for("ui.login", signed_out="1"), 303)
    ui_session.clear_cookie(response)
    return response


@ui.route("/ui/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> Response:
    """Any other address under /ui: the UI's own 404 page, not the API's problem+json."""
    raise NotFound("There is no such page in the admin UI.")
