"""Strict JSON request bodies: unknown fields and wrong types are refused, not ignored."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from ca_service.errors import BadRequest


def json_object(
    fields: dict[str, type | tuple[type, ...]], *, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The body as a dict, checked against ``fields`` (name -> accepted types)."""
    mimetype = request.mimetype
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("the request body is empty; send a JSON object")
        return {}
    if mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the request body is not valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    for name in required:
        if data.get(name) is None:
            raise BadRequest(f"the field {name!r} is required")
    for name, value in data.items():
        if value is None:
            continue
        expected = fields[name]
        # bool is an int in Python; JSON true is never a valid number here.
        if isinstance(value, bool) and expected is not bool and bool not in _as_tuple(expected):
            raise BadRequest(f"the field {name!r} has the wrong type")
        if not isinstance(value, expected):
            raise BadRequest(f"the field {name!r} has the wrong type")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise BadRequest(f"the field {name!r} must be a list of strings")
    return data


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def encode_cursor(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> int | None:
    if not text:
        return None
    try:
        padded = text + "=" * (-len(text) % 4)
        value = int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("the cursor is not one this service returned") from None
    if value < 0:
        raise BadRequest("the cursor is not one this service returned")
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"the query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"the query parameter {name!r} must be between {low} and {high}")
    return value
