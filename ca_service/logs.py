"""Log output: plain text, or one JSON object per line (``log_format = "json"``).

One formatter serves the application's loggers, the ``serve`` command and gunicorn's error and
access logs (web/gunicorn_logging.py), so a log shipper parses every line the same way. Each
line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the ``request_id`` of
the request it was written for (a context variable the web layer sets), and the fields a caller
passed as ``extra={"fields": {...}}`` (the access log: actor, action, outcome, latency_ms).

Nothing that reaches a log line carries a secret: requests are logged by method, URL rule and
status, never by body or header, and the messages of the service name token ids, never tokens.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ca_request_id", default=None
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            event["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            event.update(fields)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        return json.dumps(event, default=str, ensure_ascii=False)


def configure(log_format: str, level: str) -> None:
    """The root logger: text as before (``logging.basicConfig``), or JSON lines on stderr,
    installed once per process (again: no-op)."""
    if log_format != "json":
        logging.basicConfig(level=level)
        return
    root = logging.getLogger()
    root.setLevel(level)
    if any(getattr(handler, "ca_service", False) for handler in root.handlers):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.ca_service = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def emit(log_format: str, message: str, *, err: bool = True, **fields: Any) -> None:
    """A line of the ``serve`` command's own output, in the log format (JSON: one object)."""
    if log_format == "json":
        record = logging.LogRecord("ca_service.serve", logging.INFO, "", 0, message, None, None)
        record.fields = fields
        line = JsonFormatter().format(record)
    else:
        line = message
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()
