"""Patients: list, read, set the NEWS2 SpO2 scale, observation history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, visible
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import ErrorAnswer, HistoryAnswer, PatientOut, PatientUpdate
from medtwin.core.clock import from_us, to_us
from medtwin.core.errors import InputError, NotFoundError
from medtwin.core.records import Patient, QualityFlag
from medtwin.data.accounts import Role

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])
SEARCH = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
UPDATE = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="update", patient_scoped=True)
_404: dict[int | str, dict[str, object]] = {404: {"model": ErrorAnswer}}


def iso(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


def parse_query_time(text: str | None, name: str) -> int | None:
    """µs since epoch of an ISO 8601 query parameter with zone, or None if absent."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"unparseable time {text!r}", f"query.{name}") from exc
    if moment.tzinfo is None:
        raise InputError("time has no timezone offset (use Z or +hh:mm)", f"query.{name}")
    return to_us(moment)


def _out(patient: Patient) -> PatientOut:
    return PatientOut(
        id=patient.id,
        pseudonym=patient.pseudonym,
        spo2_scale=1 if patient.spo2_scale == 1 else 2,
        created=iso(patient.created_us),
    )


@router.get("", response_model=list[PatientOut])
async def list_patients(
    context: Context, principal: Annotated[Principal, guard(SEARCH)]
) -> list[PatientOut]:
    """The patients the caller may see."""
    patients = await run_in_threadpool(context.store.patients)
    allowed = set(visible(principal, [p.id for p in patients], context.accounts))
    return [_out(p) for p in patients if p.id in allowed]


@router.get("/{patient}", response_model=PatientOut, responses=_404, dependencies=[guard(READ)])
async def get_patient(patient: str, context: Context) -> PatientOut:
    found = await run_in_threadpool(context.store.patient, patient)
    if found is None:
        raise NotFoundError(f"no patient {patient!r}")
    return _out(found)


@router.put("/{patient}", response_model=PatientOut, responses=_404, dependencies=[guard(UPDATE)])
async def update_patient(patient: str, change: PatientUpdate, context: Context) -> PatientOut:
    """Set the patient's NEWS2 SpO2 scale (2 for hypercapnic respiratory failure)."""
    updated = await run_in_threadpool(context.store.set_spo2_scale, patient, change.spo2_scale)
    update = context.runtime.set_spo2_scale(patient, change.spo2_scale)
    if context.bus.has_subscribers:
        context.bus.publish(context.runtime.events(update))
    return _out(updated)


@router.get(
    "/{patient}/observations",
    response_model=HistoryAnswer,
    responses=_404,
    dependencies=[guard(READ)],
)
async def observation_history(
    patient: str,
    context: Context,
    code: Annotated[list[str] | None, Query(description="LOINC codes; all if absent")] = None,
    start: Annotated[str | None, Query(alias="from", description="ISO 8601, inclusive")] = None,
    end: Annotated[str | None, Query(alias="to", description="ISO 8601, inclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> HistoryAnswer:
    """Observations of one patient in time order, paged."""
    if patient not in context.runtime:
        raise NotFoundError(f"no patient {patient!r}")
    start_us = parse_query_time(start, "from")
    end_us = parse_query_time(end, "to")
    try:
        page = await run_in_threadpool(
            lambda: context.store.history(
                patient,
                codes=code or (),
                start_us=start_us,
                end_us=end_us,
                limit=limit,
                cursor=cursor,
            )
        )
    except ValueError as exc:
        raise InputError(str(exc), "query.cursor") from exc
    items = []
    for stored in page.items:
        obs = stored.observation
        items.append(
            {
                "id": obs.source_id,
                "source": obs.source,
                "system": obs.system,
                "code": obs.code,
                "value": obs.value_num if obs.value_num is not None else obs.value_text,
                "unit": obs.unit,
                "time": iso(obs.effective_us),
                "status": obs.status,
                "version": obs.version,
                "flags": QualityFlag.names_of(obs.flags),
                "received": iso(stored.received_us),
            }
        )
    return HistoryAnswer.model_validate({"items": items, "next_cursor": page.next_cursor})
