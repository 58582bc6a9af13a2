"""Alarms: the open ones a caller may see, acknowledge and resolve them, suppress a rule.

Every transition is made by :class:`medtwin.twins.alarms.AlarmEngine` as the signed-in
user, with a reason; the engine audits it and announces it as an ``alarm.*`` event.
Clinicians see and act on the alarms of their care team's patients only.

The ward page acknowledges with its session cookie. Cookies are accepted on reads
only elsewhere (a cross-site form could carry them); here, on the two transitions,
a cookie is accepted when the request comes from this same origin (its ``Origin``,
or else ``Referer``, names this host), on top of the cookie's SameSite=Strict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, visible
from medtwin.apps.api.deps import Context, guard, session_guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.core.errors import ConflictError
from medtwin.data.accounts import Role
from medtwin.twins.alarms import Actor, Alarm

router = APIRouter(prefix="/api/v1", tags=["alarms"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    409: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer},
}


def _patient_of_alarm(context: Any, alarm_id: str) -> str:
    patient: str = context.alarms.get(alarm_id).patient
    return patient


def _on_alarm(action: str) -> Policy:
    return Policy.allow(
        Role.CLINICIAN,
        Role.ADMIN,
        action=action,
        patient_scoped=True,
        patient_param="alarm_id",
        patient_of=_patient_of_alarm,
    )


LIST = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
READ = _on_alarm("read")
ACKNOWLEDGE = _on_alarm("acknowledge-alarm")
RESOLVE = _on_alarm("resolve-alarm")
SUPPRESS = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="suppress-alarm", patient_scoped=True)


class Acted(BaseModel):
    at: str
    by: str
    reason: str


class AlarmOut(BaseModel):
    id: str
    rule: str
    patient: str
    priority: Literal["low", "medium", "high"]
    title: str
    status: Literal["active", "acknowledged", "resolved"]
    level: int = Field(description="place in the rule's escalation chain, 0 first")
    recipient: str = Field(description="care-team, role:<role> or user:<name>")
    raised: str
    escalated: str = Field(description="when the current recipient was called")
    value: float | None
    acknowledged: Acted | None
    resolved: Acted | None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class SuppressIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(min_length=1, max_length=64)
    minutes: float = Field(gt=0)
    reason: str = Field(min_length=1, max_length=500)


class SuppressionOut(BaseModel):
    patient: str
    rule: str
    start: str
    until: str
    by: str
    reason: str


def _actor(principal: Principal) -> Actor:
    return Actor(principal.name, principal.role.value)


@router.get("/alarms", response_model=list[AlarmOut])
async def list_alarms(
    context: Context,
    principal: Annotated[Principal, guard(LIST)],
    patient: Annotated[str | None, Query(max_length=128)] = None,
    priority: Literal["low", "medium", "high"] | None = None,
    status: Literal["open", "all"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Alarms of the patients the caller may see, highest priority first, then oldest;
    ``status=all`` adds resolved ones."""

    def find() -> list[Alarm]:
        alarms = context.alarms.alarms(
            patients=None if patient is None else [patient],
            priority=priority,
            open_only=status == "open",
            limit=limit,
        )
        allowed = set(visible(principal, {a.patient for a in alarms}, context.accounts))
        return [a for a in alarms if a.patient in allowed]

    return [a.to_json() for a in await run_in_threadpool(find)]


@router.get("/alarms/{alarm_id}", response_model=AlarmOut, responses=_ERRORS)
async def get_alarm(
    alarm_id: str, context: Context, principal: Annotated[Principal, guard(READ)]
) -> dict[str, Any]:
    alarm = await run_in_threadpool(context.alarms.get, alarm_id)
    return alarm.to_json()


@router.post("/alarms/{alarm_id}/acknowledge", response_model=AlarmOut, responses=_ERRORS)
async def acknowledge_alarm(
    alarm_id: str,
    body: ReasonIn,
    context: Context,
    principal: Annotated[Principal, session_guard(ACKNOWLEDGE)],
) -> dict[str, Any]:
    """Take the alarm, with a reason: its escalation stops. 409 unless it is active."""
    return await _transition(context.alarms.acknowledge, alarm_id, principal, body.reason)


@router.post("/alarms/{alarm_id}/resolve", response_model=AlarmOut, responses=_ERRORS)
async def resolve_alarm(
    alarm_id: str,
    body: ReasonIn,
    context: Context,
    principal: Annotated[Principal, session_guard(RESOLVE)],
) -> dict[str, Any]:
    """Close the alarm, with a reason; the rule's suppression window starts. 409 if closed."""
    return await _transition(context.alarms.resolve, alarm_id, principal, body.reason)


async def _transition(
    change: Callable[[str, Actor, str], Alarm], alarm_id: str, principal: Principal, reason: str
) -> dict[str, Any]:
    """Apply an acknowledgement or a resolution by ``principal``; 409 when the alarm's
    state does not allow it."""
    try:
        alarm = await run_in_threadpool(change, alarm_id, _actor(principal), reason)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    return alarm.to_json()


@router.post(
    "/patients/{patient}/alarms/suppress",
    response_model=SuppressionOut,
    status_code=201,
    responses=_ERRORS,
)
async def suppress_alarms(
    patient: str,
    body: SuppressIn,
    context: Context,
    principal: Annotated[Principal, guard(SUPPRESS)],
) -> dict[str, Any]:
    """Raise no alarm of ``rule`` for the patient for ``minutes`` (at most the configured
    maximum), with a reason; an open alarm of the rule stays open."""
    suppression = await run_in_threadpool(
        context.alarms.suppress, patient, body.rule, body.minutes, _actor(principal), body.reason
    )
    return suppression.to_json()
