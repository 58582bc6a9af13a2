"""Insulin pump and basal-bolus controller settings, packed as model parameters.

The controller and pump run inside the compiled loop (``UvaPadova`` jump);
these objects hold their settings and turn them into the per-patient
parameter columns the model declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medtwin.core.errors import InputError
from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.sensor import CgmSensor
from medtwin.models.physiology.uva_padova.model import (
    CONTROL_BASAL_BOLUS,
    CONTROL_NONE,
    DEVICES,
    PHYSIOLOGY,
    PMOL_PER_U,
)
from medtwin.models.physiology.uva_padova.patients import VirtualPatient

__all__ = ["BasalBolus", "InsulinPump", "device_parameters"]

# Stands in for "no limit" where parameters must be finite numbers.
_NO_LIMIT = 1e9


@dataclass(frozen=True, slots=True)
class InsulinPump:
    """Delivery limits and resolution; an increment of 0 delivers any amount."""

    basal_increment_u_per_h: float = 0.05
    bolus_increment_u: float = 0.05
    max_basal_u_per_h: float = 35.0
    max_bolus_u: float = 75.0

    def __post_init__(self) -> None:
        for name in ("basal_increment_u_per_h", "bolus_increment_u"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative", f"pump.{name}")
        for name in ("max_basal_u_per_h", "max_bolus_u"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive", f"pump.{name}")


@dataclass(frozen=True, slots=True)
class BasalBolus:
    """Basal at the patient's steady-state rate plus meal boluses from the CGM.

    Every sensor sample, the carbohydrate announced since the last one is covered
    (g / CR) and, when the reading is above ``correct_above_mg_dl``, corrected
    toward ``target_mg_dl`` ((CGM - target) / CF); the bolus is spread over
    the coming sample period. This is simglucose's ``BBController``, fed the
    latest sample rather than simglucose's average over the period.
    """

    target_mg_dl: float = 140.0
    correct_above_mg_dl: float = 150.0


def device_parameters(
    physiology: FloatArray,
    patients: Sequence[VirtualPatient],
    *,
    sensor: CgmSensor | None = None,
    pump: InsulinPump | None = None,
    controller: BasalBolus | None = None,
) -> FloatArray:
    """The ``DEVICES`` columns ``(N, 15)``.

    ``physiology`` is the patients' ``(N, 33)`` parameters (jittered or not):
    the controller's basal is their steady-state rate u2ss * BW / 6000 U/min.
    ``patients`` gives each row's therapy settings (CR, CF).
    """
    if controller is not None and sensor is None:
        raise InputError("the basal-bolus controller needs a CGM sensor", "controller")
    pump = pump or InsulinPump(0.0, 0.0)
    ctrl = controller or BasalBolus()
    cols = {q.name: i for i, q in enumerate(DEVICES)}
    out = np.zeros((len(patients), len(DEVICES)))
    out[:, cols["control"]] = CONTROL_NONE if controller is None else CONTROL_BASAL_BOLUS
    if sensor is not None:
        out[:, cols["cgm_sample_min"]] = sensor.sample_min
        out[:, cols["cgm_gain"]] = sensor.gain
        out[:, cols["cgm_offset"]] = sensor.offset_mg_dl
        out[:, cols["cgm_min"]] = sensor.min_mg_dl
        out[:, cols["cgm_max"]] = sensor.max_mg_dl
    else:
        out[:, cols["cgm_gain"]] = 1.0
        out[:, cols["cgm_max"]] = _NO_LIMIT
    out[:, cols["cr"]] = [p.cr_g_per_u for p in patients]
    out[:, cols["cf"]] = [p.cf_mg_dl_per_u for p in patients]
    out[:, cols["target"]] = ctrl.target_mg_dl
    out[:, cols["correct_above"]] = ctrl.correct_above_mg_dl
    phys = {q.name: i for i, q in enumerate(PHYSIOLOGY)}
    out[:, cols["basal_rate"]] = (
        physiology[:, phys["u2ss"]] * physiology[:, phys["BW"]] / PMOL_PER_U
    )
    out[:, cols["pump_basal_inc"]] = pump.basal_increment_u_per_h / 60.0
    out[:, cols["pump_bolus_inc"]] = pump.bolus_increment_u
    out[:, cols["pump_max_basal"]] = pump.max_basal_u_per_h / 60.0
    out[:, cols["pump_max_bolus"]] = pump.max_bolus_u
    return out
