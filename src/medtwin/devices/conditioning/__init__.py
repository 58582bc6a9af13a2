"""Signal conditioning of vital-sign streams: pure NumPy, vectorized across streams.

A *stream* is one patient's one code; a batch of streams is a pair of
``(streams, samples)`` arrays, times int64 µs since epoch and values float64
with NaN for missing (see :mod:`.streams`). Nothing here does I/O or touches
the store, and nothing drops a value: detectors and imputers return masks,
which :func:`flag_bits` turns into :class:`~medtwin.core.records.QualityFlag` bits.

Modules: :mod:`.calibration` (gain/offset against reference readings, drift),
:mod:`.artifacts` (soft limits, rate of change, Hampel), :mod:`.kalman`
(Kalman filter, RTS smoother), :mod:`.gaps` (carry-forward, interpolation, gap
report), :mod:`.alignment` (common time grid), :mod:`.quality` (flags),
:mod:`.waveforms` (ECG/PPG segments: codec, chunks, band-pass, wavelet denoising) and
:mod:`.peaks` (beat detection, heart rate, RMSSD, SDNN).
"""

from __future__ import annotations

import importlib
from typing import Any

from medtwin.devices.conditioning.alignment import (
    Aligned,
    AlignMode,
    align_streams,
    align_to_grid,
    make_grid,
)
from medtwin.devices.conditioning.artifacts import (
    DEFAULT_RATE_LIMITS,
    MAD_TO_SD,
    ArtifactMasks,
    ArtifactRule,
    HampelResult,
    detect_artifacts,
    hampel_filter,
    rate_of_change_mask,
    soft_limit_mask,
)
from medtwin.devices.conditioning.calibration import (
    Calibration,
    CalibrationHistory,
    DriftTracker,
    ReadingPairs,
    fit_calibration,
    pair_readings,
)
from medtwin.devices.conditioning.gaps import (
    CarriedForward,
    GapReport,
    Interpolated,
    carry_forward,
    find_gaps,
    interpolate_gaps,
)
from medtwin.devices.conditioning.kalman import (
    KalmanModel,
    KalmanResult,
    SmootherResult,
    kalman_filter,
    kalman_smooth,
    rts_smooth,
)
from medtwin.devices.conditioning.quality import ConditioningFlag, flag_bits
from medtwin.devices.conditioning.streams import StreamBatch, pad_streams

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "MAD_TO_SD",
    "AlignMode",
    "Aligned",
    "ArtifactMasks",
    "ArtifactRule",
    "Calibration",
    "CalibrationHistory",
    "CarriedForward",
    "ConditioningFlag",
    "DriftTracker",
    "GapReport",
    "HampelResult",
    "Interpolated",
    "KalmanModel",
    "KalmanResult",
    "ReadingPairs",
    "SmootherResult",
    "StreamBatch",
    "align_streams",
    "align_to_grid",
    "carry_forward",
    "detect_artifacts",
    "find_gaps",
    "fit_calibration",
    "flag_bits",
    "hampel_filter",
    "interpolate_gaps",
    "kalman_filter",
    "kalman_smooth",
    "make_grid",
    "pad_streams",
    "pair_readings",
    "rate_of_change_mask",
    "rts_smooth",
    "soft_limit_mask",
]
# Waveforms and beat detection load SciPy's signal package and Numba kernels (about a
# second): they are imported on first use, so ingestion of vital signs does not pay it.
_LAZY = {
    **{
        name: ("medtwin.devices.conditioning.peaks", name)
        for name in (
            "HrvSummary",
            "detect_peaks",
            "detect_peaks_batch",
            "heart_rate_bpm",
            "hrv_summary",
            "reject_outliers",
            "rmssd_ms",
            "rr_intervals_ms",
            "sample_rate_from_timer",
            "sdnn_ms",
        )
    },
    **{
        name: ("medtwin.devices.conditioning.waveforms", name)
        for name in (
            "CODE_SYSTEM_MDC",
            "WAVEFORM_CODES",
            "JoinedWaveform",
            "WaveformGap",
            "WaveformSegment",
            "bandpass",
            "decode_samples",
            "encode_samples",
            "wavelet_denoise",
        )
    },
    "chunk_waveform": ("medtwin.devices.conditioning.waveforms", "chunk"),
    "join_waveform": ("medtwin.devices.conditioning.waveforms", "join"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)


__all__ += [
    "CODE_SYSTEM_MDC",
    "WAVEFORM_CODES",
    "HrvSummary",
    "JoinedWaveform",
    "WaveformGap",
    "WaveformSegment",
    "bandpass",
    "chunk_waveform",
    "decode_samples",
    "detect_peaks",
    "detect_peaks_batch",
    "encode_samples",
    "heart_rate_bpm",
    "hrv_summary",
    "join_waveform",
    "reject_outliers",
    "rmssd_ms",
    "rr_intervals_ms",
    "sample_rate_from_timer",
    "sdnn_ms",
    "wavelet_denoise",
]
