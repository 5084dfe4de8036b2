"""Time behind a tiny protocol, so tests can freeze or move it."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Return the current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        # Whole seconds: X.509 times carry no fraction, and stored times must equal encoded ones.
        return dt.datetime.now(dt.UTC).replace(microsecond=0)


class FixedClock:
    """A clock for tests: it only moves when told to."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at.astimezone(dt.UTC).replace(microsecond=0)

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, delta: dt.timedelta) -> None:
        self.at = self.at + delta


def as_utc(value: dt.datetime) -> dt.datetime:
    """A stored time as aware UTC: SQLite returns naive values and psycopg fixed offsets."""
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
