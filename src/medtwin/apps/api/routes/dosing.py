"""Vancomycin dose individualization: MAP PK parameters from population priors and the
patient's measured levels, and a dose for a trough or AUC24 target.

Every recommendation is a module result (``vancomycin.dosing``) with provenance to
the levels, doses and covariates it used, and carries the statement that it
supports, and does not replace, clinical judgement.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, guard, session_guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.core.errors import InputError
from medtwin.data.accounts import Role
from medtwin.models.assimilation.pk_map import Target
from medtwin.twins.dosing import DosingService

router = APIRouter(prefix="/api/v1", tags=["dosing"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
# A recommendation reads the record (consent included) and stores a derived value; the
# dashboard posts it with its session cookie, from the same origin only.
RECOMMEND = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
# Where the service's own InputError locations sit in the request body.
_BODY_FIELDS = {"target": "body.target", "interval_h": "body.interval_h"}
_BODY_FIELDS |= {"infusion_h": "body.infusion_h", "target.kind": "body.target.kind"}


def dosing_service(context: ServiceContext) -> DosingService:
    """The service's dosing calculator (stateless; made on first use)."""
    found = context.extras.get("dosing")
    if not isinstance(found, DosingService):
        found = DosingService(context.store, context.vault, context.clock)
        context.extras["dosing"] = found
    return found


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["trough", "auc24"] = Field(
        description="trough: mg/L before the next dose; auc24: mg h/L over 24 h"
    )
    low: float = Field(gt=0, le=2000)
    high: float = Field(gt=0, le=2000)


class DosingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: TargetIn
    interval_h: float = Field(12.0, ge=4, le=72, description="dosing interval (h)")
    infusion_h: float = Field(1.0, gt=0, le=24, description="length of each infusion (h)")
    dialysis: bool = Field(False, description="the patient is on hemodialysis")
    dose_mg: float | None = Field(
        None,
        gt=0,
        le=4000,
        description="what if this dose (mg per infusion) were given: its predicted curve "
        "and whether it lands in the target, instead of a recommended dose",
    )


class CurveOut(BaseModel):
    description: str
    t_h: list[float] = Field(description="hours from the start of an infusion")
    time: list[str] = Field(description="the interval placed from the next 5-minute mark")
    conc_mg_l: list[float] = Field(description="MAP prediction (mg/L)")
    lower90: list[float] = Field(description="5th percentile over posterior samples")
    upper90: list[float] = Field(description="95th percentile over posterior samples")


class ParameterOut(BaseModel):
    name: str
    unit: str
    value: float = Field(description="MAP estimate")
    typical: float = Field(description="population value for the covariates")
    lower90: float | None = Field(description="5th percentile of the posterior (Laplace)")
    upper90: float | None = Field(description="95th percentile of the posterior (Laplace)")


class LevelOut(BaseModel):
    time: str
    code: str
    kind: str
    conc_mg_l: float
    hours_after_first_dose: float | None
    id: str = Field(description="source|id|version of the observation")
    model_h: float | None = Field(None, description="time the model used (5-minute grid)")
    predicted_mg_l: float | None = Field(None, description="MAP prediction at that time")


class DoseOut(BaseModel):
    time: str
    amount_mg: float | None
    duration_h: float
    drug: str | None
    route: str | None
    id: str = Field(description="source|id of the intervention")


class DosingOut(BaseModel):
    patient: str
    id: str = Field(description="the vancomycin.dosing result this answer is")
    module: str
    version: str
    computed: str
    model: str
    citation: str
    target: dict[str, Any]
    dose_mg: float
    dose_chosen: bool = Field(
        description="true: the dose asked about (dose_mg in the request), false: recommended"
    )
    interval_h: float
    infusion_h: float
    daily_dose_mg: float
    predicted: float = Field(description="target quantity at the MAP (trough mg/L or AUC24)")
    predicted_lower90: float
    predicted_upper90: float
    in_target: bool
    trough_mg_l: float
    auc24_mg_h_l: float
    curve: CurveOut
    parameters: list[ParameterOut]
    covariates: dict[str, Any]
    converged: bool
    levels: list[LevelOut]
    doses: list[DoseOut]
    provenance: str
    statement: str


class DosingSummaryOut(BaseModel):
    patient: str
    doses: list[DoseOut]
    levels: list[LevelOut]
    weight_kg: float | None
    creatinine_mg_dl: float | None
    latest: dict[str, Any] | None = Field(description="the latest stored recommendation")
    statement: str


@router.get(
    "/patients/{patient}/dosing/vancomycin",
    response_model=DosingSummaryOut,
    responses=_ERRORS,
    dependencies=[guard(READ)],
)
async def get_vancomycin(patient: str, context: Context) -> dict[str, Any]:
    """The patient's vancomycin doses and levels, the covariates on record and the
    latest stored recommendation (empty lists when there is no course)."""
    return await run_in_threadpool(dosing_service(context).summary, patient)


@router.post(
    "/patients/{patient}/dosing/vancomycin",
    response_model=DosingOut,
    responses=_ERRORS,
    dependencies=[session_guard(RECOMMEND)],
)
async def post_vancomycin(patient: str, body: DosingIn, context: Context) -> dict[str, Any]:
    """Fit the patient's PK parameters (Goti et al. 2018 population model, MAP) to the
    measured levels and recommend a dose for the target at steady state (or, with
    ``dose_mg``, predict the dose asked about), with the predicted curve over one
    interval and its 5-95 % band. Stored as a
    ``vancomycin.dosing`` result with its provenance."""
    if body.target.low >= body.target.high:
        raise InputError("low must be below high", "body.target.high")
    try:
        target = Target(body.target.kind, body.target.low, body.target.high)
        answer: dict[str, Any] = await run_in_threadpool(
            lambda: dosing_service(context).recommend(
                patient,
                target,
                interval_h=body.interval_h,
                infusion_h=body.infusion_h,
                dialysis=body.dialysis,
                dose_mg=body.dose_mg,
            )
        )
    except InputError as exc:
        where = _BODY_FIELDS.get(exc.location)
        if where is None:
            raise
        raise InputError(exc.reason, where) from exc
    return answer
