"""Scenarios: a JSON description of a simulated study, checked, run, written as CSV.

UVA/Padova::

    {"model": "uva-padova", "patients": ["adult#001", "child#004"],
     "duration_min": 1440,
     "events": [{"at_min": 420, "meal_g": 45}, {"at_min": 420, "bolus_u": 4.5},
                {"at_min": 0, "basal_u_per_h": 0.9}],
     "controller": "none"}

A meal is eaten from ``at_min`` at up to 5 g/min (meals close together queue,
as in simglucose); a bolus is delivered within its minute; a basal event sets
the rate from ``at_min`` on (``"patient"``: each patient's steady-state
basal). ``"controller": "basal-bolus"`` doses from the CGM (``"sensor"``
defaults to a noise-free Dexcom then). Optional: ``"sensor"`` (a preset name
or ``{"preset": ..., "noise": bool, "gain": ..., "offset_mg_dl": ...}``),
``"pump"`` (increments and limits), ``"seed"`` (sensor noise).

PK/PD (``"model": "pk-1cmt" | "pk-2cmt" | "pk-3cmt"``): ``"params"`` for one
subject or ``"patients": [{"id": ..., "params": {...}}]``, and dose events
``{"at_min": 0, "dose_mg": 1000, "route": "iv-infusion", "duration_min": 60}``;
``"every_min"`` and ``"count"`` repeat a dose as a regimen.

Every fault is an ``InputError`` whose location names the field, e.g.
``events[2].meal_g``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from medtwin.core.errors import InputError
from medtwin.models.physiology.engine import Inputs, Solution, simulate
from medtwin.models.physiology.model import FloatArray, Model
from medtwin.models.physiology.pkpd import (
    ROUTES,
    Compartmental,
    Dose,
    OneCompartment,
    ThreeCompartment,
    TwoCompartment,
    dose_inputs,
    regimen,
)
from medtwin.models.physiology.sensor import SENSOR_PRESETS, CgmSensor
from medtwin.models.physiology.solvers import RK4, SaveAt, Solver, StepSize
from medtwin.models.physiology.uva_padova.model import UvaPadova
from medtwin.models.physiology.uva_padova.patients import cohort, virtual_patient
from medtwin.models.physiology.uva_padova.therapy import (
    BasalBolus,
    InsulinPump,
    device_parameters,
)

__all__ = [
    "EAT_RATE_G_PER_MIN",
    "MAX_DURATION_MIN",
    "PK_COLUMNS",
    "UVA_COLUMNS",
    "Scenario",
    "ScenarioResult",
    "load_scenario",
    "meal_intake",
    "parse_scenario",
    "run_scenario",
    "write_csv",
]

EAT_RATE_G_PER_MIN = 5.0
# A year of minutes: longer runs belong in a cohort job, not one CSV.
MAX_DURATION_MIN = 525_600
UVA_COLUMNS = (
    "patient",
    "time_min",
    "glucose_mg_dl",
    "sc_glucose_mg_dl",
    "cgm_mg_dl",
    "insulin_u_per_min",
    "carbs_g_per_min",
)
_UVA_KEYS = {"model", "patients", "duration_min", "events", "controller", "sensor", "pump", "seed"}
_UVA_EVENTS = {"meal_g", "bolus_u", "basal_u_per_h"}
_CONTROLLERS = ("none", "basal-bolus")
_RK4 = RK4()
PK_COLUMNS = ("patient", "time_min", "conc_mg_l", "effect")
_PK_MODELS: dict[str, type[Compartmental]] = {
    m.name: m for m in (OneCompartment, TwoCompartment, ThreeCompartment)
}
_PK_KEYS = {"model", "params", "patients", "duration_min", "events"}
_DOSE_KEYS = {"at_min", "dose_mg", "route", "duration_min", "every_min", "count"}


@dataclass(frozen=True, slots=True)
class Scenario:
    """A checked scenario, ready to run."""

    model: Model
    patients: tuple[str, ...]
    duration_min: int
    x0: FloatArray
    params: FloatArray
    inputs: Inputs
    columns: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: Scenario
    solution: Solution


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", f"{path}:{exc.lineno}:{exc.colno}") from exc
    except OSError as exc:
        raise InputError(f"cannot read scenario: {exc.strerror}", str(path)) from exc
    return parse_scenario(raw)


def parse_scenario(raw: Any) -> Scenario:
    """Check a decoded scenario; the error names the first bad field."""
    if not isinstance(raw, Mapping):
        raise InputError("a scenario is a JSON object", "$")
    model = raw.get("model")
    if model == "uva-padova":
        return _uva(raw)
    if model in _PK_MODELS:
        return _pk(raw, _PK_MODELS[model]())
    raise InputError(
        f"unknown model {model!r} (known: uva-padova, pk-1cmt, pk-2cmt, pk-3cmt)", "model"
    )


def run_scenario(
    scenario: Scenario, *, solver: Solver = _RK4, stepsize: StepSize | None = None
) -> ScenarioResult:
    solution = simulate(
        scenario.model,
        x0=scenario.x0,
        params=scenario.params,
        inputs=scenario.inputs,
        solver=solver,
        stepsize=stepsize,
        saveat=SaveAt(outputs=scenario.outputs),
    )
    return ScenarioResult(scenario, solution)


def write_csv(result: ScenarioResult, out: TextIO) -> int:
    """One row per patient per minute; empty cells for values not measured. Returns rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.scenario.columns)
    sol = result.solution
    rows = 0
    for i, patient in enumerate(result.scenario.patients):
        block = sol.y[i]
        for j, t in enumerate(sol.t_min):
            writer.writerow(
                [patient, f"{t:g}", *(_cell(v) for v in block[j])],
            )
            rows += 1
    return rows


