"""Devices: which patient an MQTT device is on and when; how its readings are calibrated.

Readings are attributed to the patient whose binding covers their time, so a
binding can be given in the past (a device put on before it was registered).
Admins bind any device; clinicians bind devices to the patients of their care
team and see only those bindings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, may_see
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import ErrorAnswer
from medtwin.core.clock import to_us
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.accounts import Role
from medtwin.devices.mqtt.bindings import Binding, DeviceBindings
from medtwin.twins.calibrations import CalibrationStore

router = APIRouter(prefix="/api/v1/devices/{device_id}", tags=["devices"])
WRITE = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="write")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read")
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer, "description": "No such patient or binding (or not visible)"},
    409: {"model": ErrorAnswer, "description": "The device is on a patient then already"},
    422: {"model": ErrorAnswer},
}


class BindRequest(BaseModel):
    """Put the device on a patient from ``from`` until ``to`` (open when absent)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    patient: str
    from_: datetime = Field(alias="from")
    to: datetime | None = None


class UnbindRequest(BaseModel):
    """Take the device off its patient at ``at`` (default: now)."""

    model_config = ConfigDict(extra="forbid")
    at: datetime | None = None


def _us(moment: datetime, field: str) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError("time has no timezone offset (use Z or +hh:mm)", field)
    return to_us(moment)


def _audit(context: Any, principal: Principal, action: str, binding: Binding) -> None:
    context.record(
        principal.name,
        principal.role,
        action,
        "success",
        patient=binding.patient,
        detail={"device": binding.device},
    )


@router.post("/bindings", status_code=201, responses=_ERRORS)
async def bind_device(
    device_id: str,
    body: BindRequest,
    context: Context,
    principal: Annotated[Principal, guard(WRITE)],
) -> dict[str, Any]:
    """Bind the device to a patient over a time interval."""
    start = _us(body.from_, "from")
    end = None if body.to is None else _us(body.to, "to")

    def bind() -> Binding:
        if not may_see(principal, body.patient, context.accounts):
            # The same answer as for a patient that does not exist: no enumeration.
            raise NotFoundError(f"no patient {body.patient!r}")
        binding = DeviceBindings(context.store).bind(
            device_id, body.patient, from_us=start, to_us=end, now_us=context.clock.now_us()
        )
        _audit(context, principal, "device.bind", binding)
        return binding

    try:
        binding = await run_in_threadpool(bind)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    return binding.as_json()


@router.post("/unbind", responses=_ERRORS)
async def unbind_device(
    device_id: str,
    context: Context,
    principal: Annotated[Principal, guard(WRITE)],
    body: UnbindRequest | None = None,
) -> dict[str, Any]:
    """End the device's binding that covers ``at`` (default: now) at that time."""
    at = context.clock.now_us() if body is None or body.at is None else _us(body.at, "at")

    def unbind() -> Binding:
        bindings = DeviceBindings(context.store)
        current = bindings.index([device_id]).patient_at(device_id, at)
        if current is None or not may_see(principal, current, context.accounts):
            raise NotFoundError(f"device {device_id} is not bound to a patient then")
        binding = bindings.unbind(device_id, at_us=at)
        _audit(context, principal, "device.unbind", binding)
        return binding

    binding = await run_in_threadpool(unbind)
    return binding.as_json()


@router.get("/bindings", responses=_ERRORS)
async def device_bindings(
    device_id: str,
    context: Context,
    principal: Annotated[Principal, guard(READ)],
) -> list[dict[str, Any]]:
    """The device's bindings, oldest first (those of patients the caller may see)."""

    def load() -> list[dict[str, Any]]:
        return [
            binding.as_json()
            for binding in DeviceBindings(context.store).history(device_id)
            if may_see(principal, binding.patient, context.accounts)
        ]

    return await run_in_threadpool(load)


CALIBRATE = Policy.allow(Role.ADMIN, action="calibrate")


class CalibrateRequest(BaseModel):
    """Fit the device's readings of ``code`` to a reference source's, from ``from`` to ``to``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    code: str = Field(min_length=1, max_length=64, description="LOINC code of the readings")
    reference: str = Field(
        min_length=1, max_length=256, description="The reference source (e.g. a glucose meter)"
    )
    from_: datetime = Field(alias="from")
    to: datetime
    max_gap_s: float = Field(300.0, gt=0, le=86_400, description="Pairing distance (s)")
    lag_s: float = Field(0.0, ge=-3600, le=3600, description="How far the device lags (s)")
    half_life_s: float | None = Field(
        None,
        gt=0,
        description="Track slow drift: pairs weigh 2^(-age/half_life_s), so the fit follows "
        "the sensor as it is at 'to' (default: every pair alike)",
    )


@router.post("/calibrations", status_code=201, responses=_ERRORS)
async def calibrate_device(
    device_id: str,
    body: CalibrateRequest,
    context: Context,
    principal: Annotated[Principal, guard(CALIBRATE)],
) -> dict[str, Any]:
    """Fit and apply a calibration: from now on the device's readings of ``code`` are
    mapped onto the reference's scale as they arrive (flag ``calibrated``)."""
    start, end = _us(body.from_, "from"), _us(body.to, "to")

    def calibrate() -> dict[str, Any]:
        calibrations = CalibrationStore(context.store)
        fitted = calibrations.fit(
            device_id,
            body.code,
            body.reference,
            start_us=start,
            end_us=end,
            max_gap_s=body.max_gap_s,
            lag_s=body.lag_s,
            half_life_s=body.half_life_s,
        )
        stored = calibrations.add(
            device_id, body.code, body.reference, fitted, now_us=context.clock.now_us()
        )
        conditioner = context.ingestor.conditioner
        if conditioner is not None:
            conditioner.set_calibration(device_id, body.code, fitted)
        context.record(
            principal.name,
            principal.role,
            "device.calibrate",
            "success",
            detail={"device": device_id, "code": body.code, "calibration": fitted.id},
        )
        return stored.as_json()

    return await run_in_threadpool(calibrate)


@router.get("/calibrations", responses=_ERRORS)
async def device_calibrations(
    device_id: str, context: Context, _: Annotated[Principal, guard(READ)]
) -> list[dict[str, Any]]:
    """Every calibration of the device, oldest first (the newest per code applies)."""
    history = await run_in_threadpool(CalibrationStore(context.store).history, device_id)
    return [stored.as_json() for stored in history]
