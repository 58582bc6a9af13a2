"""A patient's FHIR Consent resources: created or imported here, enforced on every read."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.data.accounts import Role

router = APIRouter(prefix="/api/v1/patients/{patient}/consents", tags=["consents"])
WRITE = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="write", patient_scoped=True)
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}


@router.post("", status_code=201, responses=_ERRORS, dependencies=[guard(WRITE)])
async def put_consent(
    patient: str,
    context: Context,
    resource: dict[str, Any] = Body(description="A FHIR R4 Consent resource (JSON)"),
) -> dict[str, Any]:
    """Store a Consent for the patient (replacing one with the same id)."""
    rules = await run_in_threadpool(
        lambda: context.consents.put(resource, patient=patient, now_us=time.time_ns() // 1000)
    )
    return {"id": rules.id, "status": rules.status, "scope": rules.scope}


@router.get("", responses=_ERRORS, dependencies=[guard(READ)])
async def list_consents(patient: str, context: Context) -> list[dict[str, Any]]:
    """The patient's Consent resources as stored."""

    def load() -> list[dict[str, Any]]:
        return [
            context.consents.resource(rules.id) for rules in context.consents.for_patient(patient)
        ]

    return await run_in_threadpool(load)
