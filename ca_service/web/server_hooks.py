"""gunicorn hooks, installed by the gunicorn config: what the WSGI application cannot do itself.

- A request whose body is over the limit is answered 413 by the application without reading
  the body. gunicorn drops an application's ``Connection`` header (it is hop-by-hop), and would
  otherwise read and discard the unread body to keep the connection alive; the ``pre_request``
  hook marks such a request so that gunicorn answers ``Connection: close`` and closes instead.
- gunicorn answers requests it cannot parse (400 bad request line or header, 414 request line
  too long, 431 too many or too large header fields) itself, before the application sees them,
  with an HTML page. It has no setting for that page; its workers call ``gunicorn.util.
  write_error(sock, status, reason, message)``, which ``install_problem_error_pages`` replaces
  with an RFC 9457 problem+json writer of the same signature (checked, so that a gunicorn that
  changes it keeps its own pages rather than breaking).
"""

from __future__ import annotations

import inspect
import json
import secrets
from collections.abc import Callable
from typing import Any

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:ca-service:problem:"
_CODES = {
    400: "bad-request",
    403: "forbidden",
    414: "uri-too-long",
    417: "expectation-failed",
    431: "header-fields-too-large",
    500: "internal",
    501: "not-implemented",
}


def closing_oversized_bodies(limit: int) -> Callable[[Any, Any], None]:
    """A ``pre_request(worker, req)`` hook: close, rather than drain, a body over ``limit``."""

    def pre_request(worker: Any, req: Any) -> None:
        for name, value in req.headers:
            if name == "CONTENT-LENGTH":
                try:
                    too_large = int(value) > limit
                except ValueError:  # gunicorn refuses a malformed length before this point
                    too_large = False
                if too_large:
                    req.force_close()
                return

    return pre_request


def problem_page(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP response gunicorn sends for a request it refused to parse."""
    body = json.dumps(
        {
            "type": TYPE_BASE + _CODES.get(status, "http-error"),
            "title": reason,
            "status": status,
            # gunicorn's message quotes the offending request line or header name only.
            "detail": message or reason,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        # Every answer has a request id, this one too (nothing was read to take one from).
        f"X-Request-Id: {secrets.token_hex(8)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def install_problem_error_pages() -> bool:
    """Make gunicorn's own error pages problem+json; False (and nothing changed) if this
    gunicorn's ``write_error`` is not the function this was written against."""
    from gunicorn import util  # type: ignore[import-untyped]

    original = util.write_error
    if getattr(original, "ca_service_problem", False):
        return True
    params = list(inspect.signature(original).parameters)
    if params != ["sock", "status_int", "reason", "mesg"] or not hasattr(util, "write_nonblock"):
        return False

    def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        util.write_nonblock(sock, problem_page(status_int, reason, mesg))

    write_error.ca_service_problem = True  # type: ignore[attr-defined]
    util.write_error = write_error
    return True
