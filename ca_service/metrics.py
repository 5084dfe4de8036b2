"""Prometheus metrics: every metric of the service, defined once, and the calls that record them.

The recording calls sit where the events happen (the core counts issuances, revocations, CRL
builds and OCSP answers; storage the pool and its errors; the web layer latency and refused
credentials), all through this module, which imports nothing of the service but its errors,
so that no layer has to import another to count.

Under gunicorn every worker is a process of its own: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
directory per server, made by ca_service/gunicorn_conf.py before any worker starts) makes
prometheus_client keep each value in a file per process, and a scrape, whichever worker
answers it, adds them up. Without it (tests in one process, the CLI) values live in memory.

Every label has a bounded set of values: authorities and profiles are configuration, requester
kinds a fixed list, endpoints Flask's URL rules (never the raw path), statuses a fixed list.
A label value outside its set becomes ``other``, so a caller can never grow the series.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ca_service.errors import CAError, Forbidden, PolicyRejected, Unauthorized, Unavailable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The prefix of a requester identity ("token:<id>", "acme:<account>", ...) names its kind.
REQUESTER_KINDS = frozenset({"token", "cert", "oidc", "acme", "acme-key", "cli", "service"})
OCSP_STATUSES = frozenset(
    {"good", "revoked", "unknown", "malformed", "unauthorized", "internal_error", "try_later"}
)

ISSUED = Counter(
    "ca_certificates_issued",
    "Issuance requests that reached an authority, by outcome (issued, refused by policy, "
    "rejected as invalid or conflicting, unavailable, error).",
    ["authority", "profile", "requester_kind", "outcome"],
)
REVOKED = Counter(
    "ca_certificates_revoked",
    "Revocation requests of a stored certificate, by outcome; requester_kind is the revoker's.",
    ["authority", "profile", "requester_kind", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "ca_http_request_duration_seconds",
    "Time the application took to answer, by endpoint (the URL rule, not the path).",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter(
    "ca_http_requests",
    "Answered requests by endpoint (the URL rule), method and status code.",
    ["endpoint", "method", "status"],
)
CRL_BUILD_SECONDS = Histogram(
    "ca_crl_build_seconds",
    "Time to build, sign and store one CRL.",
    ["authority"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0),
)
OCSP_ANSWERS = Counter(
    "ca_ocsp_responses",
    "OCSP: each certificate status answered (good, revoked, unknown), and each unsuccessful "
    "answer (malformed, unauthorized, internal_error, try_later).",
    ["status"],
)
AUTH_FAILURES = Counter(
    "ca_auth_failures",
    "Refused requests at authentication or role checks, by credential kind (missing, "
    "malformed, token, oidc, certificate, metrics, acme) and reason (unauthenticated, "
    "forbidden).",
    ["kind", "reason"],
)
DB_POOL_CHECKED_OUT = Gauge(
    "ca_db_pool_checked_out",
    "Database connections in use, summed over the live workers.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "ca_db_pool_size",
    "Configured database pool size (without overflow), summed over the live workers.",
    multiprocess_mode="livesum",
)
DB_ERRORS = Counter(
    "ca_db_errors",
    "Database errors by kind (unavailable: lost or refused connection, busy, deadlock; "
    "data: a value refused; other).",
    ["kind"],
)
GROUP_COMMIT_SIZE = Histogram(
    "ca_db_group_commit_size",
    "Write transactions that shared one commit (storage/group_commit.py): 1 when requests "
    "come one at a time, more under concurrent load.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
WEBHOOK_DELIVERIES = Counter(
    "ca_webhook_deliveries",
    "Webhook events by final outcome (delivered, failed after every attempt, refused: 4xx).",
    ["outcome"],
)
WEBHOOK_RETRIES = Counter("ca_webhook_retries", "Webhook attempts that were retried.")
WEBHOOK_DROPPED = Counter(
    "ca_webhook_events_dropped",
    "Webhook events dropped because the delivery queue of a URL was full.",
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def requester_kind(identity: str) -> str:
    kind = identity.partition(":")[0]
    return kind if kind in REQUESTER_KINDS else "other"


def bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else "other"


def outcome_of(exc: BaseException) -> str:
    """What a failed request counts as."""
    if isinstance(exc, PolicyRejected | Forbidden | Unauthorized):
        return "refused"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, CAError):
        return "rejected"
    return "error"


@contextmanager
def counted(counter: Counter, done: str, **labels: str) -> Iterator[None]:
    """Count one request under ``labels``: ``done`` when the block completes, else the
    outcome of the exception (which is re-raised)."""
    try:
        yield
    except BaseException as exc:
        counter.labels(**labels, outcome=outcome_of(exc)).inc()
        raise
    counter.labels(**labels, outcome=done).inc()


@contextmanager
def timed_crl(authority: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    CRL_BUILD_SECONDS.labels(authority=authority).observe(time.perf_counter() - start)


def ocsp_answer(status: str) -> None:
    OCSP_ANSWERS.labels(status=bounded(status, OCSP_STATUSES)).inc()


def database_error(kind: str) -> None:
    DB_ERRORS.labels(kind=kind).inc()


# ---------------------------------------------------------------------------- at scrape time


@dataclass(frozen=True)
class CRLState:
    authority: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    size: int


@dataclass(frozen=True)
class Expiry:
    authority: str
    kind: str  # "ca" or "leaf"
    serial: str
    not_after: dt.datetime


@dataclass(frozen=True)
class StoreState:
    """What the store says at scrape time (read through Core.catalog by the web layer)."""

    now: dt.datetime
    crls: tuple[CRLState, ...]
    expiries: tuple[Expiry, ...]


class _StoreCollector(Collector):
    """Gauges read from the store when scraped, the same whichever worker or replica answers:
    the CRLs' state and the expiry of CA certificates and of the soonest-expiring leaves."""

    def __init__(self, state: Callable[[], StoreState]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state()
        number = GaugeMetricFamily(
            "ca_crl_number", "Number of the current CRL.", labels=["authority"]
        )
        age = GaugeMetricFamily(
            "ca_crl_age_seconds",
            "Seconds since the current CRL's thisUpdate.",
            labels=["authority"],
        )
        left = GaugeMetricFamily(
            "ca_crl_next_update_seconds",
            "Seconds until the current CRL's nextUpdate (negative: stale).",
            labels=["authority"],
        )
        size = GaugeMetricFamily(
            "ca_crl_size_bytes", "Size of the current CRL (DER).", labels=["authority"]
        )
        for crl in state.crls:
            number.add_metric([crl.authority], crl.number)
            age.add_metric([crl.authority], (state.now - crl.this_update).total_seconds())
            left.add_metric([crl.authority], (crl.next_update - state.now).total_seconds())
            size.add_metric([crl.authority], crl.size)
        expiry = GaugeMetricFamily(
            "ca_certificate_expiry_seconds",
            "Seconds until notAfter of each CA certificate and of the soonest-expiring valid "
            "leaves (metrics_expiry_leaves of them).",
            labels=["authority", "kind", "serial"],
        )
        for item in state.expiries:
            seconds = (item.not_after - state.now).total_seconds()
            expiry.add_metric([item.authority, item.kind, item.serial], seconds)
        yield from (number, age, left, size, expiry)


def render(state: Callable[[], StoreState]) -> tuple[bytes, str]:
    """The text exposition of every metric: this process's (or, under gunicorn, every live
    and past worker's, added up) and the store's gauges."""
    directory = multiprocess_dir()
    if directory is None:
        registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        registry.register(_Registered())
    else:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(_StoreCollector(state))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Registered(Collector):
    """The in-memory metrics of this process (single-process mode)."""

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from REGISTRY.collect()
