"""The audit log misses no refusal and cannot be flooded (issue 9, item 7).

Before: an issuer revoking a certificate it did not issue (403) and every policy refusal
(``caller.allowed_names``, ``caller.authorities``, ...) left no trace, while every
unauthenticated request wrote a row of its own (2,116 anonymous GET /api/v1/tokens in 5 s added
2,116 rows). Now each refusal of an authenticated caller is one event naming its rule, in a
transaction of its own, and unauthenticated failures are counted in one event per client address,
minute and server process (ca_service.refusals).
"""

from __future__ import annotations

import datetime as dt
import http.client
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ca_service.clock import FixedClock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import Actor, CallerPolicy, RevocationReason
from ca_service.errors import Forbidden, PolicyRejected, Unauthorized
from ca_service.refusals import MAX_KEYS, OTHER, OVERFLOW, WINDOW_SECONDS, RefusalLog
from ca_service.storage.db import unit_of_work
from ca_service.storage.models import AuditRow
from ca_service.storage.repositories import AuditRepository

from ..conftest import ADMIN
from ..helpers import cli_run, count_rows, one_error_line
from ..live import LiveServer, assert_problem, create_token, db_engine, issue, server_tracebacks

AUDIT = AuditRow.__table__
WORKERS = 2  # tests/conftest.py live: `ca-service serve` with two gunicorn workers
FLOOD = 2000


def _rows(live: LiveServer, *where: Any) -> list[Any]:
    """Audit rows straight from the server's database (details decoded on both backends)."""
    engine = db_engine(live)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(AUDIT).where(*where).order_by(AUDIT.c.id)))
    finally:
        engine.dispose()


def _anonymous(live: LiveServer) -> dict[int, int]:
    """id -> count of each counted refusal of anonymous callers from 127.0.0.1."""
    rows = _rows(
        live,
        AUDIT.c.action == "auth.refused",
        AUDIT.c.actor == "anonymous",
        AUDIT.c.client_address == "127.0.0.1",
    )
    return {r.id: int(r.details["count"]) for r in rows}


def _keep_alive_requests(live: LiveServer, n: int, path: str) -> Iterator[int]:
    """``n`` anonymous GETs over two keep-alive connections (so both workers may serve them);
    yields each status. Bounded: a connection the server closed is reopened, at most 50 times,
    and the whole run stops after 240 s."""
    conns = [http.client.HTTPConnection("127.0.0.1", live.port, timeout=30) for _ in range(2)]
    reopened = 0
    deadline = time.monotonic() + 240
    try:
        for i in range(n):
            assert time.monotonic() < deadline, f"only {i} of {n} requests in 240 s"
            k = i % 2
            while True:
                try:
                    conns[k].request("GET", path)
                    resp = conns[k].getresponse()
                    resp.read()
                    break
                except (http.client.RemoteDisconnected, ConnectionError):
                    reopened += 1
                    assert reopened <= 50, "the server keeps closing keep-alive connections"
                    conns[k].close()
                    conns[k] = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
            yield resp.status
    finally:
        for conn in conns:
            conn.close()


def test_an_anonymous_flood_is_counted_in_a_bounded_number_of_rows(live: LiveServer) -> None:
    before = _anonymous(live)
    rows_before = len(_rows(live))
    tracebacks = server_tracebacks(live)
    first_window = int(time.time()) // WINDOW_SECONDS
    statuses = list(_keep_alive_requests(live, FLOOD, "/api/v1/tokens"))
    last_window = int(time.time()) // WINDOW_SECONDS
    assert statuses == [401] * FLOOD
    # At most one row per client address (one here), minute and worker; the old code: 2,000.
    bound = WORKERS * (last_window - first_window + 1)
    assert len(_rows(live)) - rows_before <= bound
    # Nothing is lost: the counts add up to the requests sent, once the last second of counts
    # is written (each worker writes a pending count within a second; look a bounded while).
    added = -1
    for _ in range(100):
        after = _anonymous(live)
        assert len(set(after) - set(before)) <= bound
        added = sum(after.values()) - sum(before.values())
        if added >= FLOOD:
            break
        time.sleep(0.1)
    assert added == FLOOD
    newest = _rows(live, AUDIT.c.id == max(after))[0]
    assert newest.target == "GET /api/v1/tokens" and newest.request_id
    assert newest.details["targets"].get("GET /api/v1/tokens")
    assert "Authorization" in newest.details["reason"]
    assert server_tracebacks(live) == tracebacks


