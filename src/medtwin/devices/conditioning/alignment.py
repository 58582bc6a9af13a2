"""Resampling streams onto a common time grid (last value within a maximum age).

For each grid time ``g`` a stream gives its last value measured at or before
``g``, when that value is at most ``max_age_s`` old, with the age in seconds.
Mode ``"linear"`` interpolates instead between that value and the next one
when the next is also within ``max_age_s`` (after ``g``); the age stays that of
the value before. Streams are ``(S, N)`` batches (see :mod:`.streams`); the grid
is shared ``(G,)`` or per stream ``(S, G)``, in µs, in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

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
    pad_streams,
    per_stream,
    restore,
)

__all__ = ["AlignMode", "Aligned", "align_streams", "align_to_grid", "make_grid"]

AlignMode = Literal["last", "linear"]


class Aligned(NamedTuple):
    """Streams on the grid, ``(S, G)``.

    ``values``: NaN where no value is recent enough; ``age_s``: age of the last
    value at or before the grid time (NaN where none is used); ``source_index``:
    its sample index in the stream (-1: none); ``interpolated``: values formed
    by linear interpolation rather than taken; ``names``: row labels, if given.
    """

    values: FloatArray
    age_s: FloatArray
    source_index: IntArray
    interpolated: BoolArray
    names: tuple[str, ...] = ()


def make_grid(start_us: int, end_us: int, step_s: float) -> IntArray:
    """Grid times [µs] from ``start_us`` to ``end_us`` inclusive, every ``step_s`` seconds."""
    step_us = round(step_s * US_PER_S)
    if step_us <= 0:
        raise InputError("must be at least 1 µs", "step_s")
    if end_us < start_us:
        raise InputError("ends before it starts", "end_us")
    return np.arange(start_us, end_us + 1, step_us, dtype=np.int64)


def align_to_grid(
    grid_us: ArrayLike,
    times_us: ArrayLike,
    values: ArrayLike,
    max_age_s: ArrayLike,
    *,
    method: AlignMode = "last",
) -> Aligned:
    """Each stream's value and its age at each grid time (see the module doc)."""
    if method not in ("last", "linear"):
        raise InputError(f"unknown method {method!r}", "method")
    v, one = as_values(values)
    t = as_times(times_us, v.shape)
    streams = v.shape[0]
    grid = np.asarray(grid_us)
    if grid.size and not np.issubdtype(grid.dtype, np.integer):
        raise InputError("must be integer microseconds", "grid_us")
    grid = grid.astype(np.int64)
    if grid.ndim == 1:
        grid = np.broadcast_to(grid, (streams, grid.size))
    if grid.ndim != 2 or grid.shape[0] != streams:
        raise InputError(f"expected (G,) or ({streams}, G), got {grid.shape}", "grid_us")
    max_age_us = per_stream(max_age_s, streams, "max_age_s")[:, np.newaxis] * US_PER_S

    if v.shape[1] == 0 or grid.shape[1] == 0:  # nothing to take, or nowhere to put it
        nothing = np.full(grid.shape, np.nan)
        none = np.full(grid.shape, -1, dtype=np.int64)
        return Aligned(
            restore(nothing, one),
            restore(nothing.copy(), one),
            restore(none, one),
            restore(np.zeros(grid.shape, dtype=np.bool_), one),
        )
    prev, nxt = _neighbours(grid, t, ~np.isnan(v))
    p, q = np.maximum(prev, 0), np.maximum(nxt, 0)
    t_prev = np.take_along_axis(t, p, axis=1)
    age_us = (grid - t_prev).astype(np.float64)
    take = (prev >= 0) & (age_us <= max_age_us)
    out = np.where(take, np.take_along_axis(v, p, axis=1), np.nan)
    interpolated = np.zeros(out.shape, dtype=np.bool_)
    if method == "linear":
        t_next = np.take_along_axis(t, q, axis=1)
        interpolated = take & (nxt >= 0) & (t_next - grid <= max_age_us) & (t_prev != grid)
        span = (t_next - t_prev).astype(np.float64)
        frac = np.divide(grid - t_prev, span, out=np.zeros(out.shape), where=span > 0)
        v_next = np.take_along_axis(v, q, axis=1)
        out = np.where(interpolated, out + (v_next - out) * frac, out)
    return Aligned(
        restore(out, one),
        restore(np.where(take, age_us / US_PER_S, np.nan), one),
        restore(np.where(take, prev, -1), one),
        restore(interpolated, one),
    )


