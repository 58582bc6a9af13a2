"""Bayesian MAP dose individualization from population PK priors and drug levels.

A ``PopulationModel`` gives typical values from covariates, log-normal
between-subject variability (``P_i = P_typical * exp(eta_i)``,
``eta ~ N(0, diag(omega2))``) and a combined residual error
(``var = sigma_add**2 + (sigma_prop * C)**2``). ``map_estimate`` maximizes
the log posterior over ``eta`` (L-BFGS-B; the gradient by central
differences, all perturbations simulated in one batched call) and returns a
Laplace (Gauss-Newton) approximation of the posterior covariance of
``eta``. ``recommend_dose`` picks an infusion dose for a trough range or an
AUC24 range at steady state and gives the predicted steady-state curve with
a 5-95 % band from posterior samples (parameter uncertainty only, without
residual error), simulated together in one call.

Concentrations come from the compartmental models of
``medtwin.models.physiology.pkpd`` integrated by
``medtwin.models.physiology.engine.simulate`` (RK4, one step per grid
interval of ``dt_min``); doses are ``pkpd.Dose``. Units: time in min for
doses and levels (``Dose.at_min``, ``Level.at_min``), hours for the dosing
interval and infusion length of a recommendation, clearances L/h, volumes L,
amounts mg, concentrations mg/L, AUC mg h/L, CrCL mL/min, weight kg.

Every ``Recommendation`` carries ``STATEMENT``: it supports, and does not
replace, clinical judgement.

Shipped model, ``GOTI_2018_VANCOMYCIN``: the vancomycin two-compartment
model of Goti V, Chaturvedula A, Fossler MJ, Mok S, Jacob JT. Ther Drug
Monit. 2018;40(2):212-221 (adult hospitalized patients, with and without
hemodialysis). Structural model and fixed effects, as published:

- CL (L/h) = 4.5 * (CrCL / 120)^0.8 * 0.7^DIAL  (CrCL in mL/min,
  Cockcroft-Gault; DIAL = 1 on hemodialysis)
- V1 (L) = 58.4 * (WT / 70) * 0.5^DIAL  (WT in kg, total body weight)
- Q (L/h) = 6.5, V2 (L) = 38.4 * (WT / 70)  (the paper normalized every
  volume to 70 kg before the other covariates were examined; Table 2 lists
  only the covariates kept on top of that)

Between-subject variability, log-normal, from the %CV of Table 2 as
omega^2 = ln(CV^2 + 1): CL 39.8 % (0.1470), V1 81.6 % (0.5103), V2
57.1 % (0.2822); residual error proportional 22.7 % plus additive 3.4 mg/L
(SD). Every value as traced to its row of Table 2 by the nlmixr2lib model
library (model ``Goti_2018_vancomycin``, each value with its source location);
the paper itself was not at hand here. CrCL is Cockcroft-Gault as the paper
computed it (``crcl_cockcroft_gault``: serum creatinine floored at 1 mg/dL
above 60 years, the result capped at 150 mL/min).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from medtwin.core.errors import InputError
from medtwin.models.physiology.engine import Inputs, simulate
from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.pkpd import (
    Compartmental,
    Dose,
    OneCompartment,
    TwoCompartment,
    dose_inputs,
    regimen,
)
from medtwin.models.physiology.solvers import SaveAt

__all__ = [
    "GOTI_2018_VANCOMYCIN",
    "STATEMENT",
    "Level",
    "MapResult",
    "PopulationModel",
    "Recommendation",
    "Target",
    "crcl_cockcroft_gault",
    "map_estimate",
    "predict_levels",
    "recommend_dose",
]

STATEMENT = "Supports, does not replace, clinical judgement."

Structure = Literal["one-compartment", "two-compartment"]
_PARAMS: dict[str, tuple[str, ...]] = {
    "one-compartment": ("CL", "V1"),
    "two-compartment": ("CL", "V1", "Q2", "V2"),
}
_ONE, _TWO = OneCompartment(), TwoCompartment()
_CONC = SaveAt(outputs=("conc_mg_l",))
# PD and oral parameters the PK models declare; unused for IV dosing.
_UNUSED = {"ka": 1.0, "Emax": 0.0, "EC50": 1.0, "ke0": 1.0}
_FD_STEP = 1e-4


@dataclass(frozen=True)
class PopulationModel:
    """A population PK model: structure, covariate relations, variability.

    ``relations(theta, covariates)`` returns the typical value of every
    structural parameter (``CL``, ``V1`` and, for two compartments, ``Q2``,
    ``V2``; L/h and L) from the fixed effects ``theta`` and the patient's
    ``covariates`` (named in ``covariates``). ``omega2`` is the variance of
    the log-normal between-subject variability per parameter; a parameter
    left out has none. ``sigma_prop`` (fraction) and ``sigma_add`` (mg/L)
    are the standard deviations of the combined residual error.
    """

    name: str
    structure: Structure
    theta: Mapping[str, float]
    relations: Callable[[Mapping[str, float], Mapping[str, float]], dict[str, float]]
    covariates: tuple[str, ...]
    omega2: Mapping[str, float]
    sigma_prop: float
    sigma_add: float
    citation: str

    @property
    def params(self) -> tuple[str, ...]:
        """Structural parameter names, in the PK model's order."""
        return _PARAMS[self.structure]

    @property
    def eta_names(self) -> tuple[str, ...]:
        """Parameters with between-subject variability, in ``params`` order."""
        return tuple(p for p in self.params if p in self.omega2)

    def typical(self, covariates: Mapping[str, float]) -> dict[str, float]:
        """Typical parameter values (L/h, L) for these covariates."""
        for name in self.covariates:
            if name not in covariates or not math.isfinite(covariates[name]):
                raise InputError(f"{self.name} needs covariate {name!r}", f"covariates.{name}")
        values = self.relations(self.theta, covariates)
        return {p: float(values[p]) for p in self.params}


