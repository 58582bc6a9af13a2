"""Turning the bytes of one MLLP frame into a parsed HL7 v2 message.

The text is normalized before python-hl7 sees it: a UTF-8 byte-order mark is
dropped and ``\\r\\n``, ``\\n`` and ``\\r`` all become the segment separator
``\\r`` (real feeds mix them). python-hl7 then splits fields, repetitions and
components. Every failure on the way, ours or the library's, comes out as
:class:`~medtwin.core.errors.InputError` with an HL7 location (``MSH-2``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import hl7

from medtwin.core.errors import InputError

__all__ = [
    "Header",
    "ParsedMessage",
    "component",
    "decode",
    "field_text",
    "parse_message",
    "parse_ts",
    "payload_text",
    "repetitions",
    "salvage_header",
]

_BOM = "\ufeff"
_LINE_BREAKS = re.compile(r"\r\n|\n|\r")
# MSH-1 and MSH-2: a field separator, then 4 encoding characters (component,
# repetition, escape, sub-component) and, from v2.7, an optional truncation character.
_MSH_START = re.compile(r"MSH(?P<field>[^A-Za-z0-9\s])(?P<encoding>[^A-Za-z0-9\s]{4,5})(?P=field)")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
# Enough of a header to answer even a message python-hl7 cannot take.
_MAX_SEGMENTS = 100_000


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields the listener needs to route and acknowledge a message."""

    sender: str  # MSH-3.1 (namespace id), or MSH-3.2 when only a universal id is given
    sending_facility: str  # MSH-4.1
    receiver: str  # MSH-5.1
    receiving_facility: str  # MSH-6.1
    message_type: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    accept_ack: str  # MSH-15 (enhanced mode when MSH-15 or MSH-16 is set)
    application_ack: str  # MSH-16

    @property
    def kind(self) -> str:
        """``ORU^R01``-style message type and trigger event."""
        return f"{self.message_type}^{self.trigger_event}"

    @property
    def enhanced(self) -> bool:
        """Whether the sender asks for enhanced-mode acknowledgement."""
        return bool(self.accept_ack or self.application_ack)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """One parsed message: the header, python-hl7's tree and the normalized text."""

    header: Header
    message: Any  # hl7.Message (python-hl7 is untyped)
    text: str  # normalized: segments joined by "\r", no BOM
    digest: str  # SHA-256 of ``text``: identical resends have the same digest

    def segments(self) -> list[Any]:
        """The message's segments in order (python-hl7 ``Segment`` objects)."""
        return list(self.message)


def decode(raw: bytes) -> str:
    """The message text: UTF-8 (BOM dropped), or ISO 8859-1 when MSH-18 declares it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # MSH-18 is plain ASCII in any encoding, so it can be read before decoding.
        head = raw[:2048].split(b"\r", 1)[0].split(b"\n", 1)[0]
        if b"8859/1" not in head:
            raise InputError(
                f"message is not valid UTF-8 (byte {exc.start}) and MSH-18 does not declare 8859/1",
                "MSH-18",
            ) from exc
        text = raw.decode("latin-1")
    return text.removeprefix(_BOM)


def normalize(text: str) -> str:
    """``text`` with any line break as the segment separator and blank segments dropped."""
    text = text.removeprefix(_BOM)
    return "\r".join(s for s in _LINE_BREAKS.split(text) if s.strip())


def payload_text(text: str) -> str:
    """``text`` as a store can keep it (no NUL, no lone surrogate), for the quarantine."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def parse_message(raw: bytes | str) -> ParsedMessage:
    """Parse one message; InputError (with an MSH location) when it is not HL7 v2."""
    text = normalize(decode(raw) if isinstance(raw, bytes) else raw)
    if not text.startswith("MSH"):
        raise InputError("message does not start with an MSH segment", "MSH")
    start = _MSH_START.match(text)
    if start is None:
        raise InputError(
            "MSH-1/MSH-2 must be a field separator and 4 distinct encoding characters",
            "MSH-2",
        )
    separators = start["field"] + start["encoding"][:4]
    if len(set(separators)) != 5:
        raise InputError("MSH-1/MSH-2 separators must be distinct", "MSH-2")
    segment_texts = text.split("\r")
    if len(segment_texts) > _MAX_SEGMENTS:
        raise InputError(f"more than {_MAX_SEGMENTS} segments", "MSH")
    for position, segment in enumerate(segment_texts[1:], start=2):
        name = segment[:3]
        if _SEGMENT_ID.fullmatch(name) is None or segment[3:4] not in ("", start["field"]):
            raise InputError(f"segment {position} has no valid segment id", f"segment {position}")
        if name in ("MSH", "BHS", "FHS"):
            raise InputError("one message per frame: batches are not supported", name)
    try:
        message = hl7.parse(text)
        header = _header(message.segment("MSH"))
    except InputError:
        raise
    except Exception as exc:  # python-hl7 raises bare IndexError, KeyError, ... on bad input
        raise InputError(f"unparseable message ({type(exc).__name__})", "MSH") from exc
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return ParsedMessage(header, message, text, digest)


