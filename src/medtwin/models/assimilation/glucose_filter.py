"""Glucose twins: ensemble Kalman filtering of UVA/Padova state and personal parameters.

Many twins (patients with CGM, insulin and meal data) are filtered at once. Each
twin holds an ensemble of ``members`` copies of the UVA/Padova model
(``medtwin.models.physiology.uva_padova``): the 13 states, a sensor-error
state and a few *personal parameters* in log space. Every ``assimilate`` call
advances all twins by one sensor period (``step_min``, 5 min) with that
period's insulin and announced meals, then updates the twins that received a
CGM reading with a serial ensemble square-root filter (Whitaker and Hamill,
Mon. Wea. Rev. 130, 2002: deterministic, no perturbed observations). Twins
without a reading are only propagated.

Personal parameters (``PERSONAL``) and why these:

- ``Vmx`` (mg/kg/min per pmol/L), insulin-dependent glucose utilization: the
  main insulin sensitivity (glucose fall per unit of insulin action); it sets
  how far glucose drops after a bolus, and varies about 9-fold across the
  shipped patients.
- ``kmax`` (1/min), maximum gastric emptying rate: how fast a meal reaches
  the gut, so the timing and height of the post-meal peak (about 5-fold
  across the shipped patients).

Both are seen in every meal and bolus of ordinary CGM data, and both are
recovered when the rest of the patient's physiology is known: on ten shipped
patients, three days of data bring the mean ``|log error|`` from the prior's
0.46 to 0.25-0.32 (``Vmx``) and from 0.39 to 0.10-0.18 (``kmax``) (three filter
seeds). With the other 31 parameters at population values (a live twin), they
are *effective* values: they also absorb the mismatch of the fixed ones (the
insulin kinetics, ``p2u``, ``kp3``, the glucose kinetics and the other meal
parameters each carry part of it; giving the filter the truth of any one group
did not remove it), and ``Vmx`` itself is then mostly not closer to the
patient's own than the prior (mean ``|log error|`` 0.34-0.62 vs 0.46, worse on
four of five data seeds; ``kmax`` 0.25-0.32 vs 0.39).
Estimating more of them did not help either (tried on ten patients, one data
seed: adding ``kp3``, ``p2u``, ``kmin``, ``kabs``, ``Vi`` or ``Vm0``, the scaled
distance to the truth was at best 1 % below the prior's, mostly 3-40 % above;
adding ``Gb``, 3-9 % below on two data seeds, 75-96 % above on two), nor did
conditioning the fixed parameters and the prior on body weight and basal rate
(the population regression, leaving the patient out: 6 of 10 closer, as without).

What the data do pin down with population physiology is what the personal
parameters *imply* for the patient as a whole, and these are the quantities a
clinician uses (``GlucoseTwins.clinical_estimates``): the correction factor
(glucose fall after one unit of insulin at rest, mg/dL per U;
``correction_factor_mg_dl_per_u``), which depends on ``Vmx`` only given the
rest, and the time to absorb a quarter of a 50 g meal (min;
``meal_absorption_min``), which depends on ``kmax`` only. Over data seeds 1-5
the correction factor's mean ``|log error|`` is 0.21-0.26 against the
population twin's 0.58 and the quarter-absorption time's 0.05-0.11 against
0.22, and the pair is closer to the patient's own than the population twin's
for 8-9 of 10 patients (``tests/models/assimilation/test_glucose_twin.py``).
The later part of the absorption (half or three quarters absorbed, measured
the same way) is not recovered better than the prior:
once the bolus acts, slow absorption and strong insulin action both keep
glucose down, and the data do not tell them apart.

``Gb`` (mg/dL, fasting glucose under the nominal basal) can be estimated too
(``population_prior(("Gb", "Vmx", "kmax"))``): it stands in for the production
constant ``kp1``, which the filter always re-solves from ``Gb`` so a twin at its
basal rate rests at ``Gb`` whatever its other parameters. It is not estimated by
default: the population spread is only +-5 % (133-153 mg/dL), three days of
data did not improve on the prior (mean ``|log error|`` 0.022-0.035 vs 0.021),
and estimating it made the 60-minute forecasts slightly worse.

Left at population values, on purpose (tried on ten shipped patients):
``kabs``, the intestinal
absorption rate, because slow absorption is either slow emptying or slow uptake
from the gut (the classic flip-flop): estimated together with ``kmax`` the two
drift along that ridge and ``kabs`` ended far from the truth (a factor of 20 for
``child#002``); ``kp3`` (hepatic insulin sensitivity), which acts in the same
direction as ``Vmx`` through the slow delay ``ki`` and is not told apart from it
on CGM data; the insulin kinetics (``m1``, ``m2``, ``m4``, ``m30``, ``ka1``,
``ka2``, ``kd``, ``Vi``), with plasma insulin unmeasured not separable from
``Vmx``; ``Vg``, ``k1``, ``k2``, ``Km0``, ``Vm0`` (small spread, or seen only in
the shape of the curve far from the data). Body weight is a known covariate;
the basal rate (U/h) is the twin's therapy setting and sets its basal plasma
insulin ``Ib`` (``basal_insulin_pmol_l``). Any other choice can be passed to
``population_prior``.

Priors (``population_prior``): the log parameters are normal with the mean and
covariance of the shipped virtual patients (``virtual_patients()``); the
parameters not estimated take the population's geometric mean. Parameters
follow a bounded random walk in log space (``Settings.param_walk``) and their
spread is inflated slightly at each reading (``Settings.inflation``), so the
ensemble does not collapse and a twin follows slow physiological change.

CGM error: the sensor error of ``physiology.sensor`` (Johnson SU, autocorrelated
over about half an hour) is a state of each member, an AR(1) process with the
sensor's stationary mean and SD, plus a small white error; treating it as white
would make the filter believe consecutive readings as independent and become
overconfident.

Units: time in minutes, glucose mg/dL, insulin U (amounts) and U/min (rates),
carbohydrate g, body weight kg; model states as ``uva_padova.model.STATES``.

Results support, and do not replace, clinical judgement (``STATEMENT``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medtwin.core.errors import InputError
from medtwin.models.assimilation._glucose_kernel import (
    EAT_RATE,
    NZ,
    Z_QSTO,
    analysis,
    propagate,
)
from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY, PMOL_PER_U, STATES
from medtwin.models.physiology.uva_padova.patients import virtual_patients
from medtwin.models.physiology.uva_padova.steady_state import steady_state

__all__ = [
    "PERSONAL",
    "STATEMENT",
    "GlucosePrior",
    "GlucoseTwins",
    "Settings",
    "assimilate",
    "basal_insulin_pmol_l",
    "correction_factor_mg_dl_per_u",
    "init_twins",
    "meal_absorption_min",
    "population_prior",
]

STATEMENT = "Supports, does not replace, clinical judgement."
PERSONAL = ("Vmx", "kmax")
"""Personal parameters estimated by default (see the module docstring)."""

_P = {q.name: i for i, q in enumerate(PHYSIOLOGY)}
_NX = len(STATES)
_GP, _GT, _GS = 3, 4, 12
# RK4 at one minute is stable for rates below about 2.7/min: kabs is kept under 2.
_HARD_UPPER = {"kabs": 2.0}
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class GlucosePrior:
    """Population prior of the personal parameters, and typical values of the rest.

    ``mean_log`` (k,) and ``cov_log`` (k, k) describe ``log(parameter)`` (natural
    log of the value in its ``PHYSIOLOGY`` unit); ``lower_log``/``upper_log``
    bound the estimates; ``typical`` (33,) is the physiology of a typical patient
    (geometric means) used for every parameter that is not estimated.
    """

    parameters: tuple[str, ...]
    mean_log: FloatArray
    cov_log: FloatArray
    lower_log: FloatArray
    upper_log: FloatArray
    typical: FloatArray

    @property
    def sd_log(self) -> FloatArray:
        sd: FloatArray = np.sqrt(np.diag(self.cov_log))
        return sd

    @property
    def median(self) -> dict[str, float]:
        """Prior median of each personal parameter (its unit in ``PHYSIOLOGY``)."""
        return {n: float(np.exp(m)) for n, m in zip(self.parameters, self.mean_log, strict=True)}


def population_prior(
    parameters: Sequence[str] = PERSONAL, *, patients: Sequence[str] | None = None
) -> GlucosePrior:
    """Prior from the shipped virtual patients (all 30, or the ``patients`` named).

    Bounds are the population's range widened 2-fold each way (``kabs`` at most
    2/min, for the one-minute RK4 step).
    """
    names = list(parameters)
    if not names or len(set(names)) != len(names):
        raise InputError("give one or more distinct parameter names", "parameters")
    for n in names:
        if n not in _P or n in ("BW", "kp1", "Ib", "u2ss"):
            raise InputError(f"{n!r} cannot be a personal parameter", "parameters")
    vps = virtual_patients()
    chosen = list(patients) if patients is not None else sorted(vps)
    if len(chosen) < 2:
        raise InputError("a population prior needs at least two patients", "patients")
    try:
        phys = np.array([vps[n].physiology for n in chosen], dtype=np.float64)
    except KeyError as exc:
        raise InputError(f"unknown virtual patient {exc.args[0]!r}", "patients") from None
    logs = np.log(phys)
    typical = np.exp(logs.mean(axis=0))
    cols = [_P[n] for n in names]
    sample = logs[:, cols]
    cov = np.atleast_2d(np.cov(sample, rowvar=False))
    lower = sample.min(axis=0) - np.log(2.0)
    upper = sample.max(axis=0) + np.log(2.0)
    for j, n in enumerate(names):
        if n in _HARD_UPPER:
            upper[j] = min(upper[j], np.log(_HARD_UPPER[n]))
    return GlucosePrior(tuple(names), sample.mean(axis=0), cov, lower, upper, typical)


@dataclass(frozen=True, slots=True)
class Settings:
    """Filter settings; the defaults were tuned on the shipped virtual patients.

    - ``members``: ensemble size per twin;
    - ``step_min``: minutes per ``assimilate`` call (the CGM period);
    - ``sensor_sd_mg_dl``, ``sensor_mean_mg_dl``, ``sensor_tau_min``: stationary SD
      and mean (mg/dL) and correlation time (min) of the AR(1) sensor error
      (defaults fitted to ``physiology.sensor.CgmSensor()``'s noise);
    - ``white_sd_mg_dl``: uncorrelated reading error (mg/dL);
    - ``param_walk``: random-walk SD of each log parameter per hour, as a fraction
      of its prior SD;
    - ``glucose_walk_mg_dl``: random-walk SD of plasma glucose per hour (mg/dL), for
      what the model leaves out (exercise, stress, model error);
    - ``meal_cv``: coefficient of variation of a told meal size (each member
      eats its own draw of the meal);
    - ``inflation``: multiplicative inflation of the parameter spread per analysis.

    Tuned on the shipped patients (ten patients, three days, population
    physiology unless said): the glucose walk sets the 90 % interval's coverage
    (57-67 % at 6 mg/dL/h with 32 members; 87-91 % at 15 and 91-94 % at 20 with
    64; 87-94 % at 17 with the inflation, over five data seeds); 64 members and
    a parameter walk of 0.05 instead of 32 and 0.02 took parameter recovery
    (known structure) from 6 to 10 of 10 patients closer than the prior, one
    seed; the inflation of 1.005 took the 60-min forecast error from 27-30 % to
    30-37 % below the state-only population filter's (five seeds).
    """

    members: int = 64
    step_min: int = 5
    sensor_sd_mg_dl: float = 11.7
    sensor_mean_mg_dl: float = 0.7
    sensor_tau_min: float = 40.0
    white_sd_mg_dl: float = 3.0
    param_walk: float = 0.05
    glucose_walk_mg_dl: float = 17.0
    meal_cv: float = 0.3
    inflation: float = 1.005

    def __post_init__(self) -> None:
        if not (isinstance(self.members, int) and self.members >= 4):
            raise InputError("members must be an integer >= 4", "settings.members")
        if not (isinstance(self.step_min, int) and self.step_min >= 1):
            raise InputError("step_min must be a whole number of minutes >= 1", "settings.step_min")
        for name in ("sensor_sd_mg_dl", "sensor_tau_min", "white_sd_mg_dl"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive", f"settings.{name}")
        for name in ("param_walk", "glucose_walk_mg_dl", "meal_cv"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must not be negative", f"settings.{name}")
        if not self.inflation >= 1.0:
            raise InputError("inflation must be >= 1", "settings.inflation")


_ARRAYS = ("x", "z", "theta", "sensor", "base", "basal_u_per_min", "t_min")


@dataclass(slots=True, eq=False)
class GlucoseTwins:
    """Filter state of ``N`` twins with ``M`` members each; plain arrays.

    - ``x`` (N, M, 13): UVA/Padova states (units of ``uva_padova.model.STATES``);
    - ``z`` (N, M, 4): meal bookkeeping (stomach content at meal start mg, eaten
      since g, last minute's intake g/min, queued carbohydrate g);
    - ``theta`` (N, M, k): log personal parameters (``parameters``);
    - ``sensor`` (N, M): sensor error state (mg/dL);
    - ``base`` (N, 33): the physiology the personal parameters are written over
      (body weight and basal insulin ``Ib`` per twin);
    - ``basal_u_per_min`` (N,): nominal basal rate (U/min);
    - ``t_min`` (N,): minutes assimilated so far.

    ``assimilate`` updates the arrays in place. ``to_dict``/``from_dict`` give
    and take plain numpy arrays, for storage.
    """

    x: FloatArray
    z: FloatArray
    theta: FloatArray
    sensor: FloatArray
    base: FloatArray
    basal_u_per_min: FloatArray
    t_min: FloatArray
    prior: GlucosePrior
    settings: Settings = field(default_factory=Settings)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.prior.parameters

    @property
    def twins(self) -> int:
        return int(self.x.shape[0])

    @property
    def members(self) -> int:
        return int(self.x.shape[1])

    def parameter_samples(self, name: str) -> FloatArray:
        """Ensemble of one personal parameter (N, M), in its ``PHYSIOLOGY`` unit."""
        if name not in self.parameters:
            raise InputError(f"{name!r} is not estimated (estimated: {self.parameters})", "name")
        out: FloatArray = np.exp(self.theta[:, :, self.parameters.index(name)])
        return out

    def estimates(self) -> dict[str, FloatArray]:
        """Posterior median of each personal parameter (N,), in its ``PHYSIOLOGY`` unit."""
        return {n: np.median(self.parameter_samples(n), axis=1) for n in self.parameters}

    def clinical_estimates(self) -> dict[str, FloatArray]:
        """Posterior median (N,) of the twin's identifiable clinical quantities:
        ``correction_factor_mg_dl_per_u`` (``correction_factor_mg_dl_per_u``) and
        ``meal_absorption_t25_min`` (``meal_absorption_min``: minutes to absorb a quarter
        of a 50 g meal), each computed for every member from its parameters over the
        twin's physiology (see the module docstring for why these)."""
        basal = self.basal_u_per_min
        cf = correction_factor_mg_dl_per_u(self.base, self.parameters, self.theta, basal)
        t25 = meal_absorption_min(self.base, self.parameters, self.theta, basal)
        return {
            "correction_factor_mg_dl_per_u": np.median(cf, axis=1),
            "meal_absorption_t25_min": np.median(t25, axis=1),
        }

    def glucose_mg_dl(self) -> FloatArray:
        """Plasma glucose Gp/Vg of every member (N, M), mg/dL."""
        out: FloatArray = self.x[:, :, _GP] / self.base[:, None, _P["Vg"]]
        return out

    def copy(self) -> GlucoseTwins:
        return GlucoseTwins(
            **{n: getattr(self, n).copy() for n in _ARRAYS},
            prior=self.prior,
            settings=self.settings,
        )

    def select(self, index: ArrayLike) -> GlucoseTwins:
        """A copy holding only the twins at ``index`` (int or sequence)."""
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        return GlucoseTwins(
            **{n: np.ascontiguousarray(getattr(self, n)[idx]) for n in _ARRAYS},
            prior=self.prior,
            settings=self.settings,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays and numbers: the state, its prior and its settings."""
        out: dict[str, Any] = {n: getattr(self, n).copy() for n in _ARRAYS}
        out["version"] = STATE_VERSION
        out["parameters"] = np.array(self.parameters)
        for n in ("mean_log", "cov_log", "lower_log", "upper_log", "typical"):
            out[f"prior_{n}"] = getattr(self.prior, n).copy()
        for n in Settings.__dataclass_fields__:
            out[f"settings_{n}"] = getattr(self.settings, n)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GlucoseTwins:
        """Rebuild from ``to_dict``'s output (e.g. after ``numpy.savez``)."""
        try:
            if int(data["version"]) != STATE_VERSION:
                raise InputError(f"unknown state version {data['version']}", "version")
            prior = GlucosePrior(
                tuple(str(s) for s in np.asarray(data["parameters"]).tolist()),
                *(
                    np.asarray(data[f"prior_{n}"], dtype=np.float64)
                    for n in ("mean_log", "cov_log", "lower_log", "upper_log", "typical")
                ),
            )
            settings = Settings(
                **{
                    n: type(getattr(Settings(), n))(np.asarray(data[f"settings_{n}"]).item())
                    for n in Settings.__dataclass_fields__
                }
            )
            arrays = {n: np.array(data[n], dtype=np.float64) for n in _ARRAYS}
        except KeyError as exc:
            raise InputError(f"missing {exc.args[0]!r}", str(exc.args[0])) from None
        twins = cls(**arrays, prior=prior, settings=settings)
        _check_shapes(twins)
        return twins


def _check_shapes(t: GlucoseTwins) -> None:
    n, m = t.x.shape[:2]
    k = len(t.parameters)
    expected = {
        "x": (n, m, _NX),
        "z": (n, m, NZ),
        "theta": (n, m, k),
        "sensor": (n, m),
        "base": (n, len(PHYSIOLOGY)),
        "basal_u_per_min": (n,),
        "t_min": (n,),
    }
    for name, shape in expected.items():
        if getattr(t, name).shape != shape:
            raise InputError(f"{name} must be {shape}, got {getattr(t, name).shape}", name)


def basal_insulin_pmol_l(physiology: FloatArray, basal_u_per_min: FloatArray) -> FloatArray:
    """Steady plasma insulin (pmol/L) under a basal rate (U/min), per row of ``physiology``.

    From the subcutaneous and hepatic balances of the model: plasma insulin
    ``Ip = u / (m2 + m4 - m1 m2 / (m1 + m30))`` with ``u`` in pmol/kg/min, over ``Vi``.
    """

    def c(name: str) -> FloatArray:
        return physiology[:, _P[name]]

    u = basal_u_per_min * PMOL_PER_U / c("BW")
    ip = u / (c("m2") + c("m4") - c("m1") * c("m2") / (c("m1") + c("m30")))
    out: FloatArray = ip / c("Vi")
    return out


def _vector(a: ArrayLike | None, n: int, name: str, default: float = 0.0) -> FloatArray:
    if a is None:
        return np.full(n, default)
    v = np.asarray(a, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(n, float(v))
    if v.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {v.shape}", name)
    return v


def init_twins(
    prior: GlucosePrior,
    *,
    body_weight_kg: ArrayLike,
    basal_u_per_h: ArrayLike,
    glucose_mg_dl: ArrayLike | None = None,
    physiology: FloatArray | None = None,
    theta_mean: FloatArray | None = None,
    theta_cov: FloatArray | None = None,
    settings: Settings | None = None,
    rng: np.random.Generator,
) -> GlucoseTwins:
    """New twins at their fasting steady state, personal parameters from the prior.

    ``body_weight_kg`` and ``basal_u_per_h`` (nominal basal rate) are per twin
    (N,) or scalars. Each member's log parameters are drawn from
    ``N(theta_mean, theta_cov)`` (default: the prior; ``map_fit`` gives a
    posterior to start from), clipped to the prior's bounds. With
    ``glucose_mg_dl`` (N,), a first reading, members start at that glucose
    instead of their ``Gb``. ``physiology`` (N, 33) replaces the population's
    typical values for the parameters that are not estimated (e.g. known from
    an earlier fit); body weight and ``Ib`` are set from the covariates.
    """
    settings = settings or Settings()
    bw = np.atleast_1d(np.asarray(body_weight_kg, dtype=np.float64))
    n = bw.size
    basal = _vector(basal_u_per_h, n, "basal_u_per_h") / 60.0
    if not (np.all(bw > 0) and np.all(basal > 0)):
        raise InputError("body weight and basal rate must be positive", "body_weight_kg")
    m, k = settings.members, len(prior.parameters)
    base = twin_physiology(prior, bw, basal, physiology)
    mean = np.broadcast_to(prior.mean_log if theta_mean is None else theta_mean, (n, k))
    cov = np.broadcast_to(prior.cov_log if theta_cov is None else theta_cov, (n, k, k))
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(k))
    draws = rng.standard_normal((n, m, k))
    theta = mean[:, None, :] + np.einsum("nij,nmj->nmi", chol, draws)
    theta = np.clip(theta, prior.lower_log, prior.upper_log)
    g0 = None if glucose_mg_dl is None else _vector(glucose_mg_dl, n, "glucose_mg_dl")
    x = rest_state(base, prior.parameters, theta, g0)
    z = np.zeros((n, m, NZ))
    z[:, :, Z_QSTO] = x[:, :, 0] + x[:, :, 1]
    sensor = settings.sensor_sd_mg_dl * rng.standard_normal((n, m))
    return GlucoseTwins(
        x=np.ascontiguousarray(x),
        z=z,
        theta=np.ascontiguousarray(theta),
        sensor=sensor,
        base=base,
        basal_u_per_min=basal,
        t_min=np.zeros(n),
        prior=prior,
        settings=settings,
    )


def twin_physiology(
    prior: GlucosePrior,
    body_weight_kg: FloatArray,
    basal_u_per_min: FloatArray,
    physiology: FloatArray | None = None,
) -> FloatArray:
    """The (N, 33) physiology under the personal parameters of N twins.

    The prior's typical values (or ``physiology``), with each twin's body weight
    (kg) and the basal plasma insulin ``Ib`` (pmol/L) its basal rate (U/min) gives.
    """
    n = body_weight_kg.size
    if physiology is None:
        base = np.tile(prior.typical, (n, 1))
    else:
        base = np.array(physiology, dtype=np.float64)
        if base.shape != (n, len(PHYSIOLOGY)) or not np.all(np.isfinite(base) & (base > 0)):
            raise InputError(f"physiology must be ({n}, {len(PHYSIOLOGY)}), positive", "physiology")
    base[:, _P["BW"]] = body_weight_kg
    base[:, _P["Ib"]] = basal_insulin_pmol_l(base, basal_u_per_min)
    return base


def rest_state(
    base: FloatArray,
    parameters: Sequence[str],
    theta: FloatArray,
    glucose_mg_dl: FloatArray | None = None,
) -> FloatArray:
    """Fasting steady state (N, M, 13) of every member: ``theta`` (N, M, k) over ``base``.

    With ``glucose_mg_dl`` (N,), plasma, tissue and subcutaneous glucose are scaled
    so each member starts at that glucose instead of its ``Gb``.
    """
    n, m, k = theta.shape
    full = np.repeat(base, m, axis=0)
    full[:, [_P[p] for p in parameters]] = np.exp(theta.reshape(n * m, k))
    x, _ = steady_state(full)
    x = x.reshape(n, m, _NX)
    if glucose_mg_dl is not None:
        ratio = (glucose_mg_dl[:, None] * base[:, None, _P["Vg"]]) / x[:, :, _GP]
        ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)
        for j in (_GP, _GT, _GS):
            x[:, :, j] *= ratio
    return np.ascontiguousarray(x)


def per_minute(a: ArrayLike | None, n: int, minutes: int, name: str, spread: bool) -> FloatArray:
    """An input as (twins, minutes): (N,) totals, spread evenly or all at the first minute."""
    if a is None:
        return np.zeros((n, minutes))
    v = np.asarray(a, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(n, float(v))
    if v.shape == (n, minutes):
        out = np.ascontiguousarray(v)
    elif v.shape == (n,):
        if spread:
            out = np.repeat(v[:, None] / minutes, minutes, axis=1)
        else:
            out = np.zeros((n, minutes))
            out[:, 0] = v
    else:
        raise InputError(f"{name} must be ({n},) or ({n}, {minutes}), got {v.shape}", name)
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise InputError(f"{name} must be finite and not negative", name)
    return out


def per_minute_history(
    a: ArrayLike, n: int, steps: int, step_min: int, name: str, spread: bool
) -> FloatArray:
    """(N, steps) amounts per step as (N, steps * step_min) per minute: spread evenly
    (insulin, U -> U/min) or all at the step's first minute (carbohydrate, g)."""
    v = np.asarray(a, dtype=np.float64)
    if v.shape != (n, steps):
        raise InputError(f"{name} must be ({n}, {steps}), got {v.shape}", name)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise InputError(f"{name} must be finite and not negative", name)
    if spread:
        return np.repeat(v / step_min, step_min, axis=1)
    out = np.zeros((n, steps * step_min))
    out[:, ::step_min] = v
    return out


def meal_factors(
    settings: Settings, shape: tuple[int, ...], rng: np.random.Generator
) -> FloatArray:
    """Log-normal multipliers (mean 1, CV ``meal_cv``) of told meal sizes."""
    if settings.meal_cv == 0:
        return np.ones(shape)
    s = np.sqrt(np.log1p(settings.meal_cv**2))
    out: FloatArray = rng.lognormal(-0.5 * s * s, s, size=shape)
    return out


def run_members(
    base: FloatArray,
    parameters: Sequence[str],
    x: FloatArray,
    z: FloatArray,
    theta: FloatArray,
    factor: FloatArray,
    carbs: FloatArray,
    insulin: FloatArray,
    record_at: Sequence[int] | NDArray[np.int64] = (),
) -> FloatArray:
    """Propagate member arrays (N, M, ...) in place; Gs/Vg (N, M, len(record_at)), mg/dL.

    ``base`` (N, 33) physiology, ``theta`` (N, M, k) logs of ``parameters``
    written over it; ``factor`` (N, M) meal-size multipliers; ``carbs`` (g
    announced) and ``insulin`` (U/min) are (N, minutes); readings are recorded
    after each minute in ``record_at`` (increasing).
    """
    lanes = x.shape[0] * x.shape[1]
    members = x.shape[1]
    at = np.asarray(record_at, dtype=np.int64)
    n_rec = at.size
    y = np.full((lanes, n_rec), np.nan)
    est = np.array([_P[p] for p in parameters], dtype=np.int64)
    xl, zl, tl = x.reshape(lanes, _NX), z.reshape(lanes, NZ), theta.reshape(lanes, -1)
    propagate(
        xl,
        zl,
        tl,
        np.ascontiguousarray(base),
        est,
        members,
        np.ascontiguousarray(factor.reshape(lanes)),
        np.ascontiguousarray(carbs),
        np.ascontiguousarray(insulin),
        at,
        y,
    )
    if not np.shares_memory(xl, x):
        x[...] = xl.reshape(x.shape)
    if not np.shares_memory(zl, z):
        z[...] = zl.reshape(z.shape)
    return y.reshape(x.shape[0], members, n_rec)


def sensor_decay(settings: Settings, minutes: float) -> float:
    """Correlation of the AR(1) sensor error over ``minutes``."""
    return float(np.exp(-minutes / settings.sensor_tau_min))


def assimilate(
    twins: GlucoseTwins,
    cgm_mg_dl: ArrayLike,
    *,
    insulin_u: ArrayLike | None = None,
    carbs_g: ArrayLike | None = None,
    rng: np.random.Generator,
) -> GlucoseTwins:
    """Advance every twin one step (``settings.step_min``) and update on a reading.

    ``insulin_u``: insulin delivered during the step (U, basal included), (N,)
    spread evenly over the step or (N, step_min) per minute; None: none at all.
    ``carbs_g``: carbohydrate announced (told; may be wrong) at the step's start
    (g), (N,) or (N, step_min) per minute. ``cgm_mg_dl`` (N,): the reading at
    the step's end; NaN where a twin has none (it is only propagated).
    Updates ``twins`` in place and returns it.
    """
    s = twins.settings
    n, m = twins.twins, twins.members
    minutes = s.step_min
    y_obs = _vector(cgm_mg_dl, n, "cgm_mg_dl")
    insulin = per_minute(insulin_u, n, minutes, "insulin_u", spread=True)
    carbs = per_minute(carbs_g, n, minutes, "carbs_g", spread=False)
    factor = np.ones((n, m))
    eating = np.flatnonzero(carbs.sum(axis=1) > 0)
    if eating.size:
        factor[eating] = meal_factors(s, (eating.size, m), rng)
    run_members(twins.base, twins.parameters, twins.x, twins.z, twins.theta, factor, carbs, insulin)
    twins.t_min += minutes
    # Process noise: parameter random walk, plasma glucose walk, AR(1) sensor error.
    root_h = np.sqrt(minutes / 60.0)
    k = len(twins.parameters)
    draws = rng.standard_normal((n, m, k + 2))
    twins.theta += (twins.prior.sd_log * s.param_walk * root_h) * draws[:, :, :k]
    np.clip(twins.theta, twins.prior.lower_log, twins.prior.upper_log, out=twins.theta)
    vg = twins.base[:, _P["Vg"]]
    twins.x[:, :, _GP] += (vg * s.glucose_walk_mg_dl * root_h)[:, None] * draws[:, :, k]
    np.maximum(twins.x[:, :, _GP], 0.0, out=twins.x[:, :, _GP])
    a = sensor_decay(s, minutes)
    twins.sensor *= a
    twins.sensor += (s.sensor_sd_mg_dl * np.sqrt(1.0 - a * a)) * draws[:, :, k + 1]
    analysis(
        twins.x,
        twins.theta,
        twins.sensor,
        y_obs,
        np.ascontiguousarray(vg),
        s.sensor_mean_mg_dl,
        s.white_sd_mg_dl**2,
        s.inflation,
        twins.prior.lower_log,
        twins.prior.upper_log,
    )
    return twins


def _at_rest(
    base: FloatArray, parameters: Sequence[str], theta: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Fasting steady state (N, P, 13) and empty-meal bookkeeping of every member."""
    x = rest_state(base, parameters, theta)
    z = np.zeros((*x.shape[:2], NZ))
    z[:, :, Z_QSTO] = x[:, :, 0] + x[:, :, 1]
    return x, z


def correction_factor_mg_dl_per_u(
    base: FloatArray,
    parameters: Sequence[str],
    theta: FloatArray,
    basal_u_per_min: FloatArray,
    *,
    hours: int = 8,
) -> FloatArray:
    """The model's correction factor (mg/dL per U) of every member, (N, P).

    The largest fall of sensor glucose (Gs/Vg) within ``hours`` after one extra unit of
    insulin, given at the fasting steady state under the basal rate (U/min, (N,)):
    the insulin sensitivity factor of clinical practice, computed from the whole model
    (``theta`` (N, P, k) logs of ``parameters`` written over ``base`` (N, 33)).
    """
    x, z = _at_rest(base, parameters, theta)
    n, p = x.shape[:2]
    minutes = hours * 60
    insulin = np.repeat(basal_u_per_min[:, None], minutes, axis=1)
    insulin[:, 0] += 1.0
    g0 = x[:, :, 12] / base[:, None, _P["Vg"]]
    carbs = np.zeros((n, minutes))
    y = run_members(
        base, parameters, x, z, theta, np.ones((n, p)), carbs, insulin, range(1, minutes + 1)
    )
    out: FloatArray = g0 - y.min(axis=2)
    return out


def meal_absorption_min(
    base: FloatArray,
    parameters: Sequence[str],
    theta: FloatArray,
    basal_u_per_min: FloatArray,
    *,
    fraction: float = 0.25,
    meal_g: float = 50.0,
    hours: int = 8,
) -> FloatArray:
    """Minutes until ``fraction`` (default a quarter) of a ``meal_g`` g meal has left
    the gut, (N, P): how fast a meal starts to reach the blood.

    The meal is eaten at rest from minute 0 (at 5 g/min, as the twins eat) under the
    basal rate (U/min, (N,)); absorbed is what was eaten less what is still in the
    stomach and the gut (``Qsto1 + Qsto2 + Qgut``). NaN where less is absorbed by
    ``hours``. ``theta`` (N, P, k) as in ``correction_factor_mg_dl_per_u``.
    """
    x, z = _at_rest(base, parameters, theta)
    n, p = x.shape[:2]
    target = fraction * meal_g
    out = np.full((n, p), np.nan)
    ones = np.ones((n, p))
    basal = basal_u_per_min[:, None]
    eaten = 0.0
    for m in range(hours * 60):
        carbs = np.full((n, 1), meal_g if m == 0 else 0.0)
        run_members(base, parameters, x, z, theta, ones, carbs, basal)
        eaten = min(eaten + EAT_RATE, meal_g)
        absorbed = eaten - (x[:, :, 0] + x[:, :, 1] + x[:, :, 2]) / 1000.0
        reached = np.isnan(out) & (absorbed >= target)
        out[reached] = m + 1.0
        if not np.isnan(out).any():
            break
    return out