def _goti_relations(theta: Mapping[str, float], cov: Mapping[str, float]) -> dict[str, float]:
    dial = cov["dialysis"]
    return {
        "CL": theta["CL"]
        * (cov["crcl_ml_min"] / 120.0) ** theta["CL_crcl"]
        * theta["CL_dial"] ** dial,
        "V1": theta["V1"] * (cov["weight_kg"] / 70.0) * theta["V1_dial"] ** dial,
        "Q2": theta["Q2"],
        "V2": theta["V2"] * (cov["weight_kg"] / 70.0),
    }


def crcl_cockcroft_gault(
    age_years: float, weight_kg: float, creatinine_mg_dl: float, *, female: bool
) -> float:
    """Creatinine clearance (mL/min) by Cockcroft and Gault (Nephron 1976;16:31-41),
    with the Goti 2018 conventions: creatinine floored at 1 mg/dL above 60 years,
    the clearance capped at 150 mL/min."""
    if not (age_years > 0 and weight_kg > 0 and creatinine_mg_dl > 0):
        raise InputError("age, weight and creatinine must be positive", "covariates")
    if age_years > 60:
        creatinine_mg_dl = max(creatinine_mg_dl, 1.0)
    crcl = (140.0 - age_years) * weight_kg / (72.0 * creatinine_mg_dl)
    return min(crcl * (0.85 if female else 1.0), 150.0)


GOTI_2018_VANCOMYCIN = PopulationModel(
    name="vancomycin, Goti et al. 2018",
    structure="two-compartment",
    theta={
        "CL": 4.5,
        "CL_crcl": 0.8,
        "CL_dial": 0.7,
        "V1": 58.4,
        "V1_dial": 0.5,
        "Q2": 6.5,
        "V2": 38.4,
    },
    relations=_goti_relations,
    covariates=("weight_kg", "crcl_ml_min", "dialysis"),
    # omega^2 = ln(CV^2 + 1) of the published coefficients of variation.
    omega2={p: math.log(cv**2 + 1.0) for p, cv in {"CL": 0.398, "V1": 0.816, "V2": 0.571}.items()},
    sigma_prop=0.227,
    sigma_add=3.4,
    citation=(
        "Goti V, Chaturvedula A, Fossler MJ, Mok S, Jacob JT. Hospitalized patients with "
        "and without hemodialysis have markedly different vancomycin pharmacokinetics: a "
        "population pharmacokinetic model-based analysis. Ther Drug Monit. "
        "2018;40(2):212-221."
    ),
)


