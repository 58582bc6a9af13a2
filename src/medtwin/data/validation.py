"""Validation of observation items into :class:`~medtwin.core.records.Observation`.

An item is the JSON object of the REST API and of JSON-lines files::

    {"id": "msg-1", "source": "monitor-7", "patient": "p1", "code": "9279-1",
     "value": 18, "unit": "/min", "time": "2026-01-01T10:00:00Z"}

optionally with ``"system"`` (default LOINC). Each bad item becomes a
:class:`Rejection` naming the field and the reason; good items are converted
to the code's canonical unit and flagged (``unmapped``, ``out-of-range``).
Written as one plain loop on purpose: it runs for every observation ingested.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medtwin.core.clock import to_us
from medtwin.core.records import LOINC, Observation, ObservationStatus, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry

FIELDS = frozenset(
    {"id", "source", "patient", "code", "value", "unit", "time", "system", "status", "version"}
)
# A correction is a new version of the same (source, id) with one of these statuses.
STATUSES = frozenset(s.value for s in ObservationStatus)
MAX_VERSION = 1_000_000
REQUIRED = ("id", "source", "patient", "code", "value", "time")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
MAX_TEXT = 256
# Items may not be stamped further ahead of the clock than this (µs): 5 minutes.
DEFAULT_MAX_FUTURE_US = 300 * 1_000_000
# Characters no store can keep: NUL (PostgreSQL text) and unpaired surrogates (not UTF-8),
# both reachable from JSON through "\u0000" and "\ud800" escapes.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
# Largest finite float; comparing against it also rejects NaN, infinities and ints too big
# for a float (on which math.isfinite and float() raise OverflowError).
_FLOAT_MAX = sys.float_info.max

_UNMAPPED = int(QualityFlag.UNMAPPED)
_OUT_OF_RANGE = int(QualityFlag.OUT_OF_RANGE)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why item ``index`` was refused, and where (``field`` is a JSON field name)."""

    index: int
    field: str
    reason: str
    item: Any

    def location(self, prefix: str = "observations") -> str:
        where = f"{prefix}[{self.index}]"
        return f"{where}.{self.field}" if self.field else where


@dataclass(frozen=True, slots=True)
class Validated:
    """Result of validating a batch: accepted observations with their item index."""

    accepted: list[tuple[int, Observation]]
    rejected: list[Rejection]


