"""Turning the bytes of one MLLP frame into a parsed HL7 v2 message.

The text is normalized first: a UTF-8 byte-order mark is dropped and ``\\r\\n``,
``\\n`` and ``\\r`` all become the segment separator ``\\r`` (real feeds mix them).
Fields, repetitions, components and sub-components are then split here, with the
message's own encoding characters (MSH-1, MSH-2), and only when asked for: a
segment is cut into fields the first time one of its fields is read, a field into
components each time one is read. A message of 24 segments costs a few split
calls, not the ~5 ms python-hl7 spends building its tree of every field.

The values are exactly those python-hl7's ``extract_field`` gives (the tests check
it against python-hl7 on the reference messages and on arbitrary input): an absent
field, repetition or component reads ``""``, a field without separators is its
own first component, and escape sequences are decoded as python-hl7 decodes them
(``\\F\\``, ``\\S\\``, ``\\X41\\``, ``\\.br\\``...; unknown ones dropped) but without
logging the value, which may be personal data. Every failure comes out as
:class:`~medtwin.core.errors.InputError` with an HL7 location (``MSH-2``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from medtwin.core.errors import InputError

__all__ = [
    "Encoding",
    "Header",
    "ParsedMessage",
    "Segment",
    "component",
    "components",
    "decode",
    "field_text",
    "parse_message",
    "parse_ts",
    "payload_text",
    "repetitions",
    "salvage_header",
]

_BOM = "\ufeff"
# MSH-1 and MSH-2: a field separator, then 4 encoding characters (component,
# repetition, escape, sub-component) and, from v2.7, an optional truncation character.
_MSH_START = re.compile(r"MSH(?P<field>[^A-Za-z0-9\s])(?P<encoding>[^A-Za-z0-9\s]{4,5})(?P=field)")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_MAX_SEGMENTS = 100_000
# Formatting escapes (HL7 2.10.6) and highlighting (2.10.3), as python-hl7 maps them.
_FORMATTING = {
    "H": "_",
    "N": "_",
    ".br": "\r",
    ".sp": "\r",
    ".fi": "",
    ".nf": "",
    ".in": "    ",
    ".ti": "    ",
    ".sk": " ",
    ".ce": "\r",
}


@dataclass(frozen=True, slots=True)
class Encoding:
    """The separators of one message (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def special(self) -> tuple[str, str, str]:
        """The characters that make a field more than components split on ``component``."""
        return (self.repetition, self.escape, self.subcomponent)

    def unescape(self, value: str) -> str:
        """``value`` with its escape sequences decoded (python-hl7's rules, no logging).

        ValueError for a repeat count that is not a number (``\\.sp2x\\``), which
        python-hl7 raises too: the caller reads the value as absent.
        """
        esc = self.escape
        if esc not in value:
            return value
        out: list[str] = []
        parts = value.split(esc)
        # parts alternate: text, sequence, text, ...; an unterminated last sequence is dropped.
        closed = len(parts) % 2 == 1
        for position, part in enumerate(parts):
            if position % 2 == 0:
                out.append(part)
            elif closed or position < len(parts) - 1:
                out.append(self._sequence(part))
        return "".join(out)

    def _sequence(self, name: str) -> str:
        if not name:
            return ""
        known = {
            "F": self.field,
            "R": self.repetition,
            "S": self.component,
            "T": self.subcomponent,
            "E": self.escape,
        }.get(name)
        if known is not None:
            return known
        formatting = _FORMATTING.get(name)
        if formatting is not None:
            return formatting
        if name.startswith(".") and name[:3] in _FORMATTING:
            return _FORMATTING[name[:3]] * int(name[3:])
        if name[0] == "X":
            decoded: list[str] = []
            hexes = name[1:]
            for offset in range(0, len(hexes), 2):
                try:
                    decoded.append(chr(int(hexes[offset : offset + 2], 16)))
                except ValueError:
                    break  # python-hl7 keeps what it decoded before the bad pair
            return "".join(decoded)
        return ""  # character-set switches (C, M) and unknown sequences


_STANDARD = Encoding()


class Segment:
    """One segment: its name and its fields, cut from the text when first read.

    ``fields[n]`` is field n as raw text; for MSH, ``fields[1]`` is MSH-1 (the field
    separator itself) and ``fields[2]`` MSH-2, as HL7 numbers them.
    """

    __slots__ = ("_fields", "encoding", "name", "text")

    def __init__(self, text: str, encoding: Encoding) -> None:
        self.text = text
        self.name = text[:3]
        self.encoding = encoding
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        fields = self._fields
        if fields is None:
            sep = self.encoding.field
            if self.name == "MSH" and self.text[3:4] == sep:
                # MSH-1 is the separator itself, MSH-2 the encoding characters.
                msh2, _, after = self.text[4:].partition(sep)
                fields = ["MSH", sep, msh2, *(after.split(sep) if after else ())]
            else:
                fields = self.text.split(sep)
            self._fields = fields
        return fields

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:
        return f"Segment({self.name!r})"  # never the content: it may be personal data


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
    """One parsed message: the header, its segments and the normalized text."""

    header: Header
    encoding: Encoding
    texts: list[str]  # the segments' text, in order
    text: str  # normalized: segments joined by "\r", no BOM
    digest: str  # SHA-256 of ``text``: identical resends have the same digest

    def segments(self) -> list[Segment]:
        """The message's segments in order (fields cut lazily)."""
        encoding = self.encoding
        return [Segment(text, encoding) for text in self.texts]


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
    return "\r".join(_lines(text))


def _lines(text: str) -> list[str]:
    """The non-blank lines of ``text`` (any line break), BOM dropped."""
    text = text.removeprefix(_BOM)
    # \r\n, \n and \r all end a line. Replaced, then one plain split: a regular
    # expression split (r"\r\n|\n|\r") costs ~20x more on a 1.5 KB message.
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = text.split("\r")
    return [line for line in lines if line and not line.isspace()]


def payload_text(text: str) -> str:
    """``text`` as a store can keep it (no NUL, no lone surrogate), for the quarantine."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def parse_message(raw: bytes | str) -> ParsedMessage:
    """Parse one message; InputError (with an MSH location) when it is not HL7 v2."""
    segment_texts = _lines(decode(raw) if isinstance(raw, bytes) else raw)
    text = "\r".join(segment_texts)
    if not text.startswith("MSH"):
        raise InputError("message does not start with an MSH segment", "MSH")
    start = _MSH_START.match(text)
    if start is None:
        raise InputError(
            "MSH-1/MSH-2 must be a field separator and 4 distinct encoding characters",
            "MSH-2",
        )
    separator, characters = start["field"], start["encoding"]
    if len(set(separator + characters[:4])) != 5:
        raise InputError("MSH-1/MSH-2 separators must be distinct", "MSH-2")
    if len(segment_texts) > _MAX_SEGMENTS:
        raise InputError(f"more than {_MAX_SEGMENTS} segments", "MSH")
    if _bad_segment(separator).search(text):
        _refuse_segments(segment_texts, separator)
    # python-hl7 strips the message's outer whitespace before splitting: so do we, so
    # that the last segment's values are the same.
    texts = [*segment_texts[:-1], segment_texts[-1].rstrip()]
    encoding = (
        _STANDARD
        if characters[:4] == "^~\\&" and separator == "|"
        else Encoding(separator, characters[0], characters[1], characters[2], characters[3])
    )
    header = _header(Segment(texts[0], encoding))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return ParsedMessage(header, encoding, texts, text, digest)


@functools.lru_cache(maxsize=32)
def _bad_segment(separator: str) -> re.Pattern[str]:
    """A segment after the first whose id is not 3 letters/digits then ``separator``, or
    that starts another message (MSH, BHS, FHS): one scan of the text for both."""
    after = rf"(?:{re.escape(separator)}|\r|\Z)"
    return re.compile(rf"\r(?:(?![A-Z][A-Z0-9]{{2}}{after})|(?:MSH|BHS|FHS))")


def _refuse_segments(segment_texts: list[str], separator: str) -> None:
    """InputError for the first segment after MSH that is not valid (a bad id, a batch)."""
    segment_id = _SEGMENT_ID.fullmatch
    for position, segment in enumerate(segment_texts[1:], start=2):
        name = segment[:3]
        if segment_id(name) is None or segment[3:4] not in ("", separator):
            raise InputError(f"segment {position} has no valid segment id", f"segment {position}")
        if name in ("MSH", "BHS", "FHS"):
            raise InputError("one message per frame: batches are not supported", name)


def _header(msh: Segment) -> Header:
    fields = msh.fields
    encoding = msh.encoding
    if any(mark in "".join(fields[3:17]) for mark in encoding.special):

        def parts(number: int) -> list[str]:
            return components(msh, number)

    else:  # the usual MSH: each field's components are a plain split, nothing to decode
        padded = [*fields, *("",) * (17 - len(fields))]
        mark = encoding.component

        def parts(number: int) -> list[str]:
            return padded[number].split(mark)

    sender = parts(3)
    kind = parts(9)
    return Header(
        sender=sender[0] or (sender[1] if len(sender) > 1 else ""),
        sending_facility=parts(4)[0],
        receiver=parts(5)[0],
        receiving_facility=parts(6)[0],
        message_type=kind[0].strip(),
        trigger_event=kind[1].strip() if len(kind) > 1 else "",
        control_id=parts(10)[0].strip(),
        processing_id=parts(11)[0].strip(),
        version=parts(12)[0].strip(),
        accept_ack=parts(15)[0].strip().upper(),
        application_ack=parts(16)[0].strip().upper(),
    )


def component(
    segment: Segment, field: int, number: int = 1, repetition: int = 1, sub: int = 1
) -> str:
    """Unescaped sub-component ``sub`` of component ``number`` of ``field`` (``""`` when absent)."""
    fields = segment.fields
    if field >= len(fields):
        return ""
    value = fields[field]
    if segment.name == "MSH" and field in (1, 2):
        return value if number == repetition == sub == 1 else ""  # never unescaped
    encoding = segment.encoding
    if repetition > 1 or encoding.repetition in value:
        parts = value.split(encoding.repetition)
        if repetition > len(parts):
            return ""
        value = parts[repetition - 1]
    if number > 1 or encoding.component in value:
        parts = value.split(encoding.component)
        if number > len(parts):
            return ""
        value = parts[number - 1]
    if sub > 1 or encoding.subcomponent in value:
        parts = value.split(encoding.subcomponent)
        if sub > len(parts):
            return ""
        value = parts[sub - 1]
    try:
        return encoding.unescape(value)
    except ValueError:  # a bad repeat count: python-hl7 fails on it, we read it as absent
        return ""


def components(segment: Segment, field: int) -> list[str]:
    """Every component of ``field``'s first repetition as :func:`component` reads it.

    ``components(s, f)[n - 1] == component(s, f, n)`` for each component present
    (and the list is ``[""]`` for an absent field): for a reader that needs several
    components of one field, which this splits once. Not for MSH-1 and MSH-2.
    """
    fields = segment.fields
    if field >= len(fields):
        return [""]
    value = fields[field]
    encoding = segment.encoding
    if encoding.repetition in value:
        value = value[: value.index(encoding.repetition)]
    sub, esc = encoding.subcomponent, encoding.escape
    if sub not in value and esc not in value:
        return value.split(encoding.component)  # the usual field: nothing to decode
    out = []
    for part in value.split(encoding.component):
        if sub in part:
            part = part[: part.index(sub)]
        try:
            out.append(encoding.unescape(part))
        except ValueError:  # a bad repeat count: read as absent, as component() does
            out.append("")
    return out


def field_text(segment: Segment, field: int) -> str:
    """The first repetition of ``field``, first component, unescaped."""
    return component(segment, field, 1, 1)


def repetitions(segment: Segment, field: int) -> int:
    """How many repetitions ``field`` carries (0 when absent or empty)."""
    fields = segment.fields
    if field >= len(fields) or not fields[field]:
        return 0
    return fields[field].count(segment.encoding.repetition) + 1


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
