"""Glucose twins: the live forecast of a patient with CGM, and what-if branches.

Every answer is a module result (``glucose.forecast``) or a simulation from one,
and carries the statement that it supports, and does not replace, clinical
judgement.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard, session_guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.core.errors import InputError
from medtwin.data.accounts import Role
from medtwin.twins.glucose import Scenario

router = APIRouter(prefix="/api/v1", tags=["glucose"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
# A what-if reads the twin (and changes nothing): the same checks as a read, consent
# included. The dashboard posts it with its session cookie, from the same origin only.
WHATIF = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)


class BandPoint(BaseModel):
    horizon_min: int
    time: str
    median: float
    lower50: float
    upper50: float
    lower90: float
    upper90: float


class PersonalParameter(BaseModel):
    name: str
    unit: str
    description: str
    value: float = Field(description="posterior median")
    lower90: float = Field(description="5th percentile of the twin's ensemble")
    upper90: float = Field(description="95th percentile of the twin's ensemble")


class PlannedOut(BaseModel):
    kind: str = Field(description="insulin-bolus, insulin-basal, meal, ...")
    amount: float
    unit: str
    time: str = Field(description="when it is to start (after the twin's time)")
    duration_s: float | None = Field(None, description="an extended bolus or a basal rate's")
    source: str
    id: str


class GlucoseOut(BaseModel):
    patient: str
    id: str = Field(description="the glucose.forecast result this answer is")
    module: str
    version: str
    time: str = Field(description="the time the twin has been brought up to")
    computed: str
    last_reading: str
    unit: str
    glucose_now: float = Field(description="estimated plasma glucose now (mg/dL)")
    basal_u_per_h: float
    forecast: list[BandPoint]
    parameters: list[PersonalParameter]
    readings: list[dict[str, Any]] = Field(description="recent CGM readings: time and value")
    planned: list[PlannedOut] = Field(
        description="interventions recorded for after the twin's time that the forecast "
        "counts on (also named in its provenance)"
    )
    provenance: str
    statement: str


class ScenarioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    bolus_u: float = Field(0.0, ge=0, le=75, description="extra insulin bolus (U)")
    meal_g: float = Field(0.0, ge=0, le=500, description="meal (g of carbohydrate)")
    basal_change_u_per_h: float = Field(
        0.0, ge=-35, le=35, description="added to the basal rate (U/h) from the start on"
    )
    at_min: int = Field(0, ge=0, le=1440, description="start, minutes from now")


class WhatIfIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenarios: list[ScenarioIn] = Field(min_length=1, max_length=8)
    horizon_min: int = Field(240, ge=30, le=1440)


class Branch(BaseModel):
    name: str
    scenario: dict[str, float] | None = Field(description="null for the no-change branch")
    t_min: list[float]
    time: list[str]
    median: list[float]
    lower50: list[float]
    upper50: list[float]
    lower90: list[float]
    upper90: list[float]


class WhatIfOut(BaseModel):
    patient: str
    time: str = Field(description="now: where every branch starts")
    horizon_min: int
    unit: str
    basal_u_per_h: float
    branches: list[Branch]
    planned: list[PlannedOut] = Field(
        description="interventions recorded ahead that every branch starts from"
    )
    statement: str


@router.get(
    "/patients/{patient}/glucose",
    response_model=GlucoseOut,
    responses=_ERRORS,
    dependencies=[guard(READ)],
)
async def get_glucose(patient: str, context: Context) -> dict[str, Any]:
    """The latest glucose forecast (median, 50 % and 90 % bands at 30, 60 and 120 min),
    the personal parameters with their 90 % ranges, and the recent CGM readings."""
    view = await run_in_threadpool(context.glucose.view, patient)
    view["readings"] = await run_in_threadpool(context.glucose.recent_readings, patient)
    return view


@router.post(
    "/twins/{patient}/whatif",
    response_model=WhatIfOut,
    responses=_ERRORS,
    dependencies=[session_guard(WHATIF)],
)
async def post_whatif(patient: str, body: WhatIfIn, context: Context) -> dict[str, Any]:
    """Branch the twin now and simulate each scenario beside a "no change" branch, from
    the twin's current personal state and its uncertainty (common random numbers, so
    branches differ by their intervention only)."""
    for j, scenario in enumerate(body.scenarios):
        if scenario.at_min >= body.horizon_min:
            raise InputError(
                "a scenario must start before the horizon", f"body.scenarios.{j}.at_min"
            )
    scenarios = [
        Scenario(s.name, s.bolus_u, s.meal_g, s.basal_change_u_per_h, s.at_min)
        for s in body.scenarios
    ]
    answer: dict[str, Any] = await run_in_threadpool(
        lambda: context.glucose.whatif(patient, scenarios, horizon_min=body.horizon_min)
    )
    return answer
