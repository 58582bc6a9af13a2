"""Carry-forward, interpolation and the gap report."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.devices.conditioning import carry_forward, find_gaps, interpolate_gaps

from .signals import MIN_US, T0_US

NAN = math.nan


def test_carry_forward_respects_max_age() -> None:
    times = T0_US + np.array([0, 1, 2, 3, 4, 5, 6]) * MIN_US
    values = [80.0, NAN, NAN, NAN, 90.0, NAN, NAN]
    result = carry_forward(times, values, max_age_s=120)
    np.testing.assert_array_equal(result.values, [80, 80, 80, NAN, 90, 90, 90])
    assert result.imputed.tolist() == [False, True, True, False, False, True, True]
    np.testing.assert_array_equal(result.age_s, [0, 60, 120, NAN, 0, 60, 120])


def test_carry_forward_never_fills_before_the_first_value() -> None:
    result = carry_forward(T0_US + np.arange(3) * MIN_US, [NAN, 5.0, NAN], max_age_s=1e9)
    np.testing.assert_array_equal(result.values, [NAN, 5, 5])
    assert result.imputed.tolist() == [False, False, True]


def test_interpolation_flags_exactly_the_imputed_positions() -> None:
    times = T0_US + np.array([0, 1, 2, 3, 4, 10, 11, 12, 13]) * MIN_US
    values = np.array([NAN, 10.0, NAN, NAN, 16.0, NAN, 20.0, NAN, NAN])
    result = interpolate_gaps(times, values, max_gap_s=300)
    # 1 → 4 min spans 3 min: filled; 4 → 11 spans 7 min: not; nothing before 1 or after 11
    np.testing.assert_allclose(result.values, [NAN, 10, 12, 14, 16, NAN, 20, NAN, NAN])
    assert result.imputed.tolist() == [False, False, True, True, False, False, False, False, False]
    assert np.array_equal(result.imputed, np.isnan(values) & ~np.isnan(result.values))


def test_gap_report_finds_injected_gaps_exactly() -> None:
    rng = np.random.default_rng(31)
    streams, samples = 50, 500
    times = T0_US + np.arange(samples)[np.newaxis, :].repeat(streams, 0) * MIN_US
    values = 70 + rng.normal(0, 2, size=(streams, samples))
    lone = rng.random(values.shape) < 0.05
    lone[:, 1:] &= ~lone[:, :-1]  # lone misses only: 2 min without a value, below 5 min
    values[lone] = NAN
    expected = set()
    for i in range(streams):
        for k in range(3):
            start = 20 + k * 150 + int(rng.integers(0, 100))
            length = int(rng.integers(10, 30))  # readings removed → gap of length+1 min
            values[i, start - 1] = values[i, start + length] = 70.0
            values[i, start : start + length] = NAN
            expected.add((i, int(times[i, start - 1]), int(times[i, start + length])))
    report = find_gaps(times, values, min_gap_s=5 * 60)
    found = set(
        zip(report.stream.tolist(), report.start_us.tolist(), report.end_us.tolist(), strict=True)
    )
    assert found == expected
    np.testing.assert_array_equal(report.length_s, (report.end_us - report.start_us) / 1e6)
    assert report.n_gaps == 150
    order = np.lexsort((report.start_us, report.stream))
    assert (order == np.arange(report.n_gaps)).all()  # sorted by stream, then start


def test_gap_report_window_edges_and_empty_streams() -> None:
    times = T0_US + np.arange(5) * MIN_US
    values = np.array([[NAN, NAN, 1.0, 2.0, NAN], [NAN] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]])
    report = find_gaps(
        times, values, min_gap_s=60, window_start_us=T0_US, window_end_us=T0_US + 4 * MIN_US
    )
    assert report.of(0) == [(T0_US, T0_US + 2 * MIN_US)]  # the trailing 1 min is not > 60 s
    assert report.of(1) == [(T0_US, T0_US + 4 * MIN_US)]
    assert report.of(2) == []
    assert find_gaps(times, values, min_gap_s=60).n_gaps == 0


_samples = st.lists(
    st.tuples(st.integers(0, 900), st.one_of(st.none(), st.floats(-1e3, 1e3))),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(samples=_samples, max_age=st.floats(0, 3600), max_gap=st.floats(0, 3600))
def test_imputation_invariants(
    samples: list[tuple[int, float | None]], max_age: float, max_gap: float
) -> None:
    times = T0_US + np.cumsum([s for s, _ in samples]) * 1_000_000
    values = np.array([NAN if v is None else v for _, v in samples])
    missing = np.isnan(values)

    cf = carry_forward(times, values, max_age)
    assert np.array_equal(cf.values[~missing], values[~missing])
    assert np.array_equal(cf.imputed, missing & ~np.isnan(cf.values))
    ages = cf.age_s[cf.imputed]
    assert ((ages >= 0) & (ages <= max_age)).all()
    assert np.isin(cf.values[cf.imputed], values[~missing]).all()

    ip = interpolate_gaps(times, values, max_gap)
    assert np.array_equal(ip.values[~missing], values[~missing])
    assert np.array_equal(ip.imputed, missing & ~np.isnan(ip.values))
    if (~missing).any():
        lo, hi = values[~missing].min(), values[~missing].max()
        filled = ip.values[ip.imputed]
        assert ((filled >= lo - 1e-9) & (filled <= hi + 1e-9)).all()
