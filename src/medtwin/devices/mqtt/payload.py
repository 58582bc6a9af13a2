"""Reading device messages: topic and JSON payload into a reading, or a clean rejection.

Topics are ``medtwin/devices/{device}/observations`` and
``medtwin/devices/{device}/interventions``. An observation payload::

    {"code": "8867-4", "value": 72, "unit": "/min", "time": "2026-01-01T10:00:00Z",
     "boot_id": "b7", "seq": 1041}

(optionally ``"system"``). An intervention payload::

    {"kind": "insulin-bolus", "amount": 2.5, "unit": "U", "time": "...",
     "boot_id": "b7", "seq": 1042}

(optionally ``"duration_s"``, ``"drug"``, ``"route"``). ``boot_id`` changes each time
the device starts and ``seq`` counts its messages since: together with the device
they identify a reading, so a resend is recognized whatever order it arrives in.

:func:`parse_message` never raises on input: every fault becomes a
:class:`PayloadRejection` naming the JSON field (or the topic) and the reason.
Whether a value fits its code is checked later by the ingestion path, as for
every other channel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from medtwin.data.validation import ID_PATTERN, MAX_TEXT, parse_time_us, storable

DEFAULT_ROOT = "medtwin/devices"
OBSERVATIONS = "observations"
INTERVENTIONS = "interventions"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SEQ = 2**63 - 1
# A boot id becomes part of the observation id "{boot_id}.{seq}", which must stay short.
BOOT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
INTERVENTION_KINDS = frozenset(
    {"insulin-bolus", "insulin-basal", "meal", "drug", "fluid", "oxygen"}
)
OBSERVATION_FIELDS = frozenset({"code", "value", "unit", "time", "boot_id", "seq", "system"})
INTERVENTION_FIELDS = frozenset(
    {"kind", "amount", "unit", "time", "duration_s", "drug", "route", "boot_id", "seq"}
)


@dataclass(frozen=True, slots=True)
class DeviceObservation:
    """One observation a device published; ``time_us`` is its effective time."""

    topic: str
    device: str
    boot_id: str
    seq: int
    code: str
    value: Any
    unit: str
    time: str
    time_us: int
    system: str | None
    raw: str

    @property
    def reading_id(self) -> str:
        """The observation id: the store's idempotency on (source, id) de-duplicates."""
        return f"{self.boot_id}.{self.seq}"

    def item(self, patient: str) -> dict[str, Any]:
        """The ingestion item of this reading, attributed to ``patient``."""
        item = {
            "id": self.reading_id,
            "source": self.device,
            "patient": patient,
            "code": self.code,
            "value": self.value,
            "unit": self.unit,
            "time": self.time,
        }
        if self.system is not None:
            item["system"] = self.system
        return item


@dataclass(frozen=True, slots=True)
class DeviceIntervention:
    """One intervention (insulin, meal, drug, fluid, oxygen) a device published."""

    topic: str
    device: str
    boot_id: str
    seq: int
    kind: str
    amount: float
    unit: str
    time_us: int
    duration_s: float
    drug: str | None
    route: str | None
    raw: str

    @property
    def reading_id(self) -> str:
        return f"{self.boot_id}.{self.seq}"


@dataclass(frozen=True, slots=True)
class PayloadRejection:
    """A message refused: ``field`` is the JSON field at fault ("" for the whole message)."""

    topic: str
    device: str | None
    field: str
    reason: str
    raw: str

    @property
    def location(self) -> str:
        return f"{self.topic}: {self.field}" if self.field else self.topic


Parsed = DeviceObservation | DeviceIntervention | PayloadRejection


def content_digest(topic: str, raw: str) -> str:
    """The tag of one message's content: the first 12 hex digits of sha256(topic, payload).

    Quarantine reasons end in ``[sha256:<tag>]``: resends of a message are recognized by
    it, and a replay finds the message's topic again by it.
    """
    content = hashlib.sha256(topic.encode("utf-8", errors="replace") + b"\x00")
    content.update(raw.encode("utf-8", errors="replace"))
    return content.hexdigest()[:12]


