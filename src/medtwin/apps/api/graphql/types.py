"""GraphQL object types of patients, twins and observations, and their builders.

Times are ISO 8601 strings in UTC with a ``Z``, as in the REST API. A value is
numeric (``value``) or coded/text (``text``): GraphQL has no union of scalars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import strawberry

from medtwin.core.clock import to_iso
from medtwin.core.records import LOINC, QualityFlag
from medtwin.data.store import StoredObservation


def split_value(value: object) -> tuple[float | None, str | None]:
    """(numeric, text) of a value that is one or the other."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None
    return None, None if value is None else str(value)


@strawberry.type(description="The newest value of one code in a twin.")
class Vital:
    code: str
    system: str
    value: float | None
    text: str | None
    unit: str
    time: str
    flags: list[str]


@strawberry.type
class News2Subscore:
    parameter: str
    score: int | None


@strawberry.type(description="NEWS2 now, from the values inside the twin's window.")
class News2:
    score: int | None = strawberry.field(description="null while a parameter is missing")
    partial_score: int
    band: str | None
    subscores: list[News2Subscore]
    missing: list[str]


@strawberry.type(description="The live state of a patient's twin.")
class Twin:
    patient: strawberry.ID
    time: str = strawberry.field(description="When the twin was evaluated (clock time)")
    spo2_scale: int
    vitals: list[Vital] = strawberry.field(description="Newest value per registered code")
    other: list[Vital] = strawberry.field(description="Newest value of each unmapped code")
    news2: News2


def _vital(code: str, system: str, raw: Mapping[str, Any]) -> Vital:
    value, text = split_value(raw["value"])
    return Vital(
        code=code,
        system=system,
        value=value,
        text=text,
        unit=str(raw["unit"]),
        time=str(raw["time"]),
        flags=list(raw["flags"]),
    )


def twin_of(view: Mapping[str, Any]) -> Twin:
    """The GraphQL twin of a runtime view (``TwinRuntime.view``, ``summaries``, events)."""
    news2 = view["news2"]
    return Twin(
        patient=strawberry.ID(view["patient"]),
        time=view["time"],
        spo2_scale=int(view["spo2_scale"]),
        vitals=[_vital(code, LOINC, raw) for code, raw in view["vitals"].items()],
        other=[_vital(raw["code"], raw["system"], raw) for raw in view.get("other", ())],
        news2=News2(
            score=news2["score"],
            partial_score=news2["partial_score"],
            band=news2["band"],
            subscores=[News2Subscore(parameter=p, score=s) for p, s in news2["subscores"].items()],
            missing=list(news2["missing"]),
        ),
    )


@strawberry.type(description="One stored observation (a version of a sender's result).")
class Observation:
    source: str = strawberry.field(description="The sending device or system")
    source_id: str = strawberry.field(description="The sender's id of the result")
    version: int
    system: str
    code: str
    value: float | None
    text: str | None
    unit: str
    time: str = strawberry.field(description="When it was measured")
    status: str
    flags: list[str]
    received: str = strawberry.field(description="When medtwin stored it")


def observation_of(stored: StoredObservation) -> Observation:
    obs = stored.observation
    return Observation(
        source=obs.source,
        source_id=obs.source_id,
        version=obs.version,
        system=obs.system,
        code=obs.code,
        value=obs.value_num,
        text=obs.value_text if obs.value_num is None else None,
        unit=obs.unit,
        time=to_iso(obs.effective_us),
        status=obs.status,
        flags=QualityFlag.names_of(obs.flags),
        received=to_iso(stored.received_us),
    )


@strawberry.type(description="A page of observations in time order.")
class ObservationPage:
    items: list[Observation]
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page")
