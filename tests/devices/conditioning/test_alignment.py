"""Alignment on a common grid: a hand-checked case, linear mode, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.core.errors import InputError
from medtwin.devices.conditioning import (
    AlignMode,
    align_streams,
    align_to_grid,
    make_grid,
    pad_streams,
)

from .signals import MIN_US, T0_US

NAN = math.nan


def _at(*minutes: float) -> np.ndarray:
    return (T0_US + np.array(minutes) * MIN_US).astype(np.int64)


def test_hand_checked_case() -> None:
    """Heart rate at 0, 4, 9 min and SpO2 at 1, 2 (NaN), 8 min on a 5-min grid 0..15."""
    grid = make_grid(T0_US, T0_US + 15 * MIN_US, 300)
    assert grid.tolist() == _at(0, 5, 10, 15).tolist()
    aligned = align_streams(
        grid,
        {
            "8867-4": (_at(0, 4, 9), [70.0, 72.0, 75.0]),
            "59408-5": (_at(1, 2, 8), [97.0, NAN, 95.0]),
        },
        max_age_s={"8867-4": 300, "59408-5": 600},
    )
    assert aligned.names == ("8867-4", "59408-5")
    np.testing.assert_array_equal(aligned.values, [[70, 72, 75, NAN], [NAN, 97, 95, 95]])
    np.testing.assert_array_equal(aligned.age_s, [[0, 60, 60, NAN], [NAN, 240, 120, 420]])
    assert aligned.source_index.tolist() == [[0, 1, 2, -1], [-1, 0, 2, 2]]
    assert not aligned.interpolated.any()


def test_linear_mode_interpolates_between_recent_values() -> None:
    times = _at(0, 10, 30)
    grid = _at(0, 5, 10, 20, 35)
    aligned = align_to_grid(grid, times, [60.0, 70.0, 90.0], 600, method="linear")
    # 5 min: between 60 @0 and 70 @10 → 65; 20 min: next value 10 min ahead → interpolated 80;
    # 35 min: no next value → last value 90 (5 min old)
    np.testing.assert_allclose(aligned.values, [60, 65, 70, 80, 90])
    assert aligned.interpolated.tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(aligned.age_s, [0, 300, 0, 600, 300])
    short = align_to_grid(grid, times, [60.0, 70.0, 90.0], 540, method="linear")
    np.testing.assert_allclose(short.values, [60, 65, 70, NAN, 90])


def test_per_stream_grids_and_ties() -> None:
    """Two values at the same time: the later sample wins; a grid per stream."""
    batch = pad_streams([_at(0, 0, 5), _at(2)], [[1.0, 2.0, 3.0], [9.0]])
    grid = np.stack([_at(0, 4), _at(1, 2)])
    aligned = align_to_grid(grid, batch.times_us, batch.values, 300)
    np.testing.assert_array_equal(aligned.values, [[2, 2], [NAN, 9]])
    assert aligned.source_index.tolist() == [[1, 1], [-1, 0]]


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match="unknown method"):
        align_to_grid(_at(0), _at(0), [1.0], 60, method="cubic")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no maximum age"):
        align_streams(_at(0), {"a": (_at(0), [1.0])}, {"b": 60.0})


_stream = st.lists(
    st.tuples(st.integers(0, 1800), st.one_of(st.none(), st.floats(0, 300))),
    min_size=0,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    streams=st.lists(_stream, min_size=1, max_size=4),
    grid_steps=st.lists(st.integers(-600, 3600), min_size=1, max_size=20),
    max_age=st.floats(0, 7200),
    method=st.sampled_from(["last", "linear"]),
)
def test_ages_within_bounds_and_values_from_the_stream(
    streams: list[list[tuple[int, float | None]]],
    grid_steps: list[int],
    max_age: float,
    method: AlignMode,
) -> None:
    times = [
        T0_US + np.cumsum([s for s, _ in rows], dtype=np.int64) * 1_000_000 for rows in streams
    ]
    values = [np.array([NAN if v is None else v for _, v in rows], dtype=float) for rows in streams]
    batch = pad_streams(times, values)
    grid = T0_US + np.array(grid_steps, dtype=np.int64) * 1_000_000  # any order
    aligned = align_to_grid(grid, batch.times_us, batch.values, max_age, method=method)
    have = ~np.isnan(aligned.values)
    assert np.array_equal(have, ~np.isnan(aligned.age_s))
    assert ((aligned.age_s[have] >= 0) & (aligned.age_s[have] <= max_age)).all()
    for i in range(len(streams)):
        for g in range(grid.size):
            j = aligned.source_index[i, g]
            if j < 0:
                # nothing at or before within max_age
                seen = ~np.isnan(values[i])
                recent = seen & (times[i] <= grid[g]) & (grid[g] - times[i] <= max_age * 1e6)
                assert not recent.any()
                assert not have[i, g]
                continue
            assert times[i][j] <= grid[g]
            assert aligned.age_s[i, g] == (grid[g] - times[i][j]) / 1e6
            later = (times[i] > times[i][j]) & (times[i] <= grid[g]) & ~np.isnan(values[i])
            assert not later.any()  # it is the last value at or before the grid time
            if not aligned.interpolated[i, g]:
                assert aligned.values[i, g] == values[i][j]
            else:
                lo, hi = np.nanmin(values[i]), np.nanmax(values[i])
                assert lo - 1e-9 <= aligned.values[i, g] <= hi + 1e-9
