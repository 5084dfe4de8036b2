"""GET /metrics (Prometheus text format) and the per-request measurements behind it.

On the main port, off unless ``metrics_enabled`` (a 404 then, like any unknown path), and
behind ``metrics_token`` when one is set: the counters say how many certificates each
authority issues and which credentials are refused, which is not for everyone to read. The
latency histogram is keyed by the URL rule (``/api/v1/certificates/<serial>``), never by the
path, so a scanner walking random paths adds no series.
"""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Flask, Response, g, request

from ca_service import metrics
from ca_service.errors import NotFound, Unauthorized
from ca_service.web.contract import Answer, operation
from ca_service.web.extensions import core, settings

bp = Blueprint("metrics", __name__)

TEXT = {"text/plain": {"schema": {"type": "string"}}}


@bp.get("/metrics")
@operation(
    "Prometheus metrics (when metrics_enabled)",
    description="The text exposition format, summed over every gunicorn worker. 404 unless "
    "metrics_enabled; with metrics_token set, it takes 'Authorization: Bearer <metrics token>'. "
    "See docs/operations.md for the list.",
    tags=("operations",),
    answers={200: Answer("Metrics in the Prometheus text format", media=TEXT)},
    raises=(NotFound, Unauthorized),
)
def metrics_view() -> Response:
    config = settings()
    if not config.metrics_enabled:
        raise NotFound("metrics are not enabled on this server (metrics_enabled)")
    if config.metrics_token is not None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), config.metrics_token
        ):
            metrics.AUTH_FAILURES.labels(kind="metrics", reason="unauthenticated").inc()
            raise Unauthorized("/metrics needs 'Authorization: Bearer <metrics token>'")
    ca = core()
    body, content_type = metrics.render(
        lambda: ca.catalog.store_state(ca.clock.now(), config.metrics_expiry_leaves)
    )
    return Response(body, content_type=content_type)


def install_request_metrics(app: Flask) -> None:
    """Time every request and count it by URL rule, method and status."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _measure(response: Response) -> Response:
        started = g.get("started")
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        if started is not None:
            metrics.REQUEST_SECONDS.labels(endpoint=endpoint, method=method).observe(
                time.perf_counter() - started
            )
        metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=response.status_code).inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