@dataclass(frozen=True, slots=True)
class Level:
    """A measured concentration ``conc_mg_l`` (mg/L) at ``at_min`` (min)."""

    at_min: float
    conc_mg_l: float


@dataclass(frozen=True, slots=True)
class Target:
    """A steady-state target: ``"trough"`` (mg/L) or ``"auc24"`` (mg h/L) in [low, high]."""

    kind: Literal["trough", "auc24"]
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.kind not in ("trough", "auc24"):
            raise InputError("must be 'trough' or 'auc24'", "target.kind")
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise InputError("need 0 < low < high", "target")


@dataclass(frozen=True)
class MapResult:
    """Individual (MAP) estimate.

    ``params`` are the individual parameters (L/h, L), ``typical`` the
    population values for the covariates, ``eta`` the log-deviations (order
    ``eta_names``), ``covariance`` the approximate posterior covariance of
    ``eta`` (Laplace, Gauss-Newton), ``objective`` minus twice the log
    posterior (up to a constant), ``ipred`` the predicted levels (mg/L).
    """

    model: PopulationModel
    covariates: Mapping[str, float]
    params: dict[str, float]
    typical: dict[str, float]
    eta: FloatArray
    eta_names: tuple[str, ...]
    covariance: FloatArray
    objective: float
    ipred: FloatArray
    converged: bool


@dataclass(frozen=True)
class Recommendation:
    """A steady-state dose recommendation for an intermittent IV infusion.

    ``t_h`` spans one steady-state dosing interval (h from the start of an
    infusion); ``conc_mg_l`` is the MAP prediction and ``band_5``/``band_95``
    the 5th/95th percentiles over posterior samples (mg/L). ``predicted`` is
    the target quantity (trough mg/L or AUC24 mg h/L) at the MAP and
    ``predicted_band`` its 5-95 % range.
    """

    dose_mg: float
    interval_h: float
    infusion_h: float
    target: Target
    predicted: float
    predicted_band: tuple[float, float]
    trough_mg_l: float
    auc24_mg_h_l: float
    in_target: bool
    t_h: FloatArray
    conc_mg_l: FloatArray
    band_5: FloatArray
    band_95: FloatArray
    citation: str
    statement: str = field(default=STATEMENT)


def _pk(model: PopulationModel) -> Compartmental:
    return _ONE if model.structure == "one-compartment" else _TWO


def _grid(t_min: float, dt_min: float, where: str) -> int:
    k = round(t_min / dt_min)
    if not math.isfinite(t_min) or t_min < 0 or abs(k * dt_min - t_min) > 1e-9 * max(1.0, t_min):
        raise InputError(f"must be a non-negative multiple of dt_min = {dt_min} min", where)
    return k


def _run(
    model: PopulationModel,
    params: Mapping[str, ArrayLike],
    doses: Sequence[Dose],
    duration_min: float,
    dt_min: float,
) -> FloatArray:
    """Concentrations (mg/L), ``(patients, intervals)``, at ``k * dt_min``."""
    pk = _pk(model)
    values = {p: np.atleast_1d(np.asarray(params[p], dtype=np.float64)) for p in model.params}
    matrix = pk.parameters(**values, **_UNUSED)
    n = matrix.shape[0]
    schedule = dose_inputs(doses, duration_min=duration_min, dt_min=dt_min)
    sol = simulate(
        pk,
        x0=pk.initial_state(n),
        params=matrix,
        inputs=Inputs(schedule, dt_min),
        saveat=_CONC,
    )
    return sol.output("conc_mg_l")


def predict_levels(
    model: PopulationModel,
    params: Mapping[str, ArrayLike],
    doses: Sequence[Dose],
    times_min: Sequence[float],
    *,
    dt_min: float = 5.0,
) -> FloatArray:
    """Concentrations (mg/L) at ``times_min``, ``(patients, times)``.

    ``params`` holds each structural parameter (L/h, L) as a scalar or a 1-D
    array over patients; all patients share ``doses``. Times must be
    multiples of ``dt_min`` (min).
    """
    if not times_min:
        raise InputError("need at least one time", "times_min")
    idx = np.array([_grid(t, dt_min, f"times_min[{j}]") for j, t in enumerate(times_min)])
    last = max([float(max(times_min))] + [d.at_min for d in doses])
    conc = _run(model, params, doses, last + dt_min, dt_min)
    return conc[:, idx]


