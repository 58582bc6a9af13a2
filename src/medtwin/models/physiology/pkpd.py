"""Compartmental pharmacokinetics with an effect-compartment Emax model.

One, two and three mammillary compartments in the clearance/volume
parameterization (Gibaldi and Perrier, *Pharmacokinetics*, 2nd ed., 1982,
ch. 1-3; Rowland and Tozer, *Clinical Pharmacokinetics*), with first-order
oral absorption from a depot and the effect compartment of Sheiner et al.,
"Simultaneous modeling of pharmacokinetics and pharmacodynamics", Clin
Pharmacol Ther 25(3), 1979, driving a sigmoid Emax model (Hill).

Units: parameters are declared as scenario users write them, clearances in
L/h, rate constants in 1/h and volumes in L; the kernels convert to the
engine's minute (x ``_H_PER_MIN``). Amounts are in mg, concentrations in
mg/L, the infusion input in mg/min.

Doses: an IV infusion is the piecewise-constant ``infusion`` input; an IV
bolus or an oral dose is an amount (mg) in ``bolus_iv`` or ``oral`` for the
interval it is given in, and the jump at the start of that interval adds it
to the central compartment, or ``F`` times it to the depot, so a bolus is an
exact jump, not a short infusion. ``dose_inputs`` turns a list of ``Dose``
into that schedule. An oral lag time is applied there (``tlag_min``): a dose
taken at ``t`` enters the depot at ``t + tlag``; the lag must be a whole
number of intervals, so the shift is exact. It is not a model parameter
because the inputs are the only place that knows when a dose was taken (a
cohort with different lags gets one schedule per patient).

States per model: ``depot`` (mg), ``central`` (mg), ``peripheral2`` and
``peripheral3`` (mg, as the model has them), ``ce`` (effect-site
concentration, mg/L) and ``eliminated`` (mg removed by CL since the start,
so ``depot + central + peripherals + eliminated`` is the bioavailable dose:
a mass balance every Runge-Kutta method keeps to rounding, and
``eliminated / CL`` is the AUC in mg h/L).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, get_args

import numpy as np
from numba import njit
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.models.physiology.model import FloatArray, Model, Output, Quantity

__all__ = [
    "Compartmental",
    "Dose",
    "OneCompartment",
    "Route",
    "ThreeCompartment",
    "TwoCompartment",
    "dose_inputs",
    "regimen",
]

# Parameters are per hour; the engine integrates per minute.
_H_PER_MIN = 1.0 / 60.0

Route = Literal["iv-bolus", "iv-infusion", "oral"]
ROUTES: tuple[str, ...] = get_args(Route)

INPUTS = (
    Quantity("infusion", "mg/min", "zero-order rate into the central compartment"),
    Quantity("bolus_iv", "mg", "IV bolus into the central compartment at the interval's start"),
    Quantity("oral", "mg", "oral dose at the interval's start; F of it enters the depot"),
)
_U_INFUSION, _U_BOLUS, _U_ORAL = 0, 1, 2

OUTPUTS = (
    Output("conc_mg_l", "mg/L", None, "central (plasma) concentration A1/V1"),
    Output("effect", "{effect}", None, "E0 + Emax Ce^hill / (EC50^hill + Ce^hill)"),
)

_PD = (
    Quantity("E0", "{effect}", "baseline effect"),
    Quantity("Emax", "{effect}", "maximal drug effect (negative for inhibition)"),
    Quantity("EC50", "mg/L", "effect-site concentration giving half of Emax"),
    Quantity("hill", "1", "Hill coefficient (1 = plain Emax)"),
    Quantity("ke0", "1/h", "effect-compartment equilibration rate"),
)

# Defaults of Compartmental.parameters: complete bioavailability, plain Emax,
# no baseline; everything else has no neutral value and must be given.
DEFAULTS = {"F": 1.0, "hill": 1.0, "E0": 0.0}

_POSITIVE = frozenset({"CL", "V1", "Q2", "V2", "Q3", "V3", "ka", "EC50", "hill", "ke0"})


def _declare(peripherals: int) -> tuple[tuple[Quantity, ...], tuple[Quantity, ...]]:
    """States and parameters of the model with ``peripherals`` peripheral compartments."""
    states = [
        Quantity("depot", "mg", "oral absorption compartment (bioavailable amount)"),
        Quantity("central", "mg", "amount in the central compartment"),
    ]
    params = [
        Quantity("CL", "L/h", "clearance from the central compartment"),
        Quantity("V1", "L", "central volume of distribution"),
    ]
    for c in range(2, 2 + peripherals):
        states.append(Quantity(f"peripheral{c}", "mg", f"amount in peripheral compartment {c}"))
        params.append(Quantity(f"Q{c}", "L/h", f"intercompartmental clearance, central <-> {c}"))
        params.append(Quantity(f"V{c}", "L", f"volume of peripheral compartment {c}"))
    states.append(Quantity("ce", "mg/L", "effect-site concentration"))
    states.append(Quantity("eliminated", "mg", "amount cleared by CL since the start"))
    params.append(Quantity("ka", "1/h", "first-order absorption rate from the depot"))
    params.append(Quantity("F", "1", "oral bioavailability"))
    return tuple(states), (*params, *_PD)


@njit(inline="always", error_model="numpy")
def _hill(ce: float, ec50: float, hill: float) -> float:
    """Hill fraction Ce^h / (EC50^h + Ce^h) for Ce >= 0 (mg/L), EC50 > 0 (mg/L), h > 0."""
    if hill == 1.0:
        return ce / (ec50 + ce)
    # 1 / (1 + (EC50/Ce)^h) cannot overflow for large Ce; Ce = 0 gives
    # EC50/0 = inf and a fraction of 0.
    return 1.0 / (1.0 + math.pow(ec50 / ce, hill))


def _kernels(states: tuple[Quantity, ...], params: tuple[Quantity, ...]) -> tuple[Any, Any, Any]:
    """Numba rhs, jump and observe kernels for the layout ``_declare`` gave.

    The layout is fixed per model, so the indices and which peripherals
    exist are closure constants: Numba freezes them and LLVM drops the
    branches for compartments the model does not have (their indices, 0
    then, are never used).
    """
    st = {v.name: i for i, v in enumerate(states)}
    pa = {v.name: i for i, v in enumerate(params)}
    two, three = "peripheral2" in st, "peripheral3" in st
    s_depot, s_central, s_ce, s_elim = st["depot"], st["central"], st["ce"], st["eliminated"]
    s_p2, s_p3 = st.get("peripheral2", 0), st.get("peripheral3", 0)
    p_cl, p_v1, p_ka, p_f = pa["CL"], pa["V1"], pa["ka"], pa["F"]
    p_q2, p_v2, p_q3, p_v3 = (pa.get(name, 0) for name in ("Q2", "V2", "Q3", "V3"))
    p_e0, p_emax, p_ec50, p_hill, p_ke0 = (pa[n] for n in ("E0", "Emax", "EC50", "hill", "ke0"))
    hpm = _H_PER_MIN

    @njit(inline="always", error_model="numpy")
    def rhs(t: Any, x: Any, u: Any, z: Any, p: Any, dx: Any, n: int) -> None:
        for i in range(x.shape[1]):
            c = x[s_central, i] / p[p_v1, i]
            absorbed = p[p_ka, i] * hpm * x[s_depot, i]
            cleared = p[p_cl, i] * hpm * c
            d1 = absorbed + u[_U_INFUSION, i] - cleared
            if two:
                f2 = p[p_q2, i] * hpm * (c - x[s_p2, i] / p[p_v2, i])
                dx[s_p2, i] = f2
                d1 -= f2
            if three:
                f3 = p[p_q3, i] * hpm * (c - x[s_p3, i] / p[p_v3, i])
                dx[s_p3, i] = f3
                d1 -= f3
            dx[s_depot, i] = -absorbed
            dx[s_central, i] = d1
            dx[s_ce, i] = p[p_ke0, i] * hpm * (c - x[s_ce, i])
            dx[s_elim, i] = cleared

    @njit(inline="always", error_model="numpy")
    def jump(k: int, t: Any, x: Any, u: Any, z: Any, p: Any, n: int) -> None:
        # Doses are exact jumps of the state at the interval's start.
        for i in range(x.shape[1]):
            x[s_central, i] += u[_U_BOLUS, i]
            x[s_depot, i] += p[p_f, i] * u[_U_ORAL, i]

    @njit(inline="always", error_model="numpy")
    def observe(t: Any, x: Any, u: Any, z: Any, p: Any, y: Any, n: int) -> None:
        # The sigmoid case needs pow, a libm call that keeps the lane loop
        # scalar; a block of plain-Emax patients (the usual case) takes a loop
        # without it that vectorizes. Both give each lane the same number.
        plain = True
        for i in range(x.shape[1]):
            y[0, i] = x[s_central, i] / p[p_v1, i]
            plain = plain and p[p_hill, i] == 1.0
        if plain:
            for i in range(x.shape[1]):
                ce = max(x[s_ce, i], 0.0)
                y[1, i] = p[p_e0, i] + p[p_emax, i] * (ce / (p[p_ec50, i] + ce))
        else:
            for i in range(x.shape[1]):
                ce = max(x[s_ce, i], 0.0)
                y[1, i] = p[p_e0, i] + p[p_emax, i] * _hill(ce, p[p_ec50, i], p[p_hill, i])

    return rhs, jump, observe


class Compartmental(Model):
    """Base of the mammillary PK/PD models; subclasses set ``peripherals``."""

    peripherals: ClassVar[int]
    inputs = INPUTS
    outputs = OUTPUTS

    _state_at: ClassVar[dict[str, int]] = {}
    _param_at: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._state_at = {q.name: i for i, q in enumerate(getattr(cls, "states", ()))}
        cls._param_at = {q.name: i for i, q in enumerate(getattr(cls, "params", ()))}

    @classmethod
    def state(cls, name: str) -> int:
        """Row of state ``name`` in ``(state, patient)`` arrays (column of ``x0``)."""
        try:
            return cls._state_at[name]
        except KeyError:
            raise InputError(f"{cls.name} has no state {name!r}", "state") from None

    @classmethod
    def param(cls, name: str) -> int:
        """Row of parameter ``name`` in ``(param, patient)`` arrays (column of ``params``)."""
        try:
            return cls._param_at[name]
        except KeyError:
            raise InputError(f"{cls.name} has no parameter {name!r}", "param") from None

    def rhs(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        """Mass flows over ``(state, patient)`` arrays: mg/min, and mg/L/min for ``ce``."""
        s, q = self.state, self.param
        dx = np.empty_like(x)
        c = x[s("central")] / p[q("V1")]
        absorbed = p[q("ka")] * _H_PER_MIN * x[s("depot")]
        cleared = p[q("CL")] * _H_PER_MIN * c
        d1 = absorbed + u[_U_INFUSION] - cleared
        for k in range(2, 2 + self.peripherals):
            flow = p[q(f"Q{k}")] * _H_PER_MIN * (c - x[s(f"peripheral{k}")] / p[q(f"V{k}")])
            dx[s(f"peripheral{k}")] = flow
            d1 = d1 - flow
        dx[s("depot")] = -absorbed
        dx[s("central")] = d1
        dx[s("ce")] = p[q("ke0")] * _H_PER_MIN * (c - x[s("ce")])
        dx[s("eliminated")] = cleared
        return dx

    def jump(
        self, k: int, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Give the interval's IV bolus and oral dose: new ``(x, z, u)``."""
        x = x.copy()
        x[self.state("central")] += u[_U_BOLUS]
        x[self.state("depot")] += p[self.param("F")] * u[_U_ORAL]
        return x, z, u

    def observe(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        """Concentration (mg/L) and effect, ``(output, patient)``."""
        q = self.param
        # Rounding can leave Ce a hair below 0, where a real power is undefined.
        ce = np.maximum(x[self.state("ce")], 0.0)
        ec50, hill = p[q("EC50")], p[q("hill")]
        with np.errstate(divide="ignore"):
            frac = np.where(hill == 1.0, ce / (ec50 + ce), 1.0 / (1.0 + (ec50 / ce) ** hill))
        effect = p[q("E0")] + p[q("Emax")] * frac
        return np.stack([x[self.state("central")] / p[q("V1")], effect])

    def initial_state(self, patients: int = 1) -> FloatArray:
        """Drug-free start, ``(patients, states)``."""
        return np.zeros((patients, len(self.states)))

    def parameters(self, **values: ArrayLike) -> FloatArray:
        """``(patients, params)`` from keyword values in the declared units.

        Each value is a scalar or a 1-D array over patients (scalars are
        shared). ``F``, ``hill`` and ``E0`` default to 1, 1 and 0; the rest
        are required. The result is checked with ``check_params``.
        """
        names = [q.name for q in self.params]
        for name in values:
            if name not in names:
                raise InputError(f"{self.name} has no parameter {name!r}", name)
        columns = []
        for name in names:
            if name in values:
                v = np.asarray(values[name], dtype=np.float64)
            elif name in DEFAULTS:
                v = np.asarray(DEFAULTS[name])
            else:
                raise InputError(f"{self.name} needs parameter {name!r}", name)
            if v.ndim > 1:
                raise InputError("must be a scalar or a 1-D array over patients", name)
            columns.append(v)
        try:
            wide = np.broadcast_arrays(*columns)
        except ValueError:
            raise InputError("parameter arrays differ in length", "params") from None
        params = np.atleast_2d(np.column_stack([np.atleast_1d(w) for w in wide]))
        self.check_params(params)
        return params

    def check_params(self, params: FloatArray) -> None:
        """Raise ``InputError`` at the first parameter out of its range.

        Volumes, clearances, rate constants, EC50 and the Hill coefficient
        must be positive, 0 < F <= 1, and E0 and Emax finite. The location is
        ``params[patient].name``.
        """
        m = np.asarray(params, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != len(self.params):
            raise InputError(
                f"params must be (patients, {len(self.params)}), got {m.shape}", "params"
            )
        for j, q in enumerate(self.params):
            col = m[:, j]
            if q.name in _POSITIVE:
                ok, rule = (col > 0) & np.isfinite(col), "must be a positive number"
            elif q.name == "F":
                ok, rule = (col > 0) & (col <= 1), "must be in (0, 1]"
            else:
                ok, rule = np.isfinite(col), "must be a finite number"
            bad = np.flatnonzero(~ok)
            if bad.size:
                i = int(bad[0])
                raise InputError(
                    f"{q.name} {rule} ({q.unit}), got {col[i]}", f"params[{i}].{q.name}"
                )


_S1, _P1 = _declare(0)
_RHS1, _JUMP1, _OBS1 = _kernels(_S1, _P1)
_S2, _P2 = _declare(1)
_RHS2, _JUMP2, _OBS2 = _kernels(_S2, _P2)
_S3, _P3 = _declare(2)
_RHS3, _JUMP3, _OBS3 = _kernels(_S3, _P3)


class OneCompartment(Compartmental):
    """One-compartment PK (CL, V1) with oral depot and effect compartment."""

    name = "pk-1cmt"
    peripherals = 0
    states = _S1
    params = _P1
    rhs_kernel = _RHS1
    jump_kernel = _JUMP1
    observe_kernel = _OBS1


class TwoCompartment(Compartmental):
    """Two-compartment PK (CL, V1, Q2, V2) with oral depot and effect compartment."""

    name = "pk-2cmt"
    peripherals = 1
    states = _S2
    params = _P2
    rhs_kernel = _RHS2
    jump_kernel = _JUMP2
    observe_kernel = _OBS2


class ThreeCompartment(Compartmental):
    """Three-compartment PK (CL, V1, Q2, V2, Q3, V3) with oral depot and effect compartment."""

    name = "pk-3cmt"
    peripherals = 2
    states = _S3
    params = _P3
    rhs_kernel = _RHS3
    jump_kernel = _JUMP3
    observe_kernel = _OBS3


@dataclass(frozen=True, slots=True)
class Dose:
    """One administration: ``amount_mg`` at ``at_min`` (min from the schedule's start).

    ``duration_min`` is the length of an ``"iv-infusion"`` (min) and must be
    ``None`` for the instantaneous routes.
    """

    at_min: float
    amount_mg: float
    route: Route
    duration_min: float | None = None


def regimen(dose: Dose, every_min: float, count: int) -> tuple[Dose, ...]:
    """``count`` copies of ``dose``, every ``every_min`` minutes from ``dose.at_min``."""
    if not (math.isfinite(every_min) and every_min > 0):
        raise InputError("must be a positive number of minutes", "every_min")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError("must be a whole number, at least 1", "count")
    return tuple(replace(dose, at_min=dose.at_min + j * every_min) for j in range(count))


def dose_inputs(
    doses: Sequence[Dose],
    *,
    duration_min: float,
    dt_min: float = 1.0,
    tlag_min: float = 0.0,
) -> FloatArray:
    """The input schedule of one regimen, ``(1, intervals, 3)`` for ``Inputs``.

    Boluses and oral doses must fall on the grid (multiples of ``dt_min``);
    they go into ``bolus_iv`` / ``oral`` (mg) of their interval. An oral dose
    enters the depot ``tlag_min`` later, which must keep it on the grid; one
    arriving after the end has no effect in the window and is left out.
    An infusion adds ``amount / duration`` mg/min over
    ``[at, at + duration)``, cut off at the end of the schedule; an interval
    it covers only in part gets the rate averaged over the interval, which
    keeps the amount exact but smears its timing within that interval (an
    approximation only when the infusion's ends are off the grid).
    """
    if not (math.isfinite(dt_min) and dt_min > 0):
        raise InputError("must be a positive number of minutes", "dt_min")
    if not (math.isfinite(duration_min) and duration_min > 0):
        raise InputError("must be a positive number of minutes", "duration_min")
    intervals = _on_grid(duration_min, dt_min, "duration_min")
    if not (math.isfinite(tlag_min) and tlag_min >= 0):
        raise InputError("must be a non-negative number of minutes", "tlag_min")
    values = np.zeros((1, intervals, len(INPUTS)))
    edges = np.arange(intervals + 1) * dt_min
    for j, d in enumerate(doses):
        where = f"doses[{j}]"
        if d.route not in ROUTES:
            raise InputError(
                f"unknown route {d.route!r}, expected one of {ROUTES}", f"{where}.route"
            )
        if not (math.isfinite(d.amount_mg) and d.amount_mg >= 0):
            raise InputError("must be a non-negative number of mg", f"{where}.amount_mg")
        if not (math.isfinite(d.at_min) and 0 <= d.at_min < duration_min):
            raise InputError(
                f"must be in [0, {duration_min}) min, the schedule's span", f"{where}.at_min"
            )
        if d.route == "iv-infusion":
            dur = d.duration_min
            if dur is None or not (math.isfinite(dur) and dur > 0):
                raise InputError("an infusion needs a positive duration", f"{where}.duration_min")
            covered = np.minimum(edges[1:], d.at_min + dur) - np.maximum(edges[:-1], d.at_min)
            values[0, :, _U_INFUSION] += d.amount_mg / dur * np.clip(covered, 0.0, None) / dt_min
            continue
        if d.duration_min is not None:
            raise InputError(f"a {d.route} dose takes no duration", f"{where}.duration_min")
        k = _on_grid(d.at_min, dt_min, f"{where}.at_min")
        if k >= intervals:
            # Within rounding of the end: the grid has no interval for it.
            raise InputError("is at the end of the schedule", f"{where}.at_min")
        if d.route == "iv-bolus":
            values[0, k, _U_BOLUS] += d.amount_mg
            continue
        k = _on_grid(d.at_min + tlag_min, dt_min, "tlag_min")
        if k < intervals:
            values[0, k, _U_ORAL] += d.amount_mg
    return values


def _on_grid(t_min: float, dt_min: float, location: str) -> int:
    """Index of the grid point ``t_min``; it must be one (to rounding)."""
    k = round(t_min / dt_min)
    if abs(k * dt_min - t_min) > 1e-9 * max(dt_min, abs(t_min)):
        raise InputError(f"{t_min} min is not a multiple of dt_min = {dt_min} min", location)
    return k
