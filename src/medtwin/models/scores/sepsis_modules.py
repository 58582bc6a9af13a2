"""qSOFA and SOFA as modules: one per criterion/organ system and an aggregate each.

The arithmetic is :mod:`~medtwin.models.scores.qsofa`'s and
:mod:`~medtwin.models.scores.sofa`'s; these modules declare which observations
each part reads and feed the parts to the aggregate, so every point traces to
its readings.

Aggregation over the window: qSOFA reads the newest value of each input (it is
a bedside snapshot).  SOFA is defined on the worst value of the last 24 h
(Vincent 1996), so each single-value input is aggregated to its worst in the
window (lowest platelets, MAP and GCS; highest bilirubin, creatinine and
vasopressor rates); PaO2, FiO2 and respiratory support are the newest, because
the ratio must pair a PaO2 with the FiO2 it was drawn on, and the 24-h urine
output is the newest 24-h total.

Values the pure functions would refuse (a GCS that is not a whole number in
3..15, an FiO2 outside 21..100 %, a negative concentration) are taken as missing
here: one bad reading must not fail the score of a whole ward.

Respiratory support and vasopressor rates have no LOINC observation code; the
modules read them from the local codes in :data:`LOCAL_CODES` (numeric: support
0/1, rates in ug/kg/min).  ``codes`` (the code registry's) restricts each module
to the inputs it can read: an input whose code is not registered is unknown to
every twin (its part counts as missing, or makes the points a lower bound).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
from numpy.typing import NDArray

from medtwin.models.modules import (
    Aggregation,
    FunctionModule,
    InputValues,
    Module,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    ResultInput,
)
from medtwin.models.scores.qsofa import (
    CRITERIA,
    mentation_criterion,
    respiration_rate_criterion,
    systolic_bp_criterion,
)
from medtwin.models.scores.qsofa import aggregate as qsofa_aggregate
from medtwin.models.scores.sofa import (
    COMPONENTS,
    INPUT_CODES,
    cardiovascular_points,
    cns_points,
    coagulation_points,
    liver_points,
    renal_points,
    respiration_points,
)
from medtwin.models.scores.sofa import aggregate as sofa_aggregate

__all__ = [
    "LOCAL_CODES",
    "QSOFA",
    "QSOFA_CODES",
    "SOFA",
    "SOFA_CODES",
    "VERSION",
    "part_module",
    "qsofa_modules",
    "sofa_modules",
]

VERSION = "1"  # bump when a table, a cut point or an aggregation changes
QSOFA = "qsofa"
SOFA = "sofa"
_SCORE = "{score}"

LOCAL_CODES: dict[str, str] = {
    "respiratory_support": "medtwin-respiratory-support",
    "dopamine": "medtwin-dopamine-rate",
    "dobutamine": "medtwin-dobutamine-rate",
    "epinephrine": "medtwin-epinephrine-rate",
    "norepinephrine": "medtwin-norepinephrine-rate",
}
"""Local (non-LOINC) codes: respiratory support (1 = ventilated or CPAP/BiPAP, 0 = none)
and vasopressor infusion rates (ug/kg/min, 0 = not running)."""

QSOFA_CODES: dict[str, str] = {
    "respiration_rate": "9279-1",
    "systolic_bp": "8480-6",
    "gcs": "9269-2",
    "consciousness": "80288-4",
}
"""qSOFA input -> the LOINC code it reads."""

SOFA_CODES: dict[str, str] = {
    **{arg: code for code, arg in INPUT_CODES.items()},
    **LOCAL_CODES,
}
"""SOFA input -> the code it reads (LOINC, or local for support and vasopressors)."""

# SOFA component -> its inputs as (argument, aggregation over the window).
_SOFA_INPUTS: dict[str, tuple[tuple[str, Aggregation], ...]] = {
    "respiration": (("pao2", "latest"), ("fio2", "latest"), ("respiratory_support", "latest")),
    "coagulation": (("platelets", "min"),),
    "liver": (("bilirubin", "max"),),
    "cardiovascular": (
        ("mean_arterial_pressure", "min"),
        ("dopamine", "max"),
        ("dobutamine", "max"),
        ("epinephrine", "max"),
        ("norepinephrine", "max"),
    ),
    "cns": (("gcs", "min"),),
    "renal": (("creatinine", "max"), ("urine_output", "latest")),
}
# Inputs without which a component cannot be scored at all (the others only refine it).
_REQUIRED = {"respiration": ("pao2", "fio2")}
_QSOFA_INPUTS: dict[str, tuple[str, ...]] = {
    "respiration_rate": ("respiration_rate",),
    "systolic_bp": ("systolic_bp",),
    "mentation": ("gcs", "consciousness"),
}

Function = Callable[[InputValues, Mapping[str, ParameterValue]], OutputValues]


def part_module(score: str, part: str) -> str:
    """Name of the module scoring one qSOFA criterion or SOFA component."""
    return f"{score}.{part}"


# ----------------------------------------------------------------------------- cleaning


def _n(inputs: InputValues) -> int:
    return int(np.asarray(next(iter(inputs.values()))).shape[0])


def _get(inputs: InputValues, name: str, n: int) -> NDArray[np.float64]:
    """Input ``name`` as float64, all NaN when the module does not read it."""
    if name not in inputs:
        return np.full(n, np.nan)
    return np.asarray(inputs[name], dtype=np.float64)


def _clean(
    x: NDArray[np.float64],
    low: float = 0.0,
    high: float = np.inf,
    *,
    whole: bool = False,
) -> NDArray[np.float64]:
    """NaN where ``x`` is outside ``[low, high]`` (or not a whole number when ``whole``)."""
    ok = np.isfinite(x) & (x >= low) & (x <= high)
    if whole:
        ok &= x == np.round(x)
    out: NDArray[np.float64] = np.where(ok, x, np.nan)
    return out


_CLEAN: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "gcs": lambda x: _clean(x, 3, 15, whole=True),
    "consciousness": lambda x: _clean(x, 0, 4, whole=True),
    "fio2": lambda x: _clean(x, 21, 100),
    "respiratory_support": lambda x: np.where(np.isin(x, (0.0, 1.0)), x, np.nan),
}


def _clean_inputs(inputs: InputValues, names: tuple[str, ...]) -> dict[str, NDArray[np.float64]]:
    n = _n(inputs)
    return {name: _CLEAN.get(name, _clean)(_get(inputs, name, n)) for name in names}


def _as_float(points: NDArray[np.int8]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.where(points < 0, np.nan, points.astype(np.float64))
    return out


# ----------------------------------------------------------------------------- qSOFA


def _qsofa_part(part: str) -> Function:
    names = _QSOFA_INPUTS[part]

    def compute(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
        x = _clean_inputs(inputs, names)
        if part == "respiration_rate":
            points = respiration_rate_criterion(x["respiration_rate"])
        elif part == "systolic_bp":
            points = systolic_bp_criterion(x["systolic_bp"])
        else:
            points = mentation_criterion(x["gcs"], x["consciousness"])
        return {"points": _as_float(points)}

    return compute


def _qsofa_aggregate(
    inputs: InputValues, _parameters: Mapping[str, ParameterValue]
) -> OutputValues:
    n = _n(inputs)
    points = np.column_stack([_get(inputs, c, n) for c in CRITERIA])
    batch = qsofa_aggregate(np.where(np.isnan(points), -1, points).astype(np.int8))
    return {
        "score": _as_float(batch.score.astype(np.int8)),
        "positive": _as_float(batch.positive),
        "missing_mask": batch.missing_mask.astype(np.float64),
        "missing_count": batch.missing_count.astype(np.float64),
    }


def qsofa_modules(
    window_s: float = 3600.0, *, codes: Collection[str] | None = None
) -> tuple[Module, ...]:
    """The three criterion modules and the ``qsofa`` aggregate, reading values up to
    ``window_s`` (s) old; with ``codes``, only inputs whose code is registered are read.

    ValueError when ``codes`` leaves a criterion nothing to read.
    """
    points = (ModuleOutput("points", _SCORE, description="qSOFA point (0/1), null when missing"),)
    modules: list[Module] = []
    for part, names in _QSOFA_INPUTS.items():
        readable = [n for n in names if codes is None or QSOFA_CODES[n] in codes]
        if not readable:
            raise ValueError(
                f"qSOFA {part} needs one of the codes {[QSOFA_CODES[n] for n in names]}"
            )
        modules.append(
            FunctionModule(
                part_module(QSOFA, part),
                VERSION,
                tuple(ObservationInput(n, QSOFA_CODES[n], window_s) for n in readable),
                points,
                _qsofa_part(part),
                description=f"qSOFA {part.replace('_', ' ')} criterion (Seymour 2016)",
            )
        )
    modules.append(
        FunctionModule(
            QSOFA,
            VERSION,
            tuple(ResultInput(c, part_module(QSOFA, c), "points") for c in CRITERIA),
            (
                ModuleOutput("score", _SCORE, description="sum of the criteria present"),
                ModuleOutput(
                    "positive", "1", description="1 if >= 2, 0 if it cannot be, else null"
                ),
                ModuleOutput("missing_mask", "1", description="bit i set: CRITERIA[i] missing"),
                ModuleOutput("missing_count", "1", description="number of missing criteria"),
            ),
            _qsofa_aggregate,
            description="quick SOFA score and positive screen (Seymour 2016, Sepsis-3)",
        )
    )
    return tuple(modules)


# ----------------------------------------------------------------------------- SOFA


def _sofa_part(part: str) -> Function:
    names = tuple(name for name, _ in _SOFA_INPUTS[part])

    def compute(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
        x = _clean_inputs(inputs, names)
        lower: NDArray[np.bool_] | None = None
        if part == "respiration":
            points, lower = respiration_points(x["pao2"], x["fio2"], x["respiratory_support"])
        elif part == "coagulation":
            points = coagulation_points(x["platelets"])
        elif part == "liver":
            points = liver_points(x["bilirubin"])
        elif part == "cardiovascular":
            points, lower = cardiovascular_points(
                x["mean_arterial_pressure"],
                x["dopamine"],
                x["dobutamine"],
                x["epinephrine"],
                x["norepinephrine"],
            )
        elif part == "cns":
            points = cns_points(x["gcs"])
        else:
            points, lower = renal_points(x["creatinine"], x["urine_output"])
        flag = np.zeros(points.shape, np.float64) if lower is None else lower.astype(np.float64)
        return {"points": _as_float(points), "lower_bound": np.where(points < 0, np.nan, flag)}

    return compute


def _sofa_aggregate(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    n = _n(inputs)
    points = np.column_stack([_get(inputs, c, n) for c in COMPONENTS])
    lower = np.column_stack([_get(inputs, f"{c}_lower_bound", n) for c in COMPONENTS])
    batch = sofa_aggregate(np.where(np.isnan(points), -1, points).astype(np.int8), lower == 1.0)
    return {
        "score": np.where(batch.score < 0, np.nan, batch.score.astype(np.float64)),
        "complete": batch.complete.astype(np.float64),
        "missing_mask": batch.missing_mask.astype(np.float64),
        "missing_count": batch.missing_count.astype(np.float64),
        "lower_bound_mask": batch.lower_bound_mask.astype(np.float64),
    }


def sofa_modules(
    window_s: float = 86400.0, *, codes: Collection[str] | None = None
) -> tuple[Module, ...]:
    """The six component modules and the ``sofa`` aggregate over the last ``window_s`` (s).

    With ``codes``, only inputs whose code is registered are read; a component
    left nothing to read (or, for respiration, without PaO2 and FiO2) gets no
    module and counts as missing for every twin.  ValueError when no component
    is left.
    """
    outputs = (
        ModuleOutput("points", _SCORE, description="SOFA points (0-4), null when missing"),
        ModuleOutput("lower_bound", "1", description="1 if an unknown input could add points"),
    )
    modules: list[Module] = []
    for part, declared in _SOFA_INPUTS.items():
        readable = [(n, a) for n, a in declared if codes is None or SOFA_CODES[n] in codes]
        names = {n for n, _ in readable}
        if not readable or not set(_REQUIRED.get(part, ())) <= names:
            continue
        modules.append(
            FunctionModule(
                part_module(SOFA, part),
                VERSION,
                tuple(ObservationInput(n, SOFA_CODES[n], window_s, a) for n, a in readable),
                outputs,
                _sofa_part(part),
                description=f"SOFA {part} component (Vincent 1996; Singer 2016 table 1)",
            )
        )
    if not modules:
        raise ValueError("no SOFA component can be read with the registered codes")
    present = [m.name.removeprefix(f"{SOFA}.") for m in modules]
    modules.append(
        FunctionModule(
            SOFA,
            VERSION,
            tuple(
                ResultInput(name, part_module(SOFA, c), output)
                for c in present
                for name, output in ((c, "points"), (f"{c}_lower_bound", "lower_bound"))
            ),
            (
                ModuleOutput("score", _SCORE, description="sum over the components present"),
                ModuleOutput(
                    "complete", "1", description="1 if no component is missing or a bound"
                ),
                ModuleOutput("missing_mask", "1", description="bit i set: COMPONENTS[i] missing"),
                ModuleOutput("missing_count", "1", description="number of missing components"),
                ModuleOutput(
                    "lower_bound_mask", "1", description="bit i set: COMPONENTS[i] a lower bound"
                ),
            ),
            _sofa_aggregate,
            description="SOFA score over the components present (Vincent 1996, Sepsis-3)",
        )
    )
    return tuple(modules)
