"""ORU^R01: each OBX segment becomes one observation item, or one fault.

Value types (OBX-2): ``NM`` a number; ``SN`` a structured numeric (``^182`` is
the number 182; a comparator, ratio or range such as ``>^10``, ``^1^:^2`` is
kept as the text ``>10``, ``1:2``); ``CE``/``CWE``/``CNE`` the code (CE-1, or
the text CE-2 when no code is given); ``ST``/``TX``/``FT`` text up to 256
characters (repetitions joined by newlines). Every other type (``RP``, ``ED``,
...) is a fault "value type X not supported", kept raw in the quarantine.

The observation id is deterministic, so that an identical resend is a
duplicate: ``<MSH-10, letters/digits/._- only, 24 chars>.<OBX position>.<digest>``
where the digest (12 hex) covers sender, MSH-10, patient, the OBR time and the
OBX segment as received. The same MSH-10 with other content gives new ids.

The patient is PID-3's first identifier (CX-1). It is used as it is when it fits
medtwin's id pattern; otherwise runs of other characters become ``_`` and
``.`` plus 8 hex of its SHA-256 are added, so distinct identifiers stay distinct.

Times: OBX-14, else OBR-7; read in the sender's zone when they carry no offset.
OBX-11 ``C`` corrects an earlier result and ``D``/``W`` mark it entered in
error: the item carries ``correction`` and the processor finds the earlier one.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from medtwin.core.clock import to_us
from medtwin.core.records import LOINC, ObservationStatus
from medtwin.data.validation import ID_PATTERN, MAX_TEXT
from medtwin.devices.hl7.ack import ErrorCode, Fault
from medtwin.devices.hl7.parse import (
    Encoding,
    ParsedMessage,
    Segment,
    component,
    components,
    field_text,
    parse_ts,
    repetitions,
)

__all__ = ["SUPPORTED_TYPES", "ObxItem", "OruContent", "coding_system", "patient_id", "read_oru"]

SUPPORTED_TYPES = frozenset({"NM", "SN", "CE", "CWE", "CNE", "ST", "TX", "FT"})
_CODED = frozenset({"CE", "CWE", "CNE"})
_TEXT = frozenset({"ST", "TX", "FT"})
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_NOT_ID = re.compile(r"[^A-Za-z0-9._\-]+")
# HL7 table 0396 names of coding systems medtwin knows by URI.
_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
}
_SN_COMPARATORS = frozenset({"", "=", "<", ">", "<=", ">=", "<>"})
_CORRECTIONS = {
    "C": ObservationStatus.CORRECTED.value,
    "D": ObservationStatus.ENTERED_IN_ERROR.value,
    "W": ObservationStatus.ENTERED_IN_ERROR.value,
}


@dataclass(slots=True)  # not frozen: one is made per OBX, and frozen costs twice as much
class ObxItem:
    """An observation item read from OBX number ``index`` (1-based, within the message)."""

    index: int
    item: dict[str, Any]
    payload: str  # MSH, PID, OBR and this OBX: enough to replay it alone
    correction: str | None = None  # corrected / entered-in-error: an earlier result changes


@dataclass
class OruContent:
    """What an ORU^R01 carried: items to validate and faults found while reading."""

    items: list[ObxItem] = field(default_factory=list)
    faults: list[tuple[Fault, str]] = field(default_factory=list)  # (fault, payload)
    obx_total: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)  # value type -> OBX count


@functools.lru_cache(maxsize=1024)  # a feed names a handful of systems, OBX after OBX
def coding_system(name: str) -> str:
    """URI of an HL7 coding system name (``LN`` -> LOINC); unknown ones get a URN."""
    name = name.strip()
    known = _SYSTEMS.get(name.upper())
    if known is not None:
        return known
    cleaned = _NOT_ID.sub("_", name)[:64] or "local"
    return f"urn:hl7v2:coding-system:{cleaned}"


@functools.lru_cache(maxsize=4096)  # a feed sends result after result for the same patients
def patient_id(raw: str) -> str | None:
    """medtwin's patient id for a PID-3 identifier (see the module docstring); None if empty."""
    raw = raw.strip()
    if not raw:
        return None
    if ID_PATTERN.fullmatch(raw):
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cleaned = _NOT_ID.sub("_", raw).lstrip("._-")[:48]
    return f"{cleaned}.{digest}" if cleaned else f"p.{digest}"


