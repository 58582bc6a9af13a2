"""Synthetic vital-sign streams with known truth, for the conditioning tests."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

T0_US = 1_700_000_000_000_000
MIN_US = 60_000_000


class Streams(NamedTuple):
    times_us: NDArray[np.int64]
    truth: NDArray[np.float64]
    values: NDArray[np.float64]


def irregular_times(
    rng: np.random.Generator, streams: int, samples: int, lo_s: int = 30, hi_s: int = 90
) -> NDArray[np.int64]:
    """Sample times with steps drawn uniformly in whole seconds from [lo_s, hi_s]."""
    steps = rng.integers(lo_s, hi_s + 1, size=(streams, samples)) * 1_000_000
    steps[:, 0] = 0
    return T0_US + np.cumsum(steps, axis=1)


def random_walk(
    rng: np.random.Generator,
    times_us: NDArray[np.int64],
    *,
    start: float,
    q: float,
    r: float,
    missing: float = 0.0,
) -> Streams:
    """Local-level truth (``Var`` step = q·Δt [s]), observed with noise variance ``r``."""
    dt_s = np.diff(times_us, axis=1, prepend=times_us[:, :1]) / 1e6
    truth = start + np.cumsum(rng.normal(0.0, np.sqrt(q * dt_s)), axis=1)
    values = truth + rng.normal(0.0, np.sqrt(r), size=truth.shape)
    values[rng.random(values.shape) < missing] = np.nan
    return Streams(times_us, truth, values)


def rmse(estimate: NDArray[np.float64], truth: NDArray[np.float64]) -> float:
    """Root mean square error over the positions where the estimate is defined."""
    return float(np.sqrt(np.nanmean((estimate - truth) ** 2)))


def event_starts(
    rng: np.random.Generator, samples: int, events: int, length: int, margin: int
) -> NDArray[np.int64]:
    """``events`` non-overlapping start indices (``margin`` from the ends, spaced apart)."""
    slots = (samples - 2 * margin) // (length + margin)
    chosen = np.sort(rng.choice(slots, size=events, replace=False))
    return margin + chosen * (length + margin) + rng.integers(0, margin // 2 + 1, size=events)
