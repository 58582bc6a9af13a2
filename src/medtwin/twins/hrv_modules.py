"""Heart rate and heart-rate variability from waveforms, as modules of the graph.

``hrv.ppg`` and ``hrv.ecg`` read the twin's recording of the last few minutes
(:class:`~medtwin.models.modules.WaveformInput`) and detect beats in its gap-free
stretches (:func:`~medtwin.devices.conditioning.peaks.hrv_of_recording`), so the
values trace to the waveform chunks they came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from medtwin.core.errors import InputError
from medtwin.models.modules import (
    FunctionModule,
    InputValues,
    Module,
    ModuleOutput,
    OutputValues,
    ParameterValue,
    Recording,
    WaveformInput,
)

__all__ = ["hrv_modules"]

VERSION = "1"
OUTPUTS = (
    ModuleOutput("bpm", "/min", "8867-4", "heart rate from beat-to-beat intervals"),
    ModuleOutput("rmssd_ms", "ms", None, "root mean square of successive interval differences"),
    ModuleOutput("sdnn_ms", "ms", None, "standard deviation of beat-to-beat intervals"),
)


def _hrv(kind: str) -> Callable[[InputValues, Mapping[str, ParameterValue]], OutputValues]:
    def compute(inputs: InputValues, parameters: Mapping[str, ParameterValue]) -> OutputValues:
        # Imported on first use: beat detection loads Numba kernels and SciPy.
        from medtwin.devices.conditioning.peaks import hrv_of_recording

        recordings: list[Recording | None] = inputs["recording"]
        out = {o.name: np.full(len(recordings), np.nan) for o in OUTPUTS}
        for i, recording in enumerate(recordings):
            if recording is None:
                continue
            try:
                found = hrv_of_recording(
                    recording.samples,
                    recording.rate_hz,
                    "ecg" if kind == "ecg" else "ppg",
                    min_stretch_s=float(parameters["min_stretch_s"]),
                )
            except InputError:
                continue  # too short, or no regular beat: null
            for name in out:
                value = found[name]  # type: ignore[literal-required]
                out[name][i] = np.nan if value is None else value
        return out

    return compute


def hrv_modules(window_s: float = 300.0, min_stretch_s: float = 20.0) -> tuple[Module, ...]:
    """HRV of the last ``window_s`` seconds of PPG and of ECG."""
    return tuple(
        FunctionModule(
            f"hrv.{kind}",
            VERSION,
            (WaveformInput("recording", kind, window_s),),
            OUTPUTS,
            _hrv(kind),
            {"min_stretch_s": min_stretch_s},
            description=f"heart rate and HRV by beat detection in the {kind.upper()}",
        )
        for kind in ("ppg", "ecg")
    )
