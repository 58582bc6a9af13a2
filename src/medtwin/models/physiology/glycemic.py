"""Glycemic outcome metrics of glucose traces, vectorized over patients.

Definitions (glucose in mg/dL throughout):

- Time in ranges, International Consensus on Time in Range: T. Battelino et al.,
  *Clinical Targets for Continuous Glucose Monitoring Data Interpretation*, Diabetes
  Care 42(8):1593-1603, 2019.  TIR is 70-180 mg/dL inclusive; TBR < 70 and < 54;
  TAR > 180 and > 250.  Each is the percentage of valid samples, so with equally
  spaced samples it is the percentage of time.
- GMI (glucose management indicator, %): R. M. Bergenstal et al., Diabetes Care
  41(11):2275-2280, 2018: ``GMI = 3.31 + 0.02392 * mean``.
- CV (%): ``100 * SD / mean`` (Battelino 2019); SD is the sample SD (``ddof=1``).
- LBGI / HBGI: B. P. Kovatchev et al., *Symmetrization of the blood glucose measurement
  scale and its applications*, Diabetes Care 20(11):1655-1658, 1997; *Assessment of risk
  for severe hypoglycemia among adults with IDDM*, Diabetes Care 21(11):1870-1875, 1998;
  *Evaluation of a new measure of blood glucose variability in diabetes*, Diabetes Care
  29(11):2433-2438, 2006.  ``f(BG) = 1.509 * ((ln BG)^1.084 - 5.381)``, ``r = 10 f^2``,
  ``rl = r`` where ``f < 0`` else 0, ``rh = r`` where ``f > 0`` else 0,
  ``LBGI = mean(rl)`` and ``HBGI = mean(rh)`` over *all* valid samples.  ``f`` is 0
  at ``BG = exp(5.381^(1/1.084)) = 112.517 mg/dL``.

Missing data: NaN samples are ignored.  A patient with no valid sample gets NaN in
every metric except ``n_samples`` (0); with one valid sample SD and CV are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medtwin.core.errors import InputError

__all__ = [
    "GLUCOSE_MIN_MG_DL",
    "KOVATCHEV_ROOT_MG_DL",
    "GlycemicOutcomes",
    "glycemic_outcomes",
    "kovatchev_f",
]

FloatArray = NDArray[np.float64]

GLUCOSE_MIN_MG_DL = 1.0
"""Smallest accepted glucose (mg/dL): below it ln BG < 0 and ``(ln BG)^1.084`` is undefined."""

# Kovatchev's symmetrizing transform constants (1997).
_F_SCALE = 1.509
_F_EXPONENT = 1.084
_F_SHIFT = 5.381
_RISK_SCALE = 10.0

KOVATCHEV_ROOT_MG_DL = float(np.exp(_F_SHIFT ** (1.0 / _F_EXPONENT)))
"""Glucose (mg/dL) where Kovatchev's ``f`` is 0 (about 112.517); risk is 0 there."""

# Battelino 2019 thresholds, mg/dL.
_TBR_LEVEL2 = 54.0
_TIR_LOW = 70.0
_TIR_HIGH = 180.0
_TAR_LEVEL2 = 250.0

# Bergenstal 2018 GMI regression, % and % per mg/dL.
_GMI_INTERCEPT = 3.31
_GMI_SLOPE = 0.02392


@dataclass(frozen=True, slots=True)
class GlycemicOutcomes:
    """Per-patient outcomes; each array has the input's shape without the time axis.

    A 1-D trace gives 0-d arrays (``float(out.tir_pct)`` reads them).
    """

    n_samples: FloatArray
    """Valid (non-NaN) samples."""
    mean_mg_dl: FloatArray
    """Mean glucose, mg/dL."""
    sd_mg_dl: FloatArray
    """Sample standard deviation (``ddof=1``), mg/dL."""
    cv_pct: FloatArray
    """Coefficient of variation, ``100 * SD / mean``, %."""
    gmi_pct: FloatArray
    """Glucose management indicator, ``3.31 + 0.02392 * mean``, %."""
    tir_pct: FloatArray
    """Time in range 70-180 mg/dL inclusive, %."""
    tbr70_pct: FloatArray
    """Time below range, < 70 mg/dL (includes < 54), %."""
    tbr54_pct: FloatArray
    """Time below range, < 54 mg/dL, %."""
    tar180_pct: FloatArray
    """Time above range, > 180 mg/dL (includes > 250), %."""
    tar250_pct: FloatArray
    """Time above range, > 250 mg/dL, %."""
    lbgi: FloatArray
    """Kovatchev low blood glucose index (dimensionless, >= 0)."""
    hbgi: FloatArray
    """Kovatchev high blood glucose index (dimensionless, >= 0)."""


