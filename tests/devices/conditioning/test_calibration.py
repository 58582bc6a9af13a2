"""Calibration: least-squares recovery, pairing, provenance summary, drift tracking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from medtwin.core.errors import InputError
from medtwin.devices.conditioning import (
    Calibration,
    DriftTracker,
    fit_calibration,
    pair_readings,
)

from .signals import MIN_US, T0_US

DAY_US = 86_400_000_000


def test_fit_recovers_known_gain_and_offset() -> None:
    """CGM vs finger stick: reference = 1.08 · CGM - 7.5 mg/dL, reference noise SD 6."""
    rng = np.random.default_rng(21)
    cgm = rng.uniform(60, 320, size=200)
    reference = 1.08 * cgm - 7.5 + rng.normal(0, 6, size=200)
    cal = fit_calibration(cgm, reference, fitted_at_us=T0_US)
    figures = f"gain {cal.gain:.4f}, offset {cal.offset:.2f}, residual SD {cal.residual_sd:.2f}"
    assert cal.gain == pytest.approx(1.08, abs=0.02), figures
    assert cal.offset == pytest.approx(-7.5, abs=3.0), figures
    assert cal.residual_sd == pytest.approx(6.0, rel=0.15), figures
    assert cal.n == 200
    np.testing.assert_allclose(
        cal.apply([100.0, 200.0]), [cal.gain * 100 + cal.offset, cal.gain * 200 + cal.offset]
    )
    np.testing.assert_allclose(cal.invert(cal.apply(cgm)), cgm)


def test_fit_ignores_nan_pairs_and_offset_only_mode() -> None:
    measured = [100.0, np.nan, 150.0, 200.0]
    reference = [110.0, 120.0, np.nan, 210.0]
    cal = fit_calibration(measured, reference, fitted_at_us=T0_US)
    assert cal.n == 2
    assert (cal.gain, cal.offset) == pytest.approx((1.0, 10.0))
    assert math.isnan(cal.residual_sd)  # no degrees of freedom left
    one_point = fit_calibration([100.0], [104.0], fitted_at_us=T0_US, gain=1.0)
    assert (one_point.gain, one_point.offset, one_point.method) == (
        1.0,
        4.0,
        "least-squares-offset",
    )


def test_fit_refuses_what_cannot_be_fitted() -> None:
    with pytest.raises(InputError, match="at least 2 pairs"):
        fit_calibration([100.0], [104.0], fitted_at_us=T0_US)
    with pytest.raises(InputError, match="do not vary"):
        fit_calibration([100.0, 100.0, 100.0], [99.0, 101.0, 100.0], fitted_at_us=T0_US)


def test_provenance_summary() -> None:
    cal = Calibration(1.05, -3.0, 12, 4.2, T0_US)
    summary = cal.as_dict()
    assert summary["id"] == cal.id
    assert cal.id.startswith("cal-")
    assert len(cal.id) == 20
    assert summary["model"] == "reference = gain * measured + offset"
    assert json.loads(json.dumps(summary)) == summary
    assert Calibration(1.05, -3.0, 12, 4.2, T0_US).id == cal.id
    assert Calibration(1.05, -3.0, 12, 4.2, T0_US + 1).id != cal.id
    assert Calibration(1.0, 0.0, 1, math.nan, T0_US).as_dict()["residual_sd"] is None


def test_pair_readings_nearest_within_gap() -> None:
    sensor_t = T0_US + np.arange(6) * 5 * MIN_US  # 0, 5, 10, 15, 20, 25 min
    sensor_v = np.array([100.0, 110.0, np.nan, 130.0, 140.0, 150.0])
    ref_t = T0_US + np.array([1, 7, 10, 12, 40, 22.5]) * MIN_US
    ref_v = np.array([101.0, 112.0, 121.0, 133.0, 160.0, np.nan])
    pairs = pair_readings(sensor_t, sensor_v, ref_t.astype(np.int64), ref_v, 5 * MIN_US)
    # 1 min → sensor 0; 7 → 5 (2 min); 10 → 5 or 15 (NaN at 10; tie → earlier 5);
    # 12 → 15 (3 min); 40 → none within 5 min; NaN reference skipped
    assert pairs.ref_index.tolist() == [0, 1, 2, 3]
    assert pairs.sensor_index.tolist() == [0, 1, 1, 3]
    assert pairs.measured.tolist() == [100.0, 110.0, 110.0, 130.0]
    assert pairs.reference.tolist() == [101.0, 112.0, 121.0, 133.0]
    assert (pairs.gap_us // MIN_US).tolist() == [-1, -2, -5, 3]
    # a CGM lagging 5 min: references sought at 6, 12, 15, 17 min → 5, 15, 15, 15
    lagged = pair_readings(
        sensor_t, sensor_v, ref_t.astype(np.int64), ref_v, 3 * MIN_US, lag_us=5 * MIN_US
    )
    assert lagged.sensor_index.tolist() == [1, 3, 3, 3]


def test_drift_tracker_matches_ordinary_least_squares_without_forgetting() -> None:
    rng = np.random.default_rng(22)
    x = rng.uniform(70, 250, size=30)
    y = 0.95 * x + 12 + rng.normal(0, 4, size=30)
    times = T0_US + np.arange(30) * MIN_US
    tracker = DriftTracker(
        1.0, 0.0, started_at_us=T0_US, half_life_s=1e15, x_range=(70, 250),
        prior_weight=0.0, anchor_weight=1e-12,
    )  # fmt: skip
    tracker.track(times[np.newaxis, :], x[np.newaxis, :], y[np.newaxis, :])
    ols = fit_calibration(x, y, fitted_at_us=int(times[-1]))
    tracked = tracker.calibration(0)
    assert tracked.gain == pytest.approx(ols.gain, rel=1e-8)
    assert tracked.offset == pytest.approx(ols.offset, rel=1e-8)
    assert tracked.n == 30
    assert tracked.fitted_at_us == times[-1]


def test_drift_tracker_follows_a_slowly_changing_offset() -> None:
    """Offset drifts +2 mg/dL per day for 10 days; 6 finger sticks a day at random times,
    reference noise SD 5; half-life 1 day. Measured over 200 streams (seed 7): error at
    150 mg/dL over days 2-10 tracker 2.5, a day-1 fit 10.8; at day 10 tracker 2.7 (the
    lag of half_life/ln 2 = 1.44 days), a day-1 fit 18.5; lag-corrected bias 0.2."""
    rng = np.random.default_rng(7)
    streams, pairs = 200, 60
    times = T0_US + np.sort(rng.integers(0, 10 * DAY_US, size=(streams, pairs)), axis=1)
    days = (times - T0_US) / DAY_US
    offset = 2.0 * days
    measured = rng.uniform(70, 250, size=(streams, pairs))
    reference = measured + offset + rng.normal(0, 5, size=(streams, pairs))

    tracker = DriftTracker(
        np.ones(streams), np.zeros(streams), started_at_us=T0_US, half_life_s=86_400,
        x_range=(70, 250),
    )  # fmt: skip
    history = tracker.track(times, measured, reference)
    first_day = [
        fit_calibration(measured[i, :6], reference[i, :6], fitted_at_us=int(times[i, 5]))
        for i in range(streams)
    ]
    static_at_150 = np.array([c.apply(150.0) for c in first_day])[:, np.newaxis]
    tracked_at_150 = history.gain * 150 + history.offset
    later = days > 2
    err_tracked = float(np.mean(np.abs(tracked_at_150 - 150 - offset)[later]))
    err_static = float(np.mean(np.abs(static_at_150 - 150 - offset)[later]))
    end_err = float(np.mean(np.abs(tracked_at_150[:, -1] - 150 - offset[:, -1])))
    lag_days = 1 / math.log(2)
    lag_bias = float(np.mean(tracked_at_150[:, -1] - 150 - 2.0 * (days[:, -1] - lag_days)))
    figures = (
        f"tracked {err_tracked:.2f}, static {err_static:.2f}, end {end_err:.2f}, "
        f"lag bias {lag_bias:.2f} mg/dL"
    )
    assert err_tracked < 3.5, figures
    assert err_tracked < 0.4 * err_static, figures
    assert end_err < 4.0, figures
    assert abs(lag_bias) < 1.0, figures
    np.testing.assert_allclose(tracker.apply(np.full(streams, 150.0)), tracked_at_150[:, -1])
    assert tracker.calibration(3).n == pairs


def test_drift_tracker_batch_equals_single_streams_and_skips_nan() -> None:
    rng = np.random.default_rng(23)
    times = T0_US + np.cumsum(rng.integers(1, 6 * 3600, size=(20, 15)), axis=1) * 1_000_000
    x = rng.uniform(60, 300, size=(20, 15))
    y = 1.1 * x - 5 + rng.normal(0, 5, size=(20, 15))
    y[rng.random(y.shape) < 0.2] = np.nan

    def tracker(
        gain: NDArray[np.float64] | float, offset: NDArray[np.float64] | float
    ) -> DriftTracker:
        return DriftTracker(
            gain, offset, started_at_us=T0_US, half_life_s=43_200.0, x_range=(60.0, 300.0)
        )

    batch = tracker(np.ones(20), np.zeros(20)).track(times, x, y)
    for i in range(20):
        single = tracker(1.0, 0.0).track(times[i], x[i], y[i])
        np.testing.assert_allclose(batch.gain[i], single.gain[0], rtol=1e-10)
        np.testing.assert_allclose(batch.offset[i], single.offset[0], rtol=1e-10)


def test_drift_tracker_refuses_pairs_out_of_order() -> None:
    tracker = DriftTracker(1.0, 0.0, started_at_us=T0_US, half_life_s=3600, x_range=(0, 1))
    tracker.update(T0_US + 10, 1.0, 1.0)
    with pytest.raises(InputError, match="time order"):
        tracker.update(T0_US + 5, 1.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    gain=st.floats(0.2, 5),
    offset=st.floats(-200, 200),
    xs=st.lists(st.floats(-1000, 1000), min_size=2, max_size=50, unique=True),
)
def test_noiseless_pairs_are_recovered_exactly(gain: float, offset: float, xs: list[float]) -> None:
    x = np.array(xs)
    if np.ptp(x) < 1e-3:
        return
    cal = fit_calibration(x, gain * x + offset, fitted_at_us=T0_US)
    assert cal.gain == pytest.approx(gain, rel=1e-6, abs=1e-9)
    assert cal.offset == pytest.approx(offset, rel=1e-6, abs=1e-6)
