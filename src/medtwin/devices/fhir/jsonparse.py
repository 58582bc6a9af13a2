"""JSON text parsed by orjson where it gives the value ``json.loads`` gives.

orjson parses a Bundle about twice as fast as the standard library, but it
differs on some documents: it refuses NaN and Infinity, lone surrogates, numbers
beyond a double's range, byte order marks, other encodings than UTF-8 and
nesting beyond 1024; and it reads an integer beyond 64 bits as a float. Each
such document is left to ``json.loads`` (:func:`orjson_value` answers None),
which gives what it always gave (its value, or its error and message): orjson
is only a faster route to the same value.

The integers: an integer outside 64 bits has 19 digits or more. A run of 19
digits is looked for in the text (with the digits mapped to one, a plain
substring search); one outside every string (an even number of unescaped quotes
before it) sends the document to ``json.loads``, and so does one after an escaped
backslash (rare: the quotes are then not counted). Runs inside strings are
common (the seed in a Synthea narrative), so they are told apart.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["orjson_value"]

_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_RUN = b"0" * 19  # the shortest integer orjson could read as a float


def orjson_value(text: str | bytes) -> tuple[Any] | None:
    """``(json.loads(text),)`` parsed by orjson; None when only ``json.loads`` can
    tell (its value differs, or it is an error: json's message is the one given)."""
    if type(text) is str:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: orjson refuses it
            return None
    elif type(text) is bytes:
        data = text
    else:
        return None  # bytearray, memoryview: json.loads decides
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if _long_number(data):
        return None
    return (document,)


def _long_number(data: bytes) -> bool:
    """Whether valid JSON ``data`` may hold a number of 19 digits or more."""
    digits = data.translate(_DIGITS)
    found = digits.find(_RUN)
    start = quotes = 0
    while found >= 0:
        if data.find(b"\\\\", start, found) >= 0:
            return True  # an escaped backslash: the quotes are not told apart this way
        # Without one, each \" is an escaped quote and every other quote opens or
        # closes a string (the text is valid JSON: orjson read it).
        quotes += data.count(b'"', start, found) - data.count(b'\\"', start, found)
        if not quotes % 2:
            return True  # outside every string: a number
        end = data.find(b'"', found)  # the end of this string: a quote not escaped
        while end > 0 and _escaped(data, end):
            end = data.find(b'"', end + 1)
        if end < 0:
            return True
        start, quotes = end + 1, quotes + 1
        found = digits.find(_RUN, start)
    return False


def _escaped(data: bytes, at: int) -> bool:
    """Whether the character at ``at`` follows an odd number of backslashes."""
    before = at
    while before > 0 and data[before - 1] == 0x5C:
        before -= 1
    return (at - before) % 2 == 1
