"""The acknowledgement message: MSH of the answer, MSA, ERR; escaping and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from medtwin.devices.hl7.ack import Fault, build_ack
from medtwin.devices.hl7.parse import parse_message

MESSAGE = "MSH|^~\\&|LAB|NORTH|MEDTWIN|WARD|20300101||ORU^R01|C-1|P|2.5.1\rPID|1"
NOON = datetime(2031, 1, 1, 12, 0, 5, 123456, tzinfo=UTC)


def _fields(ack: str, segment: int = 0) -> list[str]:
    return ack.split("\r")[segment].split("|")


def test_the_answer_swaps_sender_and_receiver_and_names_the_event() -> None:
    header = parse_message(MESSAGE).header
    ack = build_ack(header, "AA", text="10 OBX: 10 stored", now=NOON)
    msh = _fields(ack)
    assert msh[:7] == ["MSH", "^~\\&", "MEDTWIN", "WARD", "LAB", "NORTH", "20310101120005+0000"]
    assert (msh[8], msh[10], msh[11]) == ("ACK^R01^ACK", "P", "2.5.1")
    assert msh[9].startswith("MT")
    assert _fields(ack, 1) == ["MSA", "AA", "C-1", "10 OBX: 10 stored"]
    assert ack.endswith("\r")


def test_the_time_is_written_in_its_own_zone() -> None:
    header = parse_message(MESSAGE).header
    later = NOON.astimezone(timezone(timedelta(hours=2)))  # the same instant, another zone
    assert _fields(build_ack(header, "AA", now=NOON))[6] == "20310101120005+0000"
    assert _fields(build_ack(header, "AA", now=later))[6] == "20310101140005+0200"
    assert _fields(build_ack(header, "AA", now=NOON + timedelta(seconds=1)))[6].endswith("06+0000")


def test_separators_in_echoed_values_are_escaped() -> None:
    header = parse_message(
        "MSH|^~\\&|A\\T\\B|F\\F\\G||W|20300101||ORU^R01|C\\S\\1|P|2.5.1\rPID|1"
    ).header
    ack = build_ack(header, "AE", [Fault("OBX[2]-5", "bad | value")], text="x^y", now=NOON)
    msh = _fields(ack)
    assert (msh[2], msh[4], msh[5]) == ("MEDTWIN", "A\\T\\B", "F\\F\\G")
    assert _fields(ack, 1) == ["MSA", "AE", "C\\S\\1", "x\\S\\y"]
    err = _fields(ack, 2)
    assert (err[0], err[2], err[8]) == ("ERR", "OBX^2^5", "bad \\F\\ value")


def test_without_a_header_the_answer_has_defaults() -> None:
    msh = _fields(build_ack(None, "AR", now=NOON))
    assert (msh[2], msh[3], msh[4], msh[8], msh[10], msh[11]) == (
        "MEDTWIN",
        "",
        "",
        "ACK",
        "P",
        "2.5.1",
    )