def kovatchev_f(glucose_mg_dl: FloatArray) -> FloatArray:
    """Kovatchev's symmetrized glucose scale ``1.509 * ((ln BG)^1.084 - 5.381)``, BG in mg/dL."""
    g = np.asarray(glucose_mg_dl, dtype=np.float64)
    out: FloatArray = _F_SCALE * (np.log(g) ** _F_EXPONENT - _F_SHIFT)
    return out


def _check_glucose(g: FloatArray) -> None:
    """Raise ``InputError`` at the first value that is neither NaN nor finite and >= 1 mg/dL."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(g) & ~((g >= GLUCOSE_MIN_MG_DL) & (g < np.inf))
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    value = float(g[index])
    if value <= 0.0:
        reason = f"glucose must be positive, got {value!r} mg/dL (NaN marks a missing sample)"
    elif value < GLUCOSE_MIN_MG_DL:
        reason = f"glucose {value!r} mg/dL is below 1 mg/dL, where the risk function is undefined"
    else:
        reason = f"glucose must be finite, got {value!r} mg/dL"
    raise InputError(reason, f"glucose_mg_dl[{', '.join(map(str, index))}]")


def glycemic_outcomes(glucose_mg_dl: FloatArray, *, axis: int = -1) -> GlycemicOutcomes:
    """Outcome metrics of glucose traces (mg/dL) along ``axis``; NaN = missing sample.

    ``glucose_mg_dl`` is ``(T,)`` for one trace or e.g. ``(patients, T)``.  Raises
    ``InputError`` naming the index of the first value that is <= 0, below 1 mg/dL
    (Kovatchev's ``f`` is undefined there) or infinite.
    """
    g = np.asarray(glucose_mg_dl, dtype=np.float64)
    if g.ndim == 0:
        raise InputError("glucose must be an array with a time axis", "glucose_mg_dl")
    if not -g.ndim <= axis < g.ndim:
        raise InputError(f"axis {axis} is out of range for {g.ndim}-D glucose", "axis")
    _check_glucose(g)
    g = np.moveaxis(g, axis, -1)

    valid = ~np.isnan(g)
    n = valid.sum(axis=-1).astype(np.float64)
    has_data = n > 0
    # Missing samples become a harmless placeholder; every sum below masks them out.
    g_filled = np.where(valid, g, KOVATCHEV_ROOT_MG_DL)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has_data, np.where(valid, g, 0.0).sum(axis=-1) / n, np.nan)
        squares = np.where(valid, (g_filled - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        sd = np.where(n >= 2, np.sqrt(squares / (n - 1.0)), np.nan)
        cv = 100.0 * sd / mean

        def pct(mask: NDArray[np.bool_]) -> FloatArray:
            share: FloatArray = np.where(has_data, 100.0 * (mask & valid).sum(axis=-1) / n, np.nan)
            return share

        f = kovatchev_f(g_filled)
        risk = _RISK_SCALE * f**2
        lbgi = np.where(has_data, np.where(valid & (f < 0.0), risk, 0.0).sum(axis=-1) / n, np.nan)
        hbgi = np.where(has_data, np.where(valid & (f > 0.0), risk, 0.0).sum(axis=-1) / n, np.nan)

        return GlycemicOutcomes(
            n_samples=n,
            mean_mg_dl=mean,
            sd_mg_dl=sd,
            cv_pct=cv,
            gmi_pct=_GMI_INTERCEPT + _GMI_SLOPE * mean,
            tir_pct=pct((g >= _TIR_LOW) & (g <= _TIR_HIGH)),
            tbr70_pct=pct(g < _TIR_LOW),
            tbr54_pct=pct(g < _TBR_LEVEL2),
            tar180_pct=pct(g > _TIR_HIGH),
            tar250_pct=pct(g > _TAR_LEVEL2),
            lbgi=lbgi,
            hbgi=hbgi,
        )
