"""What each HTTP operation promises, declared once on its view: the request model, the answers,
and the errors it may raise. ``operation`` both enforces the request part (the body is validated
by its model before the view runs) and records all of it for ``web/openapi.py``, which generates
the OpenAPI document from these declarations and the app's URL map; so a handler cannot accept
a body its document does not describe, nor a route exist without an entry in the document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from flask import Response
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException

from ca_service.errors import CAError
from ca_service.web.body import json_model

F = TypeVar("F", bound=Callable[..., Any])

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


def answer(model: BaseModel, status: int = 200) -> Response:
    """``model`` as the JSON body of an answer, without the optional members that were not
    given (the private key of a certificate whose key was not made here, say).

    pydantic-core writes the JSON itself: the same JSON that ``api_models.as_json`` and Flask's
    ``jsonify`` made in two passes through Python objects (non-ASCII text now as UTF-8 rather
    than ``\\u`` escapes), in 16 us instead of 28 for a new certificate's answer, on every
    issuance (bench/PROFILES.md, session 12).
    """
    body = model.model_dump_json(exclude_unset=True) + "\n"
    return Response(body, status=status, mimetype=JSON)


@dataclass(frozen=True)
class Answer:
    """One documented answer: a JSON ``model``, and/or other ``media`` (type -> schema)."""

    description: str
    model: type[BaseModel] | None = None
    media: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    # The media type of ``model`` (problem+json for a view's own error answer).
    model_media: str = JSON


@dataclass(frozen=True)
class Contract:
    summary: str
    tags: tuple[str, ...]
    answers: dict[int, Answer]
    description: str | None = None
    body: type[BaseModel] | None = None
    body_required: bool = False
    # CAError or werkzeug exception classes the view (or the core under it) may raise.
    raises: tuple[type[Exception], ...] = ()
    query: tuple[dict[str, Any], ...] = ()
    # Statuses answered before any view runs, for this route only (e.g. a 404 from routing).
    also: tuple[int, ...] = ()


def operation(
    summary: str,
    *,
    tags: tuple[str, ...],
    answers: dict[int, Answer],
    description: str | None = None,
    body: type[BaseModel] | None = None,
    body_required: bool = False,
    raises: tuple[type[Exception], ...] = (),
    query: tuple[dict[str, Any], ...] = (),
    also: tuple[int, ...] = (),
) -> Callable[[F], F]:
    """Declare a view's contract; with ``body``, the view gets the validated model as ``body``.

    Put it below ``@require`` so that a caller is authenticated before its body is read.
    """
    contract = Contract(
        summary=summary,
        tags=tags,
        answers=answers,
        description=description,
        body=body,
        body_required=body_required,
        raises=raises,
        query=query,
        also=also,
    )

    def decorator(view: F) -> F:
        if body is None:
            target: Any = view
        else:
            model = body

            @wraps(view)
            def target(*args: Any, **kwargs: Any) -> Any:
                return view(*args, body=json_model(model, required=body_required), **kwargs)

        target.ca_contract = contract
        return target  # type: ignore[no-any-return]

    return decorator


def contract_of(view: Callable[..., Any]) -> Contract | None:
    found = getattr(view, "ca_contract", None)
    assert found is None or isinstance(found, Contract)
    return found


def status_of_class(exc: type[Exception]) -> int:
    """The HTTP status an exception class is answered with (web/problems.py decides)."""
    from ca_service.web.problems import status_for

    if issubclass(exc, CAError):
        return status_for(exc)
    if issubclass(exc, HTTPException) and exc.code is not None:
        return exc.code
    raise TypeError(f"{exc.__name__} has no HTTP status")


def error_statuses(view: Callable[..., Any]) -> set[int]:
    """Every error status the view can answer, from its decorators: authentication and role
    (``@require``), the body's parsing (``body=``) and what it declares it ``raises``."""
    contract = contract_of(view)
    statuses: set[int] = set()
    if hasattr(view, "ca_role"):
        statuses |= {401, 403}
    if contract is None:
        return statuses
    if contract.body is not None:
        statuses |= {400, 413, 415}
    statuses |= {status_of_class(exc) for exc in contract.raises}
    statuses |= set(contract.also)
    return statuses


def query_param(
    name: str, description: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }
