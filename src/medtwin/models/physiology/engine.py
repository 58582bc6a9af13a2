"""Integrate a model for many patients at once: the fast (Numba) path.

``simulate(model, solver=..., x0=..., params=..., inputs=...)`` is the one
entry point. Patients run in blocks of SIMD lanes; each has its own
parameters, initial state and input schedule, and its own status, so a
patient whose state blows up or who runs out of steps is reported, not
raised, and the rest of the cohort carries on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from medtwin.core.errors import InputError
from medtwin.models.physiology.model import FloatArray, Model
from medtwin.models.physiology.solvers import (
    RK4,
    AdaptiveStep,
    ConstantStep,
    Dopri5,
    SaveAt,
    Solver,
    StepSize,
)

__all__ = ["Inputs", "Solution", "Status", "prepare", "simulate"]

_RK4 = RK4()
_ALL = SaveAt()

# Lanes per block: a multiple of the widest SIMD register (8 doubles), small
# enough that a block's states and stages stay in L1/L2 cache.
BLOCK = 64


class Status(IntEnum):
    """Outcome per patient."""

    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2


@dataclass(frozen=True, slots=True)
class Inputs:
    """Piecewise-constant inputs on a uniform grid.

    ``values`` is ``(patients, intervals, inputs)``, or ``(1, intervals,
    inputs)`` for a schedule every patient shares; interval ``k`` covers
    ``[t0 + k*dt_min, t0 + (k+1)*dt_min)``.
    """

    values: FloatArray
    dt_min: float = 1.0

    @property
    def intervals(self) -> int:
        return int(self.values.shape[1])


@dataclass(frozen=True, slots=True)
class Solution:
    """Trajectories and per-patient outcome.

    ``y[i, j, q]`` is output ``outputs[q]`` of patient ``i`` at ``t_min[j]``,
    taken at the start of an interval after its jump (so inputs in ``y`` are
    the rates applied over that interval). Patients that failed have NaN from
    the failure on.
    """

    t_min: FloatArray
    y: FloatArray
    outputs: tuple[str, ...]
    x_final: FloatArray
    z_final: FloatArray
    status: NDArray[np.int8]
    steps: NDArray[np.int64]

    def output(self, name: str) -> FloatArray:
        """One output, ``(patients, times)``."""
        try:
            return self.y[:, :, self.outputs.index(name)]
        except ValueError:
            raise InputError(f"no output {name!r} was recorded", "outputs") from None

    @property
    def ok(self) -> NDArray[np.bool_]:
        return np.asarray(self.status == Status.OK)


@dataclass(frozen=True, slots=True)
class Problem:
    """Validated arrays for one run, shared by the fast and reference paths."""

    x0: FloatArray
    z0: FloatArray
    params: FloatArray
    inputs: Inputs
    solver: Solver
    stepsize: StepSize
    t0_min: float
    save_every: int
    output_index: NDArray[np.int64]
    output_names: tuple[str, ...]

    @property
    def patients(self) -> int:
        return int(self.x0.shape[0])

    @property
    def saved(self) -> int:
        return -(-self.inputs.intervals // self.save_every)

    @property
    def t_saved(self) -> FloatArray:
        k = np.arange(0, self.inputs.intervals, self.save_every, dtype=np.float64)
        return self.t0_min + k * self.inputs.dt_min


def prepare(
    model: Model,
    *,
    x0: FloatArray,
    params: FloatArray,
    inputs: Inputs,
    solver: Solver,
    stepsize: StepSize | None,
    saveat: SaveAt,
    t0_min: float,
) -> Problem:
    """Check shapes, values and settings; name the first fault."""
    x0 = _matrix(x0, "x0", len(model.states))
    params = _matrix(params, "params", len(model.params))
    n = x0.shape[0]
    if params.shape[0] != n:
        raise InputError(f"params has {params.shape[0]} patients, x0 has {n}", "params")
    values = np.ascontiguousarray(inputs.values, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] != len(model.inputs) or values.shape[0] not in (1, n):
        raise InputError(
            f"inputs must be (patients or 1, intervals, {len(model.inputs)}), got {values.shape}",
            "inputs.values",
        )
    if values.shape[1] < 1:
        raise InputError("inputs need at least one interval", "inputs.values")
    if not (inputs.dt_min > 0 and math.isfinite(inputs.dt_min)):
        raise InputError("dt_min must be a positive number of minutes", "inputs.dt_min")
    if stepsize is None:
        stepsize = AdaptiveStep() if isinstance(solver, Dopri5) else ConstantStep()
    if isinstance(solver, RK4) and not isinstance(stepsize, ConstantStep):
        raise InputError("RK4 has no error estimate: use Dopri5 for adaptive steps", "stepsize")
    names = [o.name for o in model.outputs]
    chosen = tuple(saveat.outputs) if saveat.outputs is not None else tuple(names)
    for name in chosen:
        if name not in names:
            raise InputError(f"{model.name} has no output {name!r}", "saveat.outputs")
    index = np.array([names.index(c) for c in chosen], dtype=np.int64)
    z0 = np.ascontiguousarray(model.initial_discrete(x0.T, params.T).T, dtype=np.float64)
    return Problem(
        x0=x0,
        z0=z0.reshape(n, len(model.discrete)),
        params=params,
        inputs=Inputs(values, float(inputs.dt_min)),
        solver=solver,
        stepsize=stepsize,
        t0_min=float(t0_min),
        save_every=saveat.every,
        output_index=index,
        output_names=chosen,
    )


def simulate(
    model: Model,
    *,
    x0: FloatArray,
    params: FloatArray,
    inputs: Inputs,
    solver: Solver = _RK4,
    stepsize: StepSize | None = None,
    saveat: SaveAt = _ALL,
    t0_min: float = 0.0,
) -> Solution:
    """Integrate ``model`` for every patient on the compiled fast path.

    ``x0`` is ``(patients, states)`` and ``params`` ``(patients, params)``,
    in the units the model declares; time is in minutes from ``t0_min``.
    ``stepsize`` defaults to one constant step per input interval for RK4 and
    to ``AdaptiveStep()`` for Dopri5.
    """
    problem = prepare(
        model,
        x0=x0,
        params=params,
        inputs=inputs,
        solver=solver,
        stepsize=stepsize,
        saveat=saveat,
        t0_min=t0_min,
    )
    return run_compiled(model, problem)


def run_compiled(model: Model, problem: Problem) -> Solution:
    """The fast path on a prepared problem."""
    n = problem.patients
    y = np.full((n, problem.saved, problem.output_index.size), np.nan)
    x_final = np.empty_like(problem.x0)
    z_final = np.empty_like(problem.z0)
    status = np.zeros(n, dtype=np.int8)
    steps = np.zeros(n, dtype=np.int64)
    common = (
        problem.x0,
        problem.z0,
        problem.params,
        problem.inputs.values,
        problem.t0_min,
        problem.inputs.dt_min,
        problem.save_every,
        problem.output_index,
        len(model.outputs),
        y,
        x_final,
        z_final,
        status,
        steps,
    )
    step = problem.stepsize
    if isinstance(problem.solver, RK4):
        assert isinstance(step, ConstantStep)
        _kernel(model, "rk4")(*common, step.substeps)
    elif isinstance(step, ConstantStep):
        # Dormand-Prince at a fixed step: every step accepted, none counted against a limit.
        _kernel(model, "dopri5")(*common, False, step.substeps, 1.0, 1.0, 2**62, 1.0, 0.5, 2.0)
    else:
        _kernel(model, "dopri5")(
            *common,
            True,
            1,
            step.rtol,
            step.atol,
            step.max_steps,
            step.safety,
            step.min_factor,
            step.max_factor,
        )
    return Solution(
        t_min=problem.t_saved,
        y=y,
        outputs=problem.output_names,
        x_final=x_final,
        z_final=z_final,
        status=status,
        steps=steps,
    )


def _matrix(a: FloatArray, name: str, width: int) -> FloatArray:
    m = np.ascontiguousarray(a, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] != width:
        raise InputError(f"{name} must be (patients, {width}), got {np.shape(a)}", name)
    if m.shape[0] < 1:
        raise InputError(f"{name} needs at least one patient", name)
    bad = np.argwhere(~np.isfinite(m))
    if bad.size:
        i, j = bad[0]
        raise InputError(f"{name}[{i}, {j}] is not a finite number", f"{name}[{i}][{j}]")
    return m


_KERNELS: dict[tuple[type[Model], str], Callable[..., None]] = {}


def _kernel(model: Model, method: str) -> Callable[..., None]:
    key = (type(model), method)
    if key not in _KERNELS:
        build = _build_rk4 if method == "rk4" else _build_dopri5
        _KERNELS[key] = build(model.rhs_kernel, model.jump_kernel, model.observe_kernel)
    return _KERNELS[key]


# The kernels below share one layout: a block holds BLOCK lanes, arrays are
# (quantity, lane); lanes past the last patient repeat the block's first
# patient so every lane holds valid numbers, and are never stored.


# RK4, the fast path for cohorts, is written out stage by stage (one inlined
# right-hand side per stage vectorizes best). The adaptive solver calls ``rhs``
# from one place in a loop over its seven stages, so the model is inlined once
# and compiling stays a matter of seconds.
# Dormand-Prince 5(4) (Dormand and Prince 1980; Hairer et al., Solving ODEs I, II.5).
# The seventh stage is taken at the fifth-order solution (its row of A is B).
_DP_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0],
        [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    ]
)
_DP_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
# Fifth- minus fourth-order weights: the local error estimate.
_DP_E = np.array([71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])


@njit(inline="always")
def _load_block(s: int, n: int, x0: Any, z0: Any, params: Any, x: Any, z: Any, p: Any) -> None:
    """Copy patients ``s .. s+n-1`` into the block; spare lanes repeat patient ``s``."""
    for lane in range(BLOCK):
        i = s + lane if lane < n else s
        for j in range(params.shape[1]):
            p[j, lane] = params[i, j]
        for j in range(x0.shape[1]):
            x[j, lane] = x0[i, j]
        for j in range(z0.shape[1]):
            z[j, lane] = z0[i, j]


@njit(inline="always")
def _load_inputs(s: int, n: int, k: int, t: float, useq: Any, u: Any, tv: Any) -> None:
    """Interval ``k``'s inputs into ``u``; every lane's time to ``t``."""
    shared = useq.shape[0] == 1
    for lane in range(BLOCK):
        iu = 0 if shared else (s + lane if lane < n else s)
        for j in range(useq.shape[2]):
            u[j, lane] = useq[iu, k, j]
        tv[lane] = t


@njit(inline="always")
def _record(s: int, n: int, row: int, yb: Any, out_idx: Any, alive: Any, y: Any) -> None:
    """Chosen outputs of the live patients into row ``row`` of ``y``."""
    for lane in range(n):
        if alive[lane]:
            for q in range(out_idx.size):
                y[s + lane, row, q] = yb[out_idx[q], lane]


@njit(inline="always")
def _store_final(s: int, n: int, x: Any, z: Any, alive: Any, x_final: Any, z_final: Any) -> None:
    for lane in range(n):
        for j in range(x_final.shape[1]):
            x_final[s + lane, j] = x[j, lane] if alive[lane] else np.nan
        for j in range(z_final.shape[1]):
            z_final[s + lane, j] = z[j, lane]


def _build_rk4(rhs: Any, jump: Any, observe: Any) -> Callable[..., None]:
    @njit(error_model="numpy", boundscheck=False, nogil=True)
    def run(
        x0: Any,
        z0: Any,
        params: Any,
        useq: Any,
        t0: float,
        dt: float,
        save_every: int,
        out_idx: Any,
        n_out: int,
        y: Any,
        x_final: Any,
        z_final: Any,
        status: Any,
        steps: Any,
        substeps: int,
    ) -> None:
        n_pat, nx = x0.shape
        nz = z0.shape[1]
        npar = params.shape[1]
        n_int = useq.shape[1]
        nu = useq.shape[2]
        b = BLOCK
        x = np.empty((nx, b))
        xt = np.empty((nx, b))
        k1 = np.empty((nx, b))
        k2 = np.empty((nx, b))
        k3 = np.empty((nx, b))
        k4 = np.empty((nx, b))
        z = np.zeros((max(nz, 1), b))
        p = np.empty((npar, b))
        u = np.empty((nu, b))
        yb = np.empty((n_out, b))
        tv = np.empty(b)
        alive = np.empty(b, dtype=np.bool_)
        h = dt / substeps
        for s in range(0, n_pat, b):
            n = min(b, n_pat - s)
            _load_block(s, n, x0, z0, params, x, z, p)
            alive[:] = True
            for k in range(n_int):
                t = t0 + k * dt
                _load_inputs(s, n, k, t, useq, u, tv)
                jump(k, tv, x, u, z, p, n)
                if k % save_every == 0:
                    observe(tv, x, u, z, p, yb, n)
                    _record(s, n, k // save_every, yb, out_idx, alive, y)
                for m in range(substeps):
                    tm = t + m * h
                    for lane in range(b):
                        tv[lane] = tm
                    rhs(tv, x, u, z, p, k1, n)
                    for j in range(nx):
                        for lane in range(b):
                            xt[j, lane] = x[j, lane] + 0.5 * h * k1[j, lane]
                    for lane in range(b):
                        tv[lane] = tm + 0.5 * h
                    rhs(tv, xt, u, z, p, k2, n)
                    for j in range(nx):
                        for lane in range(b):
                            xt[j, lane] = x[j, lane] + 0.5 * h * k2[j, lane]
                    rhs(tv, xt, u, z, p, k3, n)
                    for j in range(nx):
                        for lane in range(b):
                            xt[j, lane] = x[j, lane] + h * k3[j, lane]
                    for lane in range(b):
                        tv[lane] = tm + h
                    rhs(tv, xt, u, z, p, k4, n)
                    for j in range(nx):
                        for lane in range(b):
                            x[j, lane] += (h / 6.0) * (
                                k1[j, lane] + 2.0 * k2[j, lane] + 2.0 * k3[j, lane] + k4[j, lane]
                            )
                for lane in range(n):
                    if alive[lane]:
                        steps[s + lane] += substeps
                        for j in range(nx):
                            if not np.isfinite(x[j, lane]):
                                alive[lane] = False
                                status[s + lane] = 2
                                break
            _store_final(s, n, x, z, alive, x_final, z_final)

    return run


def _build_dopri5(rhs: Any, jump: Any, observe: Any) -> Callable[..., None]:
    a_mat, c_vec, e_vec = _DP_A, _DP_C, _DP_E
    stages = 7

    @njit(error_model="numpy", boundscheck=False, nogil=True)
    def run(
        x0: Any,
        z0: Any,
        params: Any,
        useq: Any,
        t0: float,
        dt: float,
        save_every: int,
        out_idx: Any,
        n_out: int,
        y: Any,
        x_final: Any,
        z_final: Any,
        status: Any,
        steps: Any,
        adaptive: bool,
        substeps: int,
        rtol: float,
        atol: float,
        max_steps: int,
        safety: float,
        min_factor: float,
        max_factor: float,
    ) -> None:
        n_pat, nx = x0.shape
        nz = z0.shape[1]
        npar = params.shape[1]
        n_int = useq.shape[1]
        nu = useq.shape[2]
        b = BLOCK
        x = np.empty((nx, b))
        xt = np.empty((nx, b))
        kk = np.empty((stages, nx, b))
        z = np.zeros((max(nz, 1), b))
        p = np.empty((npar, b))
        u = np.empty((nu, b))
        yb = np.empty((n_out, b))
        tv = np.empty(b)
        tl = np.empty(b)
        hh = np.empty(b)
        hs = np.empty(b)
        alive = np.empty(b, dtype=np.bool_)
        done = np.empty(b, dtype=np.bool_)
        end = dt * (1.0 - 1e-12)
        for s in range(0, n_pat, b):
            n = min(b, n_pat - s)
            _load_block(s, n, x0, z0, params, x, z, p)
            for lane in range(b):
                alive[lane] = lane < n
                hs[lane] = dt / substeps
            for k in range(n_int):
                t = t0 + k * dt
                _load_inputs(s, n, k, t, useq, u, tv)
                for lane in range(b):
                    tl[lane] = 0.0
                    done[lane] = not alive[lane]
                jump(k, tv, x, u, z, p, n)
                if k % save_every == 0:
                    observe(tv, x, u, z, p, yb, n)
                    _record(s, n, k // save_every, yb, out_idx, alive, y)
                while True:
                    active = False
                    for lane in range(b):
                        if done[lane]:
                            hh[lane] = 0.0
                        else:
                            active = True
                            hh[lane] = min(hs[lane], dt - tl[lane])
                    if not active:
                        break
                    for st in range(stages):
                        xt[:, :] = 0.0
                        for r in range(st):
                            coef = a_mat[st, r]
                            if coef != 0.0:
                                for j in range(nx):
                                    for lane in range(b):
                                        xt[j, lane] += coef * kk[r, j, lane]
                        for j in range(nx):
                            for lane in range(b):
                                xt[j, lane] = x[j, lane] + hh[lane] * xt[j, lane]
                        for lane in range(b):
                            tv[lane] = t + tl[lane] + c_vec[st] * hh[lane]
                        rhs(tv, xt, u, z, p, kk[st], n)
                    # xt now holds the fifth-order solution.
                    for lane in range(b):
                        if done[lane]:
                            continue
                        if not adaptive:
                            steps[s + lane] += 1
                            for j in range(nx):
                                x[j, lane] = xt[j, lane]
                                if not np.isfinite(xt[j, lane]):
                                    status[s + lane] = 2
                                    alive[lane] = False
                            tl[lane] += hh[lane]
                            if tl[lane] >= end or not alive[lane]:
                                done[lane] = True
                            continue
                        if steps[s + lane] >= max_steps:
                            status[s + lane] = 1
                            alive[lane] = False
                            done[lane] = True
                            continue
                        acc = 0.0
                        for j in range(nx):
                            err = 0.0
                            for r in range(stages):
                                err += e_vec[r] * kk[r, j, lane]
                            scale = atol + rtol * max(abs(x[j, lane]), abs(xt[j, lane]))
                            acc += (hh[lane] * err / scale) ** 2
                        norm = np.sqrt(acc / nx)
                        steps[s + lane] += 1
                        if not np.isfinite(norm):
                            finite = True
                            for j in range(nx):
                                if not np.isfinite(kk[0, j, lane]):
                                    finite = False
                            if not finite:
                                # The derivative at an accepted state is not finite:
                                # no step size can help.
                                status[s + lane] = 2
                                alive[lane] = False
                                done[lane] = True
                                continue
                            hs[lane] = hh[lane] * min_factor
                        elif norm <= 1.0:
                            for j in range(nx):
                                x[j, lane] = xt[j, lane]
                            tl[lane] += hh[lane]
                            grow = (
                                max_factor
                                if norm == 0.0
                                else min(max_factor, safety * norm ** (-0.2))
                            )
                            if hh[lane] < hs[lane]:
                                # Cut short by the interval's end: keep the longer step.
                                hs[lane] = max(hs[lane], hh[lane] * grow)
                            else:
                                hs[lane] = hh[lane] * grow
                            if tl[lane] >= end:
                                done[lane] = True
                        else:
                            hs[lane] = hh[lane] * max(min_factor, safety * norm ** (-0.2))
            _store_final(s, n, x, z, alive, x_final, z_final)

    return run
