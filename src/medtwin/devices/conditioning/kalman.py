"""Kalman filter and Rauch-Tung-Striebel smoother for many irregular vital-sign series.

Batches are ``(S, N)`` (streams × samples, see :mod:`.streams`); the time step
of each sample is its own ``Δt`` (seconds) from the previous sample of its
stream, so sampling may be irregular and differ per stream. NaN is a missing
observation: that step only predicts. Models:

- ``"level"`` (local level, random walk): ``x_k = x_{k-1} + w``,
  ``Var w = q · Δt``;
- ``"trend"`` (local linear trend): state ``(level, slope)``, slope in value
  units per second; ``Var`` of the level noise ``q · Δt`` plus continuous white
  noise on the slope with intensity ``q_slope``.

Both observe ``y_k = level_k + v``, ``Var v = r``. ``q`` is in value²/s,
``q_slope`` in value²/s³, ``r`` in value²; each a scalar or one per stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.streams import (
    US_PER_S,
    FloatArray,
    IntArray,
    as_times,
    as_values,
    per_stream,
    restore,
)

__all__ = [
    "KalmanModel",
    "KalmanResult",
    "SmootherResult",
    "kalman_filter",
    "kalman_smooth",
    "rts_smooth",
]

KalmanModel = Literal["level", "trend"]

_DIFFUSE = 1e3  # default initial level variance, in units of r
_SLOPE_SCALE_S = 3600.0  # default initial slope SD: that level SD per hour


@dataclass(frozen=True, slots=True)
class KalmanResult:
    """Filter output. ``state_*`` keep the full state ``(S, N, m)`` / ``(S, N, m, m)``.

    The ``filtered_*``/``predicted_*`` properties give the level (the vital sign
    itself), shaped like the input values.
    """

    model: KalmanModel
    times_us: IntArray
    dt_s: FloatArray
    q: FloatArray
    q_slope: FloatArray
    r: FloatArray
    state_mean: FloatArray
    state_cov: FloatArray
    pred_mean: FloatArray
    pred_cov: FloatArray
    log_likelihood: FloatArray  # per stream, of the observed values
    single: bool = False

    @property
    def filtered_mean(self) -> FloatArray:
        return restore(self.state_mean[..., 0], self.single)

    @property
    def filtered_var(self) -> FloatArray:
        return restore(self.state_cov[..., 0, 0], self.single)

    @property
    def predicted_mean(self) -> FloatArray:
        return restore(self.pred_mean[..., 0], self.single)

    @property
    def predicted_var(self) -> FloatArray:
        return restore(self.pred_cov[..., 0, 0], self.single)


@dataclass(frozen=True, slots=True)
class SmootherResult:
    """RTS smoother output (full state) with the filter run it came from."""

    filter: KalmanResult
    state_mean: FloatArray
    state_cov: FloatArray

    @property
    def smoothed_mean(self) -> FloatArray:
        return restore(self.state_mean[..., 0], self.filter.single)

    @property
    def smoothed_var(self) -> FloatArray:
        return restore(self.state_cov[..., 0, 0], self.filter.single)


def kalman_filter(
    times_us: ArrayLike,
    values: ArrayLike,
    *,
    q: ArrayLike,
    r: ArrayLike,
    model: KalmanModel = "level",
    q_slope: ArrayLike = 0.0,
    initial_mean: ArrayLike | None = None,
    initial_var: ArrayLike | None = None,
) -> KalmanResult:
    """Filter every stream; the state starts at each stream's first time.

    ``initial_mean``: level at the first time (default: the first observed value
    of the stream; slope 0). ``initial_var``: ``(m,)`` or ``(S, m)`` state
    variances (default: level ``1000 · r``, slope that SD per hour, squared).
    """
    if model not in ("level", "trend"):
        raise InputError(f"unknown model {model!r}", "model")
    v, one = as_values(values)
    t = as_times(times_us, v.shape)
    streams, n = v.shape
    m = 1 if model == "level" else 2
    q_ = per_stream(q, streams, "q")
    qs = per_stream(q_slope, streams, "q_slope")
    r_ = per_stream(r, streams, "r")
    if bool(np.any(~(q_ >= 0) | ~(qs >= 0) | ~(r_ > 0))):
        raise InputError("needs q >= 0, q_slope >= 0 and r > 0", "q")
    x, cov = _initial(v, r_, m, initial_mean, initial_var)
    dt = np.zeros(v.shape)
    dt[:, 1:] = np.diff(t, axis=1) / US_PER_S
    state_mean = np.empty((streams, n, m))
    state_cov = np.empty((streams, n, m, m))
    pred_mean = np.empty((streams, n, m))
    pred_cov = np.empty((streams, n, m, m))
    loglik = np.zeros(streams)
    for j in range(n):
        f, qm = _transition(dt[:, j], q_, qs, m)
        x = np.einsum("sij,sj->si", f, x)
        cov = f @ cov @ np.swapaxes(f, 1, 2) + qm
        pred_mean[:, j], pred_cov[:, j] = x, cov
        y = v[:, j]
        seen = ~np.isnan(y)
        s = cov[:, 0, 0] + r_
        gain = cov[:, :, 0] / s[:, np.newaxis]
        innov = np.where(seen, y - x[:, 0], 0.0)
        x = x + gain * innov[:, np.newaxis]
        cov = cov - np.where(seen, s, 0.0)[:, np.newaxis, np.newaxis] * (
            gain[:, :, np.newaxis] * gain[:, np.newaxis, :]
        )
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        loglik -= np.where(seen, 0.5 * (np.log(2 * math.pi * s) + innov * innov / s), 0.0)
        state_mean[:, j], state_cov[:, j] = x, cov
    return KalmanResult(
        model, t.copy(), dt, q_, qs, r_, state_mean, state_cov, pred_mean, pred_cov, loglik, one
    )


def rts_smooth(result: KalmanResult) -> SmootherResult:
    """Rauch-Tung-Striebel backward pass over a filter run."""
    mf, pf = result.state_mean, result.state_cov
    mp, pp = result.pred_mean, result.pred_cov
    ms, ps = mf.copy(), pf.copy()
    m = mf.shape[-1]
    for k in range(mf.shape[1] - 2, -1, -1):
        f, _ = _transition(result.dt_s[:, k + 1], result.q, result.q_slope, m)
        # C = Pf Fᵀ Pp⁻¹, from Pp Cᵀ = F Pf (both covariances symmetric)
        c = np.swapaxes(np.linalg.solve(pp[:, k + 1], f @ pf[:, k]), 1, 2)
        ms[:, k] = mf[:, k] + np.einsum("sij,sj->si", c, ms[:, k + 1] - mp[:, k + 1])
        p = pf[:, k] + c @ (ps[:, k + 1] - pp[:, k + 1]) @ np.swapaxes(c, 1, 2)
        ps[:, k] = 0.5 * (p + np.swapaxes(p, 1, 2))
    return SmootherResult(result, ms, ps)


def kalman_smooth(
    times_us: ArrayLike,
    values: ArrayLike,
    *,
    q: ArrayLike,
    r: ArrayLike,
    model: KalmanModel = "level",
    q_slope: ArrayLike = 0.0,
    initial_mean: ArrayLike | None = None,
    initial_var: ArrayLike | None = None,
) -> SmootherResult:
    """:func:`kalman_filter` then :func:`rts_smooth` (same arguments)."""
    return rts_smooth(
        kalman_filter(
            times_us,
            values,
            q=q,
            r=r,
            model=model,
            q_slope=q_slope,
            initial_mean=initial_mean,
            initial_var=initial_var,
        )
    )


def _initial(
    v: FloatArray,
    r: FloatArray,
    m: int,
    initial_mean: ArrayLike | None,
    initial_var: ArrayLike | None,
) -> tuple[FloatArray, FloatArray]:
    streams = v.shape[0]
    x = np.zeros((streams, m))
    if initial_mean is None and v.shape[1]:
        seen = ~np.isnan(v)
        first = np.argmax(seen, axis=1)
        level = v[np.arange(streams), first]
        x[:, 0] = np.where(np.any(seen, axis=1), level, 0.0)
    elif initial_mean is not None:
        x[:, 0] = per_stream(initial_mean, streams, "initial_mean")
    if initial_var is None:
        level_var = _DIFFUSE * r
        var = np.stack([level_var, level_var / _SLOPE_SCALE_S**2][:m], axis=1)
    else:
        var = np.broadcast_to(np.asarray(initial_var, dtype=np.float64), (streams, m)).copy()
    if bool(np.any(~(var > 0))):
        raise InputError("must be > 0", "initial_var")
    cov = np.zeros((streams, m, m))
    cov[:, np.arange(m), np.arange(m)] = var
    return x, cov


def _transition(
    dt: FloatArray, q: FloatArray, q_slope: FloatArray, m: int
) -> tuple[FloatArray, FloatArray]:
    """Transition matrices ``F`` and process noise ``Q`` for steps ``dt`` [s], ``(S, m, m)``."""
    streams = dt.shape[0]
    if m == 1:
        return np.ones((streams, 1, 1)), (q * dt).reshape(streams, 1, 1)
    f = np.zeros((streams, 2, 2))
    f[:, 0, 0] = f[:, 1, 1] = 1.0
    f[:, 0, 1] = dt
    qm = np.empty((streams, 2, 2))
    qm[:, 0, 0] = q * dt + q_slope * dt**3 / 3
    qm[:, 0, 1] = qm[:, 1, 0] = q_slope * dt**2 / 2
    qm[:, 1, 1] = q_slope * dt
    return f, qm
