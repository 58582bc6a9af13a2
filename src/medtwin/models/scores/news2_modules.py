"""NEWS2 as modules: one per sub-score and an aggregate, so each point traces to its reading.

The arithmetic is :mod:`medtwin.models.scores.news2`'s; these modules only declare
which observations each sub-score reads (the newest within the window) and feed
the seven sub-scores to the aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from medtwin.models.modules import (
    AttributeInput,
    FunctionModule,
    InputValues,
    Module,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    ResultInput,
)
from medtwin.models.scores.news2 import (
    PARAMETERS,
    aggregate,
    air_or_oxygen_subscore,
    consciousness_subscore,
    pulse_subscore,
    respiration_rate_subscore,
    spo2_subscore,
    systolic_bp_subscore,
    temperature_subscore,
)

__all__ = ["AGGREGATE", "VERSION", "news2_modules", "subscore_module"]

VERSION = "1"  # bump when the chart or its rounding changes: every NEWS2 result goes stale
AGGREGATE = "news2"
_SCORE = "{score}"

# Sub-score parameter -> LOINC code it reads.
_CODES = {
    "respiration_rate": "9279-1",
    "spo2": "59408-5",
    "air_or_oxygen": "3150-0",
    "systolic_bp": "8480-6",
    "pulse": "8867-4",
    "consciousness": "80288-4",
    "temperature": "8310-5",
}
_SINGLE: dict[str, Callable[[NDArray[np.float64]], NDArray[np.int16]]] = {
    "respiration_rate": respiration_rate_subscore,
    "air_or_oxygen": air_or_oxygen_subscore,
    "systolic_bp": systolic_bp_subscore,
    "pulse": pulse_subscore,
    "consciousness": consciousness_subscore,
    "temperature": temperature_subscore,
}


def subscore_module(parameter: str) -> str:
    """Name of the module scoring one NEWS2 parameter."""
    return f"news2.{parameter}"


def _points(subscore: NDArray[np.int16]) -> OutputValues:
    return {"points": np.where(subscore < 0, np.nan, subscore.astype(np.float64))}


def _single(parameter: str) -> Callable[[InputValues, Mapping[str, ParameterValue]], OutputValues]:
    score = _SINGLE[parameter]

    def compute(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
        return _points(score(inputs["value"]))

    return compute


def _spo2(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    scale = np.where(inputs["scale"] == 2, 2, 1)
    return _points(spo2_subscore(inputs["value"], inputs["fio2"], scale))


def _aggregate(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    points = np.column_stack([inputs[p] for p in PARAMETERS])
    subscores = np.where(np.isnan(points), -1, points).astype(np.int16)
    score, partial, band = aggregate(subscores)
    return {
        "score": np.where(score < 0, np.nan, score.astype(np.float64)),
        "partial_score": partial.astype(np.float64),
        "band": np.where(band < 0, np.nan, band.astype(np.float64)),
    }


def news2_modules(window_s: float = 3600.0) -> tuple[Module, ...]:
    """The seven sub-score modules and the aggregate, reading values up to ``window_s`` old."""
    points = (ModuleOutput("points", _SCORE, description="NEWS2 points, null when missing"),)
    modules: list[Module] = []
    for parameter, code in _CODES.items():
        value = ObservationInput("value", code, window_s)
        if parameter == "spo2":
            inputs: tuple[ObservationInput | AttributeInput, ...] = (
                value,
                ObservationInput("fio2", _CODES["air_or_oxygen"], window_s),
                AttributeInput("scale", "spo2_scale"),
            )
            function: Callable[[InputValues, Mapping[str, ParameterValue]], OutputValues] = _spo2
        else:
            inputs = (value,)
            function = _single(parameter)
        modules.append(
            FunctionModule(
                subscore_module(parameter),
                VERSION,
                inputs,
                points,
                function,
                description=f"NEWS2 {parameter.replace('_', ' ')} sub-score (RCP 2017)",
            )
        )
    modules.append(
        FunctionModule(
            AGGREGATE,
            VERSION,
            tuple(ResultInput(p, subscore_module(p), "points") for p in PARAMETERS),
            (
                ModuleOutput("score", _SCORE, description="aggregate score, null if incomplete"),
                ModuleOutput("partial_score", _SCORE, description="sum of the known sub-scores"),
                ModuleOutput("band", "1", description="index into BANDS, null if incomplete"),
            ),
            _aggregate,
            description="NEWS2 aggregate score and clinical risk band (RCP 2017)",
        )
    )
    return tuple(modules)
