"""The depth scan of a JSON body (web/body.py) before it is parsed: its string pattern was
unrolled for speed (issue 15), and must find exactly the tokens the plain pattern found, so
that no body that was refused is now let through or the other way round."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca_service.errors import BadRequest
from ca_service.web import body

PLAIN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
# Text built from the characters that matter to the scan, so that the cases are dense in quotes,
# escapes and brackets, with some ordinary and non-ASCII text between them.
SCAN_TEXT = st.text(alphabet=st.sampled_from('"\\[]{}ab \n\u00e9\u2028'), max_size=60)


def _tokens(pattern: re.Pattern[str], text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group()) for m in pattern.finditer(text)]


@settings(max_examples=3000, deadline=None)
@given(SCAN_TEXT)
def test_the_unrolled_scan_finds_the_plain_scans_tokens(text: str) -> None:
    assert _tokens(body._JSON_TOKEN, text) == _tokens(PLAIN, text)


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.text(max_size=8), lambda inner: st.lists(inner, max_size=3), max_leaves=40))
def test_the_scan_agrees_on_real_json(value: object) -> None:
    text = json.dumps(value)
    assert _tokens(body._JSON_TOKEN, text) == _tokens(PLAIN, text)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * (body.MAX_JSON_DEPTH + 1) + b"]" * (body.MAX_JSON_DEPTH + 1),
        b'{"a": ' * (body.MAX_JSON_DEPTH + 1) + b"1" + b"}" * (body.MAX_JSON_DEPTH + 1),
        # Escaped quotes do not end the string, so the brackets after them still count.
        b'["\\"", ' + b"[" * body.MAX_JSON_DEPTH + b"]" * body.MAX_JSON_DEPTH + b"]",
    ],
)
def test_too_deep_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="nested deeper"):
        body.parse_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # Brackets inside strings, with escapes before them, are not nesting.
        json.dumps({"csr": "[" * 100 + '\\"' + "{" * 100}).encode(),
        json.dumps(["\\" * 7 + "[[[[", "]]]]"]).encode(),
        b"[" * body.MAX_JSON_DEPTH + b"]" * body.MAX_JSON_DEPTH,
    ],
)
def test_brackets_in_strings_and_the_limit_itself_pass(raw: bytes) -> None:
    assert body.parse_json(raw) == json.loads(raw)
