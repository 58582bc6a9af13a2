"""The model registry and the served deterioration risk with its explanation.

- ``GET /api/v1/models``: every registered model, its versions (training-data
  fingerprint, features, metrics, date, who), its promotions and which version serves.
- ``POST /api/v1/models/{name}/versions/{version}/promote``: make a version the serving
  one (admins only, with a reason; audited by the registry as ``model-promote``).
  Promoting ``deterioration`` reloads the risk module at once: its version names the
  model version, so every twin's risk is recomputed on its next refresh.
- ``GET /api/v1/models/{name}/drift``: population stability (PSI) of the features the
  service scored over the last days (``days``, default 7; counted in the store) against
  the training data of the serving version.
- ``GET /api/v1/patients/{patient}/risk``: the patient's deterioration risk now, with
  its top contributing factors (feature, value, SHAP contribution in log-odds), the
  model version, and the statement that it supports, not replaces, clinical judgement.
  The same guard as every patient read: role, care team, consent, audit.  404 when no
  model is served (none promoted yet: ``medtwin models train`` then ``promote``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.core.clock import to_iso
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role
from medtwin.data.model_registry import ModelVersion

router = APIRouter(prefix="/api/v1", tags=["models"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}

LIST = Policy.allow(Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN, action="read-models")
PROMOTE = Policy.allow(Role.ADMIN, action="promote-model")
DRIFT = Policy.allow(Role.RESEARCHER, Role.ADMIN, action="read-model-drift")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)

RISK_MODULE = "risk.deterioration"  # medtwin.twins.risk.MODULE_NAME (not imported: LightGBM)


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="why this version serves now")


def _version_out(v: ModelVersion, serving: int | None) -> dict[str, Any]:
    return {
        "version": v.version,
        "created": to_iso(v.created_us),
        "created_by": v.created_by,
        "fingerprint": v.fingerprint,
        "features": list(v.features),
        "metrics": dict(v.metrics),
        "source": v.params.get("source"),
        "serving": v.version == serving,
    }


def _models(context: Any) -> dict[str, Any]:
    registry = context.models
    out = []
    for name in registry.names():
        promotions = registry.promotions(name)
        serving = promotions[-1].version if promotions else None
        out.append(
            {
                "name": name,
                "serving": serving,
                "versions": [_version_out(v, serving) for v in registry.versions(name)],
                "promotions": [
                    {
                        "version": p.version,
                        "promoted": to_iso(p.promoted_us),
                        "by": p.by_user,
                        "reason": p.reason,
                    }
                    for p in promotions
                ],
            }
        )
    served = context.risk
    return {
        "models": out,
        "served": None
        if served is None
        else {"name": served.name, "version": served.version, "module": RISK_MODULE},
    }


@router.get("/models", dependencies=[guard(LIST)])
async def list_models(context: Context) -> dict[str, Any]:
    """Registered models: versions with fingerprint, features, metrics; which one serves."""
    return await run_in_threadpool(_models, context)


@router.post("/models/{name}/versions/{version}/promote", responses=_ERRORS)
async def promote(
    name: str,
    version: int,
    body: PromoteIn,
    context: Context,
    principal: Annotated[Principal, guard(PROMOTE)],
) -> dict[str, Any]:
    """Make ``version`` serve ``name`` (admins; audited with the reason)."""

    def run() -> dict[str, Any]:
        promotion = context.models.promote(
            name, version, by_user=principal.name, reason=body.reason, role=principal.role.value
        )
        served = context.serve_risk() if name == "deterioration" else None
        return {
            "name": promotion.name,
            "version": promotion.version,
            "promoted": to_iso(promotion.promoted_us),
            "by": promotion.by_user,
            "reason": promotion.reason,
            "module_version": None
            if served is None
            else context.planner.graph[RISK_MODULE].version,
        }

    return await run_in_threadpool(run)


@router.get("/models/{name}/drift", responses=_ERRORS, dependencies=[guard(DRIFT)])
async def drift(
    name: str,
    context: Context,
    threshold: Annotated[float, Query(gt=0, description="PSI reported as drift")] = 0.25,
    days: Annotated[int, Query(ge=1, le=366, description="UTC days looked back")] = 7,
) -> dict[str, Any]:
    """PSI per feature of the features the service scored over the last ``days`` days
    (counted in the store, so restarts keep them) against the training data."""
    served = context.risk
    if served is None or served.name != name:
        raise NotFoundError(f"model {name!r} is not served: no served features to compare")

    def run() -> dict[str, Any]:
        report = context.models.served_drift(
            served.name, served.version, days=days, threshold=threshold
        )
        out = {**report.result(), "days": days}
        if not report.rows:
            out.update(max_psi=None, note="no features served yet")
        return out

    return await run_in_threadpool(run)


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


@router.get("/patients/{patient}/risk", responses=_ERRORS, dependencies=[guard(READ)])
async def patient_risk(patient: str, context: Context) -> dict[str, Any]:
    """The patient's deterioration risk with its top contributing factors (SHAP)."""
    served = context.risk
    if served is None or RISK_MODULE not in context.planner.graph:
        raise NotFoundError("no risk model is served (none promoted)")
    if patient not in context.runtime:
        raise NotFoundError(f"no twin for patient {patient!r}")
    derivation = await run_in_threadpool(context.planner.request, [RISK_MODULE], [patient])
    run = derivation.runs[RISK_MODULE]
    outputs = {name: _num(float(column[0])) for name, column in run.outputs.items()}
    as_of = outputs.get("as_of_s")
    return {
        "patient": patient,
        "model": {"name": served.name, "version": served.version},
        "module_version": run.version,
        "id": run.fingerprints[0],
        "risk": outputs.get("risk"),
        "log_odds": outputs.get("log_odds"),
        "base_value": outputs.get("base_value"),
        "other_contribution": outputs.get("other_contribution"),
        "as_of": None if as_of is None else to_iso(round(as_of * 1_000_000)),
        "factors": served.factors(outputs),
        "statement": _statement(),
        "provenance": f"/api/v1/derived/{run.fingerprints[0]}/provenance",
    }


def _statement() -> str:
    from medtwin.twins.risk import STATEMENT

    return STATEMENT
