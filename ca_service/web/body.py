"""Strict request input: JSON bodies with unknown fields, wrong types, deep nesting or text that
cannot be stored are refused, and so are URLs with such text; nothing is ignored or passed on."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from ca_service.errors import BadRequest

M = TypeVar("M", bound=BaseModel)

# Our bodies are flat objects (depth 2). The stdlib parser recurses once per level and raises
# RecursionError near 1,000, so the depth is measured before parsing, not caught afterwards.
MAX_JSON_DEPTH = 16
# Cursors and integer fields are bounded by the 64-bit columns they end up compared with.
MAX_INT = 2**63 - 1
# A NUL cannot be stored in PostgreSQL text and is truncated by C tools; an unpaired surrogate
# (JSON "\ud800") cannot be encoded as UTF-8. Neither is in any name, token or CSR we accept.
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")
# A JSON string (possibly unterminated) or one bracket: strings are skipped whole, so brackets
# inside them are not counted. The string's loop is unrolled (runs of plain characters, then
# one escape): the same matches as ``"(?:[^"\\]|\\.)*"?``, which tried the alternation once a
# character, in 2.6 us instead of 11.5 for a CSR's body (bench/PROFILES.md, session 12).
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def has_bad_text(text: str) -> bool:
    """True when ``text`` holds a NUL or an unpaired surrogate."""
    return _BAD_TEXT.search(text) is not None


def check_url() -> None:
    """Refuse a path or query that holds text no layer below can store or encode.

    Called once per request before routing reaches a view, so every endpoint (including the
    anonymous CRL and chain URLs) gets the same 400 instead of a driver error.
    """
    if has_bad_text(request.path):
        raise BadRequest("the URL path contains a NUL character or an unpaired surrogate")
    for key, value in request.args.items(multi=True):
        if has_bad_text(key) or has_bad_text(value):
            raise BadRequest(
                f"the query parameter {key!r} contains a NUL character or an unpaired surrogate"
            )


def parse_json(raw: bytes) -> Any:
    """Strict, bounded JSON: UTF-8, at most MAX_JSON_DEPTH levels, integers within 64 bits, no
    NaN/Infinity, and no string (key or value) with a NUL or an unpaired surrogate."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid UTF-8") from None
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
        elif token in ("]", "}"):
            depth -= 1
    try:
        data = json.loads(text, parse_int=_parse_int, parse_constant=_no_constant)
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    _check_text(data, None)
    return data


def _parse_int(text: str) -> int:
    value = int(text)
    if not -MAX_INT <= value <= MAX_INT:
        raise BadRequest("a number in the request body is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise BadRequest(f"{text} is not a JSON value")


def _check_text(value: Any, field: str | None) -> None:
    """Walk the parsed body (its depth is bounded above) for text that cannot be stored."""
    if isinstance(value, str):
        if has_bad_text(value):
            where = f"the field {field!r}" if field else "the request body"
            raise BadRequest(f"{where} contains a NUL character or an unpaired surrogate")
    elif isinstance(value, list):
        for item in value:
            _check_text(item, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            if has_bad_text(key):
                raise BadRequest("a field name contains a NUL character or an unpaired surrogate")
            _check_text(item, field or key)


def json_model(model: type[M], *, required: bool = False) -> M:
    """The body, validated by ``model`` (strict, unknown fields refused).

    The checks run in the order clients have always seen, each naming the field: unknown
    fields, then missing required ones, then ``null`` (not a value of any field: leave it out),
    then the model's types, reported for the first wrong field in the order sent. An empty body
    is the model with nothing given, unless ``required``.
    """
    mimetype = request.mimetype
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("the request body is empty; send a JSON object")
        data: Any = {}
    else:
        if mimetype != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        data = parse_json(raw)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    fields = model.model_fields
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    for name, info in fields.items():
        if info.is_required() and data.get(name) is None:
            raise BadRequest(f"the field {name!r} is required")
    for name, value in data.items():
        if value is None:
            raise BadRequest(f"the field {name!r} must not be null; leave it out instead")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        order = list(data)
        first = min(exc.errors(), key=lambda e: order.index(e["loc"][0]))
        name = str(first["loc"][0])
        if len(first["loc"]) > 1:
            raise BadRequest(f"the field {name!r} must be a list of strings") from None
        raise BadRequest(f"the field {name!r} has the wrong type") from None


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
    # Row ids are 64-bit: a larger value would overflow the driver's parameter, not match.
    if not 0 <= value <= MAX_INT:
        raise BadRequest("the cursor is not one this service returned")
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"the query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"the query parameter {name!r} must be between {low} and {high}")
    return value
