"""The hand-written splitter reads every value exactly as python-hl7 does (python-hl7 is the
oracle here), on the reference messages, on escapes and odd separators, and on arbitrary input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.core.errors import InputError
from medtwin.devices.hl7.parse import ParsedMessage, component, parse_message, repetitions


def _reference(segment: Any, field: int, rep: int, comp: int, sub: int) -> str:
    try:
        return str(segment.extract_field(1, field, rep, comp, sub))
    except (IndexError, KeyError, TypeError, ValueError):
        return ""


def _reference_repetitions(segment: Any, field: int) -> int:
    if field >= len(segment):
        return 0
    value = segment[field]
    if not str(value):
        return 0
    return len(value) if isinstance(value, hl7.Field) else 1


def assert_same_as_python_hl7(parsed: ParsedMessage) -> None:
    tree = hl7.parse(parsed.text)
    ours = parsed.segments()
    assert [s.name for s in ours] == [str(s[0]) for s in tree]
    for mine, theirs in zip(ours, tree, strict=True):
        assert len(mine) == len(theirs), mine.name
        for field in range(1 if mine.name != "MSH" else 3, len(theirs) + 2):
            assert repetitions(mine, field) == _reference_repetitions(theirs, field)
            for rep in (1, 2, 3):
                for comp in (1, 2, 3, 4):
                    for sub in (1, 2):
                        expected = _reference(theirs, field, rep, comp, sub)
                        got = component(mine, field, comp, rep, sub)
                        assert got == expected, (mine.name, field, rep, comp, sub)


def test_reference_messages_read_as_python_hl7_reads_them(hl7_files: list[Path]) -> None:
    for path in hl7_files:
        assert_same_as_python_hl7(parse_message(path.read_bytes()))


@pytest.mark.parametrize(
    "body",
    [
        "PID|1||A\\F\\B^x\\S\\y&z\\T\\w~R2\\R\\||N\\E\\ame\\H\\bold\\N\\",
        "OBX|1|TX|C^T^L||line\\.br\\two\\.sp3\\x\\.sk2\\\\X414243\\\\Xzz\\\\Cxx\\\\Mxxxx\\",
        "OBX|1|TX|C^T^L||unterminated \\F\\ and \\S|odd \\\\|bad \\.sp2x\\|\\X4G\\",
        "OBR|1|||&CYTO&JANE^20141006092900+0700||~~^&^|a^^^b",
        "NTE|1",
        "ZZZ",
    ],
)
def test_escapes_and_empty_parts_read_as_python_hl7_reads_them(body: str) -> None:
    message = "MSH|^~\\&|LAB|H|||20300101||ORU^R01|1|P|2.5.1\r" + body
    assert_same_as_python_hl7(parse_message(message))


def test_other_encoding_characters_read_as_python_hl7_reads_them() -> None:
    message = (
        "MSH*#@!%*LAB#X*H*** 20300101**ORU#R01*1*P*2.5.1\r"
        "PID*1**ID-1#@#@#HOSP%MR@ID-2**A!F!B#C%D\r"
        "OBX*1*NM*8867-4#HR#LN**72*/min"
    )
    parsed = parse_message(message)
    assert parsed.header.sender == "LAB"
    assert parsed.header.kind == "ORU^R01"
    assert_same_as_python_hl7(parsed)


_hl7ish = st.text(alphabet="|^~\\&\rMSHPIDOBXNMSTCWE0123456789.+-<>: XF", max_size=200)


@given(body=_hl7ish)
@settings(max_examples=300, deadline=None)
def test_arbitrary_messages_read_as_python_hl7_reads_them(body: str) -> None:
    try:
        parsed = parse_message("MSH|^~\\&|LAB|H|||20300101||ORU^R01|F1|P|2.5.1\r" + body)
    except InputError:
        return
    assert_same_as_python_hl7(parsed)


_msh_fields = st.text(alphabet="|^~\\&ABCR0129 .FSTX", max_size=80)


@given(fields=_msh_fields)
@settings(max_examples=300, deadline=None)
def test_header_reads_msh_as_python_hl7_reads_it(fields: str) -> None:
    try:
        parsed = parse_message("MSH|^~\\&|" + fields + "\rPID|1")
    except InputError:
        return
    msh = hl7.parse(parsed.text)[0]

    def first(field: int, number: int = 1) -> str:
        return _reference(msh, field, 1, number, 1)

    header = parsed.header
    assert header.sender == (first(3) or first(3, 2))
    assert (header.sending_facility, header.receiver) == (first(4), first(5))
    assert header.receiving_facility == first(6)
    assert (header.message_type, header.trigger_event) == (first(9).strip(), first(9, 2).strip())
    assert header.control_id == first(10).strip()
    assert (header.processing_id, header.version) == (first(11).strip(), first(12).strip())
    assert header.accept_ack == first(15).strip().upper()
    assert header.application_ack == first(16).strip().upper()


@given(
    lines=st.lists(
        st.text(alphabet="PIDOBX|^1 \t", min_size=0, max_size=12).map(lambda s: "OBX|" + s),
        max_size=6,
    ),
    breaks=st.lists(st.sampled_from(["\r", "\n", "\r\n", "\n\r", "\r\r\n", "\n\n"]), min_size=7),
)
@settings(max_examples=200, deadline=None)
def test_any_mix_of_line_breaks_separates_segments(lines: list[str], breaks: list[str]) -> None:
    segments = ["MSH|^~\\&|LAB|H|||20300101||ORU^R01|1|P|2.5.1", *lines]
    text = "".join(segment + breaks[n] for n, segment in enumerate(segments))
    expected = [s for s in segments if s.strip()]
    expected[-1] = expected[-1].rstrip()
    assert parse_message(text).texts == expected
