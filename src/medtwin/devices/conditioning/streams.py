"""Batches of streams: the array layout every conditioning function shares.

A *stream* is one patient's one code. A batch of ``S`` streams is a pair of
``(S, N)`` arrays: times (int64 µs since epoch, non-decreasing along a row) and
values (float64, NaN = missing). Shorter streams are padded at the end with NaN
values at their last time (see :func:`pad_streams`). A single stream may also be
given as 1-D arrays; functions then return 1-D results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medtwin.core.errors import InputError

__all__ = ["US_PER_S", "BoolArray", "FloatArray", "IntArray", "StreamBatch", "pad_streams"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

US_PER_S = 1_000_000

_A = TypeVar("_A", bound=np.ndarray[Any, Any])


class StreamBatch(NamedTuple):
    """Padded ``(S, N)`` times [µs] and values, with each stream's length."""

    times_us: IntArray
    values: FloatArray
    lengths: IntArray

    def unpad(self, array: NDArray[np.generic]) -> list[NDArray[np.generic]]:
        """Rows of an ``(S, N)`` result cut back to each stream's length."""
        return [array[i, :n] for i, n in enumerate(self.lengths.tolist())]


def pad_streams(times_us: Sequence[ArrayLike], values: Sequence[ArrayLike]) -> StreamBatch:
    """Stack ragged streams into a padded batch (NaN values at the last time)."""
    if len(times_us) != len(values):
        raise InputError(f"{len(times_us)} time arrays for {len(values)} value arrays", "times_us")
    rows_t = [_int_times(t, f"times_us[{i}]").ravel() for i, t in enumerate(times_us)]
    rows_v = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    for i, (t, v) in enumerate(zip(rows_t, rows_v, strict=True)):
        if t.shape != v.shape:
            raise InputError(f"{t.size} times for {v.size} values", f"values[{i}]")
    lengths = np.array([t.size for t in rows_t], dtype=np.int64)
    width = int(lengths.max(initial=0))
    out_t = np.zeros((len(rows_t), width), dtype=np.int64)
    out_v = np.full((len(rows_t), width), np.nan)
    for i, (t, v) in enumerate(zip(rows_t, rows_v, strict=True)):
        out_t[i, : t.size] = t
        out_t[i, t.size :] = t[-1] if t.size else 0
        out_v[i, : v.size] = v
    _check_sorted(out_t, "times_us")
    return StreamBatch(out_t, out_v, lengths)


# --- helpers shared by the conditioning modules -------------------------------------------


def as_values(values: ArrayLike, name: str = "values") -> tuple[FloatArray, bool]:
    """``values`` as a float64 ``(S, N)`` copy and whether it was one 1-D stream."""
    array = np.array(values, dtype=np.float64)
    if array.ndim == 1:
        return array[np.newaxis, :], True
    if array.ndim != 2:
        raise InputError(f"expected 1-D or 2-D values, got {array.ndim}-D", name)
    return array, False


def as_times(times_us: ArrayLike, shape: tuple[int, int], name: str = "times_us") -> IntArray:
    """Times as int64 broadcast to ``shape``, checked non-decreasing along each row."""
    times = _int_times(times_us, name)
    if times.ndim == 1:
        times = times[np.newaxis, :]
    try:
        out = np.broadcast_to(times, shape)
    except ValueError:
        raise InputError(f"times of shape {times.shape} do not fit values {shape}", name) from None
    _check_sorted(out, name)
    return out


def per_stream(value: ArrayLike, streams: int, name: str) -> FloatArray:
    """A scalar or ``(S,)`` parameter as an ``(S,)`` float64 array."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(streams, float(array))
    if array.shape != (streams,):
        raise InputError(f"expected a scalar or {streams} values, got shape {array.shape}", name)
    return array.astype(np.float64, copy=True)


def restore(array: _A, one: bool) -> _A:
    """Drop the stream axis again when the input was a single 1-D stream."""
    return cast(_A, array[0]) if one else array


def _int_times(times_us: ArrayLike, name: str) -> IntArray:
    times = np.asarray(times_us)
    if times.size and not np.issubdtype(times.dtype, np.integer):
        raise InputError(f"times must be integer microseconds, got {times.dtype}", name)
    return times.astype(np.int64, copy=False)


def _check_sorted(times: IntArray, name: str) -> None:
    if times.shape[-1] > 1 and bool(np.any(np.diff(times, axis=-1) < 0)):
        raise InputError("times must be non-decreasing along each stream", name)
