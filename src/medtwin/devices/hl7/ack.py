"""Acknowledgements: original mode (AA/AE/AR) and enhanced-mode accept acks (CA/CE/CR).

Original mode (MSH-15 and MSH-16 empty): one ``ACK`` after the message was
processed and committed: ``AA`` all of it was taken, ``AE`` some of it was
quarantined (one ERR segment per fault, naming segment and field), ``AR`` the
message was refused as a whole (unsupported type, event, version or
processing id, sender not allowed, or the store failed: send it again later).

Enhanced mode (MSH-15 or MSH-16 set): only the *accept* acknowledgement is
implemented, sent once the message is committed: ``CA`` committed (its ERR
segments still name whatever was quarantined), ``CE`` it could not be
committed (store failure, or nothing of it could be read), ``CR`` refused
(unsupported type, event, version or processing id, or sender). MSH-15 picks
when it is sent: ``AL`` (or empty) always, ``NE`` never, ``ER`` only for CE/CR,
``SU`` only for CA. Enhanced-mode *application* acknowledgements (MSH-16) are
out of scope: none is ever sent, whatever MSH-16 asks.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from medtwin.devices.hl7.parse import Header

__all__ = [
    "AckCode",
    "ErrorCode",
    "Fault",
    "build_ack",
    "enhanced_code",
    "sends_accept_ack",
]


class AckCode:
    """HL7 table 0008."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"


class ErrorCode:
    """HL7 table 0357 (message error condition codes) used here, with their texts."""

    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    VALUE_TOO_LONG = 104
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    APPLICATION_ERROR = 207

    TEXT: ClassVar[dict[int, str]] = {
        100: "Segment sequence error",
        101: "Required field missing",
        102: "Data type error",
        103: "Table value not found",
        104: "Value too long",
        200: "Unsupported message type",
        201: "Unsupported event code",
        202: "Unsupported processing id",
        203: "Unsupported version id",
        204: "Unknown key identifier",
        207: "Application internal error",
    }


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a message: where (``OBX[2]-5``), why, and its HL7 error code.

    ``severity`` is ``E`` (error: the part was quarantined) or ``W`` (warning: taken in).
    """

    location: str
    reason: str
    code: int = ErrorCode.APPLICATION_ERROR
    severity: str = "E"


# Original-mode code -> the enhanced-mode accept code that says the same about commit.
_ENHANCED = {AckCode.AA: AckCode.CA, AckCode.AE: AckCode.CA, AckCode.AR: AckCode.CR}

# Text with none of the characters _escape replaces.
_PLAIN = re.compile(r"[^\\|^&~\r\n\x0b\x1c]*")
_LOCATION = re.compile(r"(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<index>\d+)\])?(?:-(?P<field>\d+))?")
_counter = itertools.count(1)


def enhanced_code(original: str, *, committed: bool = True) -> str:
    """The accept code for a message whose original-mode answer would be ``original``.

    ``committed`` False (store failure, unreadable message) answers CE.
    """
    if not committed:
        return AckCode.CE
    return _ENHANCED.get(original, original)


def sends_accept_ack(header: Header | None, code: str) -> bool:
    """Whether an acknowledgement with ``code`` is sent for a message with ``header``."""
    if header is None or not header.enhanced:
        return True
    condition = header.accept_ack or "AL"
    if condition == "NE":
        return False
    if condition == "ER":
        return code in (AckCode.CE, AckCode.CR)
    if condition == "SU":
        return code == AckCode.CA
    return True  # AL, or a value outside table 0155: answer rather than leave the sender waiting


def build_ack(
    header: Header | None,
    code: str,
    faults: tuple[Fault, ...] | list[Fault] = (),
    *,
    text: str = "",
    now: datetime | None = None,
) -> str:
    """The ACK message (segments joined by ``\\r``) for ``header``'s message.

    Without a header (nothing of the message could be read) MSA-2 is empty. The ACK
    always uses the standard encoding characters ``|^~\\&``.
    """
    moment = _timestamp(now or datetime.now().astimezone())
    if header is None:
        head, kind, tail = _msh_fields("", "", "", "", "", "P", "2.5.1")
        control_id = ""
    else:
        head, kind, tail = _msh_fields(
            header.receiver,
            header.receiving_facility,
            header.sender,
            header.sending_facility,
            header.trigger_event,
            header.processing_id or "P",
            header.version or "2.5.1",
        )
        control_id = header.control_id
    message_id = f"MT{time.time_ns() // 1000:x}{next(_counter) % 1_000_000:06d}"
    segments = [
        f"{head}|{moment}||{kind}|{message_id}|{tail}",
        "|".join(["MSA", code, _escape(control_id), _escape(text[:80])]),
    ]
    segments.extend(_err(fault) for fault in faults)
    return "\r".join(segments) + "\r"


def _timestamp(moment: datetime) -> str:
    """MSH-7 of an acknowledgement sent at ``moment``."""
    # Equal datetimes in other zones are equal keys: the offset is part of the key.
    return _formatted(moment, moment.utcoffset())


@functools.lru_cache(maxsize=64)  # acknowledgements sent in the same second share it
def _formatted(moment: datetime, offset: timedelta | None) -> str:
    return moment.strftime("%Y%m%d%H%M%S%z")


@functools.lru_cache(maxsize=1024)  # a handful of senders, message after message
def _msh_fields(
    sender: str,
    facility: str,
    receiver: str,
    receiving_facility: str,
    event: str,
    processing: str,
    version: str,
) -> tuple[str, str, str]:
    """An acknowledgement's MSH escaped, in three parts: up to MSH-6, MSH-9, MSH-11 on.

    MSH-7 (the time) and MSH-10 (the control id) go between them.
    """
    head = "|".join(
        [
            "MSH",
            "^~\\&",
            _escape(sender or "MEDTWIN"),
            _escape(facility),
            _escape(receiver),
            _escape(receiving_facility),
        ]
    )
    kind = f"ACK^{_escape(event)}^ACK" if event else "ACK"
    return head, kind, f"{_escape(processing)}|{_escape(version)}"


def _err(fault: Fault) -> str:
    """ERR with ERR-1 (v2.3/2.4 ELD) and ERR-2/3/4/8 (v2.5+ ERL, code, severity, text)."""
    match = _LOCATION.fullmatch(fault.location)
    code_text = ErrorCode.TEXT.get(fault.code, "Application internal error")
    reason = _escape(fault.reason[:200])
    if match is None:
        eld = f"^^^{fault.code}&{_escape(code_text)}"
        erl = ""
    else:
        segment = match["segment"]
        index = match["index"] or "1"
        field = match["field"] or ""
        eld = f"{segment}^{index}^{field}^{fault.code}&{_escape(code_text)}"
        erl = f"{segment}^{index}^{field}" if field else f"{segment}^{index}"
    return "|".join(
        [
            "ERR",
            eld,
            erl,
            f"{fault.code}^{_escape(code_text)}^HL70357",
            fault.severity,
            "",
            "",
            "",
            reason,
        ]
    )


def _escape(value: str) -> str:
    """``value`` with the standard separators escaped (HL7 2.7.4 escape sequences)."""
    if _PLAIN.fullmatch(value):
        return value  # the usual name, code or id: nothing to escape
    value = value.replace("\\", "\\E\\")
    value = value.replace("|", "\\F\\").replace("^", "\\S\\")
    value = value.replace("&", "\\T\\").replace("~", "\\R\\")
    # Segment and frame delimiters never travel inside a field.
    return re.sub(r"[\r\n\x0b\x1c]", " ", value)
