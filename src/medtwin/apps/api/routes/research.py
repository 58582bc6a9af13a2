"""Research access: pseudonymized exports and differentially private aggregates.

Researchers never see identified patients. Exports carry keyed pseudonyms and
per-patient date shifts; aggregates are released with differential privacy
against a per-researcher budget. Patients whose consent opts out of research
are left out of both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.data.accounts import Role
from medtwin.data.consent import ConsentStore
from medtwin.data.research import (
    BudgetExhausted,
    PrivacyBudget,
    dp_count,
    dp_mean,
    export_observations,
)

router = APIRouter(prefix="/api/v1/research", tags=["research"])
EXPORT = Policy.allow(Role.RESEARCHER, Role.ADMIN, action="export")
AGGREGATE = Policy.allow(Role.RESEARCHER, Role.ADMIN, action="aggregate")
BUDGETS = Policy.allow(Role.ADMIN, action="update")


def opt_outs(context: ServiceContext) -> set[str]:
    """Patients whose active consent refuses research now."""
    consents = ConsentStore(context.store, context.privacy.keyring)
    return consents.research_opt_outs(time.time_ns() // 1000)


@router.get("/observations")
async def export(
    context: Context,
    principal: Annotated[Principal, guard(EXPORT)],
    code: Annotated[list[str] | None, Query(description="LOINC codes; all if absent")] = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
) -> StreamingResponse:
    """Pseudonymized, date-shifted observations as JSON lines."""
    start_us = parse_query_time(start, "from")
    end_us = parse_query_time(end, "to")
    excluded = await run_in_threadpool(opt_outs, context)

    def lines() -> Iterator[str]:
        for row in export_observations(
            context.store,
            key=context.privacy.pseudonym_key,
            codes=code or (),
            excluded=excluded,
            start_us=start_us,
            end_us=end_us,
        ):
            yield json.dumps(row, separators=(",", ":")) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


class AggregateQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statistic: Literal["mean", "count"]
    code: str = Field(min_length=1, max_length=64)
    epsilon: float = Field(gt=0, le=10, description="privacy cost of this release")
    bounds: tuple[float, float] | None = Field(
        None, description="clamping bounds of a mean, chosen without looking at the data"
    )
    start: str | None = Field(None, alias="from")
    end: str | None = Field(None, alias="to")


class AggregateAnswer(BaseModel):
    statistic: str
    code: str
    value: float
    epsilon: float
    patients_noisy: int | None
    mechanism: str
    budget_remaining: float


@router.post("/aggregate", response_model=AggregateAnswer)
async def aggregate(
    query: AggregateQuery, context: Context, principal: Annotated[Principal, guard(AGGREGATE)]
) -> AggregateAnswer:
    """A differentially private mean or count; the epsilon is charged to the caller's budget."""
    start_us = parse_query_time(query.start, "from")
    end_us = parse_query_time(query.end, "to")

    def release() -> AggregateAnswer:
        budget = PrivacyBudget(context.store, principal.name)
        excluded = opt_outs(context)
        if query.statistic == "mean":
            if query.bounds is None:
                raise HTTPException(422, "a mean needs bounds")
            result = dp_mean(
                context.store,
                query.code,
                epsilon=query.epsilon,
                bounds=query.bounds,
                budget=budget,
                excluded=excluded,
                start_us=start_us,
                end_us=end_us,
            )
        else:
            result = dp_count(
                context.store,
                query.code,
                epsilon=query.epsilon,
                budget=budget,
                excluded=excluded,
                start_us=start_us,
                end_us=end_us,
            )
        return AggregateAnswer(
            statistic=query.statistic,
            code=query.code,
            value=result.value,
            epsilon=result.epsilon,
            patients_noisy=result.n_noisy,
            mechanism=result.mechanism,
            budget_remaining=budget.remaining(),
        )

    try:
        return await run_in_threadpool(release)
    except BudgetExhausted as exc:
        raise HTTPException(403, f"privacy budget exhausted: {exc}") from exc


class BudgetChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon_limit: float = Field(ge=0, le=100)


@router.put("/budgets/{researcher}", dependencies=[guard(BUDGETS)])
async def set_budget(researcher: str, change: BudgetChange, context: Context) -> dict[str, float]:
    """Set a researcher's total privacy budget (what was spent stays spent)."""

    def update() -> dict[str, float]:
        budget = PrivacyBudget(context.store, researcher)
        budget.set_limit(change.epsilon_limit)
        return {"epsilon_limit": change.epsilon_limit, "remaining": budget.remaining()}

    return await run_in_threadpool(update)
