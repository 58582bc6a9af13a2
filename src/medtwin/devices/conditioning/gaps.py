"""Missing data: carry-forward with a maximum age, bounded interpolation, gap reports.

Batches are ``(S, N)`` (see :mod:`.streams`); NaN is missing. Imputers fill
NaN positions only, and always say which ones in an ``imputed`` mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.streams import (
    US_PER_S,
    BoolArray,
    FloatArray,
    IntArray,
    as_times,
    as_values,
    per_stream,
)
from medtwin.devices.conditioning.streams import restore as _restore

__all__ = [
    "CarriedForward",
    "GapReport",
    "Interpolated",
    "carry_forward",
    "find_gaps",
    "interpolate_gaps",
]


class CarriedForward(NamedTuple):
    """Values with NaNs filled from the last value within the maximum age.

    ``age_s``: seconds since that value was measured (0 where measured, NaN
    where nothing was available); ``imputed``: positions filled here.
    """

    values: FloatArray
    imputed: BoolArray
    age_s: FloatArray


class Interpolated(NamedTuple):
    """Values with short gaps filled linearly in time; ``imputed``: positions filled here."""

    values: FloatArray
    imputed: BoolArray


class GapReport(NamedTuple):
    """Gaps, one per row, sorted by stream then start.

    A gap runs from the last value before it (``start_us``) to the first value
    after it (``end_us``), or to/from the window edges; ``length_s`` = end - start.
    """

    stream: IntArray
    start_us: IntArray
    end_us: IntArray
    length_s: FloatArray

    @property
    def n_gaps(self) -> int:
        """Number of gaps."""
        return int(self.stream.size)

    def of(self, stream: int) -> list[tuple[int, int]]:
        """``(start_us, end_us)`` of each gap of one stream."""
        rows = self.stream == stream
        return list(zip(self.start_us[rows].tolist(), self.end_us[rows].tolist(), strict=True))


def carry_forward(times_us: ArrayLike, values: ArrayLike, max_age_s: ArrayLike) -> CarriedForward:
    """Fill each NaN with the last value of its stream measured at most ``max_age_s`` before."""
    v, one = as_values(values)
    t = as_times(times_us, v.shape)
    max_age = per_stream(max_age_s, v.shape[0], "max_age_s")[:, np.newaxis]
    seen = ~np.isnan(v)
    prev = _previous(seen)
    src = np.maximum(prev, 0)
    age = np.where(prev >= 0, (t - np.take_along_axis(t, src, axis=1)) / US_PER_S, np.nan)
    fill = ~seen & (prev >= 0) & (age <= max_age)
    out = np.where(seen, v, np.where(fill, np.take_along_axis(v, src, axis=1), np.nan))
    age = np.where(seen | fill, age, np.nan)
    return CarriedForward(_restore(out, one), _restore(fill, one), _restore(age, one))


def interpolate_gaps(times_us: ArrayLike, values: ArrayLike, max_gap_s: ArrayLike) -> Interpolated:
    """Fill NaNs linearly in time between the values around them.

    Only where both neighbours exist and are at most ``max_gap_s`` apart; never
    extrapolates past the first or last value of a stream.
    """
    v, one = as_values(values)
    t = as_times(times_us, v.shape)
    max_gap = per_stream(max_gap_s, v.shape[0], "max_gap_s")[:, np.newaxis]
    seen = ~np.isnan(v)
    prev, nxt = _previous(seen), _next(seen)
    fill = ~seen & (prev >= 0) & (nxt < v.shape[1])
    p, q = np.maximum(prev, 0), np.minimum(nxt, v.shape[1] - 1)
    t0, t1 = np.take_along_axis(t, p, axis=1), np.take_along_axis(t, q, axis=1)
    v0, v1 = np.take_along_axis(v, p, axis=1), np.take_along_axis(v, q, axis=1)
    span = (t1 - t0).astype(np.float64)
    fill &= span <= max_gap * US_PER_S
    frac = np.divide(t - t0, span, out=np.zeros(v.shape), where=span > 0)
    out = np.where(fill, v0 + (v1 - v0) * frac, v)
    return Interpolated(_restore(out, one), _restore(fill, one))


def find_gaps(
    times_us: ArrayLike,
    values: ArrayLike,
    min_gap_s: ArrayLike,
    *,
    window_start_us: ArrayLike | None = None,
    window_end_us: ArrayLike | None = None,
) -> GapReport:
    """Every stretch longer than ``min_gap_s`` without a value, per stream.

    With a window (µs, scalar or per stream), the stretches before the first
    and after the last value count too, and a stream without values is one gap.
    """
    v, _ = as_values(values)
    t = as_times(times_us, v.shape)
    streams = v.shape[0]
    min_gap_us = per_stream(min_gap_s, streams, "min_gap_s") * US_PER_S
    rows, cols = np.nonzero(~np.isnan(v))
    tv = t[rows, cols]
    same = rows[1:] == rows[:-1]
    inner = same & ((tv[1:] - tv[:-1]) > min_gap_us[rows[1:]])
    parts = [(rows[1:][inner], tv[:-1][inner], tv[1:][inner])]
    has = np.zeros(streams, dtype=np.bool_)
    has[rows] = True
    first = np.full(streams, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(streams, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, rows, tv)
    np.maximum.at(last, rows, tv)
    ids = np.arange(streams, dtype=np.int64)
    start = _window(window_start_us, streams, "window_start_us")
    end = _window(window_end_us, streams, "window_end_us")
    if start is not None:
        lead = has & ((first - start) > min_gap_us)
        parts.append((ids[lead], start[lead], first[lead]))
    if end is not None:
        trail = has & ((end - last) > min_gap_us)
        parts.append((ids[trail], last[trail], end[trail]))
    if start is not None and end is not None:
        empty = ~has & ((end - start) > min_gap_us)
        parts.append((ids[empty], start[empty], end[empty]))
    stream = np.concatenate([p[0] for p in parts]).astype(np.int64)
    begin = np.concatenate([p[1] for p in parts]).astype(np.int64)
    finish = np.concatenate([p[2] for p in parts]).astype(np.int64)
    order = np.lexsort((begin, stream))
    stream, begin, finish = stream[order], begin[order], finish[order]
    return GapReport(stream, begin, finish, (finish - begin) / US_PER_S)


def _previous(seen: BoolArray) -> IntArray:
    """Index of the last seen sample at or before each position (-1: none)."""
    idx = np.where(seen, np.arange(seen.shape[1], dtype=np.int64), -1)
    return np.maximum.accumulate(idx, axis=1)


def _next(seen: BoolArray) -> IntArray:
    """Index of the first seen sample at or after each position (N: none)."""
    n = seen.shape[1]
    idx = np.where(seen, np.arange(n, dtype=np.int64), n)
    return np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]


def _window(value: ArrayLike | None, streams: int, name: str) -> IntArray | None:
    if value is None:
        return None
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError("must be integer microseconds", name)
    return np.broadcast_to(array.astype(np.int64), (streams,)).copy()
