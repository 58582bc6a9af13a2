"""Signal-conditioning throughput.

Waveforms: a batch of synthetic PPG segments (1,000 x 60 s at 125 Hz, 7.5 million
samples; 100 segments with ``--quick``) goes through wavelet denoising
(``wavelet_denoise``, one batched ``pywt.wavedec``/``waverec``) and beat detection
(``detect_peaks_batch``, adaptive threshold in numba). The baseline, timed in the
same run over the same arrays, is a plain NumPy pass: a moving average with
``np.convolve`` per segment and local maxima above it from ``np.diff`` sign changes
(no denoising, no threshold fit). Figures are the median of ``--runs`` runs, after
one warm-up run (numba compiles on first use).

Target: at least 1,000,000 samples/s through denoising plus peak detection.

Vital signs: 1,000 streams x 1,440 samples (one day at one per minute, 1.44 million
values; 100 streams with ``--quick``) of five codes, with drift, noise, spikes and
gaps, through the full pipeline (``vital_pass``): artifact detection (soft limits,
rate of change, Hampel), Kalman smoothing (RTS), interpolation of gaps with flags and
alignment onto a one-minute grid. The baseline, over the same arrays in the same
run, is a plain NumPy pass: NaN to 0, a rolling median (``sliding_window_view``) and
a cumulative-sum moving average. Target: at least 200,000 values/s.

Run: ``python bench/conditioning.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from medtwin.core.records import QualityFlag
from medtwin.devices.conditioning.alignment import Aligned, align_to_grid
from medtwin.devices.conditioning.artifacts import (
    ArtifactRule,
    hampel_filter,
    rate_of_change_mask,
    soft_limit_mask,
)
from medtwin.devices.conditioning.gaps import interpolate_gaps
from medtwin.devices.conditioning.kalman import kalman_smooth
from medtwin.devices.conditioning.peaks import detect_peaks_batch
from medtwin.devices.conditioning.quality import flag_bits
from medtwin.devices.conditioning.waveforms import wavelet_denoise

TARGET_SAMPLES_PER_S = 1_000_000


def ppg_batch(
    segments: int, seconds: float, rate_hz: float, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Synthetic PPG (float32, segments x samples) and each segment's heart rate (/min).

    A systolic wave with a second harmonic (dicrotic shoulder), respiratory baseline
    wander and white noise; heart rates 50–120 /min.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    bpm = rng.uniform(50.0, 120.0, segments)
    phase = 2 * np.pi * (bpm[:, None] / 60.0) * t + rng.uniform(0, 2 * np.pi, (segments, 1))
    x = (
        np.sin(phase)
        + 0.5 * np.sin(2 * phase + 1.0)
        + 0.3 * np.sin(2 * np.pi * 0.2 * t)
        + 0.2 * rng.standard_normal((segments, t.size))
    )
    return x.astype(np.float32), bpm


def medtwin_pass(x: NDArray[np.float32], rate_hz: float) -> list[NDArray[np.intp]]:
    """Wavelet denoising plus beat detection, the whole batch at once."""
    return detect_peaks_batch(wavelet_denoise(x, rate_hz=rate_hz), rate_hz, "ppg")


def numpy_pass(x: NDArray[np.float32], rate_hz: float) -> list[NDArray[np.intp]]:
    """Plain NumPy baseline: moving average, then local maxima above it."""
    width = round(0.75 * rate_hz)
    kernel = np.full(width, 1.0 / width, dtype=np.float32)
    out: list[NDArray[np.intp]] = []
    for row in x:
        base = np.convolve(row, kernel, mode="same")
        slope = np.sign(np.diff(row))
        tops = np.flatnonzero((slope[:-1] > 0) & (slope[1:] <= 0)) + 1
        out.append(tops[row[tops] > base[tops]])
    return out


def _time(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: numba compilation, caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def waveform_bench(
    segments: int = 1_000, seconds: float = 60.0, rate_hz: float = 125.0, runs: int = 3
) -> dict[str, float]:
    """Samples/s through denoising + peak detection, and against the NumPy baseline."""
    x, bpm = ppg_batch(segments, seconds, rate_hz)
    n = x.size
    ours = _time(lambda: medtwin_pass(x, rate_hz), runs)
    plain = _time(lambda: numpy_pass(x, rate_hz), runs)
    denoise = _time(lambda: wavelet_denoise(x, rate_hz=rate_hz), runs)
    peaks = medtwin_pass(x, rate_hz)
    rate_err = np.array(
        [abs(p.size / (seconds / 60.0) - b) for p, b in zip(peaks, bpm, strict=True)]
    )
    return {
        "samples": float(n),
        "medtwin_s": ours,
        "medtwin_samples_per_s": n / ours,
        "denoise_samples_per_s": n / denoise,
        "numpy_s": plain,
        "numpy_samples_per_s": n / plain,
        "time_ratio": ours / plain,
        "median_beat_count_error_bpm": float(np.median(rate_err)),
    }


def print_waveform(result: dict[str, float]) -> None:
    ok = result["medtwin_samples_per_s"] >= TARGET_SAMPLES_PER_S
    print(f"waveforms: {result['samples']:,.0f} PPG samples, median of runs")
    print(
        f"  medtwin denoise+peaks  {result['medtwin_s']:8.3f} s  "
        f"{result['medtwin_samples_per_s']:>14,.0f} samples/s  "
        f"(target {TARGET_SAMPLES_PER_S:,}: {'met' if ok else 'MISSED'})"
    )
    denoise = result["denoise_samples_per_s"]
    print(f"    of which denoise only              {denoise:>14,.0f} samples/s")
    print(
        f"  numpy MA + diff peaks  {result['numpy_s']:8.3f} s  "
        f"{result['numpy_samples_per_s']:>14,.0f} samples/s"
    )
    print(f"  time ratio medtwin / numpy: {result['time_ratio']:.2f}")
    print(
        f"  median |beat count rate - true rate|: {result['median_beat_count_error_bpm']:.2f} /min"
    )


# --- vital signs ---------------------------------------------------------------------------

TARGET_VALUES_PER_S = 200_000
MINUTE_US = 60_000_000

#: Per LOINC code: (mean, SD between patients, drift SD per minute, noise SD, spike size).
VITALS: dict[str, tuple[float, float, float, float, float]] = {
    "8867-4": (75.0, 10.0, 0.6, 2.0, 60.0),  # heart rate, /min
    "59408-5": (96.0, 1.5, 0.15, 0.7, -20.0),  # SpO2, %
    "9279-1": (16.0, 3.0, 0.2, 1.0, 15.0),  # respiratory rate, /min
    "8480-6": (120.0, 12.0, 0.8, 3.0, 70.0),  # systolic BP, mm[Hg]
    "8310-5": (37.0, 0.3, 0.01, 0.05, -5.0),  # body temperature, Cel (probe off)
}


@dataclass(frozen=True)
class VitalBatch:
    """Streams ``(S, N)`` of several codes, with each stream's code and detector settings.

    ``spikes``: where spikes were injected; ``gaps``: where values were removed.
    Per-stream settings are arrays ``(S,)`` so that every stage but Hampel (one scale
    floor per call) runs over all streams at once.
    """

    times_us: NDArray[np.int64]
    values: NDArray[np.float64]
    codes: tuple[str, ...]
    spikes: NDArray[np.bool_]
    gaps: NDArray[np.bool_]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    max_rate: NDArray[np.float64]
    q: NDArray[np.float64]
    r: NDArray[np.float64]
    rules: dict[str, ArtifactRule]
    rows: dict[str, NDArray[np.intp]]
    grid_us: NDArray[np.int64]


def vital_batch(streams: int, samples: int = 1_440, seed: int = 0) -> VitalBatch:
    """Synthetic vital signs, one per minute (±10 s jitter), codes in turn over the streams.

    Each stream: a patient's level, a random-walk drift, white noise, spikes (0.5 % of
    samples; the size of :data:`VITALS`) and three gaps of 5 to 90 minutes (NaN).
    """
    rng = np.random.default_rng(seed)
    names = list(VITALS)
    codes = tuple(names[i % len(names)] for i in range(streams))
    spec = np.array([VITALS[c] for c in codes])  # (S, 5)
    mean, between, drift, noise, spike = (spec[:, k, np.newaxis] for k in range(5))
    start = 1_767_225_600_000_000  # 2026-01-01T00:00Z
    grid = start + np.arange(samples, dtype=np.int64) * MINUTE_US
    jitter = rng.integers(-10_000_000, 10_000_001, (streams, samples))
    times = (grid[np.newaxis, :] + jitter).astype(np.int64)
    walk = np.cumsum(rng.standard_normal((streams, samples)), axis=1) * drift
    values = mean + between * rng.standard_normal((streams, 1)) + walk
    values += noise * rng.standard_normal((streams, samples))
    spikes = rng.random((streams, samples)) < 0.005
    values = np.where(spikes, values + spike, values)
    gaps = np.zeros((streams, samples), dtype=np.bool_)
    column = np.arange(samples)
    for _ in range(3):
        first = rng.integers(0, samples, (streams, 1))
        length = rng.integers(5, 91, (streams, 1))
        gaps |= (column >= first) & (column < first + length)
    values[gaps] = np.nan
    rules = {code: ArtifactRule.for_code(code) for code in names}
    stream_rules = [rules[c] for c in codes]
    return VitalBatch(
        times_us=times,
        values=values,
        codes=codes,
        spikes=spikes & ~gaps,
        gaps=gaps,
        low=np.array([r.low for r in stream_rules]),
        high=np.array([r.high for r in stream_rules]),
        max_rate=np.array([r.max_rate_per_min for r in stream_rules]),
        q=(spec[:, 2] ** 2) / 60.0,  # drift variance per second
        r=spec[:, 3] ** 2,
        rules=rules,
        rows={c: np.flatnonzero(np.array(codes) == c) for c in names},
        grid_us=grid,
    )


class Conditioned(NamedTuple):
    """What the vital-sign pipeline gives: values per sample with flags, and on the grid."""

    values: NDArray[np.float64]  # smoothed, artifacts and short gaps interpolated
    flags: NDArray[np.int64]  # QualityFlag bits per sample
    grid: Aligned  # on the common grid (last value within the maximum age)
    grid_imputed: NDArray[np.bool_]  # grid values not measured within the step before


def vital_pass(
    batch: VitalBatch,
    *,
    max_gap_s: float = 600.0,
    max_age_s: float = 300.0,
    step_s: float = 60.0,
    stages: dict[str, float] | None = None,
) -> Conditioned:
    """Artifacts (soft limits, rate of change, Hampel), Kalman smoothing (level model, RTS),
    interpolation of gaps up to ``max_gap_s`` with flags, alignment onto the grid.

    ``stages``, when given, collects the seconds each stage took.
    """
    clock = time.perf_counter()
    took = stages if stages is not None else {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        took[name] = took.get(name, 0.0) + now - clock
        clock = now

    t, v = batch.times_us, batch.values
    out_of_range = soft_limit_mask(v, batch.low, batch.high)
    rate = rate_of_change_mask(t, v, batch.max_rate)
    lap("soft limits + rate")
    hampel = np.zeros(v.shape, dtype=np.bool_)
    for code, rows in batch.rows.items():
        rule = batch.rules[code]
        hampel[rows] = hampel_filter(
            v[rows],
            window=rule.hampel_window,
            k=rule.hampel_k,
            min_sigma=rule.hampel_min_sigma,
            min_count=rule.hampel_min_count,
        ).outliers
    lap("hampel")
    artifact = rate | hampel
    clean = np.where(artifact, np.nan, v)
    smoothed = kalman_smooth(t, clean, q=batch.q, r=batch.r).smoothed_mean
    measured = ~np.isnan(clean)
    smoothed = np.where(measured, smoothed, np.nan)  # estimates only where measured
    lap("kalman smooth")
    filled = interpolate_gaps(t, smoothed, max_gap_s)
    flags = flag_bits(
        out_of_range=out_of_range, smoothed=measured, imputed=filled.imputed, artifact=artifact
    )
    lap("interpolate + flags")
    grid = _align_chunked(batch.grid_us, t, filled.values, max_age_s)
    taken = grid.source_index >= 0
    from_imputed = np.take_along_axis(filled.imputed, np.maximum(grid.source_index, 0), axis=1)
    grid_imputed = taken & (from_imputed | (grid.age_s >= step_s))
    lap("align")
    return Conditioned(filled.values, flags, grid, grid_imputed)


#: Streams per ``align_to_grid`` call: its two lexsorts over every observation and grid
#: time slow down out of cache (1,000 streams at once: 2.5 times slower than 50 at a time).
ALIGN_CHUNK = 50


def _align_chunked(
    grid_us: NDArray[np.int64], times_us: NDArray[np.int64], values: NDArray[np.float64], age: float
) -> Aligned:
    parts = [
        align_to_grid(grid_us, times_us[i : i + ALIGN_CHUNK], values[i : i + ALIGN_CHUNK], age)
        for i in range(0, values.shape[0], ALIGN_CHUNK)
    ]
    if not parts:
        return align_to_grid(grid_us, times_us, values, age)
    return Aligned(*(np.concatenate([getattr(p, f) for p in parts]) for f in Aligned._fields[:4]))


def vital_numpy_pass(batch: VitalBatch, window: int = 11, average: int = 5) -> NDArray[np.float64]:
    """Plain NumPy baseline: NaN to 0, a rolling median, then a cumulative-sum moving average."""
    x = np.nan_to_num(batch.values)
    half = window // 2
    padded = np.pad(x, ((0, 0), (half, half)), mode="edge")
    median = np.median(sliding_window_view(padded, window, axis=1), axis=2)
    total = np.cumsum(np.pad(median, ((0, 0), (average, 0))), axis=1)
    out: NDArray[np.float64] = (total[:, average:] - total[:, :-average]) / average
    return out


def vital_bench(streams: int = 1_000, samples: int = 1_440, runs: int = 3) -> dict[str, float]:
    """Values/s through the vital-sign pipeline, and against the plain NumPy pass."""
    batch = vital_batch(streams, samples)
    n = batch.values.size
    ours = _time(lambda: vital_pass(batch), runs)
    plain = _time(lambda: vital_numpy_pass(batch), runs)
    stages: dict[str, float] = {}
    result = vital_pass(batch, stages=stages)
    flagged = (result.flags & int(QualityFlag.ARTIFACT_SUSPECTED)) > 0
    present = ~batch.gaps
    out: dict[str, float] = {
        "values": float(n),
        "streams": float(streams),
        "samples": float(samples),
        "medtwin_s": ours,
        "medtwin_values_per_s": n / ours,
        "numpy_s": plain,
        "numpy_values_per_s": n / plain,
        "time_ratio": ours / plain,
        "spikes_found": float(np.sum(flagged & batch.spikes) / max(1, np.sum(batch.spikes))),
        "false_artifacts": float(np.sum(flagged & ~batch.spikes) / max(1, np.sum(present))),
        "imputed_samples": float(np.sum(result.flags & int(QualityFlag.IMPUTED) > 0) / n),
        "grid_imputed": float(np.mean(result.grid_imputed)),
        "grid_missing": float(np.mean(result.grid.source_index < 0)),
    }
    out.update({f"stage {name}": seconds for name, seconds in stages.items()})
    return out


def print_vital(result: dict[str, float]) -> None:
    ok = result["medtwin_values_per_s"] >= TARGET_VALUES_PER_S
    print(
        f"vital signs: {result['values']:,.0f} values ({result['streams']:,.0f} streams x "
        f"{result['samples']:,.0f} samples, one per minute), median of runs"
    )
    print(
        f"  medtwin pipeline       {result['medtwin_s']:8.3f} s  "
        f"{result['medtwin_values_per_s']:>14,.0f} values/s  "
        f"(target {TARGET_VALUES_PER_S:,}: {'met' if ok else 'MISSED'})"
    )
    for key, seconds in result.items():
        if key.startswith("stage "):
            print(f"    {key[6:]:<22}{seconds:8.3f} s (one run)")
    print(
        f"  numpy median + MA      {result['numpy_s']:8.3f} s  "
        f"{result['numpy_values_per_s']:>14,.0f} values/s"
    )
    print(f"  time ratio medtwin / numpy: {result['time_ratio']:.2f}")
    print(
        f"  spikes flagged {result['spikes_found']:.1%}, other values flagged "
        f"{result['false_artifacts']:.2%}; imputed samples {result['imputed_samples']:.1%}; "
        f"grid imputed {result['grid_imputed']:.1%}, missing {result['grid_missing']:.1%}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="100 segments and 100 streams instead of 1,000"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    args = parser.parse_args(argv)
    segments = 100 if args.quick else 1_000
    print_waveform(waveform_bench(segments=segments, runs=max(1, args.runs)))
    print()
    print_vital(vital_bench(streams=100 if args.quick else 1_000, runs=max(1, args.runs)))


if __name__ == "__main__":
    main()
