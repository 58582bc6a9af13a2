"""Linear sensor calibration against reference readings, and slow drift tracking.

Direction, everywhere: ``reference ≈ gain * measured + offset``, in the units
of the reference (e.g. finger-stick glucose vs CGM in mg/dL; arterial vs cuff
pressure in mm[Hg]). :meth:`Calibration.apply` maps sensor readings onto the
reference scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.streams import US_PER_S, BoolArray, FloatArray, IntArray

__all__ = [
    "Calibration",
    "CalibrationHistory",
    "DriftTracker",
    "ReadingPairs",
    "fit_calibration",
    "pair_readings",
]

MODEL = "reference = gain * measured + offset"


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fitted calibration: ``reference ≈ gain * measured + offset``.

    ``gain`` is dimensionless (same unit both sides), ``offset`` and
    ``residual_sd`` are in reference units, ``n`` is the number of pairs used and
    ``fitted_at_us`` the time (µs since epoch) the fit applies from.
    """

    gain: float
    offset: float
    n: int
    residual_sd: float
    fitted_at_us: int
    method: str = "least-squares"

    @property
    def id(self) -> str:
        """Stable content id (``cal-`` and 16 hex digits) for provenance records."""
        fields = (self.gain, self.offset, self.n, self.residual_sd, self.fitted_at_us, self.method)
        content = json.dumps([repr(f) for f in fields])
        return "cal-" + hashlib.sha256(content.encode()).hexdigest()[:16]

    def apply(self, measured: ArrayLike) -> FloatArray:
        """Sensor readings on the reference scale: ``gain * measured + offset``."""
        return self.gain * np.asarray(measured, dtype=np.float64) + self.offset

    def invert(self, reference: ArrayLike) -> FloatArray:
        """The sensor reading expected for a reference value."""
        return (np.asarray(reference, dtype=np.float64) - self.offset) / self.gain

    def as_dict(self) -> dict[str, str | int | float | None]:
        """JSON-ready summary for provenance (``residual_sd`` None when undefined)."""
        return {
            "id": self.id,
            "model": MODEL,
            "method": self.method,
            "gain": self.gain,
            "offset": self.offset,
            "n": self.n,
            "residual_sd": None if math.isnan(self.residual_sd) else self.residual_sd,
            "fitted_at_us": self.fitted_at_us,
        }


class ReadingPairs(NamedTuple):
    """Sensor/reference pairs; ``gap_us`` = sensor time - (reference time + lag)."""

    measured: FloatArray
    reference: FloatArray
    sensor_index: IntArray
    ref_index: IntArray
    ref_times_us: IntArray
    gap_us: IntArray


def pair_readings(
    sensor_times: ArrayLike,
    sensor_values: ArrayLike,
    ref_times: ArrayLike,
    ref_values: ArrayLike,
    max_gap_us: int,
    *,
    lag_us: int = 0,
) -> ReadingPairs:
    """Pair each reference reading with the nearest sensor reading within ``max_gap_us``.

    One stream, 1-D arrays; sensor times non-decreasing. The sensor reading is
    sought near ``ref_time + lag_us`` (``lag_us`` > 0 when the sensor lags, as a
    CGM lags blood glucose by minutes). NaN readings on either side are skipped;
    ties go to the earlier sensor reading. Unpaired references are left out.
    """
    s_t = np.asarray(sensor_times, dtype=np.int64).ravel()
    s_v = np.asarray(sensor_values, dtype=np.float64).ravel()
    r_t = np.asarray(ref_times, dtype=np.int64).ravel()
    r_v = np.asarray(ref_values, dtype=np.float64).ravel()
    if s_t.shape != s_v.shape or r_t.shape != r_v.shape:
        raise InputError("times and values differ in length", "pair_readings")
    if s_t.size > 1 and bool(np.any(np.diff(s_t) < 0)):
        raise InputError("sensor times must be non-decreasing", "sensor_times")
    if max_gap_us < 0:
        raise InputError("must be >= 0", "max_gap_us")
    keep = ~np.isnan(s_v)
    s_idx = np.flatnonzero(keep)
    s_t, s_v = s_t[keep], s_v[keep]
    r_idx = np.flatnonzero(~np.isnan(r_v))
    target = r_t[r_idx] + lag_us
    empty_i = np.zeros(0, dtype=np.int64)
    if s_t.size == 0 or r_idx.size == 0:
        return ReadingPairs(np.zeros(0), np.zeros(0), empty_i, empty_i, empty_i, empty_i)
    after = np.searchsorted(s_t, target, side="left")  # first sensor time >= target
    before = np.clip(after - 1, 0, s_t.size - 1)
    after_c = np.clip(after, 0, s_t.size - 1)
    gap_before = np.where(after > 0, target - s_t[before], np.iinfo(np.int64).max)
    gap_after = np.where(after < s_t.size, s_t[after_c] - target, np.iinfo(np.int64).max)
    use_after = gap_after < gap_before
    pick = np.where(use_after, after_c, before)
    gap = np.where(use_after, gap_after, gap_before)
    ok = gap <= max_gap_us
    pick, r_sel = pick[ok], r_idx[ok]
    return ReadingPairs(
        measured=s_v[pick],
        reference=r_v[r_sel],
        sensor_index=s_idx[pick],
        ref_index=r_sel,
        ref_times_us=r_t[r_sel],
        gap_us=s_t[pick] - (r_t[r_sel] + lag_us),
    )


