"""The reference path: the same run in plain NumPy and SciPy.

It uses each model's NumPy functions (not its Numba kernels) over the whole
cohort at once, RK4 written out in NumPy and SciPy's ``solve_ivp`` (RK45, a
Dormand-Prince pair) for the adaptive solver. Tests check the fast path
against it; it is far slower and meant for that.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from medtwin.core.errors import InputError
from medtwin.models.physiology.engine import Inputs, Problem, Solution, Status, prepare
from medtwin.models.physiology.model import FloatArray, Model
from medtwin.models.physiology.solvers import (
    RK4,
    ConstantStep,
    Dopri5,
    SaveAt,
    Solver,
    StepSize,
)

__all__ = ["simulate_reference"]

_RK4 = RK4()
_ALL = SaveAt()


def simulate_reference(
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
    """Same arguments and result as ``engine.simulate``.

    Adaptive steps use SciPy's RK45 on the whole cohort as one system, so the
    error control (and ``max_steps``) is shared, not per patient; constant
    Dormand-Prince steps are not offered here.
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
    if isinstance(problem.solver, Dopri5) and isinstance(problem.stepsize, ConstantStep):
        raise InputError("the reference path runs Dopri5 with adaptive steps only", "stepsize")
    return _run(model, problem)


def _run(model: Model, problem: Problem) -> Solution:
    n = problem.patients
    nx = problem.x0.shape[1]
    x = problem.x0.T.copy()
    z = problem.z0.T.copy()
    p = problem.params.T.copy()
    values = problem.inputs.values
    dt = problem.inputs.dt_min
    y = np.full((n, problem.saved, problem.output_index.size), np.nan)
    status = np.zeros(n, dtype=np.int8)
    steps = np.zeros(n, dtype=np.int64)
    for k in range(problem.inputs.intervals):
        t = problem.t0_min + k * dt
        u = np.broadcast_to(values[:, k, :].T, (values.shape[2], n)).copy()
        x, z, u = model.jump(k, t, x, u, z, p)
        if k % problem.save_every == 0:
            obs = model.observe(t, x, u, z, p)
            alive = status == Status.OK
            y[alive, k // problem.save_every, :] = obs[problem.output_index][:, alive].T
        step = problem.stepsize
        if isinstance(step, ConstantStep):
            h = dt / step.substeps
            for m in range(step.substeps):
                x = _rk4_step(model, t + m * h, h, x, u, z, p)
            steps += step.substeps
        else:
            u_now, z_now = u, z

            def f(
                tt: float, v: FloatArray, u_now: FloatArray = u_now, z_now: FloatArray = z_now
            ) -> FloatArray:
                return model.rhs(tt, v.reshape(nx, n), u_now, z_now, p).ravel()

            sol = solve_ivp(
                f, (t, t + dt), x.ravel(), method="RK45", rtol=step.rtol, atol=step.atol
            )
            steps += sol.nfev // 6
            x = sol.y[:, -1].reshape(nx, n).copy()
        bad = ~np.all(np.isfinite(x), axis=0) & (status == Status.OK)
        status[bad] = Status.NONFINITE
        # Failed patients keep a finite placeholder so they cannot poison the
        # shared adaptive step of the others.
        x[:, status != Status.OK] = problem.x0.T[:, status != Status.OK]
    x_final = x.T.copy()
    x_final[status != Status.OK] = np.nan
    return Solution(
        t_min=problem.t_saved,
        y=y,
        outputs=problem.output_names,
        x_final=x_final,
        z_final=z.T.copy(),
        status=status,
        steps=steps,
    )


def _rk4_step(
    model: Model, t: float, h: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
) -> FloatArray:
    k1 = model.rhs(t, x, u, z, p)
    k2 = model.rhs(t + h / 2, x + h / 2 * k1, u, z, p)
    k3 = model.rhs(t + h / 2, x + h / 2 * k2, u, z, p)
    k4 = model.rhs(t + h, x + h * k3, u, z, p)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
