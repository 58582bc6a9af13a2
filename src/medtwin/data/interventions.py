"""Validation of intervention items into :class:`~medtwin.core.records.Intervention`.

An item is the JSON object of ``POST /api/v1/interventions`` and of device
topics::

    {"id": "b-1", "source": "pump-3", "patient": "p1", "kind": "insulin-bolus",
     "amount": 4.5, "unit": "[IU]", "time": "2026-01-01T07:00:00Z"}

optionally ``"duration_s"`` (an infusion's length, s), ``"drug"`` and
``"route"``. Each kind has one canonical unit; a few spellings are accepted
and converted. Faults are :class:`~medtwin.data.validation.Rejection` with the
field named, like observation items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medtwin.core.records import Intervention, InterventionKind
from medtwin.data.validation import ID_PATTERN, MAX_TEXT, Rejection, parse_time_us

__all__ = ["KIND_UNITS", "ROUTES", "ValidatedInterventions", "validate_interventions"]

FIELDS = frozenset(
    {"id", "source", "patient", "kind", "amount", "unit", "time", "duration_s", "drug", "route"}
)
REQUIRED = ("id", "source", "patient", "kind", "amount", "unit", "time")
# Canonical unit of each kind, and accepted spellings with their factor to it.
KIND_UNITS: dict[InterventionKind, tuple[str, dict[str, float]]] = {
    InterventionKind.INSULIN_BOLUS: ("[IU]", {"[IU]": 1.0, "U": 1.0, "IU": 1.0}),
    InterventionKind.INSULIN_BASAL: ("[IU]/h", {"[IU]/h": 1.0, "U/h": 1.0, "IU/h": 1.0}),
    InterventionKind.MEAL: ("g", {"g": 1.0}),
    InterventionKind.DRUG_DOSE: ("mg", {"mg": 1.0, "g": 1000.0, "ug": 0.001}),
    InterventionKind.FLUIDS: ("mL", {"mL": 1.0, "L": 1000.0}),
    InterventionKind.OXYGEN: ("L/min", {"L/min": 1.0}),
}
ROUTES = frozenset({"iv-bolus", "iv-infusion", "oral", "subcutaneous", "intramuscular",
                    "inhalation", "nasal", "enteral"})  # fmt: skip
# A day: longer "infusions" are schedules, sent as several items.
MAX_DURATION_S = 86_400.0


@dataclass(frozen=True, slots=True)
class ValidatedInterventions:
    accepted: list[tuple[int, Intervention]]
    rejected: list[Rejection]


def validate_interventions(
    items: Sequence[Any], *, now_us: int, max_future_us: int
) -> ValidatedInterventions:
    accepted: list[tuple[int, Intervention]] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        result = _check(item, index, now_us + max_future_us)
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            accepted.append((index, result))
    return ValidatedInterventions(accepted, rejected)


def _text(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name)
    if type(value) is not str or not value or len(value) > MAX_TEXT or "\x00" in value:
        return None
    return value


def _check(item: Any, index: int, latest_us: int) -> Intervention | Rejection:
    def fault(field: str, reason: str) -> Rejection:
        return Rejection(index, field, reason, item)

    if type(item) is not dict:
        return fault("", "item must be a JSON object")
    unknown = sorted(str(k) for k in item if k not in FIELDS)
    if unknown:
        return fault(unknown[0], f"unknown field {unknown[0]!r}")
    for name in REQUIRED:
        if item.get(name) is None:
            return fault(name, f"missing required field {name!r}")
    source_id, source = _text(item, "id"), _text(item, "source")
    if source_id is None:
        return fault("id", "id must be a non-empty string of at most 256 characters")
    if source is None:
        return fault("source", "source must be a non-empty string of at most 256 characters")
    patient = item["patient"]
    if type(patient) is not str or ID_PATTERN.fullmatch(patient) is None:
        return fault("patient", "patient must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        kind = InterventionKind(item["kind"])
    except ValueError:
        kinds = ", ".join(k.value for k in InterventionKind)
        return fault("kind", f"kind must be one of {kinds}")
    canonical, spellings = KIND_UNITS[kind]
    unit = item["unit"]
    if unit not in spellings:
        return fault("unit", f"unit of {kind.value} must be one of {', '.join(spellings)}")
    amount = item["amount"]
    if type(amount) not in (int, float) or not math.isfinite(amount) or amount < 0:
        return fault("amount", "amount must be a finite number, not negative")
    if type(item["time"]) is not str:
        return fault("time", "time must be an ISO 8601 string")
    try:
        start_us = parse_time_us(item["time"])
    except (ValueError, OverflowError) as exc:
        return fault("time", f"unparseable time: {exc}")
    if start_us > latest_us:
        return fault("time", "time is ahead of the clock")
    duration = item.get("duration_s", 0.0)
    if type(duration) not in (int, float) or not 0 <= duration <= MAX_DURATION_S:
        return fault("duration_s", f"duration_s must be 0-{MAX_DURATION_S:g} s")
    route = item.get("route")
    if route is not None and route not in ROUTES:
        return fault("route", f"route must be one of {', '.join(sorted(ROUTES))}")
    drug = item.get("drug")
    if drug is not None and _text(item, "drug") is None:
        return fault("drug", "drug must be a non-empty string of at most 256 characters")
    if kind is InterventionKind.DRUG_DOSE and drug is None:
        return fault("drug", "a drug dose names its drug")
    return Intervention(
        source=source,
        source_id=source_id,
        patient=patient,
        kind=kind,
        amount=float(amount) * spellings[unit],
        unit=canonical,
        start_us=start_us,
        duration_s=float(duration),
        drug=drug,
        route=route,
    )
