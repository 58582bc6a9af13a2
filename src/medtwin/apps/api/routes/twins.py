"""Twins: the live state of each patient and NEWS2 over time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, visible
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.apps.api.schemas import ErrorAnswer, News2Point, Twin
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role
from medtwin.twins.history import news2_series

router = APIRouter(prefix="/api/v1/twins", tags=["twins"])
_404: dict[int | str, dict[str, object]] = {404: {"model": ErrorAnswer}}
_DAY_US = 86_400 * 1_000_000
SEARCH = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)


@router.get("", response_model=list[Twin])
async def list_twins(
    context: Context, principal: Annotated[Principal, guard(SEARCH)]
) -> list[dict[str, Any]]:
    """Every twin the caller may see, with its newest vitals and NEWS2 now."""
    twins = context.runtime.summaries()
    allowed = set(
        await run_in_threadpool(visible, principal, [t["patient"] for t in twins], context.accounts)
    )
    return [t for t in twins if t["patient"] in allowed]


@router.get("/{patient}", response_model=Twin, responses=_404, dependencies=[guard(READ)])
async def get_twin(patient: str, context: Context) -> dict[str, Any]:
    if patient not in context.runtime:
        raise NotFoundError(f"no twin for patient {patient!r}")
    return context.runtime.view(patient)


@router.get(
    "/{patient}/news2", response_model=list[News2Point], responses=_404, dependencies=[guard(READ)]
)
async def news2_history(
    patient: str,
    context: Context,
    start: Annotated[
        str | None, Query(alias="from", description="ISO 8601; default 24 h ago")
    ] = None,
    end: Annotated[str | None, Query(alias="to", description="ISO 8601; default now")] = None,
) -> list[dict[str, Any]]:
    """NEWS2 at each time a NEWS2 input was measured."""
    if patient not in context.runtime:
        raise NotFoundError(f"no twin for patient {patient!r}")
    end_us = parse_query_time(end, "to") or context.clock.now_us()
    start_us = parse_query_time(start, "from") or end_us - _DAY_US
    scale = context.runtime.view(patient)["spo2_scale"]
    return await run_in_threadpool(
        lambda: news2_series(
            context.store,
            patient,
            start_us=start_us,
            end_us=end_us,
            window_us=context.runtime.window_us,
            spo2_scale=scale,
        )
    )
