"""Glucose forecasts and what-if branches from the current state of glucose twins.

Both run the twin's ensemble ahead from now (``glucose_filter.GlucoseTwins``):
every member with its own state and personal parameters, its own draw of the
size of each planned meal, the model-error walk of plasma glucose and the
sensor error carried forward (the AR(1) error decays from its current value
toward the sensor's stationary distribution), each member with ``replicates``
draws of those errors. Bands are quantiles over members and replicates, so
they cover state, parameter, meal and sensor uncertainty; the forecast quantity
is the CGM reading (mg/dL) a sensor will show.

- ``forecast``: readings 30, 60 and 120 min ahead (median, 50 % and 90 %
  prediction intervals), under the planned inputs: the basal rates scheduled
  over the horizon (nominal basal by default), planned boluses and meals.
- ``whatif``: branches of the same twins, each with a scenario (``WhatIf``:
  an extra bolus U, a meal g, a change of basal rate U/h, at a minute from
  now), simulated side by side from the same members and the same random draws
  (common random numbers), so branches differ only by their intervention; the
  branch without intervention gives the forecast's numbers.

Random draws come from ``seed`` per time point, so a result depends only on the
state, the inputs and the seed, not on which other times were asked for.

Results support, and do not replace, clinical judgement (``STATEMENT``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.models.assimilation.glucose_filter import (
    STATEMENT,
    GlucoseTwins,
    meal_factors,
    run_members,
    sensor_decay,
)
from medtwin.models.physiology.model import FloatArray

__all__ = [
    "HORIZONS_MIN",
    "GlucoseForecast",
    "WhatIf",
    "WhatIfResult",
    "forecast",
    "whatif",
]

HORIZONS_MIN = (30, 60, 120)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_MAX_HORIZON_MIN = 7 * 1440


@dataclass(frozen=True, slots=True)
class GlucoseForecast:
    """Forecast CGM readings (mg/dL), each array (twins, horizons)."""

    horizons_min: tuple[int, ...]
    median: FloatArray
    lower50: FloatArray
    upper50: FloatArray
    lower90: FloatArray
    upper90: FloatArray
    statement: str = field(default=STATEMENT)


@dataclass(frozen=True, slots=True)
class WhatIf:
    """One branch: interventions added to the planned inputs, ``at_min`` from now.

    ``bolus_u`` extra insulin bolus (U); ``meal_g`` a meal (g carbohydrate, as
    told, eaten at up to 5 g/min); ``basal_change_u_per_h`` added to the basal
    rate (U/h; negative lowers it, never below zero) from ``at_min`` on.
    """

    name: str
    bolus_u: float = 0.0
    meal_g: float = 0.0
    basal_change_u_per_h: float = 0.0
    at_min: int = 0

    def __post_init__(self) -> None:
        for f in ("bolus_u", "meal_g", "basal_change_u_per_h"):
            if not math.isfinite(getattr(self, f)):
                raise InputError(f"{f} must be finite", f"whatif.{f}")
        if self.bolus_u < 0 or self.meal_g < 0:
            raise InputError("bolus and meal must not be negative", "whatif")
        if isinstance(self.at_min, bool) or not isinstance(self.at_min, int) or self.at_min < 0:
            raise InputError("at_min must be a whole number of minutes >= 0", "whatif.at_min")


@dataclass(frozen=True, slots=True)
class WhatIfResult:
    """Branch trajectories of CGM readings (mg/dL), each array (twins, branches, times).

    ``t_min`` (times,) are minutes from now; ``scenarios`` name the branches.
    """

    t_min: FloatArray
    scenarios: tuple[str, ...]
    median: FloatArray
    lower50: FloatArray
    upper50: FloatArray
    lower90: FloatArray
    upper90: FloatArray
    statement: str = field(default=STATEMENT)


def _plan(
    twins: GlucoseTwins,
    minutes: int,
    basal_u_per_h: ArrayLike | None,
    insulin_u: ArrayLike | None,
    carbs_g: ArrayLike | None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Planned basal (U/min), extra insulin (U per minute) and announced carbohydrate (g)
    per minute, each (N, minutes).

    ``basal_u_per_h``: None (each twin's nominal rate), a scalar or (N,) rate held over
    the horizon, or (N, m) rates per minute (m <= minutes; the last one holds after).
    """
    n = twins.twins
    if basal_u_per_h is None:
        basal = np.repeat(twins.basal_u_per_min[:, None], minutes, axis=1)
    else:
        b = np.asarray(basal_u_per_h, dtype=np.float64)
        if b.ndim == 2:
            if b.shape[0] != n or not 1 <= b.shape[1] <= minutes:
                raise InputError(
                    f"basal_u_per_h must be ({n}, minutes <= {minutes})", "basal_u_per_h"
                )
            # A schedule shorter than the horizon: its last rate continues.
            b = np.concatenate([b, np.repeat(b[:, -1:], minutes - b.shape[1], axis=1)], axis=1)
        else:
            try:
                b = np.repeat(np.broadcast_to(b, (n,))[:, None], minutes, axis=1)
            except ValueError:
                raise InputError(
                    f"basal_u_per_h must be a scalar, ({n},) or ({n}, minutes)", "basal_u_per_h"
                ) from None
        basal = b / 60.0
        if not np.all(np.isfinite(basal)) or np.any(basal < 0):
            raise InputError("basal rate must be finite and not negative", "basal_u_per_h")
    insulin = np.zeros((n, minutes))
    carbs = np.zeros((n, minutes))
    for name, given, out in (("insulin_u", insulin_u, insulin), ("carbs_g", carbs_g, carbs)):
        if given is None:
            continue
        a = np.asarray(given, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != n or a.shape[1] > minutes:
            raise InputError(f"{name} must be ({n}, minutes <= {minutes})", name)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise InputError(f"{name} must be finite and not negative", name)
        out[:, : a.shape[1]] += a
    return basal, insulin, carbs


def _ahead(
    twins: GlucoseTwins,
    insulin: FloatArray,
    carbs: FloatArray,
    times_min: Sequence[int],
    seed: int,
    replicates: int,
) -> FloatArray:
    """Quantiles ``_QUANTILES`` of readings, (5, branches * N, len(times_min)).

    ``insulin`` (U/min) and ``carbs`` (g) are (branches, N, minutes).
    """
    s = twins.settings
    branches, n, minutes = insulin.shape
    m = twins.members
    k = len(twins.parameters)
    factor = meal_factors(s, (n, m), np.random.default_rng([seed, 0]))
    x = np.tile(twins.x, (branches, 1, 1))
    z = np.tile(twins.z, (branches, 1, 1))
    theta = np.tile(twins.theta, (branches, 1, 1))
    g = run_members(
        np.tile(twins.base, (branches, 1)),
        twins.parameters,
        x,
        z,
        theta.reshape(branches * n, m, k),
        np.tile(factor, (branches, 1)),
        carbs.reshape(branches * n, minutes),
        insulin.reshape(branches * n, minutes),
        record_at=times_min,
    )
    g = g.reshape(branches, n, m, len(times_min))
    out = np.empty((len(_QUANTILES), branches * n, len(times_min)))
    for c, t in enumerate(times_min):
        rng = np.random.default_rng([seed, 1, int(t)])
        a = sensor_decay(s, t)
        xi = rng.standard_normal((2, n, m, replicates))
        err = (
            s.sensor_mean_mg_dl
            + a * twins.sensor[:, :, None]
            + s.sensor_sd_mg_dl * math.sqrt(1.0 - a * a) * xi[0]
            + math.sqrt(s.white_sd_mg_dl**2 + s.glucose_walk_mg_dl**2 * t / 60.0) * xi[1]
        )
        reading = g[:, :, :, c, None] + err[None]
        q = np.quantile(reading.reshape(branches, n, m * replicates), _QUANTILES, axis=2)
        out[:, :, c] = q.reshape(len(_QUANTILES), branches * n)
    return out


def _check_times(times: Sequence[int], name: str) -> list[int]:
    """Whole minutes, increasing, within a week."""
    out = [int(t) for t in times]
    whole = all(t == v for t, v in zip(out, times, strict=True))
    increasing = all(b > a for a, b in itertools.pairwise(out))
    if not out or not whole or not increasing or out[0] < 1 or out[-1] > _MAX_HORIZON_MIN:
        raise InputError(f"{name} must be increasing whole minutes in 1..{_MAX_HORIZON_MIN}", name)
    return out


def _check_draws(seed: int, replicates: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError("seed must be a non-negative integer", "seed")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise InputError("replicates must be a positive integer", "replicates")


def forecast(
    twins: GlucoseTwins,
    *,
    horizons_min: Sequence[int] = HORIZONS_MIN,
    basal_u_per_h: ArrayLike | None = None,
    insulin_u: ArrayLike | None = None,
    carbs_g: ArrayLike | None = None,
    seed: int = 0,
    replicates: int = 8,
) -> GlucoseForecast:
    """CGM reading forecasts ``horizons_min`` minutes from now, for every twin.

    Planned inputs: basal rate ``basal_u_per_h`` (U/h), a scalar or (N,) held
    over the horizon or (N, minutes) per minute from now, a scheduled change
    included (default each twin's nominal basal); plus ``insulin_u`` (N,
    minutes) extra insulin per minute from now (U: planned boluses) and
    ``carbs_g`` (N, minutes) meals announced at each minute (g: planned meals).
    Quantiles over the ensemble (``replicates`` error draws per member).
    """
    times = _check_times(horizons_min, "horizons_min")
    _check_draws(seed, replicates)
    basal, insulin, carbs = _plan(twins, max(times), basal_u_per_h, insulin_u, carbs_g)
    q = _ahead(twins, (basal + insulin)[None], carbs[None], times, seed, replicates)
    return GlucoseForecast(tuple(times), q[2], q[1], q[3], q[0], q[4])


def whatif(
    twins: GlucoseTwins,
    scenarios: Sequence[WhatIf],
    *,
    horizon_min: int = 240,
    every_min: int = 5,
    basal_u_per_h: ArrayLike | None = None,
    insulin_u: ArrayLike | None = None,
    carbs_g: ArrayLike | None = None,
    seed: int = 0,
    replicates: int = 8,
) -> WhatIfResult:
    """Branch every twin now and run each scenario over ``horizon_min`` minutes.

    Planned inputs as in ``forecast``; each ``WhatIf`` adds to them (its basal
    change to the planned basal rates, never below zero). Trajectories
    every ``every_min`` minutes from ``every_min`` to ``horizon_min``. The twins
    themselves are not changed.
    """
    if not scenarios:
        raise InputError("give at least one scenario", "scenarios")
    if not (isinstance(every_min, int) and every_min >= 1):
        raise InputError("every_min must be a whole number >= 1", "every_min")
    times = _check_times(list(range(every_min, horizon_min + 1, every_min)), "horizon_min")
    _check_draws(seed, replicates)
    basal, insulin, carbs = _plan(twins, horizon_min, basal_u_per_h, insulin_u, carbs_g)
    b = len(scenarios)
    ins = np.repeat(basal[None], b, axis=0)
    meal = np.repeat(carbs[None], b, axis=0)
    for j, sc in enumerate(scenarios):
        if sc.at_min >= horizon_min:
            raise InputError("a scenario must start before the horizon", f"scenarios[{j}].at_min")
        # The change is to the basal rate only: planned boluses are still given.
        later = ins[j, :, sc.at_min :]
        ins[j, :, sc.at_min :] = np.maximum(later + sc.basal_change_u_per_h / 60.0, 0.0)
        ins[j, :, sc.at_min] += sc.bolus_u
        meal[j, :, sc.at_min] += sc.meal_g
    ins += insulin[None]
    q = _ahead(twins, ins, meal, times, seed, replicates)
    n = twins.twins
    q = q.reshape(len(_QUANTILES), b, n, len(times)).transpose(0, 2, 1, 3)
    return WhatIfResult(
        np.asarray(times, dtype=np.float64),
        tuple(sc.name for sc in scenarios),
        q[2],
        q[1],
        q[3],
        q[0],
        q[4],
    )