def _refusal(live: LiveServer, request_id: str) -> Any:
    """The one audit row the refused request ``request_id`` wrote: it wrote nothing else."""
    rows = _rows(live, AUDIT.c.request_id == request_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row.client_address == "127.0.0.1"
    assert abs(dt.datetime.now(dt.UTC) - row.at.replace(tzinfo=dt.UTC)) < dt.timedelta(minutes=10)
    return row


def _refused(
    live: LiveServer, method: str, path: str, token: str, body: Any = None
) -> tuple[dict[str, Any], str]:
    rid = f"refusal-{secrets.token_hex(6)}"
    reply = live.request(method, path, token=token, body=body, headers={"X-Request-Id": rid})
    return assert_problem(reply, 403), rid


def test_every_authenticated_refusal_is_one_event_with_its_rule(live: LiveServer) -> None:
    reader, reader_id = create_token(live, "reader", name="refused-reader")
    mine, mine_id = create_token(live, "issuer", name="owner", allowed_names=["*.rf.example.test"])
    other, other_id = create_token(
        live,
        "issuer",
        name="other",
        allowed_names=["*.rf.example.test"],
        profiles=["server"],
        max_validity_days=30,
    )
    elsewhere, elsewhere_id = create_token(
        live, "issuer", name="elsewhere", allowed_names=["*.rf.example.test"],
        authorities=["default-root"],
    )  # fmt: skip
    serial = issue(live, mine, common_name="a.rf.example.test").json["serial"]
    certificates = len(_rows(live, AUDIT.c.action == "certificate.issue"))

    # The wrong role.
    problem, rid = _refused(live, "POST", "/api/v1/certificates", reader, {"common_name": "x"})
    row = _refusal(live, rid)
    assert (row.action, row.actor, row.target) == (
        "auth.refused", f"token:{reader_id}", "POST /api/v1/certificates",
    )  # fmt: skip
    assert row.details["rule"] == "caller.role" == problem["rule"]

    # An issuer revoking a certificate another issuer issued: refused, audited, not revoked.
    path = f"/api/v1/certificates/{serial}/revoke"
    problem, rid = _refused(live, "POST", path, other, {"reason": "keyCompromise"})
    row = _refusal(live, rid)
    assert (row.action, row.actor, row.target) == (
        "auth.refused", f"token:{other_id}", f"default/{serial}",
    )  # fmt: skip
    assert row.details["rule"] == "caller.own_certificates" == problem["rule"]
    assert row.details["attempted"] == "certificate.revoke"
    status = live.request("GET", f"/api/v1/certificates/{serial}", token=live.admin_token)
    assert status.json["status"] == "valid"

    # Renewing it: the same rule.
    problem, rid = _refused(live, "POST", f"/api/v1/certificates/{serial}/renew", other)
    row = _refusal(live, rid)
    assert row.actor == f"token:{other_id}" and row.details["rule"] == "caller.own_certificates"

    # Policy rules, each named.
    cases: list[tuple[str, dict[str, Any], str]] = [
        (other, {"common_name": "www.bank.example"}, "caller.allowed_names"),
        (elsewhere, {"common_name": "b.rf.example.test"}, "caller.authorities"),
        (other, {"common_name": "c.rf.example.test", "profile": "client"}, "caller.profiles"),
        (other, {"common_name": "d.rf.example.test", "validity_days": 90}, "caller.max_validity"),
        (other, {"common_name": "*.rf.example.test"}, "profile.wildcards"),
        (live.admin_token, {"common_name": "e.rf.example.test", "authority": "default-root"},
         "authority.is_root"),
    ]  # fmt: skip
    actors = {other: f"token:{other_id}", elsewhere: f"token:{elsewhere_id}"}
    for token, body, rule in cases:
        problem, rid = _refused(live, "POST", "/api/v1/certificates", token, body)
        assert problem["rule"] == rule, problem
        row = _refusal(live, rid)
        assert row.action == "policy.refused"
        assert row.actor == actors.get(token, row.actor)
        assert row.details["rule"] == rule and row.details["attempted"] == "certificate.issue"
        assert rule in row.details["reason"]
    # None of them issued anything.
    assert len(_rows(live, AUDIT.c.action == "certificate.issue")) == certificates
    _ = mine_id


def test_a_refusal_in_the_cli_is_audited_too(settings: Settings, ca: Core) -> None:
    refused = cli_run(settings, ["issue", "--cn", "x.example.test", "--days", "9999", "--out", "x"])
    assert "profile.max_validity" in one_error_line(refused)
    with unit_of_work(ca.db) as s:
        [event] = AuditRepository(s).list(action="policy.refused")
    assert event.actor.startswith("cli:")
    assert event.details is not None and event.details["rule"] == "profile.max_validity"
    assert event.details["attempted"] == "certificate.issue" and event.target == "default"


def test_a_refusal_is_recorded_once_whichever_layers_see_it(ca: Core) -> None:
    issuer = Actor("token:x", "rid-1", "192.0.2.1", CallerPolicy(allowed_names=("*.a.test",)))
    with pytest.raises(PolicyRejected) as refused:
        ca.issue_with_new_key(issuer, common_name="b.example.test")
    # A front end that sees the same exception (as web/auth.require does) adds nothing.
    ca.refusals.record(issuer, "POST /api/v1/certificates", refused.value)
    others = ca.issue_with_new_key(ADMIN, common_name="own.a.test").record.serial
    with pytest.raises(Forbidden):
        ca.revoke(others, RevocationReason.UNSPECIFIED, issuer, requester_only=True)
    with unit_of_work(ca.db) as s:
        events = AuditRepository(s).list(actor="token:x")
    assert [(e.action, (e.details or {})["rule"]) for e in events] == [
        ("auth.refused", "caller.own_certificates"),
        ("policy.refused", "caller.allowed_names"),
    ]
    assert all(e.request_id == "rid-1" and e.client_address == "192.0.2.1" for e in events)
    assert count_rows(ca.db, "certificates") == 3  # the CA certificates and ``own.a.test``


def test_unauthenticated_failures_are_counted_per_address_minute_and_identity(
    ca: Core,
) -> None:
    clock = FixedClock(dt.datetime(2026, 1, 1, 12, 0, 5, tzinfo=dt.UTC))
    log = RefusalLog(ca.db, clock.now, flush_seconds=3600, max_buckets=3)

    def fail(address: str, n: int, identity: str = "anonymous", reason: str = "no token") -> None:
        for i in range(n):
            log.record(Actor(identity, f"r{i}", address), f"GET /p{i % 20}", Unauthorized(reason))

    fail("192.0.2.1", 50)
    fail("192.0.2.1", 5, identity="cert:default/ab")
    fail("192.0.2.2", 1, reason="unknown bearer token")

    def events() -> list[Any]:
        with unit_of_work(ca.db) as s:
            return sorted(AuditRepository(s).list(action="auth.refused"), key=lambda e: e.id or 0)

    # The first failure of each is written at once (with its request id); later ones wait for
    # the flush (an hour away here), so 56 failures wrote 3 rows and counted 3.
    first = events()
    assert [(e.actor, e.client_address, e.request_id) for e in first] == [
        ("anonymous", "192.0.2.1", "r0"),
        ("cert:default/ab", "192.0.2.1", "r0"),
        ("anonymous", "192.0.2.2", "r0"),
    ]
    log.flush()
    counted = events()
    assert [e.id for e in counted] == [e.id for e in first]  # updated in place
    details = [e.details or {} for e in counted]
    assert [d["count"] for d in details] == [50, 5, 1]
    # At most MAX_KEYS distinct paths (or reasons) each; the rest are counted together.
    assert len(details[0]["targets"]) == MAX_KEYS + 1
    # (/p0 to /p7, three times each, are kept; /p8 to /p19 are the other 26)
    assert sum(details[0]["targets"].values()) == 50 and details[0]["targets"][OTHER] == 26
    assert details[0]["window"] == "2026-01-01T12:00:00Z"
    assert details[2]["reason"] == "unknown bearer token"

    # A fourth address in the same minute goes to the one overflow event (max_buckets=3).
    fail("192.0.2.3", 4)
    fail("192.0.2.4", 2)
    # The next minute starts new events.
    clock.advance(dt.timedelta(seconds=WINDOW_SECONDS))
    fail("192.0.2.1", 2)
    log.flush()
    later = events()[len(first) :]
    assert [(e.actor, e.client_address, (e.details or {})["count"]) for e in later] == [
        (OVERFLOW, OVERFLOW, 6),
        ("anonymous", "192.0.2.1", 2),
    ]
    assert (later[1].details or {})["window"] == "2026-01-01T12:01:00Z"


def test_pending_counts_are_written_by_the_timer(ca: Core) -> None:
    log = RefusalLog(ca.db, lambda: dt.datetime.now(dt.UTC), flush_seconds=0.05)
    for i in range(10):
        log.unauthenticated("anonymous", "GET /x", "no token", f"r{i}", "192.0.2.9")
    for _ in range(200):  # bounded: 10 s
        with unit_of_work(ca.db) as s:
            [event] = AuditRepository(s).list(action="auth.refused")
        if (event.details or {})["count"] == 10:
            break
        time.sleep(0.05)
    assert (event.details or {})["count"] == 10


def test_renewal_refusal_targets_are_certificates(tmp_path: Path) -> None:
    """A guard against a target that names nothing: the serial is normalised, as in events."""
    from ..helpers import module_ca

    ca = module_ca(tmp_path)
    serial = ca.issue_with_new_key(ADMIN, common_name="t.example.test").record.serial
    issuer = Actor("token:y", policy=CallerPolicy(allowed_names=("*.other.test",)))
    with pytest.raises(PolicyRejected):
        ca.renew(serial.upper(), issuer)
    with unit_of_work(ca.db) as s:
        [event] = AuditRepository(s).list(action="policy.refused")
    assert event.target == serial and (event.details or {})["attempted"] == "certificate.renew"
