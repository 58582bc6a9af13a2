"""Features of hourly series: values by hand, causality, training == serving."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.models.learning import generate_cohort
from medtwin.models.learning.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    hourly_features,
    hourly_grid,
    latest_features,
    patient_features,
    serving_features,
)
from medtwin.models.learning.physionet import PatientSeries

SPEC = FeatureSpec(channels=("HR",), static=(), windows_h=(3, 6), lookback_h=8)
HOUR_US = 3_600_000_000


def features_of(values: list[float], spec: FeatureSpec = SPEC) -> dict[str, np.ndarray]:
    """Feature name -> (hours,) for one single-channel series."""
    out = hourly_features(np.array(values, dtype=float)[None, :, None], spec)[0]
    return {name: out[:, j] for j, name in enumerate(spec.names)}


def test_names_follow_the_spec() -> None:
    assert SPEC.names == (
        "HR_last",
        "HR_since_h",
        "HR_mean3h",
        "HR_min3h",
        "HR_max3h",
        "HR_slope3h",
        "HR_delta3h",
        "HR_mean6h",
        "HR_min6h",
        "HR_max6h",
        "HR_slope6h",
        "HR_delta6h",
        "HR_n6h",
    )
    assert len(DEFAULT_SPEC.names) == len(set(DEFAULT_SPEC.names))
    assert DEFAULT_SPEC.names[-4:] == DEFAULT_SPEC.static
    assert FeatureSpec.from_json(DEFAULT_SPEC.to_json()) == DEFAULT_SPEC
    with pytest.raises(ValueError, match="lookback"):
        FeatureSpec(windows_h=(6, 72), lookback_h=48)


def test_values_by_hand() -> None:
    nan = np.nan
    f = features_of([80, nan, 90, nan, nan, nan, 100, 110, *[nan] * 9])
    np.testing.assert_array_equal(f["HR_last"][:8], [80, 80, 90, 90, 90, 90, 100, 110])
    np.testing.assert_array_equal(f["HR_since_h"][:8], [0, 1, 0, 1, 2, 3, 0, 0])
    # The look-back is 8 h: 110 at hour 7 is kept up to hour 15, forgotten at hour 16.
    assert f["HR_last"][15] == 110
    assert f["HR_since_h"][15] == 8
    assert np.isnan(f["HR_last"][16])
    assert np.isnan(f["HR_since_h"][16])
    # Hour 2: window 3 h = rows 0..2 -> 80, 90.
    assert f["HR_mean3h"][2] == 85
    assert f["HR_min3h"][2] == 80
    assert f["HR_max3h"][2] == 90
    assert f["HR_slope3h"][2] == pytest.approx(5.0)  # 10 /min over 2 h
    assert f["HR_delta3h"][2] == pytest.approx(5.0)
    # Hour 7: window 6 h = rows 2..7 -> 90 @2, 100 @6, 110 @7.
    slope = np.polyfit([2, 6, 7], [90, 100, 110], 1)[0]
    assert f["HR_slope6h"][7] == pytest.approx(slope)
    assert f["HR_mean6h"][7] == pytest.approx(100)
    assert f["HR_n6h"][7] == 3
    # Fewer than two values: no slope; none at all: NaN, count 0.
    assert np.isnan(f["HR_slope3h"][0])
    assert np.isnan(f["HR_slope3h"][5])
    assert np.isnan(f["HR_mean3h"][13])
    assert f["HR_n6h"][14] == 0


def test_features_are_causal() -> None:
    rng = np.random.default_rng(3)
    series = rng.normal(80, 10, size=(4, 40, 2))
    series[rng.random(series.shape) < 0.5] = np.nan
    spec = FeatureSpec(channels=("HR", "Resp"), static=())
    before = hourly_features(series, spec)
    changed = series.copy()
    changed[:, 25:] = rng.normal(150, 5, size=changed[:, 25:].shape)
    after = hourly_features(changed, spec)
    np.testing.assert_array_equal(before[:, :25], after[:, :25])
    assert not np.array_equal(before[:, 25:], after[:, 25:], equal_nan=True)


def test_serving_reproduces_the_training_features_exactly() -> None:
    cohort = generate_cohort(12, seed=4, min_hours=30, max_hours=80)
    training = patient_features(cohort.patients)
    spec = DEFAULT_SPEC
    for hour in (0, 7, 29, 60):
        alive = [i for i, p in enumerate(cohort.patients) if len(p) > hour]
        series = np.full((len(alive), spec.history_h, len(spec.channels)), np.nan)
        static = np.empty((len(alive), len(spec.static)))
        for k, i in enumerate(alive):
            p = cohort.patients[i]
            rows = slice(max(0, hour + 1 - spec.history_h), hour + 1)
            tail = np.column_stack([p.column(c)[rows] for c in spec.channels])
            series[k, spec.history_h - tail.shape[0] :] = tail  # NaN before the stay
            static[k] = [p.column(c)[hour] for c in spec.static]
        served = latest_features(series, static, spec)
        for k, i in enumerate(alive):
            row = training.X[(training.patient == i) & (training.hour == hour)][0]
            np.testing.assert_array_equal(served[k], row)


def test_patient_features_rows_labels_and_padding() -> None:
    cohort = generate_cohort(5, seed=1)
    data = patient_features(cohort.patients)
    assert len(data) == sum(len(p) for p in cohort.patients)
    assert data.X.shape == (len(data), len(DEFAULT_SPEC.names))
    np.testing.assert_array_equal(data.y, np.concatenate([p.labels for p in cohort.patients]))
    # Padding the shorter patients to the longest changes nothing.
    alone = patient_features(cohort.patients[2:3])
    np.testing.assert_array_equal(alone.X, data.X[data.patient == 2])
    assert data.rows_of([2]).hour.tolist() == list(range(len(cohort.patients[2])))
    # A source without a channel (no GCS in a challenge file) gives NaN, not an error.
    p = cohort.patients[0]
    plain = PatientSeries(p.patient_id, p.values, p.labels)
    gcs = [j for j, n in enumerate(DEFAULT_SPEC.names) if n.startswith("GCS_")]
    without = patient_features([plain]).X[:, gcs]
    assert np.isnan(without[:, 0]).all()
    assert patient_features([]).X.shape == (0, len(DEFAULT_SPEC.names))


def test_hourly_grid_bins_readings_newest_last() -> None:
    now = 1_000 * HOUR_US
    # Twin 0: two readings in the newest hour (the later wins), one 3.5 h ago.
    # Twin 1: one reading in the future (left out), one too old for the grid.
    values = np.array([70.0, 72.0, 65.0, 99.0, 50.0])
    times = np.array([now - HOUR_US // 2, now, now - 7 * HOUR_US // 2, now + 1, now - 10 * HOUR_US])
    order = [2, 0, 1, 4, 3]  # ascending within each twin
    grid = hourly_grid(values[order], times[order], [0, 3, 5], now_us=now, hours=6)
    expected = np.full((2, 6), np.nan)
    expected[0, 5] = 72.0
    expected[0, 2] = 65.0
    np.testing.assert_array_equal(grid, expected)
    assert hourly_grid([], [], [0, 0, 0], now_us=now, hours=3).shape == (2, 3)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        hourly_features(np.zeros((2, 5)), SPEC)
    with pytest.raises(ValueError, match="static"):
        latest_features(np.zeros((2, 5, 13)), np.zeros((3, 4)))


def test_serving_features_from_module_readings() -> None:
    from medtwin.models.modules import Ragged

    now = 500 * HOUR_US
    # Two twins; HR for both, lactate for the second only (other channels missing).
    hr = Ragged(
        np.array([80.0, 90.0, 100.0]),
        np.array([now - 2 * HOUR_US, now, now - HOUR_US // 3]),
        np.array([0, 2, 3]),
    )
    lactate = Ragged(np.array([18.0]), np.array([now - 5 * HOUR_US]), np.array([0, 0, 1]))
    static = np.array([[70, 1, -3, 12], [50, 0, -1, 40]], dtype=float)
    rows = serving_features({"HR": hr, "Lactate": lactate}, now_us=now, static=static)
    names = DEFAULT_SPEC.names
    assert rows.shape == (2, len(names))
    col = {n: j for j, n in enumerate(names)}
    assert rows[0, col["HR_last"]] == 90
    assert rows[0, col["HR_mean6h"]] == 85
    assert rows[1, col["HR_since_h"]] == 0
    assert rows[1, col["Lactate_since_h"]] == 4
    assert np.isnan(rows[0, col["Lactate_last"]])
    assert np.isnan(rows[0, col["Temp_last"]])
    np.testing.assert_array_equal(rows[:, -4:], static)
