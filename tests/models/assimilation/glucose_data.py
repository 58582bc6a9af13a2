"""Virtual-patient data for the glucose-twin tests: truth from the UVA/Padova engine.

Three meals a day at jittered times and sizes; the patient is told (and
boluses for, g / CR) a meal size with a log-normal error; basal at the
patient's steady-state rate; CGM readings every 5 min with the Johnson SU
noise of ``CgmSensor()`` on subcutaneous glucose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtwin.models.physiology.engine import Inputs, simulate
from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.scenario import meal_intake
from medtwin.models.physiology.sensor import CgmSensor
from medtwin.models.physiology.solvers import SaveAt
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY, UvaPadova
from medtwin.models.physiology.uva_padova.patients import cohort, virtual_patient
from medtwin.models.physiology.uva_padova.therapy import device_parameters

STEP = 5
_MEALS = ((7 * 60, 45.0), (12 * 60, 70.0), (18 * 60 + 30, 75.0))


@dataclass(frozen=True)
class PatientData:
    """Per patient (N) and 5-min step (S): what the filter is given and the truth."""

    names: tuple[str, ...]
    truth: FloatArray  # (N, 33) physiology
    body_weight_kg: FloatArray  # (N,)
    basal_u_per_h: FloatArray  # (N,)
    cgm: FloatArray  # (N, S) reading at the end of step k (minute 5(k+1)), mg/dL
    sensor_glucose: FloatArray  # (N, S) true Gs/Vg at the same times, mg/dL
    insulin_u: FloatArray  # (N, S) insulin delivered during step k, U
    told_carbs_g: FloatArray  # (N, S) carbohydrate told at the start of step k, g
    first_cgm: FloatArray  # (N,) reading at minute 0

    @property
    def steps(self) -> int:
        return int(self.cgm.shape[1])


def generate(names: list[str], days: int, seed: int, meal_cv: float = 0.25) -> PatientData:
    rng = np.random.default_rng(seed)
    n, minutes = len(names), days * 1440
    x0, phys = cohort(names)
    patients = [virtual_patient(name) for name in names]
    params = np.hstack([phys, device_parameters(phys, patients)])
    values = np.zeros((n, minutes, 4))
    told = np.zeros((n, minutes))
    basal = np.array([p.basal_u_per_min for p in patients])
    values[:, :, 1] = basal[:, None]
    for i, p in enumerate(patients):
        meals = []
        for d in range(days):
            for at, grams in _MEALS:
                t = d * 1440 + at + int(rng.integers(-45, 46))
                g = grams * float(rng.uniform(0.6, 1.4))
                meals.append((t, g))
                said = g * float(rng.lognormal(0.0, meal_cv))
                told[i, t] += said
                values[i, t, 1] += said / p.cr_g_per_u
        values[i, :, 0] = meal_intake(meals, minutes)
    sol = simulate(
        UvaPadova(),
        x0=x0,
        params=params,
        inputs=Inputs(values),
        saveat=SaveAt(outputs=("sc_glucose_mg_dl",)),
    )
    vg = [q.name for q in PHYSIOLOGY].index("Vg")
    final = sol.x_final[:, 12:13] / phys[:, vg : vg + 1]
    gs = np.concatenate([sol.output("sc_glucose_mg_dl"), final], axis=1)
    sampled = np.arange(0, minutes + 1, STEP)
    sensor = CgmSensor()
    noise = sensor.noise_mg_dl(n, sampled.size, rng)
    readings = sensor.calibrate(gs[:, sampled], noise)
    steps = minutes // STEP
    return PatientData(
        names=tuple(names),
        truth=phys,
        body_weight_kg=phys[:, 0].copy(),
        basal_u_per_h=basal * 60.0,
        cgm=readings[:, 1:],
        sensor_glucose=gs[:, sampled][:, 1:],
        insulin_u=values[:, :, 1].reshape(n, steps, STEP).sum(axis=2),
        told_carbs_g=told.reshape(n, steps, STEP).sum(axis=2),
        first_cgm=readings[:, 0],
    )
