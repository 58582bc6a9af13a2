"""What each field reads, under the policy of the REST route serving the same data."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import visible
from medtwin.apps.api.graphql.context import RequestContext
from medtwin.apps.api.graphql.permissions import authorize
from medtwin.apps.api.routes import events, patients, twins
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.core.clock import to_us
from medtwin.core.errors import InputError, NotFoundError
from medtwin.core.records import ObservationStatus, Patient
from medtwin.data.store import StoredObservation

MAX_PAGE = 10_000  # observations per page, as the REST history route


async def patient_list(context: RequestContext, field: str) -> list[Patient]:
    """The patients the caller may see (GET /api/v1/patients)."""
    principal = await authorize(context, patients.SEARCH, field)
    service = context.service
    found = await run_in_threadpool(service.store.patients)
    allowed = set(
        await run_in_threadpool(visible, principal, [p.id for p in found], service.accounts)
    )
    return [p for p in found if p.id in allowed]


async def patient(context: RequestContext, field: str, patient_id: str) -> Patient:
    """One patient (GET /api/v1/patients/{patient})."""
    await authorize(context, patients.READ, field, patient_id)
    found = await run_in_threadpool(context.service.store.patient, patient_id)
    if found is None:
        raise NotFoundError(f"no patient {patient_id!r}")
    return found


async def twin_list(context: RequestContext, field: str) -> list[dict[str, Any]]:
    """Every twin the caller may see (GET /api/v1/twins)."""
    principal = await authorize(context, twins.SEARCH, field)
    service = context.service
    views = service.runtime.summaries()
    allowed = set(
        await run_in_threadpool(visible, principal, [v["patient"] for v in views], service.accounts)
    )
    return [v for v in views if v["patient"] in allowed]


async def twin(context: RequestContext, field: str, patient_id: str) -> dict[str, Any]:
    """One twin now (GET /api/v1/twins/{patient})."""
    await authorize(context, twins.READ, field, patient_id)
    if patient_id not in context.service.runtime:
        raise NotFoundError(f"no twin for patient {patient_id!r}")
    return context.service.runtime.view(patient_id)


async def history(
    context: RequestContext,
    field: str,
    patient_id: str,
    *,
    codes: Sequence[str],
    start: str | None,
    end: str | None,
    first: int,
    after: str | None,
) -> tuple[list[StoredObservation], str | None]:
    """A page of observations in time order (GET /api/v1/patients/{patient}/observations)."""
    await authorize(context, patients.READ, field, patient_id)
    service = context.service
    if patient_id not in service.runtime:
        raise NotFoundError(f"no patient {patient_id!r}")
    if not 1 <= first <= MAX_PAGE:
        raise InputError(f"first must be between 1 and {MAX_PAGE}", "first")
    start_us = parse_query_time(start, "from")
    end_us = parse_query_time(end, "to")
    try:
        page = await run_in_threadpool(
            lambda: service.store.history(
                patient_id,
                codes=codes,
                start_us=start_us,
                end_us=end_us,
                limit=first,
                cursor=after,
            )
        )
    except ValueError as exc:
        raise InputError(str(exc), "after") from exc
    return page.items, page.next_cursor


async def latest(
    context: RequestContext, field: str, patient_id: str, codes: Sequence[str]
) -> list[StoredObservation]:
    """The stored observation behind each of the twin's newest values (all codes, or ``codes``).

    The twin knows the time of each newest value; the store is asked for that moment only,
    and of several results then the highest version still in force wins.
    """
    await authorize(context, patients.READ, field, patient_id)
    service = context.service
    if patient_id not in service.runtime:
        raise NotFoundError(f"no patient {patient_id!r}")
    view = service.runtime.view(patient_id)
    newest = [(code, raw["time"]) for code, raw in view["vitals"].items()]
    newest += [(raw["code"], raw["time"]) for raw in view["other"]]
    wanted = [(code, to_us(datetime.fromisoformat(at))) for code, at in newest]
    if codes:
        wanted = [(code, at) for code, at in wanted if code in codes]

    def read() -> list[StoredObservation]:
        out = []
        for code, at_us in wanted:
            page = service.store.history(patient_id, codes=[code], start_us=at_us, end_us=at_us)
            live = [
                s
                for s in page.items
                if s.observation.status != ObservationStatus.ENTERED_IN_ERROR.value
            ]
            if live:
                out.append(max(live, key=lambda s: (s.observation.version, s.row_id)))
        return out

    return await run_in_threadpool(read)


async def twin_events(
    context: RequestContext, field: str, patient_id: str | None
) -> AsyncGenerator[dict[str, Any], None]:
    """Twin events as they happen (WebSocket /ws/events), of one patient or all visible.

    As on /ws/events, care-team membership is re-read every few seconds; a patient named
    through break-glass stays open for the life of the subscription.
    """
    principal = await authorize(context, events.SUBSCRIBE, field)
    opened = False
    if patient_id is not None:
        opened = (
            await authorize(context, events.SUBSCRIBE, field, patient_id)
        ).break_glass is not None
    # /ws/events' own filter, so that both transports deliver the same events.
    visibility = events._Visibility(principal, context.service)
    subscription = context.service.bus.subscribe()
    try:
        while True:
            event = await subscription.get()
            if "patient" in event:
                if patient_id is not None and event["patient"] != patient_id:
                    continue
                if not opened and not await visibility.allows(event["patient"]):
                    continue
            yield event
    finally:
        subscription.close()
