"""Compiled propagation of many glucose-twin ensemble members over a few minutes.

One lane is one ensemble member of one twin (``lane = twin * members + member``).
Each lane carries the 13 UVA/Padova states, meal bookkeeping and its own log
parameters; the right-hand side is the shipped model's kernel
(``uva_padova.model._rhs_kernel``), so the twin's dynamics are the model's
equations exactly. Steps are classical RK4 at one minute, the input grid of the
UVA/Padova engine. Lanes run in blocks of ``BLOCK`` so the right-hand side
vectorizes across them, as in ``physiology.engine``.

Meals: a step's announced carbohydrate (g, times the lane's meal factor) joins a
queue eaten at up to ``EAT_RATE`` g/min, as simglucose eats (and
``physiology.scenario.meal_intake``); a meal starts when eating starts after a
minute without, which resets the gastric-emptying reference dose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY
from medtwin.models.physiology.uva_padova.model import _rhs_kernel as rhs_kernel

__all__ = ["BLOCK", "EAT_RATE", "NZ", "Z_FOOD", "Z_PREV", "Z_QSTO", "Z_QUEUE", "propagate"]

BLOCK = 64
EAT_RATE = 5.0
# Meal bookkeeping per lane: stomach content at meal start (mg), carbohydrate
# eaten since (g), intake in the previous minute (g/min), queued carbohydrate (g).
Z_QSTO, Z_FOOD, Z_PREV, Z_QUEUE = 0, 1, 2, 3
NZ = 4

_P = {q.name: i for i, q in enumerate(PHYSIOLOGY)}
_NP = len(PHYSIOLOGY)
_BW, _VG, _KM0, _K2, _K1 = _P["BW"], _P["Vg"], _P["Km0"], _P["k2"], _P["k1"]
_KP1, _KP2, _KP3, _KE1, _KE2 = _P["kp1"], _P["kp2"], _P["kp3"], _P["ke1"], _P["ke2"]
_FSNC, _VM0, _IB, _GB = _P["Fsnc"], _P["Vm0"], _P["Ib"], _P["Gb"]


@njit(inline="always")
def _production_constant(p: Any, lane: int) -> float:
    """kp1 (mg/kg/min) that puts the fasting steady state at Gb for basal insulin Ib.

    ``steady_state.steady_state``'s plasma glucose balance, per lane.
    """
    gp = p[_GB, lane] * p[_VG, lane]
    k1, k2, km0 = p[_K1, lane], p[_K2, lane], p[_KM0, lane]
    qb = p[_VM0, lane] + k2 * km0 - k1 * gp
    qc = -k1 * gp * km0
    gt = (-qb + np.sqrt(qb * qb - 4.0 * k2 * qc)) / (2.0 * k2)
    et = p[_KE1, lane] * (gp - p[_KE2, lane]) if gp > p[_KE2, lane] else 0.0
    kp1: float = (
        p[_FSNC, lane] + et + k1 * gp - k2 * gt + p[_KP2, lane] * gp + p[_KP3, lane] * p[_IB, lane]
    )
    return kp1


@njit(error_model="numpy", boundscheck=False, nogil=True)
def propagate(
    x: Any,
    z: Any,
    theta: Any,
    base: Any,
    est_idx: Any,
    members: int,
    meal_factor: Any,
    carbs_g: Any,
    insulin_u_per_min: Any,
    record_at: Any,
    y: Any,
) -> None:
    """Advance every lane ``insulin_u_per_min.shape[1]`` minutes, in place.

    ``x`` (lanes, 13) states; ``z`` (lanes, NZ) meal bookkeeping; ``theta``
    (lanes, k) log parameters written over ``base`` (twins, 33) at ``est_idx``,
    then kp1 re-solved from Gb; ``meal_factor`` (lanes,) multiplies announced
    meals; ``carbs_g`` (twins, minutes) carbohydrate announced at each minute
    (g); ``insulin_u_per_min`` (twins, minutes) insulin delivered (U/min).
    ``y[lane, r]`` gets subcutaneous glucose Gs/Vg (mg/dL) after minute
    ``record_at[r]`` (increasing whole minutes, may be empty).
    """
    lanes, nx = x.shape
    n_min = insulin_u_per_min.shape[1]
    k = est_idx.size
    b = BLOCK
    xb = np.empty((nx, b))
    xt = np.empty((nx, b))
    k1 = np.empty((nx, b))
    k2 = np.empty((nx, b))
    k3 = np.empty((nx, b))
    k4 = np.empty((nx, b))
    zb = np.zeros((6, b))
    queue = np.empty(b)
    factor = np.empty(b)
    p = np.empty((_NP, b))
    u = np.zeros((4, b))
    tv = np.zeros(b)
    twin = np.empty(b, dtype=np.int64)
    h = 1.0
    for s in range(0, lanes, b):
        n = min(b, lanes - s)
        for lane in range(b):
            i = s + lane if lane < n else s
            tw = i // members
            twin[lane] = tw
            for j in range(_NP):
                p[j, lane] = base[tw, j]
            for j in range(k):
                p[est_idx[j], lane] = np.exp(theta[i, j])
            p[_KP1, lane] = _production_constant(p, lane)
            for j in range(nx):
                xb[j, lane] = x[i, j]
            zb[0, lane] = z[i, Z_QSTO]
            zb[1, lane] = z[i, Z_FOOD]
            zb[2, lane] = z[i, Z_PREV]
            queue[lane] = z[i, Z_QUEUE]
            factor[lane] = meal_factor[i]
        r = 0
        for m in range(n_min):
            for lane in range(b):
                tw = twin[lane]
                queue[lane] += carbs_g[tw, m] * factor[lane]
                eat = min(EAT_RATE, queue[lane]) if queue[lane] > 0.0 else 0.0
                queue[lane] -= eat
                if eat > 0.0 and zb[2, lane] <= 0.0:
                    zb[0, lane] = xb[0, lane] + xb[1, lane]
                    zb[1, lane] = 0.0
                zb[1, lane] += eat
                zb[2, lane] = eat
                u[0, lane] = eat
                u[1, lane] = insulin_u_per_min[tw, m]
            rhs_kernel(tv, xb, u, zb, p, k1, b)
            for j in range(nx):
                for lane in range(b):
                    xt[j, lane] = xb[j, lane] + 0.5 * h * k1[j, lane]
            rhs_kernel(tv, xt, u, zb, p, k2, b)
            for j in range(nx):
                for lane in range(b):
                    xt[j, lane] = xb[j, lane] + 0.5 * h * k2[j, lane]
            rhs_kernel(tv, xt, u, zb, p, k3, b)
            for j in range(nx):
                for lane in range(b):
                    xt[j, lane] = xb[j, lane] + h * k3[j, lane]
            rhs_kernel(tv, xt, u, zb, p, k4, b)
            for j in range(nx):
                for lane in range(b):
                    xb[j, lane] += (h / 6.0) * (
                        k1[j, lane] + 2.0 * k2[j, lane] + 2.0 * k3[j, lane] + k4[j, lane]
                    )
            while r < record_at.size and record_at[r] == m + 1:
                for lane in range(n):
                    y[s + lane, r] = xb[12, lane] / p[_VG, lane]
                r += 1
        for lane in range(n):
            i = s + lane
            for j in range(nx):
                x[i, j] = xb[j, lane]
            z[i, Z_QSTO] = zb[0, lane]
            z[i, Z_FOOD] = zb[1, lane]
            z[i, Z_PREV] = zb[2, lane]
            z[i, Z_QUEUE] = queue[lane]


@njit(error_model="numpy", boundscheck=False, nogil=True)
def analysis(
    x: Any,
    theta: Any,
    sensor: Any,
    y: Any,
    vg: Any,
    sensor_mean: float,
    white_var: float,
    inflation: float,
    lower: Any,
    upper: Any,
) -> None:
    """Serial ensemble square-root update (Whitaker and Hamill 2002), one reading per twin.

    ``x`` (N, M, 13), ``theta`` (N, M, k) and ``sensor`` (N, M) are updated in
    place for every twin with a finite ``y`` (mg/dL); the predicted reading of a
    member is Gs/Vg + ``sensor_mean`` + its sensor error, with white error
    variance ``white_var`` (mg/dL)^2. Parameter spreads are inflated by
    ``inflation`` first; states are kept >= 0 and parameters within bounds.
    """
    n_tw, m, nx = x.shape
    k = theta.shape[2]
    hx = np.empty(m)
    ya = np.empty(m)
    for n in range(n_tw):
        if not np.isfinite(y[n]):
            continue
        if inflation != 1.0:
            for j in range(k):
                mu = 0.0
                for i in range(m):
                    mu += theta[n, i, j]
                mu /= m
                for i in range(m):
                    theta[n, i, j] = mu + inflation * (theta[n, i, j] - mu)
        ym = 0.0
        for i in range(m):
            hx[i] = x[n, i, 12] / vg[n] + sensor_mean + sensor[n, i]
            ym += hx[i]
        ym /= m
        pyy = 0.0
        for i in range(m):
            ya[i] = hx[i] - ym
            pyy += ya[i] * ya[i]
        total = pyy / (m - 1) + white_var
        alpha = 1.0 / (1.0 + np.sqrt(white_var / total))
        innov = y[n] - ym
        for j in range(nx + k + 1):
            mu = 0.0
            for i in range(m):
                if j < nx:
                    v = x[n, i, j]
                elif j < nx + k:
                    v = theta[n, i, j - nx]
                else:
                    v = sensor[n, i]
                mu += v
            mu /= m
            cov = 0.0
            for i in range(m):
                if j < nx:
                    v = x[n, i, j]
                elif j < nx + k:
                    v = theta[n, i, j - nx]
                else:
                    v = sensor[n, i]
                cov += (v - mu) * ya[i]
            gain = cov / ((m - 1) * total)
            shift = gain * innov
            for i in range(m):
                d = shift - alpha * gain * ya[i]
                if j < nx:
                    x[n, i, j] = max(x[n, i, j] + d, 0.0)
                elif j < nx + k:
                    jj = j - nx
                    theta[n, i, jj] = min(max(theta[n, i, jj] + d, lower[jj]), upper[jj])
                else:
                    sensor[n, i] += d