def align_streams(
    grid_us: ArrayLike,
    streams: Mapping[str, tuple[ArrayLike, ArrayLike]],
    max_age_s: float | Mapping[str, float],
    *,
    method: AlignMode = "last",
) -> Aligned:
    """Align named streams (e.g. one patient's codes: ``{code: (times_us, values)}``).

    ``max_age_s`` is one age for all or one per name; rows follow the mapping's order.
    """
    names = tuple(streams)
    if isinstance(max_age_s, Mapping):
        missing = [name for name in names if name not in max_age_s]
        if missing:
            raise InputError(f"no maximum age for {missing}", "max_age_s")
        ages: Sequence[float] | float = [float(max_age_s[name]) for name in names]
    else:
        ages = float(max_age_s)
    batch = pad_streams([streams[n][0] for n in names], [streams[n][1] for n in names])
    aligned = align_to_grid(grid_us, batch.times_us, batch.values, ages, method=method)
    return aligned._replace(names=names)


def _neighbours(grid: IntArray, times: IntArray, seen: BoolArray) -> tuple[IntArray, IntArray]:
    """Per grid time: sample index of the last seen value at or before it, and of the
    first seen value at or after it (-1: none), computed by one merge of all events."""
    streams, g = grid.shape
    rows, cols = np.nonzero(seen)
    n_obs = rows.size
    ev_stream = np.concatenate([rows, np.repeat(np.arange(streams), g)])
    ev_time = np.concatenate([times[rows, cols], grid.ravel()])
    ev_kind = np.concatenate([np.zeros(n_obs, np.int8), np.ones(streams * g, np.int8)])
    ev_col = np.concatenate([cols, np.tile(np.arange(g), streams)])
    is_grid = ev_kind == 1
    # observations sort before grid times at the same instant: "at or before"
    order = np.lexsort((ev_col, ev_kind, ev_time, ev_stream))
    prev = _running_obs(order, is_grid, ev_stream, ev_col, forward=True)
    # after: observations sort after grid times at the same instant: "at or after"
    order = np.lexsort((ev_col, -ev_kind, ev_time, ev_stream))
    nxt = _running_obs(order, is_grid, ev_stream, ev_col, forward=False)
    return prev.reshape(streams, g), nxt.reshape(streams, g)


def _running_obs(
    order: IntArray, is_grid: BoolArray, ev_stream: IntArray, ev_col: IntArray, *, forward: bool
) -> IntArray:
    """Sample index of the nearest observation before (or after) each grid event."""
    sorted_obs = ~is_grid[order]
    pos = np.arange(order.size)
    if forward:
        near = np.maximum.accumulate(np.where(sorted_obs, pos, -1))
    else:
        near = np.minimum.accumulate(np.where(sorted_obs, pos, order.size)[::-1])[::-1]
    found = (near >= 0) & (near < order.size)
    src = order[np.clip(near, 0, max(order.size - 1, 0))]
    found &= ev_stream[src] == ev_stream[order]
    result = np.where(found, ev_col[src], -1)
    grid_events = is_grid[order]
    out = np.empty(int(np.sum(is_grid)), dtype=np.int64)
    # grid events were appended after the observations, row-major: their offset is their id
    out[order[grid_events] - (order.size - out.size)] = result[grid_events]
    return out
