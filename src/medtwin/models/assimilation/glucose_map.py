"""Batch MAP fit of glucose-twin personal parameters over a history window.

Before a twin starts filtering, days of CGM, insulin and meal history can set
its personal parameters: ``map_fit`` maximizes, for every twin at once, the
log posterior of the log parameters (``glucose_filter.PERSONAL`` by default)
given the readings, under the population prior. The model runs deterministically
from the fasting steady state at the first reading, on the given insulin and
told meals. Reading errors are taken as Gaussian with the sensor's SD and white
error, inflated by ``(1 + rho) / (1 - rho)`` (``rho`` the sensor error's
correlation between readings) since the readings' errors are autocorrelated and
least squares would otherwise count each as independent evidence.

The optimizer is L-BFGS-B (``scipy.optimize.minimize``) within the prior's
bounds; the objective is a sum over twins, so one optimization fits them all,
each gradient by central differences with every perturbation of every twin
simulated in one compiled call. The posterior covariance is the Laplace
(Gauss-Newton) approximation at the optimum. Start twins from the result with
``init_twins(..., theta_mean=fit.theta, theta_cov=fit.cov)``.

Units: glucose mg/dL, insulin U, carbohydrate g, time min (``step_min`` per
reading). Results support, and do not replace, clinical judgement (``STATEMENT``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize

from medtwin.core.errors import InputError
from medtwin.models.assimilation._glucose_kernel import NZ, Z_QSTO
from medtwin.models.assimilation.glucose_filter import (
    STATEMENT,
    GlucosePrior,
    Settings,
    per_minute_history,
    rest_state,
    run_members,
    sensor_decay,
    twin_physiology,
)
from medtwin.models.physiology.model import FloatArray

__all__ = ["GlucoseMapResult", "map_fit"]

_DELTA = 1e-3  # central-difference step in log parameter


@dataclass(frozen=True, slots=True)
class GlucoseMapResult:
    """MAP log parameters ``theta`` (N, k) and their Laplace covariance ``cov`` (N, k, k)."""

    parameters: tuple[str, ...]
    theta: FloatArray
    cov: FloatArray
    rmse_mg_dl: FloatArray
    converged: bool
    statement: str = field(default=STATEMENT)

    def estimates(self) -> dict[str, FloatArray]:
        """MAP value of each parameter (N,), in its ``PHYSIOLOGY`` unit."""
        return {n: np.exp(self.theta[:, j]) for j, n in enumerate(self.parameters)}


def map_fit(
    prior: GlucosePrior,
    *,
    cgm_mg_dl: ArrayLike,
    insulin_u: ArrayLike,
    carbs_g: ArrayLike,
    body_weight_kg: ArrayLike,
    basal_u_per_h: ArrayLike,
    glucose0_mg_dl: ArrayLike,
    physiology: FloatArray | None = None,
    settings: Settings | None = None,
    max_iter: int = 200,
) -> GlucoseMapResult:
    """Fit the personal parameters of N twins to S readings each.

    ``cgm_mg_dl`` (N, S): the reading at the end of each step (NaN: none);
    ``insulin_u`` (N, S) insulin delivered during the step (U, basal included,
    spread evenly); ``carbs_g`` (N, S) carbohydrate told at the step's start (g);
    ``glucose0_mg_dl`` (N,) the reading at the window's start (the model starts
    there, at rest). ``physiology`` as in ``init_twins``.
    """
    s = settings or Settings()
    y = np.asarray(cgm_mg_dl, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] < 1:
        raise InputError("cgm_mg_dl must be (twins, steps)", "cgm_mg_dl")
    n, steps = y.shape
    bw = np.broadcast_to(np.asarray(body_weight_kg, dtype=np.float64), (n,)).copy()
    basal = np.broadcast_to(np.asarray(basal_u_per_h, dtype=np.float64), (n,)) / 60.0
    g0 = np.broadcast_to(np.asarray(glucose0_mg_dl, dtype=np.float64), (n,)).copy()
    if not (np.all(bw > 0) and np.all(basal > 0) and np.all(np.isfinite(g0))):
        raise InputError("body weight and basal rate must be positive", "body_weight_kg")
    insulin = per_minute_history(insulin_u, n, steps, s.step_min, "insulin_u", spread=True)
    carbs = per_minute_history(carbs_g, n, steps, s.step_min, "carbs_g", spread=False)
    base = twin_physiology(prior, bw, basal, physiology)
    k = len(prior.parameters)
    rho = sensor_decay(s, s.step_min)
    var = (s.sensor_sd_mg_dl**2 + s.white_sd_mg_dl**2) * (1 + rho) / (1 - rho)
    seen = np.isfinite(y)
    prec = np.linalg.inv(prior.cov_log)
    record = np.arange(1, steps + 1) * s.step_min

    def predict(theta: FloatArray) -> FloatArray:
        """Readings (N, P, S) for log parameters (N, P, k)."""
        x = rest_state(base, prior.parameters, theta, g0)
        z = np.zeros((*x.shape[:2], NZ))
        z[:, :, Z_QSTO] = x[:, :, 0] + x[:, :, 1]
        ones = np.ones(x.shape[:2])
        g = run_members(base, prior.parameters, x, z, theta, ones, carbs, insulin, record)
        out: FloatArray = g + s.sensor_mean_mg_dl
        return out

    def perturbed(flat: FloatArray) -> FloatArray:
        theta = flat.reshape(n, k)
        lanes = np.repeat(theta[:, None, :], 2 * k + 1, axis=1)
        for j in range(k):
            lanes[:, 1 + 2 * j, j] += _DELTA
            lanes[:, 2 + 2 * j, j] -= _DELTA
        return predict(lanes)

    def objective(flat: FloatArray) -> tuple[float, FloatArray]:
        theta = flat.reshape(n, k)
        pred = perturbed(flat)
        dev = theta - prior.mean_log
        value = _nll(pred[:, 0], y, seen, var) + 0.5 * np.einsum("ni,ij,nj->n", dev, prec, dev)
        grad = dev @ prec
        for j in range(k):
            up = _nll(pred[:, 1 + 2 * j], y, seen, var)
            down = _nll(pred[:, 2 + 2 * j], y, seen, var)
            grad[:, j] += (up - down) / (2 * _DELTA)
        return float(value.sum()), grad.ravel()

    bounds = [
        (lo, hi) for _ in range(n) for lo, hi in zip(prior.lower_log, prior.upper_log, strict=True)
    ]
    start = np.tile(prior.mean_log, n)
    res = minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
    )
    theta = np.asarray(res.x, dtype=np.float64).reshape(n, k)
    pred = perturbed(theta.ravel())
    jac = np.stack(
        [(pred[:, 1 + 2 * j] - pred[:, 2 + 2 * j]) / (2 * _DELTA) for j in range(k)], axis=2
    )
    jac = np.where(seen[:, :, None], jac, 0.0)
    info = np.einsum("nsi,nsj->nij", jac, jac) / var + prec
    cov = np.linalg.inv(info)
    resid = np.where(seen, pred[:, 0] - y, 0.0)
    rmse = np.sqrt((resid**2).sum(axis=1) / np.maximum(seen.sum(axis=1), 1))
    return GlucoseMapResult(prior.parameters, theta, cov, rmse, bool(res.success))


def _nll(pred: FloatArray, y: FloatArray, seen: NDArray[np.bool_], var: float) -> FloatArray:
    """Per twin, half the sum of squared reading errors over ``var``."""
    r = np.where(seen, pred - y, 0.0)
    out: FloatArray = 0.5 * (r * r).sum(axis=1) / var
    return out