def _cell(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.10g}"


def meal_intake(meals: Sequence[tuple[int, float]], duration_min: int) -> FloatArray:
    """Carbohydrate eaten per minute (g/min) when meals announced at ``at_min`` are
    eaten at up to ``EAT_RATE_G_PER_MIN``, queued like simglucose's ``_announce_meal``."""
    announced = np.zeros(duration_min)
    for at, grams in meals:
        announced[at] += grams
    eaten = np.zeros(duration_min)
    queued = 0.0
    for m in range(duration_min):
        queued += announced[m]
        if queued > 0:
            bite = min(EAT_RATE_G_PER_MIN, queued)
            eaten[m] = bite
            queued = max(queued - bite, 0.0)
    return eaten


def _uva(raw: Mapping[str, Any]) -> Scenario:
    _no_unknown(raw, _UVA_KEYS, "")
    names = raw.get("patients")
    if not isinstance(names, list) or not names:
        raise InputError("patients must be a non-empty list of names", "patients")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise InputError("a patient is named by a string", f"patients[{i}]")
        try:
            virtual_patient(name)
        except InputError as exc:
            raise InputError(exc.reason, f"patients[{i}]") from None
    duration = _int(raw.get("duration_min"), "duration_min", low=1, high=MAX_DURATION_MIN)
    controller = raw.get("controller", "none")
    if controller not in _CONTROLLERS:
        raise InputError(f"controller must be one of {', '.join(_CONTROLLERS)}", "controller")
    sensor = _sensor(raw.get("sensor"), closed_loop=controller == "basal-bolus")
    pump = _pump(raw.get("pump"))
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise InputError("seed must be a non-negative integer", "seed")

    meals: list[tuple[int, float]] = []
    boluses: list[tuple[int, float]] = []
    basal_changes: list[tuple[int, float | None]] = []
    events = raw.get("events", [])
    if not isinstance(events, list):
        raise InputError("events must be a list", "events")
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, Mapping):
            raise InputError("an event is a JSON object", where)
        _no_unknown(ev, {"at_min"} | _UVA_EVENTS, where)
        kinds = sorted(_UVA_EVENTS & set(ev))
        if len(kinds) != 1:
            raise InputError("an event has exactly one of meal_g, bolus_u, basal_u_per_h", where)
        at = _at_min(ev, where, duration)
        kind = kinds[0]
        if kind == "basal_u_per_h" and ev[kind] == "patient":
            basal_changes.append((at, None))
            continue
        amount = _number(ev[kind], f"{where}.{kind}", low=0.0)
        if kind == "meal_g":
            meals.append((at, amount))
        elif kind == "bolus_u":
            boluses.append((at, amount))
        else:
            basal_changes.append((at, amount / 60.0))

    patients = [virtual_patient(n) for n in names]
    x0, physiology = cohort(names)
    devices = device_parameters(
        physiology,
        patients,
        sensor=sensor,
        pump=pump,
        controller=BasalBolus() if controller == "basal-bolus" else None,
    )
    n = len(names)
    values = np.zeros((n, duration, 4))
    values[:, :, 0] = meal_intake(meals, duration)
    for at, grams in meals:
        values[:, at, 3] += grams
    steady = np.array([p.basal_u_per_min for p in patients])
    for at, rate in sorted(basal_changes, key=lambda c: c[0]):
        values[:, at:, 1] = steady[:, None] if rate is None else rate
    for at, units in boluses:
        # Delivered within its minute: the rate over that minute is the dose.
        values[:, at, 1] += units
    outputs = tuple(c for c in UVA_COLUMNS[2:])
    if sensor is not None:
        samples = -(-duration // sensor.sample_min)
        noise = sensor.noise_mg_dl(n, samples, np.random.default_rng(seed))
        values[:, :: sensor.sample_min, 2] = noise
    return Scenario(
        model=UvaPadova(),
        patients=tuple(names),
        duration_min=duration,
        x0=x0,
        params=np.hstack([physiology, devices]),
        inputs=Inputs(values, 1.0),
        columns=UVA_COLUMNS,
        outputs=outputs,
    )


def _pk(raw: Mapping[str, Any], model: Compartmental) -> Scenario:
    _no_unknown(raw, _PK_KEYS, "")
    duration = _int(raw.get("duration_min"), "duration_min", low=1, high=MAX_DURATION_MIN)
    if ("params" in raw) == ("patients" in raw):
        raise InputError("give either params (one subject) or patients, not both", "params")
    subjects: list[tuple[str, Any, str]] = []
    if "params" in raw:
        subjects.append(("subject-1", raw["params"], "params"))
    else:
        listed = raw["patients"]
        if not isinstance(listed, list) or not listed:
            raise InputError("patients must be a non-empty list", "patients")
        for i, entry in enumerate(listed):
            where = f"patients[{i}]"
            if not isinstance(entry, Mapping):
                raise InputError('a patient is {"id": ..., "params": {...}}', where)
            _no_unknown(entry, {"id", "params"}, where)
            if not isinstance(entry.get("id"), str) or not entry["id"]:
                raise InputError("id must be a non-empty string", f"{where}.id")
            subjects.append((entry["id"], entry.get("params"), f"{where}.params"))
    if len({sid for sid, _, _ in subjects}) != len(subjects):
        raise InputError("patient ids must be unique", "patients")
    doses = _doses(raw.get("events", []), duration)
    names = {q.name for q in model.params}
    rows: list[FloatArray] = []
    schedules: list[FloatArray] = []
    for _, values, where in subjects:
        if not isinstance(values, Mapping):
            raise InputError("params is an object of parameter values", where)
        _no_unknown(values, names | {"tlag"}, where)
        numbers = {k: _number(v, f"{where}.{k}") for k, v in values.items()}
        tlag_min = numbers.pop("tlag", 0.0) * 60.0
        if tlag_min < 0 or abs(tlag_min - round(tlag_min)) > 1e-9:
            raise InputError(
                "lag time (h) must be a non-negative whole number of minutes", f"{where}.tlag"
            )
        try:
            rows.append(model.parameters(**numbers)[0])
        except InputError as exc:
            field = exc.location.rsplit(".", 1)[-1]
            raise InputError(exc.reason, f"{where}.{field}") from None
        schedules.append(dose_inputs(doses, duration_min=duration, tlag_min=round(tlag_min))[0])
    n = len(subjects)
    return Scenario(
        model=model,
        patients=tuple(sid for sid, _, _ in subjects),
        duration_min=duration,
        x0=model.initial_state(n),
        params=np.array(rows),
        inputs=Inputs(np.array(schedules), 1.0),
        columns=PK_COLUMNS,
        outputs=PK_COLUMNS[2:],
    )


def _doses(events: Any, duration: int) -> list[Dose]:
    if not isinstance(events, list):
        raise InputError("events must be a list", "events")
    doses = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, Mapping):
            raise InputError("an event is a JSON object", where)
        _no_unknown(ev, _DOSE_KEYS, where)
        at = _at_min(ev, where, duration)
        amount = _number(ev.get("dose_mg"), f"{where}.dose_mg", low=0.0)
        route = ev.get("route")
        if route not in ROUTES:
            raise InputError(f"route must be one of {', '.join(ROUTES)}", f"{where}.route")
        length = None
        if route == "iv-infusion":
            length = _number(ev.get("duration_min"), f"{where}.duration_min")
            if length <= 0:
                raise InputError(
                    "an infusion lasts a positive number of minutes", f"{where}.duration_min"
                )
        elif "duration_min" in ev:
            raise InputError(f"a {route} dose takes no duration", f"{where}.duration_min")
        dose = Dose(at_min=at, amount_mg=amount, route=route, duration_min=length)
        if "every_min" not in ev and "count" not in ev:
            doses.append(dose)
            continue
        # A repeated regimen: count doses, every_min apart, all inside the run.
        every = _int(ev.get("every_min"), f"{where}.every_min", low=1)
        count = ev.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError("count must be a whole number, at least 1", f"{where}.count")
        if at + (count - 1) * every >= duration:
            raise InputError(
                f"dose {count} would be at {at + (count - 1) * every} min, past duration_min",
                f"{where}.count",
            )
        doses.extend(regimen(dose, every, count))
    return doses


