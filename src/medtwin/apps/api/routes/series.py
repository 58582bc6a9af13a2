"""A patient's vital signs on a common time grid, imputed values flagged."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.apps.api.schemas import ErrorAnswer, SeriesAnswer
from medtwin.core.errors import InputError, NotFoundError
from medtwin.data.accounts import Role
from medtwin.twins.series import MAX_CODES, MAX_POINTS, aligned_series, grid_points

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}
_HOUR_US = 3600 * 1_000_000


@router.get(
    "/{patient}/series",
    response_model=SeriesAnswer,
    responses=_ERRORS,
    dependencies=[guard(READ)],
)
async def series(
    patient: str,
    context: Context,
    code: Annotated[
        list[str] | None,
        Query(description="LOINC codes; every code with numeric readings if absent"),
    ] = None,
    start: Annotated[
        str | None, Query(alias="from", description="ISO 8601, first grid time; default to - 1 h")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="ISO 8601, last grid time at most; default now")
    ] = None,
    step_s: Annotated[float, Query(gt=0, le=86_400, description="Grid step (s)")] = 60.0,
    max_age_s: Annotated[
        float, Query(ge=0, le=7 * 86_400, description="Oldest reading a value may come from (s)")
    ] = 900.0,
    method: Annotated[
        Literal["last", "linear"],
        Query(description="last: carry the last reading forward; linear: interpolate"),
    ] = "last",
    fill: Annotated[
        Literal["carry", "none"], Query(description="none: measured values only, never imputed")
    ] = "carry",
    min_gap_s: Annotated[
        float | None, Query(ge=0, description="Shortest gap reported (s); default max_age_s")
    ] = None,
    smooth: Annotated[
        Literal["none", "kalman"],
        Query(description="kalman: readings replaced by a Kalman smoother's estimate (flagged)"),
    ] = "none",
) -> dict[str, Any]:
    """The patient's codes resampled onto the grid ``from, from + step_s, ... <= to``.

    Each value comes with its age and flags: carried-forward and interpolated values
    are flagged ``imputed``; beyond ``max_age_s`` a value is null. Readings flagged
    ``artifact-suspected`` are left out and counted. At most 10,000 grid times.
    """
    if patient not in context.runtime:
        raise NotFoundError(f"no patient {patient!r}")
    end_us = parse_query_time(end, "to")
    if end_us is None:
        end_us = context.clock.now_us()
    start_us = parse_query_time(start, "from")
    if start_us is None:
        start_us = end_us - _HOUR_US
    if end_us < start_us:
        raise InputError("'to' is before 'from'", "query.to")
    points = grid_points(start_us, end_us, step_s)
    if points > MAX_POINTS:
        raise InputError(
            f"{points:,} grid times asked for, at most {MAX_POINTS:,}: "
            "shorten the range or lengthen step_s",
            "query.step_s",
        )
    codes = list(dict.fromkeys(code or ()))
    if len(codes) > MAX_CODES:
        raise InputError(f"{len(codes)} codes asked for, at most {MAX_CODES}", "query.code")
    return await run_in_threadpool(
        lambda: aligned_series(
            context.store,
            patient,
            codes,
            start_us=start_us,
            end_us=end_us,
            step_s=step_s,
            max_age_s=max_age_s,
            method=method,
            fill=fill,
            min_gap_s=min_gap_s,
            smooth=smooth,
        )
    )