def fit_calibration(
    measured: ArrayLike,
    reference: ArrayLike,
    *,
    fitted_at_us: int,
    gain: float | None = None,
) -> Calibration:
    """Least-squares fit of ``reference ≈ gain * measured + offset``.

    Pairs with a NaN on either side are ignored. With ``gain`` given only the
    offset is fitted (one-point calibration, needs ≥ 1 pair); otherwise both
    (≥ 2 pairs with distinct measured values). ``residual_sd`` divides by the
    degrees of freedom (NaN when there are none).
    """
    x = np.asarray(measured, dtype=np.float64).ravel()
    y = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"{x.size} measured for {y.size} reference values", "reference")
    both = ~(np.isnan(x) | np.isnan(y))
    x, y = x[both], y[both]
    n = int(x.size)
    if gain is not None:
        if n < 1:
            raise InputError("an offset-only calibration needs at least 1 pair", "measured")
        offset = float(np.mean(y - gain * x))
        fitted_gain, params, method = float(gain), 1, "least-squares-offset"
    else:
        if n < 2:
            raise InputError("a gain/offset calibration needs at least 2 pairs", "measured")
        x_mean, y_mean = float(np.mean(x)), float(np.mean(y))
        sxx = float(np.sum((x - x_mean) ** 2))
        if sxx <= 1e-12 * max(1.0, x_mean * x_mean) * n:
            raise InputError("measured values do not vary: the gain is undefined", "measured")
        fitted_gain = float(np.sum((x - x_mean) * (y - y_mean)) / sxx)
        offset = y_mean - fitted_gain * x_mean
        params, method = 2, "least-squares"
    residual = y - (fitted_gain * x + offset)
    dof = n - params
    sd = math.sqrt(float(np.sum(residual**2)) / dof) if dof > 0 else math.nan
    return Calibration(fitted_gain, offset, n, sd, int(fitted_at_us), method)


class CalibrationHistory(NamedTuple):
    """Gain and offset of every stream after each column of pairs, ``(S, K)``."""

    gain: FloatArray
    offset: FloatArray