def _sensor(raw: Any, *, closed_loop: bool) -> CgmSensor | None:
    if raw is None:
        return CgmSensor.preset("Dexcom", noise=False) if closed_loop else None
    if isinstance(raw, str):
        raw = {"preset": raw}
    if not isinstance(raw, Mapping):
        raise InputError("sensor is a preset name or an object", "sensor")
    fields = {"preset", "noise", "gain", "offset_mg_dl", "sample_min"}
    _no_unknown(raw, fields, "sensor")
    preset = raw.get("preset", "Dexcom")
    if preset not in SENSOR_PRESETS:
        raise InputError(
            f"unknown sensor {preset!r} (known: {', '.join(SENSOR_PRESETS)})", "sensor.preset"
        )
    overrides = {k: v for k, v in raw.items() if k != "preset"}
    if "noise" in overrides and not isinstance(overrides["noise"], bool):
        raise InputError("noise is true or false", "sensor.noise")
    for key in ("gain", "offset_mg_dl"):
        if key in overrides:
            overrides[key] = _number(overrides[key], f"sensor.{key}")
    if "sample_min" in overrides:
        overrides["sample_min"] = _int(overrides["sample_min"], "sensor.sample_min", low=1)
    return CgmSensor.preset(preset, **overrides)


def _pump(raw: Any) -> InsulinPump | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InputError("pump is an object", "pump")
    fields = {"basal_increment_u_per_h", "bolus_increment_u", "max_basal_u_per_h", "max_bolus_u"}
    _no_unknown(raw, fields, "pump")
    return InsulinPump(**{k: _number(v, f"pump.{k}", low=0.0) for k, v in raw.items()})


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise InputError(f"unknown key {key!r} (allowed: {', '.join(sorted(known))})", path)


def _number(v: Any, where: str, *, low: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InputError("must be a finite number", where)
    if low is not None and v < low:
        raise InputError(f"must be at least {low:g}", where)
    return float(v)


def _at_min(event: Mapping[str, Any], where: str, duration: int) -> int:
    return _int(
        event.get("at_min"),
        f"{where}.at_min",
        low=0,
        high=duration - 1,
        why=" (events must fall before duration_min)",
    )


def _int(v: Any, where: str, *, low: int, high: int | None = None, why: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v):
        raise InputError("must be a whole number of minutes", where)
    if v < low:
        raise InputError(f"must be at least {low}", where)
    if high is not None and v > high:
        raise InputError(f"must be at most {high}{why}", where)
    return int(v)
