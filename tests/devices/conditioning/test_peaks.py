"""Beat detection and HRV: HeartPy's own recordings and results as the independent reference.

HeartPy (van Gent et al.) ships two PPG recordings: ``data.csv`` (100 Hz) and
``data2.csv`` (a ``timer`` column in ms, about 117 Hz). HeartPy is run on them here,
through its own loader and ``heartpy.process``, and our detection must give heart
rate and RMSSD within 2 % of its figures. HeartPy's documented figures for
``data2.csv`` (bpm 62.376, RMSSD 57.070 ms) pin the reference itself.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import heartpy
import numpy as np
import pytest

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.peaks import (
    detect_peaks,
    detect_peaks_batch,
    heart_rate_bpm,
    hrv_summary,
    reject_outliers,
    rmssd_ms,
    rr_intervals_ms,
    sample_rate_from_timer,
    sdnn_ms,
)
from medtwin.devices.conditioning.waveforms import wavelet_denoise


def _heartpy_file(name: str) -> str:
    return str(resources.files("heartpy") / "data" / name)


@pytest.fixture(scope="module")
def recordings() -> dict[str, dict[str, Any]]:
    """Both recordings loaded by HeartPy, with HeartPy's own measures."""
    out: dict[str, dict[str, Any]] = {}
    data = heartpy.get_data(_heartpy_file("data.csv"))
    _, measures = heartpy.process(data, 100.0)
    out["data.csv"] = {"x": data, "rate": 100.0, "timer": None, "hp": measures}
    path = _heartpy_file("data2.csv")
    data2 = heartpy.get_data(path, column_name="hr")
    timer = heartpy.get_data(path, column_name="timer")
    rate2 = heartpy.get_samplerate_mstimer(timer)
    _, measures2 = heartpy.process(data2, rate2)
    out["data2.csv"] = {"x": data2, "rate": rate2, "timer": timer, "hp": measures2}
    return out


def test_heartpy_reference_matches_its_documentation(recordings: dict[str, Any]) -> None:
    rec = recordings["data2.csv"]
    assert rec["rate"] == pytest.approx(116.996, abs=5e-4)
    assert rec["hp"]["bpm"] == pytest.approx(62.376, abs=5e-4)
    assert rec["hp"]["rmssd"] == pytest.approx(57.070, abs=5e-4)


@pytest.mark.parametrize("name", ["data.csv", "data2.csv"])
def test_heart_rate_and_rmssd_within_2_percent_of_heartpy(
    recordings: dict[str, Any], name: str
) -> None:
    rec = recordings[name]
    if rec["timer"] is None:
        ours = hrv_summary(rec["x"], rec["rate"], "ppg")
    else:
        ours = hrv_summary(rec["x"], kind="ppg", timer=rec["timer"])
    hp_bpm, hp_rmssd = rec["hp"]["bpm"], rec["hp"]["rmssd"]
    figures = (
        f"{name}: ours bpm {ours['bpm']:.3f} RMSSD {ours['rmssd_ms']:.3f} ms "
        f"({ours['n_peaks']} peaks, {ours['n_rejected']} RR rejected); "
        f"heartpy bpm {hp_bpm:.3f} RMSSD {hp_rmssd:.3f} ms"
    )
    assert ours["bpm"] == pytest.approx(hp_bpm, rel=0.02), figures
    assert ours["rmssd_ms"] == pytest.approx(hp_rmssd, rel=0.02), figures
    assert ours["sdnn_ms"] == pytest.approx(rec["hp"]["sdnn"], rel=0.1), figures


def test_detection_ignores_offset_and_gain(recordings: dict[str, Any]) -> None:
    x = recordings["data.csv"]["x"]
    peaks = detect_peaks(x, 100.0)
    np.testing.assert_array_equal(detect_peaks(0.25 * x - 1000.0, 100.0), peaks)


def test_batch_equals_per_row(recordings: dict[str, Any]) -> None:
    x = recordings["data2.csv"]["x"]
    rate = recordings["data2.csv"]["rate"]
    rows = np.stack([x[:5000], x[5000:10000], x[10000:15000]])
    batch = detect_peaks_batch(rows, rate)
    for row, got in zip(rows, batch, strict=True):
        np.testing.assert_array_equal(got, detect_peaks(row, rate))


# ------------------------------------------------------------------ synthetic signals