class DriftTracker:
    """Time-weighted least-squares calibration that follows slow drift, per stream.

    Each pair counts with weight ``2 ** (-age / half_life_s)``; so the estimate
    is the least-squares fit of the recent pairs, lagging a linear drift by about
    ``half_life_s / ln 2``. The prior calibration enters as ``prior_weight``
    pseudo-pairs spread over ``x_range`` (measured units) and fades like data;
    ``anchor_weight`` pseudo-pairs on the prior line never fade, so that gain
    and offset stay defined when the data thin out. Vectorized: the state holds
    ``S`` streams, and every update takes one pair (or NaN) per stream.
    """

    def __init__(
        self,
        gain: ArrayLike,
        offset: ArrayLike,
        *,
        started_at_us: ArrayLike,
        half_life_s: float,
        x_range: tuple[float, float],
        prior_weight: float = 2.0,
        anchor_weight: float = 1e-3,
    ) -> None:
        g0, o0, t0 = np.broadcast_arrays(
            np.asarray(gain, dtype=np.float64),
            np.asarray(offset, dtype=np.float64),
            np.asarray(started_at_us, dtype=np.int64),
        )
        if g0.ndim > 1:
            raise InputError("gain, offset and started_at_us must be scalars or 1-D", "gain")
        if not half_life_s > 0:
            raise InputError("must be > 0", "half_life_s")
        x_low, x_high = float(x_range[0]), float(x_range[1])
        if not x_low < x_high:
            raise InputError("needs low < high", "x_range")
        if prior_weight < 0 or not anchor_weight > 0:
            raise InputError("prior_weight must be >= 0 and anchor_weight > 0", "prior_weight")
        self.half_life_s = float(half_life_s)
        self.x_range = (x_low, x_high)
        self._g0 = np.atleast_1d(g0).astype(np.float64)
        self._o0 = np.atleast_1d(o0).astype(np.float64)
        self._last_us = np.atleast_1d(t0).astype(np.int64)
        self.n = np.zeros(self._g0.size, dtype=np.int64)
        # weighted sums over pairs: w, Σx, Σy, Σx², Σxy, Σy²
        self._stats = np.zeros((6, self._g0.size))
        self._anchor = self._line_stats(anchor_weight)
        self._stats += self._line_stats(prior_weight)

    @classmethod
    def from_calibration(
        cls,
        calibration: Calibration,
        *,
        half_life_s: float,
        x_range: tuple[float, float],
        streams: int = 1,
        prior_weight: float | None = None,
        anchor_weight: float = 1e-3,
    ) -> DriftTracker:
        """Start ``streams`` trackers from one fit (prior weight = its pair count)."""
        return cls(
            np.full(streams, calibration.gain),
            np.full(streams, calibration.offset),
            started_at_us=calibration.fitted_at_us,
            half_life_s=half_life_s,
            x_range=x_range,
            prior_weight=float(calibration.n) if prior_weight is None else prior_weight,
            anchor_weight=anchor_weight,
        )

    @property
    def streams(self) -> int:
        return int(self._g0.size)

    @property
    def last_update_us(self) -> IntArray:
        """Time of each stream's last pair (or its start), µs."""
        return self._last_us.copy()

    @property
    def weight(self) -> FloatArray:
        """Effective number of pairs (prior included) as of each stream's last update."""
        return np.array(self._stats[0], dtype=np.float64)

    @property
    def gain(self) -> FloatArray:
        return self._solve()[0]

    @property
    def offset(self) -> FloatArray:
        return self._solve()[1]

    def update(self, times_us: ArrayLike, measured: ArrayLike, reference: ArrayLike) -> None:
        """Add one pair per stream (``(S,)`` or scalars); NaN skips a stream."""
        t = np.broadcast_to(np.asarray(times_us, dtype=np.int64), (self.streams,))
        x = np.broadcast_to(np.asarray(measured, dtype=np.float64), (self.streams,))
        y = np.broadcast_to(np.asarray(reference, dtype=np.float64), (self.streams,))
        use: BoolArray = ~(np.isnan(x) | np.isnan(y))
        if bool(np.any(use & (t < self._last_us))):
            raise InputError("pairs must arrive in time order per stream", "times_us")
        age_s = np.where(use, t - self._last_us, 0) / US_PER_S
        decay = np.exp2(-age_s / self.half_life_s)
        self._stats *= decay
        xs, ys = np.where(use, x, 0.0), np.where(use, y, 0.0)
        one = use.astype(np.float64)
        self._stats += np.stack([one, xs, ys, xs * xs, xs * ys, ys * ys])
        self._last_us = np.where(use, t, self._last_us)
        self.n += use

    def track(
        self, times_us: ArrayLike, measured: ArrayLike, reference: ArrayLike
    ) -> CalibrationHistory:
        """Feed ``(S, K)`` pairs column by column (NaN skips); gain/offset after each column.

        Times may be ``(K,)`` when shared by all streams.
        """
        try:
            # 1-D: a single stream's pairs, or one pair per stream
            x = np.asarray(measured, dtype=np.float64).reshape(self.streams, -1)
            t = np.asarray(times_us, dtype=np.int64).reshape(-1, x.shape[1])
            t = np.broadcast_to(t, x.shape)
            y = np.asarray(reference, dtype=np.float64).reshape(x.shape)
        except ValueError:
            raise InputError(f"pairs do not fit {self.streams} streams", "measured") from None
        gains = np.empty(x.shape)
        offsets = np.empty(x.shape)
        for k in range(x.shape[1]):
            self.update(t[:, k], x[:, k], y[:, k])
            gains[:, k], offsets[:, k] = self._solve()
        return CalibrationHistory(gains, offsets)

    def apply(self, measured: ArrayLike) -> FloatArray:
        """Readings on the reference scale; the first axis of ``measured`` is the stream."""
        x = np.asarray(measured, dtype=np.float64)
        g, o = self._solve()
        shape = (self.streams,) + (1,) * max(x.ndim - 1, 0)
        return g.reshape(shape) * x + o.reshape(shape)

    def calibration(self, stream: int = 0) -> Calibration:
        """The current fit of one stream, as of its last update.

        ``residual_sd`` is the weighted RMS residual of the decayed pairs.
        """
        g, o = self._solve()
        w, sx, sy, sxx, sxy, syy = (float(v) for v in self._stats[:, stream])
        gs, os_ = float(g[stream]), float(o[stream])
        ssr = syy - 2 * (gs * sxy + os_ * sy) + gs * gs * sxx + 2 * gs * os_ * sx + os_ * os_ * w
        sd = math.sqrt(max(ssr, 0.0) / w) if w > 0 else math.nan
        return Calibration(
            gs,
            os_,
            int(self.n[stream]),
            sd,
            int(self._last_us[stream]),
            f"drift-tracker(half_life_s={self.half_life_s:g})",
        )

    def _line_stats(self, weight: float) -> FloatArray:
        """Sums of ``weight`` pseudo-pairs on the prior line, half at each end of x_range."""
        stats = np.zeros((6, self.streams))
        w = weight / 2
        for x in self.x_range:
            y = self._g0 * x + self._o0
            stats += w * np.stack(
                [np.ones_like(y), np.full_like(y, x), y, np.full_like(y, x * x), x * y, y * y]
            )
        return stats

    def _solve(self) -> tuple[FloatArray, FloatArray]:
        w, sx, sy, sxx, sxy, _ = self._stats + self._anchor
        det = sxx * w - sx * sx
        gain = (w * sxy - sx * sy) / det
        offset = (sxx * sy - sx * sxy) / det
        return gain, offset