def parse_time_us(text: str) -> int:
    """Microseconds since epoch of an ISO 8601 time with a zone; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time has no timezone offset (use Z or +hh:mm)")
    return to_us(moment)


def storable(text: str) -> bool:
    """Whether both stores can keep ``text`` (no NUL, no lone surrogate)."""
    return _UNSTORABLE.search(text) is None


def _text_field(item: dict[str, Any], name: str) -> str | None:
    """The field as a non-empty string of bounded length, or None."""
    value = item.get(name)
    if type(value) is not str or not value or len(value) > MAX_TEXT or _UNSTORABLE.search(value):
        return None
    return value


def validate_items(
    items: Sequence[Any],
    *,
    now_us: int,
    registry: CodeRegistry = DEFAULT_REGISTRY,
    max_future_us: int = DEFAULT_MAX_FUTURE_US,
) -> Validated:
    """Validate ``items`` against the registry and the clock time ``now_us`` (µs)."""
    accepted: list[tuple[int, Observation]] = []
    rejected: list[Rejection] = []
    latest_allowed = now_us + max_future_us
    get_spec = registry.get
    # A batch from one ward repeats the same few timestamps; parse each once.
    times: dict[str, int] = {}
    future_reason = f"time is more than {max_future_us / 1e6:g} s ahead of the clock"
    for index, item in enumerate(items):
        fault = _check(item, index, latest_allowed, get_spec, times, future_reason)
        if not isinstance(fault, Rejection) and ("status" in item or "version" in item):
            fault = _revision(item, index, fault)
        if isinstance(fault, Rejection):
            rejected.append(fault)
        else:
            accepted.append((index, fault))
    return Validated(accepted, rejected)


def _check(
    item: Any,
    index: int,
    latest_allowed: int,
    get_spec: Any,
    times: dict[str, int],
    future_reason: str,
) -> Observation | Rejection:
    if type(item) is not dict:
        return Rejection(index, "", f"item must be a JSON object, got {json_kind(item)}", item)
    if not FIELDS.issuperset(item):
        unknown = sorted(str(k) for k in item if k not in FIELDS)
        return Rejection(index, unknown[0], f"unknown field {unknown[0]!r}", item)
    for name in REQUIRED:
        if name not in item or item[name] is None:
            return Rejection(index, name, f"missing required field {name!r}", item)
    source_id = _text_field(item, "id")
    if source_id is None:
        return Rejection(index, "id", text_reason(item["id"]), item)
    source = _text_field(item, "source")
    if source is None:
        return Rejection(index, "source", text_reason(item["source"]), item)
    patient = item["patient"]
    if type(patient) is not str or ID_PATTERN.fullmatch(patient) is None:
        return Rejection(
            index,
            "patient",
            "patient must be 1-64 characters of letters, digits, '.', '_' or '-'",
            item,
        )
    code = _text_field(item, "code")
    if code is None:
        return Rejection(index, "code", text_reason(item["code"]), item)
    system = item.get("system", LOINC)
    if (
        type(system) is not str
        or not system
        or len(system) > MAX_TEXT
        or _UNSTORABLE.search(system)
    ):
        return Rejection(index, "system", text_reason(system), item)
    unit = item.get("unit", "")
    if unit is None:
        unit = ""
    if type(unit) is not str or len(unit) > MAX_TEXT or _UNSTORABLE.search(unit):
        return Rejection(index, "unit", "unit must be a UCUM string", item)

    time_text = item["time"]
    if type(time_text) is not str:
        return Rejection(
            index, "time", f"time must be an ISO 8601 string, got {json_kind(time_text)}", item
        )
    effective_us = times.get(time_text)
    if effective_us is None:
        try:
            effective_us = times[time_text] = parse_time_us(time_text)
        except (ValueError, OverflowError) as exc:
            return Rejection(index, "time", f"unparseable time {time_text[:64]!r}: {exc}", item)
    if effective_us > latest_allowed:
        return Rejection(index, "time", future_reason, item)

    value = item["value"]
    value_type = type(value)
    spec = get_spec(code, system)
    if spec is None:
        if value_type is str:
            if len(value) > MAX_TEXT:
                return Rejection(index, "value", "text value longer than 256 characters", item)
            if _UNSTORABLE.search(value):
                return Rejection(index, "value", f"text value {_UNSTORABLE_REASON}", item)
            return Observation(
                source,
                source_id,
                patient,
                system,
                code,
                None,
                value,
                unit,
                effective_us,
                flags=_UNMAPPED,
            )
        if value_type is not int and value_type is not float:
            return Rejection(
                index, "value", f"value must be a number or a string, got {json_kind(value)}", item
            )
        if not -_FLOAT_MAX <= value <= _FLOAT_MAX:
            return Rejection(index, "value", _not_finite(value), item)
        return Observation(
            source,
            source_id,
            patient,
            system,
            code,
            float(value),
            None,
            unit,
            effective_us,
            flags=_UNMAPPED,
        )

    if not spec.numeric:
        if value_type is not str or value not in spec.values:
            allowed = ", ".join(spec.values)
            return Rejection(index, "value", f"value of {code} must be one of {allowed}", item)
        if unit not in spec.units:
            return Rejection(
                index, "unit", f"unit {unit!r} does not fit code {code} (coded value)", item
            )
        return Observation(
            source, source_id, patient, system, code, None, value, spec.unit, effective_us
        )

    if value_type is not int and value_type is not float:
        return Rejection(
            index, "value", f"value of {code} must be a number, got {json_kind(value)}", item
        )
    if not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        return Rejection(index, "value", _not_finite(value), item)
    canonical = spec.to_canonical(value, unit)
    if canonical is None:
        accepted = ", ".join(repr(u) for u in spec.units)
        return Rejection(
            index, "unit", f"unit {unit!r} does not fit code {code} (accepted: {accepted})", item
        )
    low, high = spec.hard
    if not low <= canonical <= high:
        return Rejection(
            index,
            "value",
            f"{canonical:g} {spec.unit} is impossible for {code} (limits {low:g}-{high:g})",
            item,
        )
    soft_low, soft_high = spec.soft
    flags = 0 if soft_low <= canonical <= soft_high else _OUT_OF_RANGE
    return Observation(
        source,
        source_id,
        patient,
        system,
        code,
        canonical,
        None,
        spec.unit,
        effective_us,
        flags=flags,
    )


def _revision(item: dict[str, Any], index: int, obs: Observation) -> Observation | Rejection:
    """Status and version of a result: a correction is version > 1 of the same id."""
    status = item.get("status", obs.status)
    if status not in STATUSES:
        allowed = ", ".join(sorted(STATUSES))
        return Rejection(index, "status", f"status must be one of {allowed}", item)
    version = item.get("version", 1)
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        return Rejection(index, "version", f"version must be a whole number 1-{MAX_VERSION}", item)
    return obs._replace(status=status, version=version)


def json_kind(value: object) -> str:
    """How an error names a JSON value's type (\"a number\", \"an array\", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_UNSTORABLE_REASON = "must not contain NUL characters or unpaired surrogates"


def _not_finite(value: float) -> str:
    if type(value) is int:  # beyond the range of a float, and possibly too long to print
        return "value must be finite, got an integer beyond the range of a number"
    return f"value must be finite, got {value}"


def text_reason(value: object) -> str:
    """Why ``value`` is not an acceptable text field (id, source, code...)."""
    if isinstance(value, str) and _UNSTORABLE.search(value):
        return _UNSTORABLE_REASON
    if isinstance(value, str):
        return f"must be a non-empty string of at most {MAX_TEXT} characters"
    return f"must be a string, got {json_kind(value)}"
