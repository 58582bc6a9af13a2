"""Interventions: insulin, meals, drug doses, fluids, oxygen; the twins' model inputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.routes.observations import ingest_answer, read_batch
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.apps.api.schemas import ErrorAnswer, IngestAnswer, InterventionOut
from medtwin.core.clock import to_iso
from medtwin.data.accounts import Role

router = APIRouter(tags=["interventions"])
WRITE = Policy.allow(Role.DEVICE, Role.ADMIN, Role.CLINICIAN, action="write-interventions")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorAnswer, "description": "Body is not JSON"},
    413: {"model": ErrorAnswer, "description": "Body or batch too large"},
    422: {"model": ErrorAnswer, "description": "Body is not an intervention batch"},
}


@router.post("/api/v1/interventions", response_model=IngestAnswer, responses=_ERRORS)
async def post_interventions(
    request: Request, context: Context, principal: Annotated[Principal, guard(WRITE)]
) -> JSONResponse:
    """Store a batch of interventions; one result per item, answered once durable.

    Item: ``{"id", "source", "patient", "kind", "amount", "unit", "time"}`` and
    optionally ``duration_s``, ``drug``, ``route``. Kinds and units: insulin-bolus
    [IU], insulin-basal [IU]/h, meal g (carbohydrate), drug-dose mg (with drug and
    route), fluids mL, oxygen L/min.
    """
    items = await read_batch(request, context, principal, "interventions")
    if isinstance(items, JSONResponse):
        return items
    sources = principal.sources if principal.role is Role.DEVICE else None
    results = await run_in_threadpool(
        lambda: context.ingestor.ingest_interventions(
            items, channel="api", sources=sources, care_team=principal.care_team
        )
    )
    return ingest_answer(results)


@router.get(
    "/api/v1/patients/{patient}/interventions",
    response_model=list[InterventionOut],
    dependencies=[guard(READ)],
)
async def patient_interventions(
    context: Context, patient: str, since: str | None = None, until: str | None = None
) -> list[InterventionOut]:
    """The patient's interventions in time order (``since``/``until``: ISO 8601 with zone)."""
    rows = await run_in_threadpool(
        lambda: context.store.interventions_of(
            patient,
            since_us=parse_query_time(since, "since"),
            until_us=parse_query_time(until, "until"),
        )
    )
    return [
        InterventionOut(
            id=r.source_id,
            source=r.source,
            kind=r.kind.value,
            amount=r.amount,
            unit=r.unit,
            time=to_iso(r.start_us),
            duration_s=r.duration_s,
            drug=r.drug,
            route=r.route,
        )
        for r in rows
    ]