def synthetic_ecg(
    rr_ms: np.ndarray, rate_hz: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """ECG-like: Gaussian P, Q, R, S, T waves (mV) per beat, baseline wander, mains, noise.

    Returns the signal and the true R-peak sample indices.
    """
    beats_s = np.cumsum(np.r_[0.6, rr_ms / 1000.0])
    t = np.arange(int((beats_s[-1] + 0.6) * rate_hz)) / rate_hz
    x = np.zeros_like(t)
    waves = ((-0.2, 0.12, 0.025), (-0.03, -0.12, 0.008), (0.0, 1.2, 0.010),
             (0.03, -0.3, 0.010), (0.28, 0.6, 0.045))  # fmt: skip
    for beat in beats_s:
        for offset, amp, width in waves:
            x += amp * np.exp(-0.5 * ((t - beat - offset) / width) ** 2)
    x += 0.25 * np.sin(2 * np.pi * 0.25 * t) + 0.05 * np.sin(2 * np.pi * 50.0 * t)
    x += 0.08 * rng.standard_normal(t.size)
    return x, np.round(beats_s * rate_hz).astype(int)


@pytest.mark.parametrize("rate_hz", [250.0, 360.0, 500.0])
@pytest.mark.parametrize("mean_rr_ms", [450.0, 800.0, 1250.0])
def test_ecg_heart_rate_within_1_percent(rate_hz: float, mean_rr_ms: float) -> None:
    rng = np.random.default_rng(int(rate_hz + mean_rr_ms))
    rr = mean_rr_ms + 0.05 * mean_rr_ms * np.sin(np.arange(90) / 5) + rng.normal(0, 10, 90)
    x, truth = synthetic_ecg(rr, rate_hz, rng)
    summary = hrv_summary(x, rate_hz, "ecg")
    true_bpm = 60000.0 / rr.mean()
    assert summary["bpm"] == pytest.approx(true_bpm, rel=0.01), (summary, true_bpm)
    peaks = detect_peaks(x, rate_hz, "ecg")
    assert peaks.size == truth.size
    assert np.abs(peaks - truth).max() <= 0.004 * rate_hz  # R peaks within 4 ms
    true_rmssd = float(np.sqrt(np.mean(np.diff(rr) ** 2)))
    assert summary["rmssd_ms"] == pytest.approx(true_rmssd, rel=0.15), (summary, true_rmssd)


def test_noisy_ppg_after_denoising() -> None:
    rng = np.random.default_rng(7)
    rate = 125.0
    rr = 750.0 + 40.0 * np.sin(np.arange(80) / 4)
    beats = np.cumsum(np.r_[0.5, rr / 1000.0])
    t = np.arange(int((beats[-1] + 0.5) * rate)) / rate
    phase = np.interp(t, beats, np.arange(beats.size) * 2 * np.pi)
    x = np.sin(phase) + 0.5 * np.sin(2 * phase + 1) + 0.3 * np.sin(2 * np.pi * 0.2 * t)
    x += 0.25 * rng.standard_normal(t.size)
    summary = hrv_summary(wavelet_denoise(x, rate_hz=rate), rate, "ppg")
    assert summary["bpm"] == pytest.approx(60000.0 / rr.mean(), rel=0.01), summary


# ------------------------------------------------------------------ intervals and HRV


def test_rr_from_rate_and_from_irregular_timer() -> None:
    peaks = np.array([10, 110, 215, 310])
    np.testing.assert_allclose(rr_intervals_ms(peaks, 100.0), [1000.0, 1050.0, 950.0])
    rng = np.random.default_rng(3)
    timer = np.cumsum(rng.uniform(8.0, 12.0, 400))  # ms, jittered sampling
    np.testing.assert_allclose(
        rr_intervals_ms(peaks, timer=timer), np.diff(timer[peaks]), rtol=0, atol=0
    )
    assert sample_rate_from_timer(np.arange(0.0, 1000.0, 8.0)) == pytest.approx(125.0)
    with pytest.raises(InputError):
        rr_intervals_ms(peaks)
    with pytest.raises(InputError):
        rr_intervals_ms(np.array([1, 500]), timer=timer[:100])


def test_outlier_rejection_and_hand_computed_measures() -> None:
    rr = np.array([1000.0, 1020.0, 400.0, 980.0, 1000.0, 1040.0])
    ok = reject_outliers(rr)
    # 400 ms is out of median ± 306 ms; the interval after it goes with it.
    np.testing.assert_array_equal(ok, [True, True, False, False, True, True])
    assert heart_rate_bpm(rr, ok) == pytest.approx(60000.0 / 1015.0)
    kept = np.array([1000.0, 1020.0, 1000.0, 1040.0])
    assert sdnn_ms(rr, ok) == pytest.approx(kept.std())
    # Successive differences of adjacent accepted intervals only: 20 and 40 ms.
    assert rmssd_ms(rr, ok) == pytest.approx(math.sqrt((20.0**2 + 40.0**2) / 2))
    assert rmssd_ms(rr) == pytest.approx(np.sqrt(np.mean(np.diff(rr) ** 2)))
    assert math.isnan(rmssd_ms(rr, np.zeros(6, bool)))


def test_summary_of_a_flat_signal_is_empty() -> None:
    summary = hrv_summary(np.ones(1000), 100.0)
    assert summary["n_peaks"] == 0
    assert summary["n_rejected"] == 0
    assert math.isnan(summary["bpm"])
    assert math.isnan(summary["rmssd_ms"])


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError):
        detect_peaks(np.r_[np.ones(10), np.nan, np.ones(10)], 100.0)
    with pytest.raises(InputError):
        detect_peaks(np.ones((2, 10)), 100.0)
    with pytest.raises(InputError):
        detect_peaks(np.ones(10), 0.0)
    with pytest.raises(InputError):
        hrv_summary(np.ones(10))
