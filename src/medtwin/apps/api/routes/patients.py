"""Patients: list, read, set the NEWS2 SpO2 scale, observation history."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, visible
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import (
    ErrorAnswer,
    HistoryAnswer,
    PatientOut,
    PatientSearch,
    PatientUpdate,
)
from medtwin.core.clock import to_iso, to_us
from medtwin.core.errors import InputError, NotFoundError
from medtwin.core.records import Patient, QualityFlag
from medtwin.data.accounts import Role
from medtwin.data.vault import Demographics

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])
SEARCH = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
UPDATE = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="update", patient_scoped=True)
ERASE = Policy.allow(Role.ADMIN, action="erase", patient_scoped=True)
_404: dict[int | str, dict[str, object]] = {404: {"model": ErrorAnswer}}


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
        created=to_iso(patient.created_us),
    )


@router.get("", response_model=list[PatientOut])
async def list_patients(
    context: Context, principal: Annotated[Principal, guard(SEARCH)]
) -> list[PatientOut]:
    """The patients the caller may see."""
    patients = await run_in_threadpool(context.store.patients)
    allowed = set(visible(principal, [p.id for p in patients], context.accounts))
    return [_out(p) for p in patients if p.id in allowed]


@router.post("/search", response_model=list[PatientOut])
async def search_patients(
    query: PatientSearch, context: Context, principal: Annotated[Principal, guard(SEARCH)]
) -> list[PatientOut]:
    """Find patients by identifier, name tokens or birth year, through the blind indexes.

    A POST, so that personal data never appears in URLs (and so in access logs).
    """
    identifier = (query.identifier.kind, query.identifier.value) if query.identifier else None
    found = await run_in_threadpool(
        lambda: context.vault.find(
            identifier=identifier, name=query.name, birth_year=query.birth_year
        )
    )
    patients = [p for p in await run_in_threadpool(context.store.patients) if p.id in found]
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
    """Set the NEWS2 SpO2 scale (2 for hypercapnic respiratory failure) and/or demographics."""
    if change.demographics is not None:
        demographics = change.demographics
        await run_in_threadpool(
            lambda: context.vault.put(patient, demographics, now_us=time.time_ns() // 1000)
        )
    if change.spo2_scale is not None:
        await run_in_threadpool(context.store.set_spo2_scale, patient, change.spo2_scale)
        update = context.runtime.set_spo2_scale(patient, change.spo2_scale)
        if context.bus.has_subscribers:
            context.bus.publish(context.runtime.events(update))
    updated = await run_in_threadpool(context.store.patient, patient)
    if updated is None:
        raise NotFoundError(f"no patient {patient!r}")
    return _out(updated)


@router.get(
    "/{patient}/demographics",
    response_model=Demographics,
    responses=_404,
    dependencies=[guard(READ)],
)
async def get_demographics(patient: str, context: Context) -> Demographics:
    """The patient's personal data (decrypted for this authorized, audited read)."""
    found = await run_in_threadpool(context.vault.get, patient)
    if found is None:
        raise NotFoundError(f"no demographics for patient {patient!r}")
    return found


@router.delete(
    "/{patient}/personal-data",
    status_code=200,
    responses=_404,
    dependencies=[guard(ERASE)],
)
async def erase_patient(patient: str, context: Context) -> dict[str, str]:
    """Erase the patient's personal data (crypto-shredding); the id becomes the pseudonym."""
    pseudonym = await run_in_threadpool(
        lambda: context.vault.erase(patient, now_us=time.time_ns() // 1000)
    )
    context.runtime.rename(patient, pseudonym)
    return {"patient": pseudonym, "status": "erased"}


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
                "time": to_iso(obs.effective_us),
                "status": obs.status,
                "version": obs.version,
                "flags": QualityFlag.names_of(obs.flags),
                "received": to_iso(stored.received_us),
            }
        )
    return HistoryAnswer.model_validate({"items": items, "next_cursor": page.next_cursor})
