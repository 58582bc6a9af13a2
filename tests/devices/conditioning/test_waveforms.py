"""Waveform segments: lossless codec, chunking, joining with gaps, band-pass, wavelet denoising."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.waveforms import (
    CODE_SYSTEM_MDC,
    WaveformSegment,
    bandpass,
    chunk,
    decode_samples,
    encode_samples,
    join,
    wavelet_denoise,
)

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z

float32_samples = arrays(
    np.float32,
    st.integers(0, 3000),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)
rates = st.floats(0.5, 2000.0, allow_nan=False, allow_infinity=False)
starts = st.integers(-(2**62), 2**62)


def _ppg(seconds: float, rate_hz: float, bpm: float = 72.0) -> np.ndarray:
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    phase = 2 * np.pi * bpm / 60.0 * t
    return np.sin(phase) + 0.5 * np.sin(2 * phase + 1.0) + 0.3 * np.sin(2 * np.pi * 0.2 * t)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ codec


@settings(max_examples=150, deadline=None)
@given(samples=float32_samples, rate=rates, start=starts)
def test_codec_round_trip_is_bit_exact(samples: np.ndarray, rate: float, start: int) -> None:
    assert _same_bits(decode_samples(encode_samples(samples)), samples)
    seg = WaveformSegment(
        patient="p1", source="mon-3", kind="ppg", start_us=start, rate_hz=rate, samples=samples
    )
    back = WaveformSegment.from_bytes(seg.to_bytes())
    assert back == seg
    assert _same_bits(back.samples, samples)
    assert (back.start_us, back.rate_hz) == (start, rate)
    row = seg.to_row()
    assert isinstance(row["samples"], bytes)
    assert row["n_samples"] == samples.size
    assert WaveformSegment.from_row(row) == seg


def test_segment_defaults_and_times() -> None:
    seg = WaveformSegment(
        patient="p1",
        source="mon",
        kind="ecg",
        start_us=T0_US,
        rate_hz=250.0,
        samples=np.zeros(5, np.float32),
    )
    assert (seg.code, seg.system, seg.unit) == ("131330", CODE_SYSTEM_MDC, "mV")
    assert seg.samples.dtype == np.float32
    np.testing.assert_array_equal(seg.times_us() - T0_US, [0, 4000, 8000, 12000, 16000])
    assert seg.end_us == T0_US + 20_000
    ppg = WaveformSegment(
        patient="p1",
        source="mon",
        kind="ppg",
        start_us=0,
        rate_hz=125.0,
        samples=np.zeros(1, np.float32),
    )
    assert ppg.code == "150452"


def test_codec_compresses_a_recording() -> None:
    x = np.round(_ppg(60.0, 125.0) * 200.0 + 500.0).astype(np.float32)  # ADC-like counts
    blob = encode_samples(x)
    assert len(blob) < 0.5 * x.nbytes, (len(blob), x.nbytes)


def test_corrupt_input_is_refused() -> None:
    blob = encode_samples(np.arange(100, dtype=np.float32))
    with pytest.raises(InputError):
        decode_samples(blob[:-3])
    with pytest.raises(InputError):
        decode_samples(b"\x09" + blob[1:])
    with pytest.raises(InputError):
        WaveformSegment.from_bytes(b"XXXX" + bytes(40))
    with pytest.raises(InputError):
        WaveformSegment(
            patient="p",
            source="s",
            kind="ppg",
            start_us=0,
            rate_hz=0.0,
            samples=np.zeros(3, np.float32),
        )
    with pytest.raises(InputError):
        encode_samples(np.zeros((2, 2)))


# ------------------------------------------------------------------ chunking


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 5000),
    rate=st.sampled_from([100.0, 116.99555416894158, 125.0, 250.0, 256.0, 500.0, 3.3]),
    seconds=st.floats(0.5, 30.0),
    start=st.integers(0, 2**60),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunk_then_join_gives_back_the_samples(
    n: int, rate: float, seconds: float, start: int, seed: int
) -> None:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    parts = chunk(x, start, rate, seconds=seconds, patient="p1", source="mon", kind="ppg")
    size = round(seconds * rate)
    assert all(p.n_samples == size for p in parts[:-1])
    random.Random(seed).shuffle(parts)
    joined = join(parts)
    assert joined.complete
    assert _same_bits(joined.segment.samples, x)
    assert joined.segment.start_us == start
    assert joined.segment.rate_hz == rate


def test_missing_chunk_is_reported_as_a_gap() -> None:
    rate = 125.0
    x = _ppg(60.0, rate).astype(np.float32)
    parts = chunk(x, T0_US, rate, seconds=10.0, patient="p1", source="mon", kind="ppg")
    assert len(parts) == 6
    missing = parts.pop(2)
    parts.append(parts[0])  # the same chunk sent twice is kept once
    joined = join(parts)
    assert len(joined.gaps) == 1
    gap = joined.gaps[0]
    assert (gap.start_us, gap.end_us, gap.n_samples) == (
        T0_US + 20_000_000,
        T0_US + 30_000_000,
        1250,
    )
    assert (gap.start_us, gap.end_us) == (missing.start_us, missing.end_us)
    out = joined.segment.samples
    assert out.size == x.size
    assert np.isnan(out[2500:3750]).all()
    np.testing.assert_array_equal(out[:2500], x[:2500])
    np.testing.assert_array_equal(out[3750:], x[3750:])


def test_join_refuses_mixed_recordings_and_conflicts() -> None:
    x = np.arange(1000, dtype=np.float32)
    parts = chunk(x, T0_US, 100.0, seconds=2.0, patient="p1", source="mon", kind="ppg")
    other = chunk(x, T0_US, 100.0, seconds=2.0, patient="p2", source="mon", kind="ppg")
    with pytest.raises(InputError):
        join([parts[0], other[1]])
    clash = WaveformSegment(
        patient="p1", source="mon", kind="ppg", start_us=parts[1].start_us, rate_hz=100.0,
        samples=parts[1].samples + 1,
    )  # fmt: skip
    with pytest.raises(InputError):
        join([*parts, clash])
    with pytest.raises(InputError):
        join([])


def test_segment_chunk_method_keeps_metadata() -> None:
    seg = WaveformSegment(
        patient="p9", source="bed-4", kind="ecg", start_us=T0_US, rate_hz=250.0,
        samples=np.arange(2600, dtype=np.float32),
    )  # fmt: skip
    parts = seg.chunk(seconds=4.0)
    assert [p.n_samples for p in parts] == [1000, 1000, 600]
    assert all(p.same_series(seg) for p in parts)
    assert join(parts).segment == seg


# ------------------------------------------------------------------ filters


def test_wavelet_denoising_reduces_error() -> None:
    rng = np.random.default_rng(11)
    rate = 125.0
    clean = _ppg(60.0, rate)
    noisy = clean + 0.25 * rng.standard_normal(clean.size)
    before = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    for wavelet in ("db4", "sym8"):
        for mode in ("soft", "hard"):
            out = wavelet_denoise(noisy, wavelet, mode=mode, rate_hz=rate)
            after = float(np.sqrt(np.mean((out - clean) ** 2)))
            report = f"{wavelet}/{mode}: RMSE before {before:.4f}, after {after:.4f}"
            assert after < 0.6 * before, report


def test_wavelet_batch_equals_per_row() -> None:
    rng = np.random.default_rng(5)
    rows = np.stack([_ppg(20.0, 125.0, bpm) for bpm in (55.0, 80.0, 120.0, 150.0)])
    rows = (rows + 0.2 * rng.standard_normal(rows.shape)).astype(np.float32)
    batch = wavelet_denoise(rows, "sym8", rate_hz=125.0)
    assert batch.dtype == np.float32
    assert batch.shape == rows.shape
    for row, got in zip(rows, batch, strict=True):
        np.testing.assert_allclose(got, wavelet_denoise(row, "sym8", rate_hz=125.0), atol=1e-6)


def test_wavelet_edge_cases() -> None:
    short = np.arange(5.0)
    np.testing.assert_array_equal(wavelet_denoise(short), short)
    with pytest.raises(InputError):
        wavelet_denoise(np.zeros((2, 2, 64)))
    with pytest.raises(InputError):
        wavelet_denoise(np.zeros(64), mode="garotte")  # type: ignore[arg-type]


def test_bandpass_removes_drift_and_mains() -> None:
    rate = 250.0
    t = np.arange(round(30 * rate)) / rate
    pulse = np.sin(2 * np.pi * 1.2 * t)
    drift = 2.0 * np.sin(2 * np.pi * 0.05 * t) + 3.0
    mains = 0.5 * np.sin(2 * np.pi * 50.0 * t)
    rows = np.stack([pulse + drift + mains, 2 * pulse + drift])
    out = bandpass(rows, rate, "ppg")
    inner = slice(int(2 * rate), int(-2 * rate))
    assert np.abs(out[0, inner] - pulse[inner]).max() < 0.08
    assert np.abs(out[1, inner] - 2 * pulse[inner]).max() < 0.15
    np.testing.assert_allclose(out[0], bandpass(rows[0], rate, "ppg"))
    with pytest.raises(InputError):
        bandpass(pulse, rate, low_hz=5.0, high_hz=1.0)
    assert math.isfinite(float(bandpass(pulse, rate, "ecg").std()))
