"""Who is signed in to the UI, and the checks every page makes before it does anything: a live
session (else the sign-in page), the CSRF token of every POST, the role the page needs.

Roles are decided by policy/authorization.check_role, as for the API; a refusal is audited once
through the same RefusalLog. The CSRF token is a per-session secret carried by every form and
compared in constant time; with the session cookie being SameSite=Strict it is a second lock,
so a POST missing it is refused (403) before anything is read or written.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import g, redirect, request, url_for
from werkzeug.wrappers import Response

from ca_service.domain import Actor, Role, UISession
from ca_service.errors import Forbidden
from ca_service.policy import authorization
from ca_service.web.extensions import core, tokens, ui_sessions

F = TypeVar("F", bound=Callable[..., Any])

COOKIE = "ca_ui_session"
COOKIE_PATH = "/ui"


class CSRFRefused(Forbidden):
    """A POST without this session's CSRF token, or sent from another site."""


def current() -> UISession:
    found = g.get("ui_session")
    assert isinstance(found, UISession), "view is missing @signed_in"
    return found


def actor() -> Actor:
    """The signed-in token as the API would name it in the audit log (token:<id>)."""
    return current().token.actor(g.get("request_id"), request.remote_addr)


def is_admin() -> bool:
    found = g.get("ui_session")
    return isinstance(found, UISession) and found.token.role is Role.ADMIN


def uses_https() -> bool:
    return request.is_secure or core().settings.public_url.startswith("https://")


def set_cookie(response: Response, session_id: str) -> None:
    # No Max-Age: the browser drops it when it closes; the server ends it earlier or later.
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=uses_https(),
        path=COOKIE_PATH,
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=uses_https()
    )


def to_sign_in() -> Response:
    response = redirect(url_for("ui.login"), 303)
    if request.cookies.get(COOKIE):
        clear_cookie(response)
    return response


def check_origin() -> None:
    """A browser names the page a POST comes from (Origin); one of another site is refused,
    also on the sign-in form, which has no session to hold a CSRF token yet."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    allowed = {_origin(request.host_url), _origin(core().settings.public_url)}
    if origin.rstrip("/") not in allowed:
        raise CSRFRefused("This form was sent from another site; it was refused.", rule="ui.csrf")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_csrf(session: UISession) -> None:
    sent = request.form.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise CSRFRefused(
            "This form's security token is missing or out of date (the page may be from an "
            "earlier session). Nothing was changed; reload the page and try again.",
            rule="ui.csrf",
        )


def refuse(session: UISession, exc: Forbidden) -> None:
    """Audit the refusal of a signed-in caller once (ca_service.refusals), as the API does."""
    who = session.token.actor(g.get("request_id"), request.remote_addr)
    tokens().refusals.record(who, f"{request.method} {request.path}", exc)


def signed_in(role: Role = Role.READER) -> Callable[[F], F]:
    """The page needs a live session whose token has ``role``; a POST also the CSRF token."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found = ui_sessions().resume(request.cookies.get(COOKIE, ""))
            if found is None:
                return to_sign_in()
            g.ui_session = found
            if request.method == "POST":
                check_origin()
                check_csrf(found)
            try:
                authorization.check_role(found.token, role)
            except Forbidden as exc:
                refuse(found, exc)
                raise
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
