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

Run: ``python bench/conditioning.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medtwin.devices.conditioning.peaks import detect_peaks_batch
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 segments instead of 1,000")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    args = parser.parse_args(argv)
    segments = 100 if args.quick else 1_000
    print_waveform(waveform_bench(segments=segments, runs=max(1, args.runs)))


if __name__ == "__main__":
    main()
