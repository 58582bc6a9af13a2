"""Reference runs of simglucose, the independent UVA/Padova 2008 T1D simulator.

simglucose (https://github.com/jxx123/simglucose, pinned to 0.2.11 in the ``test`` extra) is
run through its own classes (``T1DPatient``, ``T1DSimEnv``, ``CGMSensor``, ``InsulinPump``,
``BBController``, ``CustomScenario``, ``SimObj``) so that our engine can be compared against
it. Nothing of the model is reimplemented here; this module only feeds it inputs, records
its outputs as numpy arrays and runs patients in parallel.

Speed
    ``T1DPatient.withName`` keeps the parameters as a pandas ``Series`` and the model reads
    about sixty of them through ``Series.__getattr__`` on every right-hand-side call, which
    dominates the run time. Here the patient is built as ``T1DPatient(params,
    init_state=...)`` with :class:`PatientParams`, a plain attribute container holding the
    same CSV row as floats (plus ``Name``). ``init_state`` is passed explicitly, so
    ``params.iloc`` is never needed. The values are the same doubles, so the trajectories are
    bit-identical to ``withName`` (``test_simglucose_reference.py`` checks this): about
    0.4 s instead of 5.5 s per open-loop patient-day, 0.85 s instead of ~7 s closed loop
    (there ``BBController.patient_params`` is also cut to the three columns ``_bb_policy``
    reads, which saves its per-step pandas indexing ~0.2 s per day and changes nothing).
    Several patients run in a spawn-context process pool of two workers, started on first use
    (~2 s) and kept for later calls. Scripts calling this module need the usual
    ``if __name__ == "__main__":`` guard (pytest does not).

simglucose behaviours worth knowing when comparing against it
    * ``T1DPatient`` takes the announced meal (grams) and eats it at ``EAT_RATE`` = 5 g/min
      (``_announce_meal``): the last minute eats the remainder; a meal announced while an
      earlier one is still being eaten is queued behind it. ``Action.insulin`` is a rate in
      U/min, converted inside the model to pmol/kg/min as ``insulin * 6000 / BW``.
    * The gastric-emptying reference amount ``Dbar`` (``_last_Qsto``, ``_last_foodtaken``) is
      reset only when eating starts after a minute without eating; back-to-back meals share
      one ``Dbar``.
    * simglucose's "BG" (``observation.Gsub``, ``env.BG_hist``, ``info["bg"]``) is the
      subcutaneous glucose ``x13 / Vg``, not plasma glucose ``x4 / Vg``. Both are recorded
      here per minute.
    * ``T1DSimEnv.step`` runs ``sensor.sample_time`` one-minute ``mini_step`` s (3 min for
      Dexcom, 5 min for GuardianRT) with one constant controller action, and records in
      ``BG_hist``, ``CGM_hist``, ``CHO_hist`` and ``insulin_hist`` the *means* over those
      minutes, not samples. ``BG_hist[k]`` (k >= 1) is the mean of ``Gsub`` after minutes
      ``T*(k-1)+1 .. T*k``; ``BG_hist[0]`` is ``Gsub`` at t = 0.
    * ``CGMSensor.measure`` draws a new value only when ``patient.t % sample_time == 0`` and
      holds it otherwise, so ``CGM_hist[k]`` = (2 * CGM(3k-3) + CGM(3k)) / 3 for Dexcom: a
      lagged average of held samples. CGM is clipped to [39, 600] mg/dL.
    * The sensor noise generator is created in ``CGMSensor.__init__`` (``seed`` setter) and
      again in ``CGMSensor.reset``; ``T1DSimEnv.__init__`` (via ``_reset``) and
      ``T1DSimEnv.reset`` (``_reset`` and then once more) each draw noise at t = 0, so the
      first observation given to the controller is a different draw from ``CGM_hist[0]``.
      :class:`NoiselessCGMSensor` replaces the generator with zeros after construction and
      after every reset.
    * ``CustomScenario.get_action`` compares the exact datetime ``start_time + t`` with the
      meal times and returns only the *first* meal at a matching time, so two meals in the
      same minute would lose one: meals are summed per minute before they are handed over.
    * ``BBController`` sees the meal only through ``info["meal"]``, the scenario meal
      averaged over the previous env step (grams / sample_time). The meal bolus
      ``grams / CR + (CGM > 150) * (CGM - 140) / CF`` (CGM = that step's averaged CGM) is
      therefore delivered one env step *after* the step in which the meal was announced,
      spread evenly over that step (3 min at grams / (3 CR) U/min for Dexcom): a meal at
      minute 420 gets its bolus at minutes 423-425. Basal is ``u2ss * BW / 6000`` U/min.
      The controller looks names up with ``str.match``, a regex prefix match.
    * ``InsulinPump`` rounds basal and bolus to ``inc_basal`` / ``inc_bolus`` = 0.05 *in
      pmol/min* (the rate is multiplied by 6000 first), i.e. to steps of 1/120000 U/min, not
      0.05 U: nearly no rounding, yet not none (adult#001's basal 0.0211226750 U/min is
      delivered as 0.021125 U/min, so the closed loop's basal differs from the steady-state
      basal ``open_loop`` uses by default). Bolus rates are clipped to ``max_bolus``
      (30 U/min Insulet, 75 U/min Cozmo).
    * ``CHO_hist`` and ``info["meal"]`` are the *announced* grams spread over the env step,
      not what the patient eats (5 g/min); ``carbs_g_per_min`` here is what it ate.
    * ``SimObj.simulate`` steps while ``env.time < start + sim_time``, so a duration that is
      not a multiple of the sensor period overshoots to the next multiple; the per-minute
      arrays here are cut to ``duration_min``.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

with warnings.catch_warnings():
    # gym 0.9.4, imported by simglucose/__init__.py, uses distutils' LooseVersion.
    warnings.simplefilter("ignore", DeprecationWarning)
    from simglucose.actuator.pump import INSULIN_PUMP_PARA_FILE, InsulinPump
    from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST, BBController
    from simglucose.patient.t1dpatient import PATIENT_PARA_FILE, Action, T1DPatient
    from simglucose.sensor.cgm import SENSOR_PARA_FILE, CGMSensor
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.simulation.scenario import CustomScenario
    from simglucose.simulation.sim_engine import SimObj

__all__ = [
    "CONTROL_QUEST",
    "Action",
    "ClosedLoopResult",
    "NoiselessCGMSensor",
    "OpenLoopResult",
    "PatientParams",
    "RecordingPatient",
    "T1DPatient",
    "closed_loop",
    "make_patient",
    "open_loop",
    "patient_names",
]

FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T")
_R = TypeVar("_R")
_P = TypeVar("_P", bound=T1DPatient)

#: Worker processes used when more than one patient is simulated (this machine has 2 cores).
DEFAULT_PROCESSES = 2
#: Scenario start time of the closed loop (any midnight; only offsets from it matter).
START_TIME = datetime(2025, 1, 1)
#: Columns of ``vpatient_params.csv`` holding the 13 initial states ``x0_ 1 .. x0_13``.
_INIT_STATE_COLUMNS = slice(2, 15)
TIR_LOW_MG_DL = 70.0
TIR_HIGH_MG_DL = 180.0


# ---------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _patient_table() -> pd.DataFrame:
    return pd.read_csv(PATIENT_PARA_FILE)


def patient_names() -> tuple[str, ...]:
    """The 30 simglucose patient names (``adolescent#001`` ... ``child#010``)."""
    return tuple(str(name) for name in _patient_table().Name)


def _patient_row(name: str) -> pd.Series:
    table = _patient_table()
    rows = table.loc[table.Name == name]
    if len(rows) != 1:
        raise ValueError(f"unknown simglucose patient {name!r}")
    row: pd.Series = rows.squeeze()  # exactly what T1DPatient.withName hands to T1DPatient
    return row


class PatientParams:
    """One row of simglucose's ``vpatient_params.csv`` as plain float attributes.

    A drop-in for the pandas ``Series`` that ``T1DPatient.withName`` passes as ``params``:
    the model only reads attributes (``params.BW``, ``params.kmax``, ...; units as in the
    CSV, e.g. BW in kg, Vg in dL/kg), and plain attribute reads are far cheaper than
    ``Series.__getattr__``. ``Name`` stays a string; every other column becomes a float
    (columns whose names are not identifiers, like ``"x0_ 1"``, are reachable with
    ``getattr``). There is no ``iloc``: pass ``init_state`` to ``T1DPatient`` explicitly.
    """

    Name: str

    def __init__(self, row: Mapping[str, Any]) -> None:
        for key, value in row.items():
            setattr(self, key, str(value) if key == "Name" else float(value))

    def __repr__(self) -> str:
        return f"PatientParams(Name={self.Name!r})"


def make_patient(name: str, cls: type[_P] = T1DPatient) -> _P:  # type: ignore[assignment]
    """Build simglucose patient ``name`` fast: ``cls(PatientParams(row), init_state=x0)``.

    ``x0`` is the CSV's ``x0_ 1 .. x0_13`` as a float64 array (state units: mg/kg for the
    glucose masses, pmol/kg for insulin), the state ``withName`` would start from.
    """
    row = _patient_row(name)
    init_state = np.asarray(row.iloc[_INIT_STATE_COLUMNS].to_numpy(), dtype=np.float64)
    return cls(PatientParams(row), init_state=init_state.copy())


class RecordingPatient(T1DPatient):
    """``T1DPatient`` that records, per one-minute ``step``, what it was given and what it did.

    Before each step: plasma glucose ``state[3] / Vg`` and ``observation.Gsub`` (mg/dL), i.e.
    the values at the start of that minute. After it: the grams actually eaten during the
    minute (the ``to_eat`` of ``_announce_meal``, g/min) and the insulin rate (U/min).
    ``reset`` clears the records.
    """

    def reset(self) -> None:
        super().reset()
        self.plasma_record: list[float] = []
        self.gsub_record: list[float] = []
        self.carbs_record: list[float] = []
        self.insulin_record: list[float] = []

    def step(self, action: Action) -> None:
        self.plasma_record.append(float(self.state[3] / self._params.Vg))
        self.gsub_record.append(float(self.observation.Gsub))
        super().step(action)
        self.carbs_record.append(float(self._last_action.CHO))
        self.insulin_record.append(float(action.insulin))


def _steady_basal_u_per_min(patient: T1DPatient) -> float:
    params = patient._params
    return float(params.u2ss * params.BW / 6000)


# ---------------------------------------------------------------------------
# Inputs and parallel map
# ---------------------------------------------------------------------------


def _per_minute(
    events: Sequence[tuple[int, float]], duration_min: int, what: str
) -> dict[int, float]:
    """Sum ``(minute, amount)`` events per minute; minutes must lie in ``[0, duration_min)``."""
    totals: dict[int, float] = {}
    for minute, amount in events:
        if int(minute) != minute or not 0 <= minute < duration_min:
            raise ValueError(f"{what} minute {minute!r} outside 0..{duration_min - 1}")
        if amount < 0:
            raise ValueError(f"negative {what} {amount!r} at minute {minute}")
        totals[int(minute)] = totals.get(int(minute), 0.0) + float(amount)
    return totals


def _check_common(names: Sequence[str], duration_min: int) -> None:
    if isinstance(names, str):
        raise TypeError("names must be a sequence of patient names, not one string")
    if not names:
        raise ValueError("names must name at least one patient")
    if duration_min < 1:
        raise ValueError(f"duration_min must be positive, got {duration_min}")
    for name in names:
        _patient_row(name)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(processes: int) -> ProcessPoolExecutor:
    """A spawn-context pool of ``processes`` workers, created once and reused.

    Starting a worker costs ~1 s (importing simglucose pulls in scipy, pandas, matplotlib and
    gym), so the pool outlives a call; it is shut down at interpreter exit.
    """
    pool = _POOLS.get(processes)
    if pool is None:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
        _POOLS[processes] = pool
        atexit.register(pool.shutdown)
    return pool


def _parallel_map(fn: Callable[[_T], _R], jobs: Sequence[_T], processes: int) -> list[_R]:
    """``[fn(job) for job in jobs]``, in order; in the shared spawn pool when ``processes > 1``."""
    if processes <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    try:
        return list(_pool(processes).map(fn, jobs))
    except BrokenProcessPool:
        _POOLS.pop(processes).shutdown(wait=False)
        raise


# ---------------------------------------------------------------------------
# Open loop
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenLoopResult:
    """Per-minute open-loop trajectories; row i is ``names[i]``, column m is minute m.

    Attributes:
        names: patient names, one per row.
        plasma_glucose_mg_dl: ``state[3] / Vg`` (mg/dL) at the start of minute m, before it is
            simulated (column 0 is the initial state). Shape (n_patients, duration_min).
        sc_glucose_mg_dl: ``observation.Gsub`` = ``state[12] / Vg`` (mg/dL), same instants.
        carbs_g_per_min: grams eaten during minute m (what the model consumed, ≤ 5 g/min).
        insulin_u_per_min: insulin rate during minute m (U/min): basal plus boluses.
        final_state: the 13 model states after the last minute. Shape (n_patients, 13).
    """

    names: tuple[str, ...]
    plasma_glucose_mg_dl: FloatArray
    sc_glucose_mg_dl: FloatArray
    carbs_g_per_min: FloatArray
    insulin_u_per_min: FloatArray
    final_state: FloatArray


@dataclass(frozen=True)
class _OpenLoopJob:
    name: str
    duration_min: int
    meals: Mapping[int, float]
    boluses: Mapping[int, float]
    basal_u_per_min: float | None
    fast: bool = True


def _run_open_loop(job: _OpenLoopJob) -> tuple[FloatArray, ...]:
    if job.fast:
        patient = make_patient(job.name, RecordingPatient)
    else:
        patient = RecordingPatient.withName(job.name)
    basal = job.basal_u_per_min
    if basal is None:
        basal = _steady_basal_u_per_min(patient)
    for minute in range(job.duration_min):
        patient.step(
            Action(
                CHO=job.meals.get(minute, 0.0),
                insulin=basal + job.boluses.get(minute, 0.0),
            )
        )
    return (
        np.asarray(patient.plasma_record),
        np.asarray(patient.gsub_record),
        np.asarray(patient.carbs_record),
        np.asarray(patient.insulin_record),
        np.array(patient.state, dtype=np.float64),
    )


def open_loop(
    names: Sequence[str],
    *,
    duration_min: int,
    meals: Sequence[tuple[int, float]],
    boluses: Sequence[tuple[int, float]],
    basal_u_per_min: Sequence[float] | None = None,
    processes: int = DEFAULT_PROCESSES,
) -> OpenLoopResult:
    """Step simglucose ``T1DPatient`` s one minute at a time under fixed inputs.

    At minute m the patient gets ``Action(CHO=meal grams announced at m (g), insulin=basal +
    bolus units at m (U/min))``: a bolus of B units is delivered within its minute, at
    B U/min. The patient eats announced meals at 5 g/min.

    Args:
        names: simglucose patient names, e.g. ``"adult#001"``.
        duration_min: number of one-minute steps.
        meals: ``(minute, grams)`` announcements, the same for every patient; amounts in the
            same minute add up.
        boluses: ``(minute, units)``, the same for every patient; amounts in the same minute
            add up.
        basal_u_per_min: one constant basal rate (U/min) per patient, in ``names`` order; None
            gives each patient its steady-state basal ``u2ss * BW / 6000``.
        processes: worker processes when more than one patient is run (a spawn pool kept
            for later calls; 1 runs everything in this process).
    """
    _check_common(names, duration_min)
    if basal_u_per_min is not None and len(basal_u_per_min) != len(names):
        raise ValueError("basal_u_per_min needs one rate per patient")
    meal_map = _per_minute(meals, duration_min, "meal")
    bolus_map = _per_minute(boluses, duration_min, "bolus")
    basals: list[float | None] = (
        [None] * len(names)
        if basal_u_per_min is None
        else [float(rate) for rate in basal_u_per_min]
    )
    jobs = [
        _OpenLoopJob(name, duration_min, meal_map, bolus_map, basal)
        for name, basal in zip(names, basals, strict=True)
    ]
    outputs = _parallel_map(_run_open_loop, jobs, processes)
    stacked = [np.stack([out[k] for out in outputs]) for k in range(5)]
    return OpenLoopResult(tuple(names), *stacked)


# ---------------------------------------------------------------------------
# Closed loop
# ---------------------------------------------------------------------------


class NoiselessCGMSensor(CGMSensor):
    """simglucose's ``CGMSensor`` with its noise generator replaced by zeros forever.

    The generator is replaced after construction and after every ``reset`` (both create a
    fresh ``CGMNoise``), so every reading is ``Gsub`` clipped to the sensor's [min, max],
    sampled every ``sample_time`` minutes and held in between.
    ``NoiselessCGMSensor.withName("Dexcom")`` works as for ``CGMSensor``.
    """

    def __init__(self, params: pd.Series, seed: int | None = None) -> None:
        super().__init__(params, seed=seed)
        self._noise_generator = itertools.repeat(0.0)

    def reset(self) -> None:
        super().reset()
        self._noise_generator = itertools.repeat(0.0)


@dataclass(frozen=True)
class ClosedLoopResult:
    """simglucose basal-bolus closed loop; row i is ``names[i]``.

    Env histories (one column per env step of ``sample_time_min`` minutes, means over the
    step as simglucose records them):

    Attributes:
        names: patient names, one per row.
        sample_time_min: env step = CGM sample period (min), 3.0 for Dexcom.
        bg_mg_dl: ``env.BG_hist`` (mg/dL): column 0 is ``Gsub`` at t = 0, column k the mean
            ``Gsub`` over the minutes of step k. Shape (n_patients, n_steps + 1).
        cgm_mg_dl: ``env.CGM_hist`` (mg/dL), noise-free, averaged the same way.
        cho: ``env.CHO_hist``, announced meal grams averaged over each step (g/min).
            Shape (n_patients, n_steps).
        insulin: ``env.insulin_hist``, delivered insulin rate averaged over each step (U/min).
        plasma_glucose_mg_dl: ``state[3] / Vg`` (mg/dL) at the start of each minute
            0 .. duration_min - 1. Shape (n_patients, duration_min).
        sc_glucose_mg_dl: ``Gsub`` (mg/dL) at the same instants.
        carbs_g_per_min: grams eaten during each minute (≤ 5 g/min).
        insulin_u_per_min: insulin rate delivered during each minute (U/min, after the pump).
        final_state: the 13 model states at the end of the last env step (n_patients, 13).
        time_in_range_pct: percent of ``sc_glucose_mg_dl`` samples within 70..180 mg/dL
            inclusive. Shape (n_patients,).
    """

    names: tuple[str, ...]
    sample_time_min: float
    bg_mg_dl: FloatArray
    cgm_mg_dl: FloatArray
    cho: FloatArray
    insulin: FloatArray
    plasma_glucose_mg_dl: FloatArray
    sc_glucose_mg_dl: FloatArray
    carbs_g_per_min: FloatArray
    insulin_u_per_min: FloatArray
    final_state: FloatArray
    time_in_range_pct: FloatArray


@dataclass(frozen=True)
class _ClosedLoopJob:
    name: str
    duration_min: int
    meals: Mapping[int, float]
    sensor: str
    pump: str
    fast: bool = True


def _run_closed_loop(job: _ClosedLoopJob) -> tuple[float, tuple[FloatArray, ...]]:
    if job.fast:
        patient = make_patient(job.name, RecordingPatient)
    else:
        patient = RecordingPatient.withName(job.name)
    scenario = CustomScenario(
        start_time=START_TIME,
        scenario=[(timedelta(minutes=minute), grams) for minute, grams in job.meals.items()],
    )
    env = T1DSimEnv(
        patient,
        NoiselessCGMSensor.withName(job.sensor),
        InsulinPump.withName(job.pump),
        scenario,
    )
    controller = BBController()
    # _bb_policy reads only Name, u2ss and BW of this table, but boolean-indexing all 62
    # columns twice per env step costs ~0.2 s per patient-day; the projection changes nothing.
    controller.patient_params = controller.patient_params[["Name", "u2ss", "BW"]]
    sim = SimObj(env, controller, timedelta(minutes=job.duration_min), animate=False)
    sim.simulate()  # controller.reset(); env.reset(); policy/step until the end time
    n = job.duration_min
    return float(env.sample_time), (
        np.asarray(env.BG_hist, dtype=np.float64),
        np.asarray(env.CGM_hist, dtype=np.float64),
        np.asarray(env.CHO_hist, dtype=np.float64),
        np.asarray(env.insulin_hist, dtype=np.float64),
        np.asarray(patient.plasma_record[:n]),
        np.asarray(patient.gsub_record[:n]),
        np.asarray(patient.carbs_record[:n]),
        np.asarray(patient.insulin_record[:n]),
        np.array(patient.state, dtype=np.float64),
    )


def _require_device(table_file: str, name: str, kind: str) -> None:
    if name not in set(pd.read_csv(table_file).Name):
        raise ValueError(f"unknown simglucose {kind} {name!r}")


def closed_loop(
    names: Sequence[str],
    *,
    duration_min: int,
    meals: Sequence[tuple[int, float]],
    sensor: str = "Dexcom",
    pump: str = "Insulet",
    processes: int = DEFAULT_PROCESSES,
) -> ClosedLoopResult:
    """Run simglucose's standard basal-bolus closed loop with a noise-free CGM.

    Per patient: ``T1DSimEnv(patient, NoiselessCGMSensor.withName(sensor),
    InsulinPump.withName(pump), CustomScenario(START_TIME, meals))`` driven by
    ``BBController()`` through ``SimObj.simulate`` until ``duration_min`` minutes have
    elapsed (rounded up to whole env steps of the sensor's sample time).

    Args:
        names: simglucose patient names, e.g. ``"adult#001"``.
        duration_min: simulated minutes.
        meals: ``(minute, grams)`` meal announcements, the same for every patient; amounts in
            the same minute are summed (``CustomScenario`` would keep only the first).
        sensor: simglucose sensor name (``"Dexcom"``: 3 min, ``"GuardianRT"``: 5 min).
        pump: simglucose pump name (``"Insulet"`` or ``"Cozmo"``).
        processes: worker processes when more than one patient is run (a spawn pool kept
            for later calls; 1 runs everything in this process).
    """
    _check_common(names, duration_min)
    _require_device(SENSOR_PARA_FILE, sensor, "sensor")
    _require_device(INSULIN_PUMP_PARA_FILE, pump, "pump")
    meal_map = _per_minute(meals, duration_min, "meal")
    jobs = [_ClosedLoopJob(name, duration_min, meal_map, sensor, pump) for name in names]
    outputs = _parallel_map(_run_closed_loop, jobs, processes)
    sample_time = outputs[0][0]
    arrays = [np.stack([out[1][k] for out in outputs]) for k in range(9)]
    gsub = arrays[5]
    in_range = (gsub >= TIR_LOW_MG_DL) & (gsub <= TIR_HIGH_MG_DL)
    return ClosedLoopResult(
        tuple(names),
        sample_time,
        *arrays,
        time_in_range_pct=100.0 * in_range.mean(axis=1),
    )
