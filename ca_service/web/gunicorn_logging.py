"""gunicorn's logs in the service's log format (``logger_class`` in ca_service/gunicorn_conf.py).

With ``log_format = "json"`` gunicorn's error log (its own messages: boot, workers, signals)
and its access log are JSON lines like the application's. The access line is the one event per
request: gunicorn writes it after the answer is sent, with the time the request took, and the
application leaves what only it knows in the WSGI environ (see web/app.py): the request id, the
authenticated actor, the action (the Flask endpoint) and the outcome. It never logs headers,
bodies or the query string (which could hold an OCSP request, or a token someone pasted).
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from ca_service.logs import JsonFormatter

# Keys of the WSGI environ the application fills in for the access line.
ENV_REQUEST_ID = "ca_service.request_id"
ENV_ACTOR = "ca_service.actor"
ENV_ACTION = "ca_service.action"


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "refused"
    if status < 500:
        return "rejected"
    return "error"


class JsonLogger(Logger):  # type: ignore[misc]
    """gunicorn's Logger with JSON formatters and a structured access line."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        try:
            code = int(status)
        except (TypeError, ValueError):
            code = 0
        fields = {
            "request_id": environ.get(ENV_REQUEST_ID),
            "actor": environ.get(ENV_ACTOR) or "anonymous",
            "action": environ.get(ENV_ACTION) or "unmatched",
            "outcome": outcome(code),
            "status": code,
            "method": environ.get("REQUEST_METHOD"),
            # The path only: no query string (see the module docstring).
            "path": (environ.get("PATH_INFO") or "")[:256],
            "client": environ.get("REMOTE_ADDR"),
            "bytes": getattr(resp, "sent", None),
            "latency_ms": round(request_time.total_seconds() * 1000, 3),
        }
        try:
            self.access_log.info("%s %s %s", fields["method"], fields["path"], code,
                                 extra={"fields": fields})  # fmt: skip
        except Exception:
            logging.getLogger("gunicorn.error").exception("access log line failed")