def read_oru(parsed: ParsedMessage, zone: tzinfo, *, index_offset: int = 0) -> OruContent:
    """The OBX items and faults of an ORU^R01 message (no store access).

    ``index_offset`` numbers the OBX from ``index_offset + 1``: a replayed part of a
    message keeps the position (and so the ids) it had in the whole message.
    """
    header = parsed.header
    content = OruContent()
    items = content.items
    encoding = parsed.encoding
    msh_text = parsed.texts[0]
    patient: str | None = None
    # MSH, PID and OBR as received: the start of each OBX's payload.
    pid_text = ""
    head = msh_text
    obr_time = ""  # OBR-7 as received: part of each OBX's id digest
    # What every OBX of the message shares, worked out once.
    context = _Message(header.sender, header.control_id, zone, encoding)
    total = 0
    for text in parsed.texts:
        name = text[:3]
        if name == "OBX":
            total += 1
            index = total + index_offset
            payload = f"{head}\r{text}"
            result = _read_obx(text, index, patient, obr_time, context)
            if not isinstance(result, Fault):
                items.append(ObxItem(index, result[0], payload, result[1]))
            else:
                content.faults.append((result, payload))
                if result.code == ErrorCode.DATA_TYPE_ERROR and result.location.endswith("-2"):
                    value_type = field_text(Segment(text, encoding), 2).strip().upper()
                    content.unsupported[value_type] = content.unsupported.get(value_type, 0) + 1
        elif name == "PID":
            patient = patient_id(component(Segment(text, encoding), 3, 1))
            pid_text, obr_time = text, ""
            head = "\r".join(t for t in (msh_text, pid_text) if t)
        elif name == "OBR":
            obr_time = field_text(Segment(text, encoding), 7)
            head = "\r".join(t for t in (msh_text, pid_text, text) if t)
    content.obx_total = total
    return content


class _Message:
    """The parts of one message's OBX items that do not change from one OBX to the next."""

    __slots__ = ("control_id", "encoding", "prefix", "sender", "times", "zone")

    def __init__(self, sender: str, control_id: str, zone: tzinfo, encoding: Encoding) -> None:
        self.sender = sender
        self.control_id = control_id
        self.zone = zone
        self.encoding = encoding
        self.prefix = _NOT_ID.sub("_", control_id).lstrip("._-")[:24] or "m"
        # The OBX of one message repeat a few timestamps: each is read once (ISO text).
        self.times: dict[str, str] = {}


# OBX fields read, padded to when absent: up to OBX-14 (observation time).
_OBX_FIELDS = 15
_PADDING = ("",) * _OBX_FIELDS


