"""Webhooks through a real gunicorn with two workers (issue 14 item 7), to real loopback
receivers: one checks every HMAC signature (and that the certificate is in the store when the
event arrives), one fails the first attempts of each event, one hangs. Issuance never waits
for any of them; a full queue drops events, counted; certificate.expiring comes once per
certificate, whichever worker's scheduler finds it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import database
from tests.live import LiveServer, issue, start_server

from .observability import Receiver, scrape, value, wait_for

SECRET = b"webhook-hmac-key-for-tests-0123456789"


@dataclass
class Setup:
    live: LiveServer
    good: Receiver
    flaky: Receiver
    hang: Receiver


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hooks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    secret_file = base / "webhook-secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o600)
    good = Receiver(SECRET).start()
    flaky = Receiver(SECRET, fail_first=2).start()
    hang = Receiver(SECRET, hang=True, hang_seconds=60).start()
    env = {
        "CA_WEBHOOK_URLS": ",".join((good.url, flaky.url, hang.url)),
        "CA_WEBHOOK_SECRET_FILE": str(secret_file),
        "CA_WEBHOOK_ATTEMPTS": "4",
        "CA_WEBHOOK_BACKOFF_SECONDS": "1",
        "CA_WEBHOOK_TIMEOUT_SECONDS": "5",
        "CA_WEBHOOK_QUEUE_SIZE": "2",
        "CA_WEBHOOK_EXPIRY_DAYS": "30",
        "CA_EXPIRY_CHECK_SECONDS": "1",
        "CA_METRICS_ENABLED": "true",
    }
    try:
        with database(request.param, base) as url:
            live = start_server(base / "data", url, workers=2, extra_env=env)
            good.inspect = lambda body: _stored_status(live, body)
            try:
                yield Setup(live, good, flaky, hang)
            finally:
                hang.release.set()  # so that the workers' last deliveries end
                live.stop()
    finally:
        for receiver in (good, flaky, hang):
            receiver.stop()


def _stored_status(live: LiveServer, body: dict[str, Any]) -> str | None:
    """Asked by the receiver while the delivery is held: the certificate as the store has it."""
    serial = body["certificate"]["serial"]
    reply = live.request(
        "GET", f"/api/v1/certificates/{serial}", token=live.admin_token, check_spec=False
    )
    return str(reply.json["status"]) if reply.status == 200 else None


def test_issued_event_is_signed_and_sent_after_commit(hooks: Setup) -> None:
    reply = issue(hooks.live, common_name="hook.example.test", validity_days=90)
    serial = reply.json["serial"]
    (delivery,) = wait_for(lambda: hooks.good.events("certificate.issued", serial), "issued")
    assert delivery.signature_ok
    assert abs(delivery.timestamp - time.time()) < 300
    assert delivery.seen == "valid"  # in the store when the event arrived
    certificate = delivery.body["certificate"]
    assert certificate["authority"] == "default" and certificate["profile"] == "server"
    assert (
        certificate["sans"] == reply.json["sans"] and "dns:hook.example.test" in reply.json["sans"]
    )
    assert certificate["requester"] == reply.json["requester"]
    assert "private_key" not in delivery.body and "PRIVATE" not in str(delivery.body)


def test_a_failing_receiver_gets_retries_with_backoff(hooks: Setup) -> None:
    serial = issue(hooks.live, common_name="retry.example.test").json["serial"]
    (delivery,) = wait_for(
        lambda: hooks.flaky.events("certificate.issued", serial), "the retried delivery", 30
    )
    assert delivery.signature_ok  # each attempt is signed anew
    # Refused twice (503), accepted at the third attempt, then never sent again.
    assert hooks.flaky.attempts[delivery.body["id"]] == 3


def test_revoked_event_names_the_reason(hooks: Setup) -> None:
    serial = issue(hooks.live, common_name="gone.example.test").json["serial"]
    reply = hooks.live.request(
        "POST",
        f"/api/v1/certificates/{serial}/revoke",
        token=hooks.live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert reply.status == 200
    (delivery,) = wait_for(lambda: hooks.good.events("certificate.revoked", serial), "revoked")
    assert delivery.signature_ok and delivery.body["reason"] == "keyCompromise"
    assert delivery.seen == "revoked"
    assert delivery.body["certificate"]["status"] == "revoked"


def test_certificate_expiring_is_sent_once_per_certificate(hooks: Setup) -> None:
    first = issue(hooks.live, common_name="soon1.example.test", validity_days=5).json["serial"]
    (event,) = wait_for(lambda: hooks.good.events("certificate.expiring", first), "expiring")
    assert event.signature_ok
    assert 0 < event.body["expires_in_seconds"] <= 5 * 86400
    # Two more, each found by a later run of a scheduler: by then the first was looked at
    # again (by both workers, every second) and must not have been sent twice.
    for n in (2, 3):
        serial = issue(hooks.live, common_name=f"soon{n}.example.test", validity_days=5).json[
            "serial"
        ]
        wait_for(lambda s=serial: hooks.good.events("certificate.expiring", s), f"expiring {n}")
    assert len(hooks.good.events("certificate.expiring", first)) == 1
    audit = hooks.live.request(
        "GET", "/api/v1/audit?action=certificate.expiring&limit=500", token=hooks.live.admin_token
    )
    targets = [e["target"] for e in audit.json["items"]]
    assert targets.count(f"default/{first}") == 1
    # A certificate far from expiry (90 days, the profile's default) got none.
    long_lived = hooks.good.events("certificate.issued")
    expiring = {d.body["certificate"]["serial"] for d in hooks.good.events("certificate.expiring")}
    assert any(d.body["certificate"]["serial"] not in expiring for d in long_lived)


def test_a_hanging_receiver_never_holds_up_issuance(hooks: Setup) -> None:
    issue(hooks.live, common_name="before-hang.example.test")
    wait_for(lambda: hooks.hang.blocked >= 1, "the hanging receiver to hold a request")
    started = hooks.hang.blocked
    reply = issue(hooks.live, common_name="during-hang.example.test")
    # The answer came while the receiver still holds what it was sent.
    assert reply.status == 201
    assert not hooks.hang.release.is_set() and hooks.hang.blocked >= 1 and started >= 1
    wait_for(
        lambda: hooks.good.events("certificate.issued", reply.json["serial"]),
        "the other receivers to get the event all the same",
    )


def test_a_full_queue_drops_events_and_counts_them(hooks: Setup) -> None:
    # The hanging receiver holds one event per worker; each worker queues two more for it.
    # Eight issuances are more than two workers can hold, so some are dropped.
    wait_for(lambda: hooks.hang.blocked >= 1, "the hanging receiver to hold a request")
    for n in range(8):
        issue(hooks.live, common_name=f"burst{n}.example.test")
    dropped = wait_for(
        lambda: value(scrape(hooks.live), "ca_webhook_events_dropped_total"), "a dropped event"
    )
    assert dropped >= 1
    assert "queue full" in hooks.live.log()
    assert "Traceback" not in hooks.live.log()
    assert not Path(hooks.live.log_path).read_text().count(SECRET.decode())
