"""Auditing refusals at the core's door: a method of the facade that a caller is refused (a
policy rule, or a certificate that is not its own) writes one audit event with the rule,
whichever front end called (API, CLI, mutual TLS).

The event is written by ca_service.refusals in a transaction of its own; this module must
never swallow the refusal, and never audit what is not a refusal.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ca_service.clock import Clock
from ca_service.core.context import normalize_serial
from ca_service.core.issued_records import confirm_in_store
from ca_service.domain import Actor
from ca_service.errors import CAError, Forbidden, PolicyRejected
from ca_service.refusals import RefusalLog
from ca_service.storage.db import Database


class Audited(Protocol):
    """What the decorated methods' owner (the facade) offers: its refusal log and the default
    authority that an issuance without one names."""

    refusals: RefusalLog

    @property
    def db(self) -> Database: ...

    @property
    def clock(self) -> Clock: ...

    def default_authority(self) -> str: ...


S = TypeVar("S", bound=Audited)
P = ParamSpec("P")
R = TypeVar("R")


def audits_refusals(
    attempted: str, target: Callable[[S, dict[str, Any]], str]
) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """A refusal escaping the method (a policy rule, or a caller acting on a certificate that
    is not its own) is audited once, with its rule, in a transaction of its own (the refused
    action has written nothing), whichever front end called: API, CLI or mutual TLS."""

    def decorate(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def wrapper(core: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(core, *args, **kwargs)
            except (PolicyRejected, Forbidden) as exc:
                arguments = signature.bind(core, *args, **kwargs).arguments
                actor = arguments["actor"]
                assert isinstance(actor, Actor)
                if actor.confirm is not None and not actor.confirm.confirmed:
                    # A token from a cache that a revocation may have ended: a revoked token
                    # is refused as such (Unauthorized), never audited with a policy rule.
                    confirm_in_store(core.db, actor.confirm, core.clock.now())
                core.refusals.record(actor, target(core, arguments), exc, attempted=attempted)
                raise

        return wrapper

    return decorate


def issuing_target(core: S, arguments: dict[str, Any]) -> str:
    """The authority asked to issue (refusals of an issuance have no serial yet)."""
    if arguments.get("authority"):
        return str(arguments["authority"])
    try:
        return core.default_authority()
    except CAError:
        return "(default)"


def certificate_target(_: S, arguments: dict[str, Any]) -> str:
    """authority/serial, as certificate events name their target."""
    serial = str(arguments["serial"])
    with suppress(CAError):
        serial = normalize_serial(serial)
    authority = arguments.get("authority")
    return f"{authority}/{serial}" if authority else serial