def _read_obx(
    text: str,
    index: int,
    patient: str | None,
    obr_time: str,
    message: _Message,
) -> tuple[dict[str, Any], str | None] | Fault:
    """The item of the OBX segment ``text`` and its correction status, or its fault."""
    if patient is None:
        return Fault("PID-3", "no patient identifier (PID-3) before this OBX", 101)
    encoding = message.encoding
    mark = encoding.component
    if encoding.escape in text or encoding.subcomponent in text or encoding.repetition in text:
        segment = Segment(text, encoding)
        fields = segment.fields
        count = len(fields)
        value_type, status_code, time_text, unit, first_value = (
            components(segment, number)[0] for number in (2, 11, 14, 6, 5)
        )
        identifier = components(segment, 3)
        repeats = repetitions(segment, 5)
    else:  # the usual OBX: a field's first component is the text before ^, nothing to decode
        # (a Segment, which cuts fields lazily, is made only when a rarer value needs one)
        fields = text.split(encoding.field)
        count = len(fields)
        if count < _OBX_FIELDS:
            fields = [*fields, *_PADDING[count:]]
        value_type = fields[2].partition(mark)[0]
        status_code = fields[11].partition(mark)[0]
        time_text = fields[14].partition(mark)[0]
        unit = fields[6].partition(mark)[0]
        first_value = fields[5].partition(mark)[0]
        identifier = fields[3].split(mark) if count > 3 else [""]
        repeats = 1 if fields[5] else 0  # no repetition separator in the segment
    value_type = value_type.strip().upper()
    status_code = status_code.strip().upper()
    correction = _CORRECTIONS.get(status_code)
    value_present = count > 5 and fields[5] != ""
    if not value_type and not value_present:
        return Fault(
            f"OBX[{index}]-5",
            f"no value (result status {status_code or 'empty'})",
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
    if not value_type:
        return Fault(f"OBX[{index}]-2", "no value type (OBX-2)", ErrorCode.REQUIRED_FIELD_MISSING)
    if value_type not in SUPPORTED_TYPES:
        return Fault(
            f"OBX[{index}]-2",
            f"value type {value_type[:8]} not supported",
            ErrorCode.DATA_TYPE_ERROR,
        )
    parts = len(identifier)
    code = identifier[0].strip()
    system_name = identifier[2] if parts > 2 else ""
    if not code and parts > 3 and identifier[3].strip():  # only an alternate identifier
        code, system_name = identifier[3].strip(), identifier[5] if parts > 5 else ""
    if not code:
        return Fault(
            f"OBX[{index}]-3",
            "no observation identifier (OBX-3)",
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
    value: str | float | None
    if not value_present:
        if correction != ObservationStatus.ENTERED_IN_ERROR.value:
            return Fault(
                f"OBX[{index}]-5",
                f"no value (result status {status_code or 'empty'})",
                ErrorCode.REQUIRED_FIELD_MISSING,
            )
        value = None  # the processor takes the earlier result's value
    elif value_type == "NM" and repeats == 1:  # the usual value: one number
        raw = first_value.strip()
        if _NUMBER.fullmatch(raw) is None:
            return Fault(f"OBX[{index}]-5", "NM value is not a number", ErrorCode.DATA_TYPE_ERROR)
        value = float(raw)
    else:
        segment = Segment(text, encoding)
        read = _value(segment, value_type, f"OBX[{index}]", first_value, repeats)
        if isinstance(read, Fault):
            return read
        value = read
    time_text = time_text.strip()
    from_obr = not time_text and bool(obr_time)
    if from_obr:
        time_text = obr_time.strip()
    if not time_text:
        return Fault(
            f"OBX[{index}]-14",
            "no observation time (OBX-14 or OBR-7)",
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
    moment = message.times.get(time_text)
    if moment is None:
        try:
            read_time = parse_ts(time_text, message.zone)
            to_us(read_time)
        except (ValueError, OverflowError) as exc:
            where = "OBR-7" if from_obr else f"OBX[{index}]-14"
            return Fault(where, str(exc), ErrorCode.DATA_TYPE_ERROR)
        moment = message.times[time_text] = read_time.isoformat()
    digest = hashlib.sha256(
        "\x1f".join((message.sender, message.control_id, patient, obr_time, text)).encode(
            "utf-8", "replace"
        )
    ).hexdigest()[:12]
    item: dict[str, Any] = {
        "id": f"{message.prefix}.{index}.{digest}",
        "source": message.sender,
        "patient": patient,
        "code": code[:MAX_TEXT],
        "system": coding_system(system_name),
        "value": value,
        "unit": unit.strip(),
        "time": moment,
    }
    if correction is not None:
        item["status"] = correction
    return item, correction


def _value(
    segment: Segment, value_type: str, where: str, first: str, count: int
) -> str | float | Fault:
    """OBX-5 read as ``value_type``; ``first`` is its first component and ``count`` its
    number of repetitions, as read already."""
    location = f"{where}-5"
    if value_type in _TEXT:
        parts = [component(segment, 5, 1, r) for r in range(1, count + 1)]
        text = "\n".join(parts)
        if len(text) > MAX_TEXT:
            return Fault(
                location, f"text value longer than {MAX_TEXT} characters", ErrorCode.VALUE_TOO_LONG
            )
        return text
    if count > 1:
        return Fault(
            location, f"repeated {value_type} values are not supported", ErrorCode.DATA_TYPE_ERROR
        )
    if value_type == "NM":
        raw = first.strip()
        if _NUMBER.fullmatch(raw) is None:
            return Fault(location, "NM value is not a number", ErrorCode.DATA_TYPE_ERROR)
        return float(raw)
    if value_type == "SN":
        return _structured_numeric(segment, location)
    coded = first.strip() or component(segment, 5, 2).strip()
    if not coded:
        return Fault(location, f"{value_type} value has no code", ErrorCode.REQUIRED_FIELD_MISSING)
    if len(coded) > MAX_TEXT:
        return Fault(
            location, f"coded value longer than {MAX_TEXT} characters", ErrorCode.VALUE_TOO_LONG
        )
    return coded


def _structured_numeric(segment: Segment, location: str) -> str | float | Fault:
    comparator, first, separator, second = (component(segment, 5, n).strip() for n in (1, 2, 3, 4))
    if comparator not in _SN_COMPARATORS:
        return Fault(location, f"SN comparator {comparator[:4]!r} is not valid", 102)
    if not _NUMBER.fullmatch(first) or (second and not _NUMBER.fullmatch(second)):
        return Fault(location, "SN value is not a number", ErrorCode.DATA_TYPE_ERROR)
    if comparator in ("", "=") and not separator and not second:
        return float(first)
    if separator and separator not in ("-", "+", "/", ":", "."):
        return Fault(location, f"SN separator {separator[:4]!r} is not valid", 102)
    # Comparators, ratios and ranges are not one number: kept as their text.
    return f"{'' if comparator == '=' else comparator}{first}{separator}{second}"