def _header(msh: Any) -> Header:
    sender = component(msh, 3, 1) or component(msh, 3, 2)
    return Header(
        sender=sender,
        sending_facility=component(msh, 4, 1),
        receiver=component(msh, 5, 1),
        receiving_facility=component(msh, 6, 1),
        message_type=component(msh, 9, 1).strip(),
        trigger_event=component(msh, 9, 2).strip(),
        control_id=field_text(msh, 10).strip(),
        processing_id=component(msh, 11, 1).strip(),
        version=component(msh, 12, 1).strip(),
        accept_ack=field_text(msh, 15).strip().upper(),
        application_ack=field_text(msh, 16).strip().upper(),
    )


def component(segment: Any, field: int, number: int = 1, repetition: int = 1) -> str:
    """Unescaped component ``number`` of ``field`` (``""`` when absent)."""
    try:
        value = segment.extract_field(1, field, repetition, number, 1)
    except (IndexError, KeyError, TypeError, ValueError):
        return ""
    return str(value)


def field_text(segment: Any, field: int) -> str:
    """The first repetition of ``field``, first component, unescaped."""
    return component(segment, field, 1, 1)


def repetitions(segment: Any, field: int) -> int:
    """How many repetitions ``field`` carries (0 when absent or empty)."""
    if field >= len(segment):
        return 0
    value = segment[field]
    if not str(value):
        return 0
    return len(value) if isinstance(value, hl7.Field) else 1


_TS = re.compile(
    r"(?P<year>\d{4})(?:(?P<month>\d{2})(?:(?P<day>\d{2})(?:(?P<hour>\d{2})"
    r"(?:(?P<minute>\d{2})(?:(?P<second>\d{2})(?:\.(?P<fraction>\d{1,4}))?)?)?)?)?)?"
    r"(?P<offset>[+-]\d{4})?"
)


def parse_ts(text: str, zone: tzinfo) -> datetime:
    """An HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) as an aware datetime.

    Times without an offset are read in ``zone`` (the sender's configured zone).
    ValueError when ``text`` is not a TS.
    """
    match = _TS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an HL7 timestamp: {text[:40]!r}")
    parts = match.groupdict()
    fraction = parts["fraction"] or ""
    moment = datetime(
        int(parts["year"]),
        int(parts["month"] or 1),
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int(fraction.ljust(6, "0")) if fraction else 0,
    )
    offset = parts["offset"]
    if offset is None:
        return moment.replace(tzinfo=zone)
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:
        raise ValueError(f"UTC offset out of range: {offset}")
    delta = timedelta(hours=hours, minutes=minutes) * sign
    return moment.replace(tzinfo=timezone(delta) if delta else UTC)


def salvage_header(text: str) -> Header | None:
    """What MSH says, read by hand, so that even an unparseable message gets MSA-2."""
    first = text.removeprefix("\ufeff").replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    separator = first[3]
    if separator.isalnum() or separator.isspace():
        return None
    component = first[4]
    fields = first.split(separator)
    fields.insert(1, separator)  # MSH-1 is the separator itself

    def get(number: int, part: int = 0) -> str:
        value = fields[number] if number < len(fields) else ""
        parts = value.split(component) if not component.isalnum() else [value]
        return parts[part].strip()[:199] if part < len(parts) else ""

    return Header(
        sender=get(3),
        sending_facility=get(4),
        receiver=get(5),
        receiving_facility=get(6),
        message_type=get(9),
        trigger_event=get(9, 1),
        control_id=get(10),
        processing_id=get(11),
        version=get(12),
        accept_ack=get(15).upper(),
        application_ack=get(16).upper(),
    )
