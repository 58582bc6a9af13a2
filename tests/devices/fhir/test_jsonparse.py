"""parse_json reads with orjson, and gives what json.loads gives: the same value, or the
same error (json's message), whatever orjson makes of the text."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.devices.fhir import InvalidResourceError, TooLargeError, parse_json
from medtwin.devices.fhir.jsonparse import orjson_value


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types, keys in the same order (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _json_error(text: str | bytes) -> str | None:
    """The issue parse_json gives for text json.loads refuses (None: it reads it)."""
    try:
        json.loads(text)
    except ValueError as exc:
        return f"body is not JSON: {exc}"
    return None


def _parses_as_json_loads(text: str | bytes) -> None:
    expected = json.loads(text)
    for given_text in (
        text,
        text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text,
    ):
        assert _same(parse_json(given_text, max_depth=64), expected), given_text


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 123456789012345678901234567890}',  # orjson: a float
        '{"a": -9223372036854775809, "b": 18446744073709551616}',
        '[1, {"s": "x\\\\"}, 12345678901234567890123]',  # an escaped backslash before it
        '"\\ud800"',  # a lone surrogate
        '["\\udc00x", 1]',
        '{"a": NaN, "b": Infinity, "c": -Infinity}',
        "[1e400, -1e400]",
        '{"a": 1, "a": 2, "b": 3}',  # the last value, in the first place
        '{"seed": "Person seed: -7466009921769651303", "n": 12}',  # a long run in a string
        '{"s": "\\"1234567890123456789012\\"", "n": [1.5, -0.0, 0]}',
        "[1.00000000000000011102230246251565404236316680908203125, 1e-400]",
    ],
)
def test_documents_orjson_reads_otherwise_parse_as_json_loads(text: str) -> None:
    _parses_as_json_loads(text)


def test_long_integers_are_left_to_json_loads() -> None:
    assert orjson_value('{"a": 123456789012345678901234567890}') is None
    assert orjson_value(b"[-1234567890123456789]") is None
    assert orjson_value('[1, "12345678901234567890"]') == ([1, "12345678901234567890"],)
    assert orjson_value(b'{"a": [1, 2.5, "x"]}') == ({"a": [1, 2.5, "x"]},)
    assert orjson_value("[NaN]") is None
    assert orjson_value('"\ud800"') is None
    assert orjson_value(bytearray(b"[1]")) is None  # json.loads decides
    value = parse_json('{"a": 123456789012345678901234567890}', max_depth=64)
    assert value == {"a": 123456789012345678901234567890}
    assert type(value["a"]) is int


def test_a_byte_order_mark_and_other_encodings() -> None:
    assert parse_json(b'\xef\xbb\xbf{"a": 1}', max_depth=64) == {"a": 1}
    assert parse_json('{"a": "é"}'.encode("utf-16"), max_depth=64) == {"a": "é"}
    with pytest.raises(InvalidResourceError) as caught:
        parse_json('\ufeff{"a": 1}', max_depth=64)
    assert "Unexpected UTF-8 BOM" in caught.value.issues[0].diagnostics


@pytest.mark.parametrize(
    "text",
    ["[1,]", "{", "", "[1] x", '{"a": "\x01"}', b"\xff", "{'a': 1}", "-"],
)
def test_invalid_json_gives_json_loads_message(text: str | bytes) -> None:
    expected = _json_error(text)
    assert expected is not None
    with pytest.raises(InvalidResourceError) as caught:
        parse_json(text, max_depth=64)
    assert caught.value.issues[0].diagnostics == expected


def test_nesting_beyond_the_limit_or_beyond_orjson() -> None:
    with pytest.raises(TooLargeError) as caught:
        parse_json("[" * 65 + "]" * 65, max_depth=64)
    assert caught.value.issues[0].diagnostics == "JSON nested deeper than 64"
    assert parse_json("[" * 64 + "]" * 64, max_depth=64) is not None
    deep = "[" * 65 + "]" * 65
    assert parse_json(deep, max_depth=64, nesting=False) == json.loads(deep)  # the caller checks
    for depth in (2_000, 100_000):  # beyond orjson's limit (1024), then beyond json's
        with pytest.raises(TooLargeError) as caught:
            parse_json("[" * depth + "]" * depth, max_depth=64)
        assert caught.value.issues[0].diagnostics == "JSON nested deeper than 64"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=24)
    | st.from_regex(r"\A[0-9]{17,22}\Z")
    | st.from_regex(r'\A[\\"0-9 ]{0,30}\Z'),  # long runs in strings, after quotes
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_any_document_parses_as_json_loads(value: Any, ascii_only: bool) -> None:
    _parses_as_json_loads(json.dumps(value, ensure_ascii=ascii_only))


@settings(max_examples=300, deadline=None)
@given(text=st.from_regex(r"\A\[-?[0-9]{1,25}(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\]\Z"))
def test_any_number_parses_as_json_loads(text: str) -> None:
    expected = _json_error(text)
    if expected is None:
        _parses_as_json_loads(text)
    else:  # 00, 01: not JSON
        with pytest.raises(InvalidResourceError) as caught:
            parse_json(text, max_depth=64)
        assert caught.value.issues[0].diagnostics == expected
