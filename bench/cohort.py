"""In-silico cohort throughput: medtwin's engine against simglucose, one core each.

The scenario is simglucose's standard closed loop: one day, three meals (45,
70 and 80 g at 07:00, 12:00 and 18:00), a Dexcom CGM (3-min samples, run
noise-free so both sides see the same signal), the Insulet pump and the
basal-bolus controller.

- simglucose (the baseline): its own ``T1DPatient.withName``, ``T1DSimEnv``,
  ``BBController`` and ``SimObj``, unmodified, a few patients one after another.
- medtwin: the same scenario for 10,000 patient-days: the 30 virtual patients,
  each repeated with rates jittered (log-normal, CV 10 %, re-solved to rest),
  in one call on one core; RK4 at one step per minute (the default) and the
  adaptive Dormand-Prince solver.

Reported: patient-days per second for each (median of the runs) and the
ratio, and the largest glucose difference (mg/dL, subcutaneous glucose every
minute) between the two on the patients both simulated, with the shipped
parameters.

Run: ``medtwin bench cohort`` or ``python bench/cohort.py [--quick] [--runs N]``.
Needs simglucose (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from datetime import datetime, timedelta
from typing import Any

import numpy as np

# One core for the whole run: Numba's kernels are serial, BLAS must be too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from medtwin.models.physiology import RK4, Dopri5, Inputs, SaveAt, Solver, simulate
from medtwin.models.physiology.scenario import parse_scenario
from medtwin.models.physiology.sensor import CgmSensor
from medtwin.models.physiology.uva_padova.patients import (
    cohort,
    virtual_patient,
    virtual_patients,
)
from medtwin.models.physiology.uva_padova.therapy import (
    BasalBolus,
    InsulinPump,
    device_parameters,
)

DAY_MIN = 1440
MEALS = [(420, 45.0), (720, 70.0), (1080, 80.0)]
BASELINE_PATIENTS = ("adolescent#001", "adult#001", "child#001")


def scenario(names: list[str]) -> dict[str, Any]:
    return {
        "model": "uva-padova",
        "patients": names,
        "duration_min": DAY_MIN,
        "events": [{"at_min": at, "meal_g": g} for at, g in MEALS],
        "controller": "basal-bolus",
        "sensor": {"preset": "Dexcom", "noise": False},
        # simglucose's Insulet pump rounds rates to 0.05 pmol/min; as increments:
        "pump": {
            "basal_increment_u_per_h": 0.05 / 6000 * 60,
            "bolus_increment_u": 0.05 / 6000 * 3,
            "max_basal_u_per_h": 30 * 60,
            "max_bolus_u": 30 * 3,
        },
    }


def simglucose_day(name: str) -> tuple[float, np.ndarray]:
    """One closed-loop day in unmodified simglucose: (seconds, Gsub per minute)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.actuator.pump import InsulinPump as SimglucosePump
        from simglucose.controller.basal_bolus_ctrller import BBController
        from simglucose.patient.t1dpatient import T1DPatient
        from simglucose.sensor.cgm import CGMSensor
        from simglucose.simulation.env import T1DSimEnv
        from simglucose.simulation.scenario import CustomScenario
        from simglucose.simulation.sim_engine import SimObj

    class Recorded(T1DPatient):  # type: ignore[misc]
        def step(self, action: Any) -> None:
            if len(trace) < DAY_MIN:
                trace.append(float(self.observation.Gsub))
            super().step(action)

    class NoiseFree(CGMSensor):  # type: ignore[misc]
        def reset(self) -> None:
            super().reset()
            self._noise_generator = iter(lambda: 0.0, None)

    trace: list[float] = []
    start = datetime(2026, 1, 1)
    began = time.perf_counter()
    patient = Recorded.withName(name)
    sensor = NoiseFree.withName("Dexcom")
    sensor.reset()
    meals = [(start + timedelta(minutes=at), g) for at, g in MEALS]
    env = T1DSimEnv(
        patient, sensor, SimglucosePump.withName("Insulet"), CustomScenario(start, meals)
    )
    SimObj(env, BBController(), timedelta(minutes=DAY_MIN), animate=False, path=None).simulate()
    return time.perf_counter() - began, np.array(trace)


def medtwin_cohort(patient_days: int, solver: Solver) -> float:
    """Seconds for ``patient_days`` jittered patients, one day each."""
    names = sorted(virtual_patients())
    reps = -(-patient_days // len(names))
    everyone = (names * reps)[:patient_days]
    base = parse_scenario(scenario(names))
    x0, physiology = cohort(everyone, jitter_cv=0.1, rng=np.random.default_rng(2026))
    devices = device_parameters(
        physiology,
        [virtual_patient(n) for n in everyone],
        sensor=CgmSensor.preset("Dexcom", noise=False),
        pump=InsulinPump(**scenario(names)["pump"]),
        controller=BasalBolus(),
    )
    params = np.hstack([physiology, devices])
    shared = Inputs(base.inputs.values[:1], 1.0)
    began = time.perf_counter()
    sol = simulate(
        base.model,
        solver=solver,
        x0=x0,
        params=params,
        inputs=shared,
        saveat=SaveAt(outputs=["sc_glucose_mg_dl"]),
    )
    elapsed = time.perf_counter() - began
    failed = int((sol.status != 0).sum())
    if failed:
        raise SystemExit(f"{failed} virtual patients failed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 patient-days, 1 baseline")
    parser.add_argument("--runs", type=int, default=5, help="medtwin runs (median reported)")
    args = parser.parse_args()
    patient_days = 1_000 if args.quick else 10_000
    baseline_names = BASELINE_PATIENTS[:1] if args.quick else BASELINE_PATIENTS

    # Compile once outside the timings (a few seconds per solver, cached per process).
    for solver in (RK4(), Dopri5()):
        medtwin_cohort(30, solver)

    baseline = [simglucose_day(n) for n in baseline_names]
    sg_rate = len(baseline) / sum(t for t, _ in baseline)
    rk4 = [patient_days / medtwin_cohort(patient_days, RK4()) for _ in range(args.runs)]
    dopri = [patient_days / medtwin_cohort(patient_days, Dopri5()) for _ in range(args.runs)]

    shipped = parse_scenario(scenario(list(baseline_names)))
    ours = simulate(
        shipped.model,
        solver=Dopri5(),
        x0=shipped.x0,
        params=shipped.params,
        inputs=shipped.inputs,
        saveat=SaveAt(outputs=["sc_glucose_mg_dl"]),
    ).y[:, :, 0]
    diff = max(float(np.abs(ours[i] - trace).max()) for i, (_, trace) in enumerate(baseline))

    rk4_rate, dopri_rate = statistics.median(rk4), statistics.median(dopri)
    print(
        f"UVA/Padova closed loop, one day, {patient_days:,} patient-days on one core\n"
        f"  simglucose 0.2.11 ({len(baseline)} patients): {sg_rate:.3f} patient-days/s\n"
        f"  medtwin RK4 (1 min step):   {rk4_rate:,.0f} patient-days/s (median of {args.runs}), "
        f"{rk4_rate / sg_rate:,.0f}x simglucose\n"
        f"  medtwin Dormand-Prince 5(4): {dopri_rate:,.0f} patient-days/s (median of {args.runs}), "
        f"{dopri_rate / sg_rate:,.0f}x simglucose\n"
        f"  max |glucose difference| vs simglucose on {', '.join(baseline_names)}: "
        f"{diff:.3f} mg/dL"
    )


if __name__ == "__main__":
    main()