def _individual(
    model: PopulationModel, typical: Mapping[str, float], eta: FloatArray
) -> dict[str, FloatArray]:
    """Parameters for a batch of ``eta`` rows, ``(batch, n_eta)``."""
    out = {p: np.full(eta.shape[0], typical[p]) for p in model.params}
    for j, p in enumerate(model.eta_names):
        out[p] = typical[p] * np.exp(eta[:, j])
    return out


def map_estimate(
    model: PopulationModel,
    covariates: Mapping[str, float],
    doses: Sequence[Dose],
    levels: Sequence[Level],
    *,
    dt_min: float = 5.0,
) -> MapResult:
    """MAP individual parameters from population priors and measured levels.

    Minimizes ``sum((y - f)^2 / var + log var) + eta' Omega^-1 eta`` over
    ``eta`` with L-BFGS-B (bounded at 5 SD), where ``var = sigma_add^2 +
    (sigma_prop f)^2``. Level times (min) must be multiples of ``dt_min``.
    """
    if not levels:
        raise InputError("need at least one measured level", "levels")
    for j, lv in enumerate(levels):
        if not (math.isfinite(lv.conc_mg_l) and lv.conc_mg_l >= 0):
            raise InputError("must be a non-negative concentration", f"levels[{j}].conc_mg_l")
    typical = model.typical(covariates)
    names = model.eta_names
    omega2 = np.array([model.omega2[p] for p in names])
    y = np.array([lv.conc_mg_l for lv in levels])
    idx = np.array([_grid(lv.at_min, dt_min, f"levels[{j}].at_min") for j, lv in enumerate(levels)])
    last = max([float(idx.max()) * dt_min] + [d.at_min for d in doses])
    duration = last + dt_min
    k = len(names)
    steps = np.vstack([np.zeros(k), _FD_STEP * np.eye(k), -_FD_STEP * np.eye(k)])

    def predict(etas: FloatArray) -> FloatArray:
        return _run(model, _individual(model, typical, etas), doses, duration, dt_min)[:, idx]

    def objective(etas: FloatArray) -> FloatArray:
        f = predict(etas)
        var = model.sigma_add**2 + (model.sigma_prop * f) ** 2
        return np.asarray(
            np.sum((y - f) ** 2 / var + np.log(var), axis=1) + np.sum(etas**2 / omega2, axis=1)
        )

    def value_and_grad(eta: FloatArray) -> tuple[float, FloatArray]:
        v = objective(eta + steps)
        return float(v[0]), (v[1 : k + 1] - v[k + 1 :]) / (2 * _FD_STEP)

    bound = 5.0 * np.sqrt(omega2)
    res = minimize(
        value_and_grad,
        np.zeros(k),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(-bound, bound, strict=True)),
    )
    eta = np.asarray(res.x, dtype=np.float64)
    f = predict(eta + steps)
    jac = (f[1 : k + 1] - f[k + 1 :]).T / (2 * _FD_STEP)  # (levels, k)
    var = model.sigma_add**2 + (model.sigma_prop * f[0]) ** 2
    info = np.diag(1.0 / omega2) + jac.T @ (jac / var[:, None])
    cov = np.linalg.inv(info)
    ind = _individual(model, typical, eta[None, :])
    return MapResult(
        model=model,
        covariates=dict(covariates),
        params={p: float(v[0]) for p, v in ind.items()},
        typical=typical,
        eta=eta,
        eta_names=names,
        covariance=0.5 * (cov + cov.T),
        objective=float(res.fun),
        ipred=f[0],
        converged=bool(res.success),
    )


def _terminal_rate(model: PopulationModel, p: Mapping[str, FloatArray]) -> FloatArray:
    """Slowest disposition rate constant (1/h) per patient."""
    k10 = p["CL"] / p["V1"]
    if model.structure == "one-compartment":
        return np.asarray(k10)
    k12, k21 = p["Q2"] / p["V1"], p["Q2"] / p["V2"]
    s = k10 + k12 + k21
    return np.asarray(0.5 * (s - np.sqrt(s * s - 4.0 * k10 * k21)))


