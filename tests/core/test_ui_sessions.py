"""The admin UI's sessions (core/ui_sessions.py) on SQLite and PostgreSQL, with a clock that
only moves when told: the idle and absolute ends at their exact boundaries, the token joined
on every resume, refusals, and only the id's hash in the store."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import sqlalchemy as sa

from ca_service.clock import FixedClock
from ca_service.core.facade import Core
from ca_service.core.ui_sessions import NOT_ACCEPTED, UISessions, Where
from ca_service.domain import Actor, CallerPolicy, Role
from ca_service.errors import Forbidden, Unauthorized
from ca_service.policy.authorization import build_policy
from ca_service.tokens import TokenService

WHERE = Where("POST /ui/login", "rid-1", "127.0.0.1")
ACTOR = Actor("test:admin")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC))


@pytest.fixture
def service(ca: Core, clock: FixedClock) -> tuple[UISessions, TokenService]:
    tokens = TokenService(ca.db, clock, ca.refusals)
    return UISessions(ca.db, clock, tokens, idle_minutes=30, max_hours=12), tokens


def _rows(ca: Core) -> list[tuple[str, str]]:
    """What the table holds: the id's hash and the CSRF secret, nothing else to find."""
    with ca.db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id_sha256, csrf FROM ui_sessions"))
        return [(str(a), str(b)) for a, b in rows]


def test_idle_and_absolute_ends(
    ca: Core, clock: FixedClock, service: tuple[UISessions, TokenService]
) -> None:
    sessions, tokens = service
    plain, record = tokens.create("ui", Role.READER, CallerPolicy(), ACTOR)
    session_id, session = sessions.sign_in(plain, WHERE)
    assert session.token.id == record.id and len(session_id) == 43
    assert _rows(ca) == [(hashlib.sha256(session_id.encode()).hexdigest(), session.csrf)]

    # Idle: alive one second before 30 minutes without a request, gone at 30 minutes.
    clock.advance(dt.timedelta(minutes=30) - dt.timedelta(seconds=1))
    assert sessions.resume(session_id) is not None  # and this request counts as use
    clock.advance(dt.timedelta(minutes=30) - dt.timedelta(seconds=1))
    assert sessions.resume(session_id) is not None
    clock.advance(dt.timedelta(minutes=30))
    assert sessions.resume(session_id) is None
    assert _rows(ca) == []

    # Absolute: used every 20 minutes, still over 12 hours after sign-in.
    session_id, session = sessions.sign_in(plain, WHERE)
    start = clock.now()
    while clock.now() - start < dt.timedelta(hours=12) - dt.timedelta(minutes=20):
        clock.advance(dt.timedelta(minutes=20))
        assert sessions.resume(session_id) is not None, clock.now() - start
    clock.at = start + dt.timedelta(hours=12)
    assert sessions.resume(session_id) is None


def test_the_token_is_joined_on_every_resume(
    clock: FixedClock, service: tuple[UISessions, TokenService]
) -> None:
    sessions, tokens = service
    plain, record = tokens.create(
        "ui", Role.ADMIN, CallerPolicy.unrestricted(), ACTOR,
        expires_at=clock.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    one, _ = sessions.sign_in(plain, WHERE)
    two, _ = sessions.sign_in(plain, WHERE)
    assert one != two
    clock.advance(dt.timedelta(minutes=10))
    tokens.revoke(record.id, ACTOR)
    assert sessions.resume(one) is None and sessions.resume(two) is None
    with pytest.raises(Unauthorized) as refused:
        sessions.sign_in(plain, WHERE)
    assert refused.value.detail == NOT_ACCEPTED

    later, _ = tokens.create(
        "ui2", Role.ADMIN, CallerPolicy.unrestricted(), ACTOR,
        expires_at=clock.now() + dt.timedelta(minutes=5),
    )  # fmt: skip
    three, _ = sessions.sign_in(later, WHERE)
    clock.advance(dt.timedelta(minutes=5))
    assert sessions.resume(three) is None


def test_refusals_and_sign_out(ca: Core, service: tuple[UISessions, TokenService]) -> None:
    sessions, tokens = service
    issuer, issuer_record = tokens.create(
        "ci", Role.ISSUER, build_policy(Role.ISSUER, names=["*.ci.example.test"]), ACTOR
    )
    with pytest.raises(Forbidden) as refused:
        sessions.sign_in(issuer, WHERE)
    assert refused.value.rule == "ui.role" and refused.value.audited
    events = ca.catalog.audit_page(actor=f"token:{issuer_record.id}", action="auth.refused")[0]
    assert [e.target for e in events] == ["POST /ui/login"]
    assert events[0].details and events[0].details["attempted"] == "ui.sign_in"
    for bad in ("", "cas_x", "a.b.c", "cas_0123456789abcdef_" + "A" * 43):
        with pytest.raises(Unauthorized):
            sessions.sign_in(bad, WHERE)
    assert _rows(ca) == []
    assert sessions.resume("") is None and sessions.resume("x" * 500) is None

    plain, _ = tokens.create("ui", Role.READER, CallerPolicy(), ACTOR)
    session_id, _ = sessions.sign_in(plain, WHERE)
    sessions.sign_out(session_id)
    assert sessions.resume(session_id) is None and _rows(ca) == []
