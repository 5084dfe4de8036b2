"""gunicorn's threaded worker, taking its share of new connections rather than all of them.

Every worker of a gunicorn server polls the one listening socket, and the first to wake accepts
what is waiting, one connection per poll, until the backlog is empty. A client that opens its
pool of keep-alive connections at once (wrk, a load balancer's pool, a Java or Go HTTP client)
then often lands them all on one worker, which serves them on one core under its interpreter
lock while the other workers idle for the life of those connections: measured on 2 workers
with 8 connections opened together, all 8 on one worker in one try out of three, and nonce-less
OCSP answered 1,562/s that way against 3,557-4,193/s with the connections spread
(bench/PROFILES.md, "OCSP fast path: connections spread over the workers").

So after each accept a worker stops polling the listener for a moment that grows with the
connections it holds (``hold``), and a connection that arrives meanwhile goes to a worker that
is polling. A lone worker, or one whose peers all hold, takes the connection once its pause
ends: the pause delays the first request of a new connection by at most ``MAX_HOLD_S``, never a
request on a connection already open, which the worker keeps serving throughout.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

# A pause of BASE + PER_CONNECTION x the connections held, at most MAX: small beside a
# connection's life, long beside the microseconds a peer needs to wake and take the next one.
BASE_HOLD_S = 0.0005
PER_CONNECTION_HOLD_S = 0.00025
MAX_HOLD_S = 0.01


def hold(connections: int) -> float:
    """Seconds a worker that now holds ``connections`` leaves new ones to its peers."""
    return min(MAX_HOLD_S, BASE_HOLD_S + PER_CONNECTION_HOLD_S * max(0, connections))


def supported() -> bool:
    """This gunicorn's threaded worker has the accept switch this class relies on (27 has it);
    without it the configuration uses gunicorn's own worker unchanged."""
    return all(
        hasattr(ThreadWorker, name)
        for name in ("set_accept_enabled", "accept", "wait_for_and_dispatch_events")
    )


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread`` with a pause after each accept (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused_until = 0.0

    def accept(self, listener: Any) -> None:
        held = self.nr_conns
        super().accept(listener)
        if self.nr_conns > held and self.alive:
            self._paused_until = time.monotonic() + hold(self.nr_conns)
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        # The run loop asks to accept again on every turn; within a pause the answer is not yet.
        if enabled and self.alive and time.monotonic() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake when the pause ends, so the run loop's next turn polls the listener again.
        if not self._accepting and self._paused_until:
            remaining = self._paused_until - time.monotonic()
            if remaining <= 0:
                self._paused_until = 0.0
            else:
                timeout = min(timeout, remaining)
        super().wait_for_and_dispatch_events(timeout)