def recommend_dose(
    model: PopulationModel,
    result: MapResult,
    target: Target,
    *,
    interval_h: float,
    infusion_h: float,
    increment_mg: float = 250.0,
    max_dose_mg: float = 4000.0,
    samples: int = 500,
    seed: int = 0,
    dt_min: float = 5.0,
    dose_mg: float | None = None,
) -> Recommendation:
    """Dose (a multiple of ``increment_mg``) closest to the target's midpoint, or, given
    ``dose_mg`` (mg per infusion), that dose: what if it were given (``in_target`` says
    whether its prediction lands in the target).

    Steady state is simulated (repeated infusions of ``infusion_h`` every
    ``interval_h`` for at least seven terminal half-lives of the slowest
    5 % of posterior samples, at most 120 doses); PK is linear, so one unit
    regimen is scaled to every candidate dose. The AUC24 at steady state is
    ``daily dose / CL``. The band draws ``samples`` parameter sets from the
    Laplace posterior (seeded) and simulates them in one call.
    """
    if result.model is not model:
        raise InputError("result was estimated with another model", "result")
    tau_min, inf_min = interval_h * 60.0, infusion_h * 60.0
    if not (0 < inf_min < tau_min):
        raise InputError("need 0 < infusion_h < interval_h", "infusion_h")
    tau_k = _grid(tau_min, dt_min, "interval_h")
    _grid(inf_min, dt_min, "infusion_h")
    if not (increment_mg > 0 and max_dose_mg >= increment_mg):
        raise InputError("need 0 < increment_mg <= max_dose_mg", "increment_mg")
    if samples < 10:
        raise InputError("need at least 10 samples", "samples")
    if dose_mg is not None and not (0 < dose_mg <= max_dose_mg):
        raise InputError(f"need 0 < dose_mg <= {max_dose_mg:g}", "dose_mg")
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(result.eta, result.covariance, size=samples)
    etas = np.vstack([result.eta[None, :], draws])
    params = _individual(model, result.typical, etas)
    slow = float(np.quantile(_terminal_rate(model, params), 0.05))
    count = int(min(120, max(2, math.ceil(7.0 * math.log(2.0) / slow / interval_h) + 1)))
    unit = 1000.0
    doses = regimen(Dose(0.0, unit, "iv-infusion", inf_min), tau_min, count)
    conc = _run(model, params, doses, count * tau_min + dt_min, dt_min)
    curve = conc[:, (count - 1) * tau_k : count * tau_k + 1] / unit  # per mg
    trough_per_mg = curve[:, -1]
    auc24_per_mg = (24.0 / interval_h) / params["CL"]
    per_mg = trough_per_mg if target.kind == "trough" else auc24_per_mg
    candidates = increment_mg * np.arange(1, int(max_dose_mg // increment_mg) + 1)
    mid = 0.5 * (target.low + target.high)
    if dose_mg is None:
        dose = float(candidates[np.argmin(np.abs(candidates * per_mg[0] - mid))])
    else:
        dose = float(dose_mg)
    scaled = curve * dose
    predicted = float(per_mg[0] * dose)
    lo, hi = np.quantile(per_mg[1:] * dose, [0.05, 0.95])
    b5, b95 = np.quantile(scaled[1:], [0.05, 0.95], axis=0)
    return Recommendation(
        dose_mg=dose,
        interval_h=interval_h,
        infusion_h=infusion_h,
        target=target,
        predicted=predicted,
        predicted_band=(float(lo), float(hi)),
        trough_mg_l=float(scaled[0, -1]),
        auc24_mg_h_l=float(auc24_per_mg[0] * dose),
        in_target=target.low <= predicted <= target.high,
        t_h=np.asarray(np.arange(tau_k + 1) * dt_min / 60.0, dtype=np.float64),
        conc_mg_l=scaled[0],
        band_5=np.asarray(b5),
        band_95=np.asarray(b95),
        citation=model.citation,
    )
