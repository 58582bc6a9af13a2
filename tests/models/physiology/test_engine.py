"""The batched engine on small models with known solutions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from medtwin.core.errors import InputError
from medtwin.models.physiology import (
    RK4,
    AdaptiveStep,
    ConstantStep,
    Dopri5,
    Inputs,
    Model,
    Output,
    Quantity,
    SaveAt,
    Status,
    simulate,
    simulate_reference,
)
from medtwin.models.physiology.model import FloatArray, no_jump


@njit(inline="always")  # type: ignore[misc]
def _power_rhs(t: Any, x: Any, u: Any, z: Any, p: Any, dx: Any, n: int) -> None:
    for i in range(x.shape[1]):
        dx[0, i] = p[0, i] * x[0, i] ** 2 - p[1, i] * x[0, i] + u[0, i]


@njit(inline="always")  # type: ignore[misc]
def _power_observe(t: Any, x: Any, u: Any, z: Any, p: Any, y: Any, n: int) -> None:
    for i in range(x.shape[1]):
        y[0, i] = x[0, i]
        y[1, i] = u[0, i]


class Power(Model):
    """dx/dt = a x^2 - k x + u: decay for a = 0, blow-up in finite time for a > 0."""

    name = "power"
    states = (Quantity("x", "1"),)
    params = (Quantity("a", "1/min"), Quantity("k", "1/min"))
    inputs = (Quantity("u", "1/min"),)
    outputs = (Output("x", "1"), Output("u", "1/min"))
    rhs_kernel = _power_rhs
    jump_kernel = no_jump
    observe_kernel = _power_observe

    def rhs(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        return p[0] * x**2 - p[1] * x + u  # type: ignore[no-any-return]

    def observe(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        return np.stack([x[0], u[0]])


def _decay(n: int, minutes: int) -> tuple[FloatArray, FloatArray, Inputs]:
    k = np.linspace(0.01, 0.5, n)
    x0 = np.linspace(1.0, 5.0, n)[:, None]
    params = np.column_stack([np.zeros(n), k])
    return x0, params, Inputs(np.zeros((1, minutes, 1)))


def test_rk4_is_exactly_the_classical_scheme() -> None:
    # On x' = -k x one RK4 step multiplies x by R(-kh) = 1 - kh + (kh)^2/2 - (kh)^3/6 + (kh)^4/24.
    # 150 patients: more than two blocks, the last one partly filled.
    x0, params, inputs = _decay(150, 60)
    sol = simulate(
        Power(), solver=RK4(), stepsize=ConstantStep(4), x0=x0, params=params, inputs=inputs
    )
    q = -params[:, 1:2] * 0.25
    growth = 1 + q + q**2 / 2 + q**3 / 6 + q**4 / 24
    exact = x0 * growth ** (4 * sol.t_min[None, :])
    np.testing.assert_allclose(sol.output("x"), exact, rtol=1e-12)
    np.testing.assert_allclose(sol.output("x"), x0 * np.exp(q * 4 * sol.t_min), rtol=1e-4)
    assert (sol.status == Status.OK).all()
    assert (sol.steps == 240).all()
    assert sol.y.shape == (150, 60, 2)


def test_adaptive_solver_meets_its_tolerance() -> None:
    x0, params, inputs = _decay(150, 60)
    sol = simulate(
        Power(),
        solver=Dopri5(),
        stepsize=AdaptiveStep(rtol=1e-10, atol=1e-12),
        x0=x0,
        params=params,
        inputs=inputs,
    )
    exact = x0 * np.exp(-params[:, 1:2] * sol.t_min[None, :])
    np.testing.assert_allclose(sol.output("x"), exact, rtol=1e-8, atol=1e-11)
    final = x0[:, 0] * np.exp(-params[:, 1] * 60)
    np.testing.assert_allclose(sol.x_final[:, 0], final, rtol=1e-8, atol=1e-11)
    assert (sol.status == Status.OK).all()
    # Slow patients take fewer steps than fast ones: the control is per patient.
    assert sol.steps[0] < sol.steps[-1]


def test_inputs_are_piecewise_constant_per_patient() -> None:
    # dx/dt = u with u = patient index during minutes 10..19: x rises by 10 * index.
    n, minutes = 5, 30
    u = np.zeros((n, minutes, 1))
    u[:, 10:20, 0] = np.arange(n)[:, None]
    sol = simulate(
        Power(), x0=np.zeros((n, 1)), params=np.zeros((n, 2)), inputs=Inputs(u, dt_min=1.0)
    )
    np.testing.assert_allclose(sol.x_final[:, 0], 10.0 * np.arange(n), rtol=1e-12)
    np.testing.assert_array_equal(sol.output("u"), u[:, :, 0])
    # Outputs are taken at the start of each interval.
    np.testing.assert_allclose(sol.output("x")[:, 15], 5.0 * np.arange(n), rtol=1e-12)


def test_one_blowing_up_patient_does_not_stop_the_cohort() -> None:
    n = 100
    params = np.column_stack([np.zeros(n), np.full(n, 0.1)])
    params[37, 0] = 1.0  # x' = x^2 - 0.1 x from x = 1 blows up before t = 3 min
    for solver in (RK4(), Dopri5()):
        sol = simulate(
            Power(),
            solver=solver,
            x0=np.ones((n, 1)),
            params=params,
            inputs=Inputs(np.zeros((1, 20, 1))),
        )
        assert sol.status[37] in (Status.NONFINITE, Status.MAX_STEPS)
        ok = np.delete(np.arange(n), 37)
        assert (sol.status[ok] == Status.OK).all()
        np.testing.assert_allclose(sol.x_final[ok, 0], np.exp(-0.1 * 20), rtol=1e-5)
        assert np.isnan(sol.x_final[37, 0])
        assert np.isnan(sol.output("x")[37, -1])


def test_adaptive_solver_reports_max_steps() -> None:
    x0, params, inputs = _decay(3, 30)
    sol = simulate(
        Power(),
        solver=Dopri5(),
        stepsize=AdaptiveStep(max_steps=10),
        x0=x0,
        params=params,
        inputs=inputs,
    )
    assert (sol.status == Status.MAX_STEPS).all()
    assert (sol.steps == 10).all()


def test_fast_path_equals_reference_path() -> None:
    x0, params, inputs = _decay(20, 40)
    params[:, 0] = 0.001  # a little nonlinearity
    u = np.zeros((20, 40, 1))
    u[:, 5:9, 0] = 0.3
    inputs = Inputs(u)
    two = ConstantStep(2)
    fast = simulate(Power(), solver=RK4(), stepsize=two, x0=x0, params=params, inputs=inputs)
    ref = simulate_reference(
        Power(), solver=RK4(), stepsize=two, x0=x0, params=params, inputs=inputs
    )
    np.testing.assert_allclose(fast.y, ref.y, rtol=1e-12)
    fast = simulate(Power(), solver=Dopri5(), x0=x0, params=params, inputs=inputs)
    ref = simulate_reference(Power(), solver=Dopri5(), x0=x0, params=params, inputs=inputs)
    np.testing.assert_allclose(fast.y, ref.y, rtol=1e-6, atol=1e-9)


def test_save_every_and_output_selection() -> None:
    x0, params, inputs = _decay(4, 60)
    saveat = SaveAt(every=15, outputs=["u"])
    sol = simulate(Power(), x0=x0, params=params, inputs=inputs, saveat=saveat)
    np.testing.assert_array_equal(sol.t_min, [0, 15, 30, 45])
    assert sol.outputs == ("u",)
    assert sol.y.shape == (4, 4, 1)
    with pytest.raises(InputError, match="no output 'x'"):
        sol.output("x")


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"x0": np.ones((3, 2))}, "x0"),
        ({"params": np.ones((2, 2))}, "params"),
        ({"params": np.array([[0.0, np.nan]] * 3)}, "params[0][1]"),
        ({"inputs": Inputs(np.zeros((2, 10, 1)))}, "inputs.values"),
        ({"inputs": Inputs(np.zeros((1, 10, 1)), dt_min=0.0)}, "inputs.dt_min"),
        ({"saveat": SaveAt(outputs=["glucose"])}, "saveat.outputs"),
        ({"solver": RK4(), "stepsize": AdaptiveStep()}, "stepsize"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], location: str) -> None:
    args: dict[str, Any] = {
        "x0": np.ones((3, 1)),
        "params": np.zeros((3, 2)),
        "inputs": Inputs(np.zeros((1, 10, 1))),
    }
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        simulate(Power(), **args)
    assert err.value.location == location


def test_solver_settings_are_checked() -> None:
    with pytest.raises(InputError, match="substeps"):
        ConstantStep(substeps=0)
    with pytest.raises(InputError, match="rtol"):
        AdaptiveStep(rtol=0.0)
    with pytest.raises(InputError, match="every"):
        SaveAt(every=0)


def test_dormand_prince_at_constant_steps_is_exactly_the_tableau() -> None:
    # On x' = -k x one Dormand-Prince step (the fifth-order solution) multiplies x by
    # R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24 + z^5/120 + z^6/600, z = -kh.
    x0, params, inputs = _decay(5, 30)
    for substeps in (1, 3):
        sol = simulate(
            Power(),
            solver=Dopri5(),
            stepsize=ConstantStep(substeps),
            x0=x0,
            params=params,
            inputs=inputs,
        )
        assert (sol.steps == 30 * substeps).all()
        z = -params[:, 1] / substeps
        growth = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24 + z**5 / 120 + z**6 / 600
        np.testing.assert_allclose(
            sol.x_final[:, 0], x0[:, 0] * growth ** (30 * substeps), rtol=1e-12
        )