def raw_text(payload: bytes) -> str:
    """The payload as text every store can keep (bad UTF-8 and NUL replaced)."""
    text = payload.decode("utf-8", errors="replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> tuple[str, str] | None:
    """(device, "observations" | "interventions") of a device topic, None for any other."""
    return _parse_topic(topic, root)


# Devices publish on a few topics each: the same few thousand strings, checked once.
@functools.lru_cache(maxsize=8192)
def _parse_topic(topic: str, root: str) -> tuple[str, str] | None:
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    device, _, kind = topic[len(prefix) :].partition("/")
    if kind not in (OBSERVATIONS, INTERVENTIONS) or ID_PATTERN.fullmatch(device) is None:
        return None
    return device, kind


_decode_json = json.JSONDecoder().decode


def parse_message(topic: str, payload: bytes, *, root: str = DEFAULT_ROOT) -> Parsed:
    """The reading in one MQTT message; a :class:`PayloadRejection` for any fault."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return PayloadRejection(
            topic,
            None,
            "",
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
            f"<payload of {len(payload)} bytes>",
        )
    # A payload starting "{x" with x not NUL is UTF-8 to json.loads (no BOM, not UTF-16/32):
    # when it also decodes strictly, its text is both the raw text and the JSON to read,
    # decoded once. Anything else takes the general path below, with the same results.
    text: str | None = None
    if payload[:1] == b"{" and payload[1:2] != b"\x00":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    raw = raw_text(payload) if text is None or "\x00" in text else text
    where = _parse_topic(topic, root)
    if where is None:
        return PayloadRejection(
            topic,
            None,
            "",
            f"topic must be {root}/<device>/observations or .../interventions, with a device "
            "id of 1-64 letters, digits, '.', '_' or '-'",
            raw,
        )
    device, kind = where
    try:
        document = json.loads(payload) if text is None else _decode_json(text)
    except UnicodeDecodeError:
        return PayloadRejection(topic, device, "", "payload is not UTF-8", raw)
    except json.JSONDecodeError as exc:
        return PayloadRejection(
            topic, device, "", f"payload is not JSON: {exc.msg} at {exc.pos}", raw
        )
    except (ValueError, RecursionError) as exc:
        # Integers too long to convert, nesting deeper than the interpreter's stack.
        return PayloadRejection(topic, device, "", f"payload is not usable JSON: {exc}", raw)
    if type(document) is not dict:
        return PayloadRejection(topic, device, "", "payload must be a JSON object", raw)
    try:
        if kind == OBSERVATIONS:
            return _observation(topic, device, document, raw)
        return _intervention(topic, device, document, raw)
    except _FaultError as fault:
        return PayloadRejection(topic, device, fault.field, fault.reason, raw)


# Readings of one moment from many devices carry the same time text: parse it once.
_time_us = functools.lru_cache(maxsize=4096)(parse_time_us)


class _FaultError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _check_fields(document: dict[str, Any], allowed: frozenset[str]) -> None:
    if allowed.issuperset(document):
        return
    unknown = sorted(str(key) for key in document if key not in allowed)
    if unknown:
        raise _FaultError(unknown[0][:64], f"unknown field {unknown[0][:64]!r}")


def _identity(document: dict[str, Any]) -> tuple[str, int]:
    boot_id = document.get("boot_id")
    if type(boot_id) is not str or BOOT_ID_PATTERN.fullmatch(boot_id) is None:
        raise _FaultError("boot_id", "boot_id must be 1-64 letters, digits, '_' or '-'")
    seq = document.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise _FaultError("seq", "seq must be a whole number from 0 to 2^63-1")
    return boot_id, seq


def _text(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise _FaultError(name, f"missing required field {name!r}")
        return None
    if type(value) is not str or not value or len(value) > MAX_TEXT or not storable(value):
        raise _FaultError(
            name, f"{name} must be a non-empty string of at most {MAX_TEXT} characters"
        )
    return value


def _time(document: dict[str, Any]) -> tuple[str, int]:
    value = document.get("time")
    if value is None:
        raise _FaultError("time", "missing required field 'time'")
    if type(value) is not str or len(value) > 64:
        raise _FaultError("time", "time must be an ISO 8601 string with a UTC offset")
    try:
        return value, _time_us(value)
    except (ValueError, OverflowError) as exc:
        raise _FaultError("time", f"unparseable time {value!r}: {exc}") from None


def _number(document: dict[str, Any], name: str, *, default: float | None = None) -> float:
    value = document.get(name)
    if value is None:
        if default is None:
            raise _FaultError(name, f"missing required field {name!r}")
        return default
    if type(value) is not int and type(value) is not float:
        raise _FaultError(name, f"{name} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise _FaultError(name, f"{name} is too large") from None
    if not math.isfinite(number) or number < 0:
        raise _FaultError(name, f"{name} must be a finite number of at least 0")
    return number


def _observation(topic: str, device: str, document: dict[str, Any], raw: str) -> DeviceObservation:
    _check_fields(document, OBSERVATION_FIELDS)
    boot_id, seq = _identity(document)
    code = _text(document, "code", required=True)
    assert code is not None
    if "value" not in document or document["value"] is None:
        raise _FaultError("value", "missing required field 'value'")
    unit = document.get("unit", "")
    if unit is None:
        unit = ""
    if type(unit) is not str or len(unit) > MAX_TEXT or not storable(unit):
        raise _FaultError("unit", "unit must be a UCUM string")
    system = _text(document, "system", required=False)
    time_text, time_us = _time(document)
    return DeviceObservation(
        topic,
        device,
        boot_id,
        seq,
        code,
        document["value"],
        unit,
        time_text,
        time_us,
        system,
        raw,
    )


def _intervention(
    topic: str, device: str, document: dict[str, Any], raw: str
) -> DeviceIntervention:
    _check_fields(document, INTERVENTION_FIELDS)
    boot_id, seq = _identity(document)
    kind = document.get("kind")
    if type(kind) is not str or kind not in INTERVENTION_KINDS:
        raise _FaultError("kind", f"kind must be one of {', '.join(sorted(INTERVENTION_KINDS))}")
    amount = _number(document, "amount")
    unit = _text(document, "unit", required=True)
    assert unit is not None
    duration_s = _number(document, "duration_s", default=0.0)
    drug = _text(document, "drug", required=kind == "drug")
    route = _text(document, "route", required=False)
    _, time_us = _time(document)
    return DeviceIntervention(
        topic, device, boot_id, seq, str(kind), amount, unit, time_us, duration_s, drug, route, raw
    )
