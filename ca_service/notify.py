"""Webhooks: certificate events POSTed as signed JSON to the URLs of ``webhook_urls``.

The core publishes an event only after the transaction that made it has committed (a
certificate issued, revoked, or about to expire), and publishing never waits: each URL has a
bounded queue and one delivery thread per process, so a receiver that is slow, down or hanging
delays only its own deliveries. A full queue drops the new event (logged, and counted in
``ca_webhook_events_dropped_total``); a failed delivery is retried with exponential backoff
up to ``webhook_attempts`` times, then logged and counted as failed. Delivery is at least once
while the process lives; events still queued when it ends are lost (the audit log has them).

Each body is signed with HMAC-SHA256 under ``webhook_secret``, over the timestamp and the body
(``X-CA-Timestamp`` + "." + body), so a receiver can check who sent it and refuse a replay of
an old one (see docs/operations.md). A body never holds a key or a token: certificate
metadata only.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from ca_service import metrics
from ca_service.config import Settings
from ca_service.domain import CertificateRecord
from ca_service.errors import ConfigError

log = logging.getLogger(__name__)

ISSUED = "certificate.issued"
REVOKED = "certificate.revoked"
EXPIRING = "certificate.expiring"
SIGNATURE_HEADER = "X-CA-Signature"
TIMESTAMP_HEADER = "X-CA-Timestamp"
MAX_BACKOFF_SECONDS = 600


class Events(Protocol):
    """Where the core tells what happened (after commit); must never block or raise."""

    def publish(
        self, kind: str, record: CertificateRecord, **details: Any
    ) -> None: ...  # pragma: no cover


class NoEvents:
    def publish(self, kind: str, record: CertificateRecord, **details: Any) -> None:
        return None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-CA-Signature`` value: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def payload(kind: str, record: CertificateRecord, at: dt.datetime, **details: Any) -> bytes:
    event = {
        "id": uuid.uuid4().hex,
        "type": kind,
        "time": at.isoformat(),
        "certificate": {
            "authority": record.authority,
            "serial": record.serial,
            "subject": record.subject,
            "common_name": record.common_name,
            "sans": list(record.sans),
            "profile": record.profile,
            "not_before": record.not_before.isoformat(),
            "not_after": record.not_after.isoformat(),
            "fingerprint_sha256": record.fingerprint_sha256,
            "requester": record.requester,
            "status": record.status.value,
        },
        **details,
    }
    return json.dumps(event, default=str).encode()


@dataclass
class _Target:
    """One URL: its queue and the thread that empties it (started in the process that
    publishes first, so a gunicorn worker has its own, not a copy of the master's)."""

    url: str
    queue: queue.Queue[bytes]
    thread: threading.Thread | None = None
    pid: int = 0
    busy: threading.Event = field(default_factory=threading.Event)


class WebhookDispatcher:
    def __init__(
        self,
        urls: tuple[str, ...],
        secret: bytes,
        *,
        attempts: int,
        backoff_seconds: float,
        timeout_seconds: float,
        queue_size: int,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._timeout = timeout_seconds
        self._queue_size = queue_size
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._targets = [_Target(url, queue.Queue(queue_size)) for url in urls]
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def publish(self, kind: str, record: CertificateRecord, **details: Any) -> None:
        body = payload(kind, record, self._now(), **details)
        for target in self._targets:
            self._ensure_thread(target)
            try:
                target.queue.put_nowait(body)
            except queue.Full:
                metrics.WEBHOOK_DROPPED.inc()
                log.warning(
                    "webhook %s: queue full (%d events), dropped %s of %s/%s",
                    _safe(target.url), self._queue_size, kind, record.authority, record.serial,
                )  # fmt: skip

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every queued event was handled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t.queue.unfinished_tasks == 0 for t in self._targets):
                return True
            time.sleep(0.05)
        return False

    def _ensure_thread(self, target: _Target) -> None:
        with self._lock:
            if target.thread is not None and target.pid == os.getpid():
                return
            if target.pid != os.getpid():  # forked: the parent's queue and thread are not ours
                target.queue = queue.Queue(self._queue_size)
            if not any(t.pid == os.getpid() for t in self._targets):
                # A CLI command that issued and exits: its events get a bounded chance to go.
                atexit.register(self.drain, self._timeout)
            target.pid = os.getpid()
            target.thread = threading.Thread(
                target=self._run, args=(target,), name="webhook", daemon=True
            )
            target.thread.start()

    def _run(self, target: _Target) -> None:
        while not self._stop.is_set():
            body = target.queue.get()
            try:
                self._deliver(target.url, body)
            except Exception:  # a bug here must not end the thread: later events still go
                log.exception("webhook %s: delivery failed", _safe(target.url))
            finally:
                target.queue.task_done()

    def _deliver(self, url: str, body: bytes) -> None:
        event = json.loads(body)
        wait = self._backoff
        for attempt in range(1, self._attempts + 1):
            status, error = self._post(url, body)
            if status is not None and 200 <= status < 300:
                metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                return
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                metrics.WEBHOOK_DELIVERIES.labels(outcome="refused").inc()
                log.warning(
                    "webhook %s refused event %s (%s): HTTP %d, not retried",
                    _safe(url), event["id"], event["type"], status,
                )  # fmt: skip
                return
            if attempt == self._attempts:
                break
            metrics.WEBHOOK_RETRIES.inc()
            log.info(
                "webhook %s: attempt %d of %d for event %s failed (%s); retrying in %ss",
                _safe(url), attempt, self._attempts, event["id"], error or f"HTTP {status}", wait,
            )  # fmt: skip
            if self._stop.wait(wait):
                return
            wait = min(wait * 2, MAX_BACKOFF_SECONDS)
        metrics.WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
        log.error(
            "webhook %s: event %s (%s) not delivered after %d attempts",
            _safe(url), event["id"], event["type"], self._attempts,
        )  # fmt: skip

    def _post(self, url: str, body: bytes) -> tuple[int | None, str | None]:
        """One attempt: the status, or None and why. Redirects are not followed (the
        signature is for this URL's receiver)."""
        parts = urlsplit(url)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ca-service-webhook",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        conn: http.client.HTTPConnection
        host = parts.hostname or ""
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, parts.port, timeout=self._timeout)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self._timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(64 * 1024)
            return response.status, None
        except (OSError, http.client.HTTPException) as exc:
            return None, type(exc).__name__ + (f": {exc}" if str(exc) else "")
        finally:
            conn.close()


def _safe(url: str) -> str:
    """A URL for the log, without credentials or a query (either may hold a receiver's key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def from_settings(settings: Settings) -> Events:
    """The dispatcher ``webhook_urls`` asks for, or one that drops every event."""
    if not settings.webhook_urls:
        return NoEvents()
    if not settings.webhook_secret:
        raise ConfigError(
            "webhook_urls is set but no webhook secret: set CA_WEBHOOK_SECRET or "
            "CA_WEBHOOK_SECRET_FILE (the key that signs every webhook body)"
        )
    return WebhookDispatcher(
        settings.webhook_urls,
        settings.webhook_secret,
        attempts=settings.webhook_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        queue_size=settings.webhook_queue_size,
    )
