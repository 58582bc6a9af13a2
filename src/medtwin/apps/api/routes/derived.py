"""Derived values: module results on request, and their provenance back to source messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import DerivedOut, ErrorAnswer, ModuleOut
from medtwin.core.clock import to_iso
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role
from medtwin.data.provenance import ResultRecord
from medtwin.data.provenance_export import to_fhir, to_prov_json
from medtwin.models.modules import (
    AttributeInput,
    Module,
    ObservationInput,
    PublishedModule,
    ResultInput,
)

router = APIRouter(prefix="/api/v1", tags=["derived"])
_404: dict[int | str, dict[str, object]] = {404: {"model": ErrorAnswer}}


def _patient_of_result(context: Any, derived_id: str) -> str:
    patient: str = context.provenance.result(derived_id).patient
    return patient


READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
READ_RESULT = Policy.allow(
    Role.CLINICIAN,
    Role.ADMIN,
    action="read",
    patient_scoped=True,
    patient_param="derived_id",
    patient_of=_patient_of_result,
)
LIST = Policy.allow(Role.CLINICIAN, Role.ADMIN, Role.RESEARCHER, action="search")


@router.get("/modules", response_model=list[ModuleOut], dependencies=[guard(LIST)])
async def list_modules(context: Context) -> list[dict[str, Any]]:
    """Every registered module: what it reads and what it derives."""
    return [_module_out(module) for module in context.planner.graph]


@router.get(
    "/patients/{patient}/derived/{name}",
    response_model=DerivedOut,
    responses=_404,
    dependencies=[guard(READ)],
)
async def derive(patient: str, name: str, context: Context) -> dict[str, Any]:
    """The output of module ``name`` for the patient now: cached if its inputs are unchanged."""
    if name not in context.planner.graph:
        raise NotFoundError(f"no module {name!r}")
    if patient not in context.runtime:
        raise NotFoundError(f"no twin for patient {patient!r}")
    derivation = await run_in_threadpool(context.planner.request, [name], [patient])
    run = derivation.runs[name]
    if not run.fingerprints[0]:  # a published module its service has not run for the twin
        raise NotFoundError(f"module {name!r} has no result for patient {patient!r} yet")
    record = await run_in_threadpool(context.provenance.result, run.fingerprints[0])
    return _derived_out(context, record, cached=not bool(run.computed[0]))


@router.get(
    "/derived/{derived_id}",
    response_model=DerivedOut,
    responses=_404,
    dependencies=[guard(READ_RESULT)],
)
async def get_derived(derived_id: str, context: Context) -> dict[str, Any]:
    """A stored derived value by its id (its execution fingerprint)."""
    record = await run_in_threadpool(context.provenance.result, derived_id)
    return _derived_out(context, record, cached=True)


@router.get(
    "/derived/{derived_id}/provenance",
    responses=_404,
    dependencies=[guard(READ_RESULT)],
)
async def get_provenance(
    derived_id: str,
    context: Context,
    depth: Annotated[
        int | None, Query(ge=0, le=64, description="result levels to expand; default all")
    ] = None,
    format: Annotated[
        Literal["tree", "fhir", "prov-json"],
        Query(
            description="tree: medtwin JSON; fhir: a FHIR R4 Bundle of Provenance "
            "resources; prov-json: a W3C PROV-JSON document"
        ),
    ] = "tree",
) -> dict[str, Any]:
    """Everything the value was computed from: module results, observations, messages."""
    tree: dict[str, Any] = await run_in_threadpool(context.provenance.tree, derived_id, depth=depth)
    if format == "fhir":
        return to_fhir(tree)
    if format == "prov-json":
        return to_prov_json(tree)
    return tree


def _derived_out(context: Any, record: ResultRecord, *, cached: bool) -> dict[str, Any]:
    units = {}
    if record.module in context.planner.graph:
        module = context.planner.graph[record.module]
        units = {out.name: (out.unit, out.code) for out in module.outputs}
    return {
        "id": record.fingerprint,
        "module": record.module,
        "version": record.version,
        "patient": record.patient,
        "computed": to_iso(record.computed_us),
        "cached": cached,
        "outputs": [
            {
                "name": name,
                "value": value,
                "unit": units.get(name, (None, None))[0],
                "code": units.get(name, (None, None))[1],
            }
            for name, value in record.outputs.items()
        ],
        "provenance": f"/api/v1/derived/{record.fingerprint}/provenance",
    }


def _module_out(module: Module) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = []
    for item in module.inputs:
        if isinstance(item, ObservationInput):
            inputs.append(
                {
                    "name": item.name,
                    "kind": "observation",
                    "code": item.code,
                    "window_s": item.window_s,
                    "aggregate": item.aggregate,
                }
            )
        elif isinstance(item, ResultInput):
            inputs.append(
                {"name": item.name, "kind": "result", "module": item.module, "output": item.output}
            )
        elif isinstance(item, AttributeInput):
            inputs.append({"name": item.name, "kind": "attribute", "attribute": item.attribute})
    return {
        "name": module.name,
        "version": module.version,
        "published": isinstance(module, PublishedModule),
        "parameters": dict(module.parameters),
        "inputs": inputs,
        "outputs": [
            {"name": out.name, "unit": out.unit, "code": out.code, "description": out.description}
            for out in module.outputs
        ],
    }
