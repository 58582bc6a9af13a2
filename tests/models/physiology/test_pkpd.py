"""Compartmental PK/PD models against closed-form and matrix-exponential solutions.

Closed forms: Gibaldi and Perrier, *Pharmacokinetics*, 2nd ed., 1982 (ch. 1
one compartment, bolus, infusion and first-order absorption (Bateman);
ch. 2 two compartments; ch. 3 multiple dosing); Sheiner et al., Clin
Pharmacol Ther 25(3), 1979 (effect compartment). Parameters are per hour
(L/h, 1/h), the engine's time is in minutes: rates below are per hour and
times are converted with ``H``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from medtwin.core.errors import InputError
from medtwin.models.physiology import (
    RK4,
    AdaptiveStep,
    ConstantStep,
    Dopri5,
    Inputs,
    Solution,
    Status,
    simulate,
    simulate_reference,
)
from medtwin.models.physiology.model import FloatArray, Quantity
from medtwin.models.physiology.pkpd import (
    Compartmental,
    Dose,
    OneCompartment,
    ThreeCompartment,
    TwoCompartment,
    dose_inputs,
    regimen,
)

H = 60.0  # min per h
ONE, TWO, THREE = OneCompartment(), TwoCompartment(), ThreeCompartment()
MODELS = [pytest.param(m, id=m.name) for m in (ONE, TWO, THREE)]
# RK4 with 4 substeps per 1-min interval: the largest rate below is ~3.5/h,
# so lambda*h <= 0.015 and the global error stays near 1e-8 relative.
SOLVERS = [
    pytest.param((Dopri5(), AdaptiveStep(rtol=1e-10, atol=1e-12)), id="dopri5"),
    pytest.param((RK4(), ConstantStep(4)), id="rk4"),
]
PD = {"E0": 5.0, "Emax": 20.0, "EC50": 1.5, "ke0": 0.7}
PK1 = {"CL": 6.0, "V1": 40.0, "ka": 1.2, "F": 0.8}  # k = 0.15/h
PERIPHERAL = {"Q2": 15.0, "V2": 60.0, "Q3": 5.0, "V3": 200.0}


def params_for(model: Compartmental, **values: Any) -> FloatArray:
    """Parameters of ``model``: PK1, PD and the peripherals it has, overridden by ``values``."""
    base: dict[str, Any] = {**PK1, **PD}
    base.update({k: v for k, v in PERIPHERAL.items() if int(k[1]) <= 1 + model.peripherals})
    base.update(values)
    return model.parameters(**base)


def positions(items: Sequence[Quantity]) -> dict[str, int]:
    return {q.name: i for i, q in enumerate(items)}


def run(
    model: Compartmental,
    params: FloatArray,
    doses: Sequence[Dose],
    *,
    minutes: int,
    solver: tuple[Any, Any],
    dt: float = 1.0,
    tlag: float = 0.0,
    x0: FloatArray | None = None,
) -> Solution:
    values = dose_inputs(doses, duration_min=minutes, dt_min=dt, tlag_min=tlag)
    n = params.shape[0]
    sol = simulate(
        model,
        solver=solver[0],
        stepsize=solver[1],
        x0=model.initial_state(n) if x0 is None else x0,
        params=params,
        inputs=Inputs(values, dt),
    )
    assert (sol.status == Status.OK).all()
    return sol


def assert_profile(got: FloatArray, want: FloatArray) -> None:
    """Relative error < 1e-6 where ``want`` exceeds 1e-6 of its peak, absolute below that.

    The absolute bound, 1e-12 of the peak, is the relative bound at the threshold.
    """
    peak = float(np.max(np.abs(want)))
    big = np.abs(want) > 1e-6 * peak
    err = np.abs(got - want)
    assert np.all(np.isfinite(got))
    rel = float(np.max(err[big] / np.abs(want[big])))
    assert rel < 1e-6, f"relative error {rel:.2e}"
    small = float(np.max(err[~big], initial=0.0))
    assert small < 1e-12 * peak, f"absolute error {small:.2e} (peak {peak:.3g})"


def bateman(t_h: FloatArray, dose: float, f: float, ka: float, k: float, v: float) -> FloatArray:
    """Oral one-compartment concentration (mg/L) at ``t_h`` >= 0 h; 0 before the dose."""
    tt = np.maximum(t_h, 0.0)
    c = f * dose * ka / (v * (ka - k)) * (np.exp(-k * tt) - np.exp(-ka * tt))
    return np.where(t_h >= 0, c, 0.0)


# --------------------------------------------------------------------------------------
# One compartment
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_compartment_iv_bolus_decays_exponentially(solver: Any) -> None:
    # C = D/V exp(-k t), k = CL/V.
    sol = run(ONE, params_for(ONE), [Dose(0, 100.0, "iv-bolus")], minutes=1440, solver=solver)
    k = PK1["CL"] / PK1["V1"]
    want = 100.0 / PK1["V1"] * np.exp(-k * sol.t_min / H)
    assert sol.output("conc_mg_l")[0, 0] == 100.0 / PK1["V1"]
    assert_profile(sol.output("conc_mg_l")[0], want)


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_compartment_oral_follows_bateman(solver: Any) -> None:
    sol = run(ONE, params_for(ONE), [Dose(0, 250.0, "oral")], minutes=1440, solver=solver)
    k = PK1["CL"] / PK1["V1"]
    want = bateman(sol.t_min / H, 250.0, PK1["F"], PK1["ka"], k, PK1["V1"])
    assert_profile(sol.output("conc_mg_l")[0], want)
    # The peak is at tmax = ln(ka/k) / (ka - k), to the 1-min grid.
    tmax = math.log(PK1["ka"] / k) / (PK1["ka"] - k) * H
    assert abs(sol.t_min[np.argmax(sol.output("conc_mg_l")[0])] - tmax) <= 1.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_oral_with_ka_equal_to_k_follows_the_limit_form(solver: Any) -> None:
    # ka -> k in Bateman: C = F D k t exp(-k t) / V.
    k = PK1["CL"] / PK1["V1"]
    sol = run(ONE, params_for(ONE, ka=k), [Dose(0, 250.0, "oral")], minutes=1440, solver=solver)
    t = sol.t_min / H
    want = PK1["F"] * 250.0 * k * t * np.exp(-k * t) / PK1["V1"]
    assert_profile(sol.output("conc_mg_l")[0], want)


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_order_infusion_rises_then_decays(solver: Any) -> None:
    # R = D/T; C = R/CL (1 - exp(-k t)) while it runs, C(T) exp(-k (t - T)) after.
    dose, duration = 300.0, 120.0
    sol = run(
        ONE,
        params_for(ONE),
        [Dose(0, dose, "iv-infusion", duration)],
        minutes=1440,
        solver=solver,
    )
    k = PK1["CL"] / PK1["V1"] / H
    cl = PK1["CL"] / H
    t = sol.t_min
    during = dose / duration / cl * (1 - np.exp(-k * np.minimum(t, duration)))
    want = during * np.exp(-k * np.maximum(t - duration, 0.0))
    assert_profile(sol.output("conc_mg_l")[0], want)


@pytest.mark.parametrize("solver", SOLVERS)
def test_repeated_oral_doses_superpose(solver: Any) -> None:
    tau = 8 * H
    doses = regimen(Dose(0, 200.0, "oral"), every_min=tau, count=4)
    sol = run(ONE, params_for(ONE), doses, minutes=2880, solver=solver)
    k = PK1["CL"] / PK1["V1"]
    t = sol.t_min / H
    want = sum(bateman(t - j * tau / H, 200.0, PK1["F"], PK1["ka"], k, PK1["V1"]) for j in range(4))
    assert_profile(sol.output("conc_mg_l")[0], np.asarray(want))


@pytest.mark.parametrize("solver", SOLVERS)
def test_bolus_regimen_accumulates_to_the_steady_state_ratio(solver: Any) -> None:
    # Peak after dose n: D/V (1 - r^n) / (1 - r), r = exp(-k tau); the accumulation
    # ratio peak_n / peak_1 tends to 1 / (1 - r).
    tau, n, dt = 6 * H, 20, 6.0
    doses = regimen(Dose(0, 100.0, "iv-bolus"), every_min=tau, count=n)
    sol = run(ONE, params_for(ONE), doses, minutes=int(n * tau), solver=solver, dt=dt)
    r = math.exp(-PK1["CL"] / PK1["V1"] * tau / H)
    peaks = sol.output("conc_mg_l")[0, :: int(tau / dt)]
    j = np.arange(1, n + 1)
    np.testing.assert_allclose(peaks, 100.0 / PK1["V1"] * (1 - r**j) / (1 - r), rtol=1e-6)
    assert peaks[-1] / peaks[0] == pytest.approx(1 / (1 - r), rel=1e-6)
    # Troughs (just before each dose) accumulate by the same ratio.
    troughs = peaks[1:] - 100.0 / PK1["V1"]
    assert troughs[-1] / troughs[0] == pytest.approx(1 / (1 - r), rel=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_oral_lag_shifts_the_curve_exactly(solver: Any) -> None:
    lag = 45
    p = params_for(ONE)
    dose = [Dose(30, 250.0, "oral")]
    lagged = run(ONE, p, dose, minutes=1440, solver=solver, tlag=lag).output("conc_mg_l")[0]
    k = PK1["CL"] / PK1["V1"]
    t = np.arange(1440) / H
    assert_profile(lagged, bateman(t - (30 + lag) / H, 250.0, PK1["F"], PK1["ka"], k, PK1["V1"]))
    assert np.all(lagged[: 30 + lag] == 0.0)
    if isinstance(solver, RK4):
        # The model is autonomous, so fixed steps give the same numbers shifted.
        plain = run(ONE, p, dose, minutes=1440, solver=solver).output("conc_mg_l")[0]
        np.testing.assert_allclose(lagged[lag:], plain[:-lag], rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------
# Two and three compartments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_two_compartment_iv_bolus_is_biexponential(solver: Any) -> None:
    # Micro-constants k10 = CL/V1, k12 = Q/V1, k21 = Q/V2; alpha and beta are the roots of
    # s^2 - (k10 + k12 + k21) s + k10 k21, and
    # C = D/V1 [(alpha - k21) e^{-alpha t} + (k21 - beta) e^{-beta t}] / (alpha - beta)
    # (Gibaldi and Perrier, ch. 2).
    sol = run(TWO, params_for(TWO), [Dose(0, 100.0, "iv-bolus")], minutes=1440, solver=solver)
    cl, v1, q, v2 = PK1["CL"], PK1["V1"], PERIPHERAL["Q2"], PERIPHERAL["V2"]
    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    root = math.sqrt(s * s - 4 * k10 * k21)
    alpha, beta = (s + root) / 2, (s - root) / 2
    t = sol.t_min / H
    a = 100.0 / v1 * (alpha - k21) / (alpha - beta)
    b = 100.0 / v1 * (k21 - beta) / (alpha - beta)
    assert_profile(sol.output("conc_mg_l")[0], a * np.exp(-alpha * t) + b * np.exp(-beta * t))


def linear_system(model: Compartmental, p: FloatArray) -> FloatArray:
    """The model's ODE as x' = M x + e_central * infusion, M per minute, built by hand."""
    s = positions(model.states)
    q = {
        name: p[i] / (H if name not in ("V1", "V2", "V3", "F") else 1.0)
        for name, i in positions(model.params).items()
    }
    m = np.zeros((len(s), len(s)))
    m[s["depot"], s["depot"]] = -q["ka"]
    m[s["central"], s["depot"]] = q["ka"]
    m[s["central"], s["central"]] = -q["CL"] / q["V1"]
    for c in range(2, 2 + model.peripherals):
        pc, qc, vc = s[f"peripheral{c}"], q[f"Q{c}"], q[f"V{c}"]
        m[s["central"], s["central"]] -= qc / q["V1"]
        m[s["central"], pc] = qc / vc
        m[pc, s["central"]] = qc / q["V1"]
        m[pc, pc] = -qc / vc
    m[s["ce"], s["central"]] = q["ke0"] / q["V1"]
    m[s["ce"], s["ce"]] = -q["ke0"]
    m[s["eliminated"], s["central"]] = q["CL"] / q["V1"]
    return m


def exact_states(model: Compartmental, p: FloatArray, values: FloatArray, dt: float) -> FloatArray:
    """States at each grid point after its doses, ``(times + 1, states)``, by matrix exponential.

    Over an interval with infusion rate R: x(dt) = e^{M dt} x + (int_0^dt e^{M s} ds) e1 R,
    the integral read off e^{A dt} with A = [[M, I], [0, 0]] (Van Loan, IEEE TAC 23, 1978).
    """
    m = linear_system(model, p)
    n = m.shape[0]
    big = np.zeros((2 * n, 2 * n))
    big[:n, :n], big[:n, n:] = m, np.eye(n)
    e = expm(big * dt)
    phi, gamma = e[:n, :n], e[:n, n:]
    s, f = positions(model.states), p[positions(model.params)["F"]]
    x = np.zeros(n)
    out = []
    for bolus_rate in values[0]:
        infusion, bolus, oral = bolus_rate
        x[s["central"]] += bolus
        x[s["depot"]] += f * oral
        out.append(x.copy())
        x = phi @ x + gamma[:, s["central"]] * infusion
    out.append(x)
    return np.array(out)


def test_matrix_exponential_matches_solve_ivp_on_the_same_ode() -> None:
    # Checks the test's own exact solution before the model is held to it.
    p = params_for(THREE)[0]
    m = linear_system(THREE, p)
    x0 = np.zeros(m.shape[0])
    x0[positions(THREE.states)["central"]] = 100.0
    x0[positions(THREE.states)["depot"]] = 50.0
    t = np.linspace(0, 720, 13)
    sol = solve_ivp(
        lambda _t, x: m @ x, (0, 720), x0, t_eval=t, method="DOP853", rtol=1e-12, atol=1e-14
    )
    want = np.array([expm(m * tt) @ x0 for tt in t]).T
    np.testing.assert_allclose(sol.y, want, rtol=1e-9, atol=1e-12)


MIXED = (
    Dose(0, 100.0, "iv-bolus"),
    Dose(180, 200.0, "oral"),
    Dose(480, 300.0, "iv-infusion", 120),
)


@pytest.mark.parametrize("solver", SOLVERS)
def test_three_compartment_matches_the_matrix_exponential(solver: Any) -> None:
    p = params_for(THREE)
    sol = run(THREE, p, MIXED, minutes=1440, solver=solver)
    exact = exact_states(THREE, p[0], dose_inputs(MIXED, duration_min=1440), 1.0)
    s = positions(THREE.states)
    assert_profile(sol.output("conc_mg_l")[0], exact[:-1, s["central"]] / PK1["V1"])
    np.testing.assert_allclose(sol.x_final[0], exact[-1], rtol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("model", MODELS)
def test_mass_is_conserved(model: Compartmental, solver: Any) -> None:
    # Drug in the body plus drug eliminated is the bioavailable dose given; the flows
    # cancel in the sum, so every Runge-Kutta method keeps it to rounding.
    p = params_for(model)
    sol = run(model, p, MIXED, minutes=600, solver=solver)
    s = positions(model.states)
    amounts = [v for name, v in s.items() if name != "ce"]
    given_mg = 100.0 + PK1["F"] * 200.0 + 300.0
    assert sol.x_final[0, amounts].sum() == pytest.approx(given_mg, rel=1e-12)
    # Eliminated drug is CL times the AUC (trapezoid on the 1-min grid, to 1e-4).
    auc = np.trapezoid(sol.output("conc_mg_l")[0], sol.t_min) / H  # mg h / L
    c_end = sol.x_final[0, s["central"]] / PK1["V1"]
    auc += (sol.output("conc_mg_l")[0, -1] + c_end) / 2 / H
    assert sol.x_final[0, s["eliminated"]] == pytest.approx(PK1["CL"] * auc, rel=1e-4)


# --------------------------------------------------------------------------------------
# Pharmacodynamics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hills", [(1.0, 1.0, 1.0), (0.5, 1.0, 3.0)], ids=["plain", "sigmoid"])
def test_effect_is_the_hill_curve_of_the_effect_site(hills: tuple[float, ...]) -> None:
    # Blocks of only hill = 1 take the vectorized path, mixed blocks the general one.
    ce = np.array([0.0, 0.5, 1.5, 6.0, 1e9])
    hill = np.repeat(hills, ce.size)
    ce = np.tile(ce, len(hills))
    p = params_for(ONE, hill=hill)
    x0 = ONE.initial_state(ce.size)
    x0[:, positions(ONE.states)["ce"]] = ce
    sol = run(ONE, p, [], minutes=1, solver=(RK4(), None), x0=x0)
    e0, emax, ec50 = PD["E0"], PD["Emax"], PD["EC50"]
    want = e0 + emax * ce**hill / (ec50**hill + ce**hill)
    np.testing.assert_allclose(sol.output("effect")[:, 0], want, rtol=1e-14)
    at_ec50 = sol.output("effect")[ce == ec50, 0]
    assert np.all(at_ec50 == e0 + emax / 2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_effect_site_follows_its_closed_form_after_a_bolus(solver: Any) -> None:
    # dCe/dt = ke0 (C - Ce) with C = C0 e^{-kt}: Ce = C0 ke0 / (ke0 - k) (e^{-kt} - e^{-ke0 t}).
    p = params_for(ONE, hill=np.array([1.0, 2.5]))
    sol = run(ONE, p, [Dose(0, 100.0, "iv-bolus")], minutes=1440, solver=solver)
    k, ke0 = PK1["CL"] / PK1["V1"], PD["ke0"]
    t = sol.t_min / H
    ce = 100.0 / PK1["V1"] * ke0 / (ke0 - k) * (np.exp(-k * t) - np.exp(-ke0 * t))
    for i, h in enumerate((1.0, 2.5)):
        frac = ce**h / (PD["EC50"] ** h + ce**h)
        assert_profile(sol.output("effect")[i] - PD["E0"], PD["Emax"] * frac)


@pytest.mark.parametrize("solver", SOLVERS)
def test_effect_site_equilibrates_with_plasma_under_constant_infusion(solver: Any) -> None:
    # k = 1/h, ke0 = 0.7/h: after 24 h both transients are below 1e-7.
    p = params_for(ONE, CL=20.0, V1=20.0, hill=2.0)
    rate = 2.0  # mg/min
    sol = run(ONE, p, [Dose(0, rate * 1440, "iv-infusion", 1440)], minutes=1440, solver=solver)
    css = rate / (20.0 / H)
    s = positions(ONE.states)
    assert sol.x_final[0, s["central"]] / 20.0 == pytest.approx(css, rel=1e-9)
    assert sol.x_final[0, s["ce"]] == pytest.approx(css, rel=1e-6)
    e_ss = PD["E0"] + PD["Emax"] * css**2 / (PD["EC50"] ** 2 + css**2)
    assert sol.output("effect")[0, -1] == pytest.approx(e_ss, rel=1e-6)


def test_effect_lags_concentration_after_an_oral_dose() -> None:
    # Hysteresis: the effect peaks after the concentration, and at equal concentrations
    # it is larger on the falling limb than on the rising one (counter-clockwise loop).
    p = params_for(ONE, ke0=0.3)
    sol = run(ONE, p, [Dose(0, 250.0, "oral")], minutes=1440, solver=(RK4(), ConstantStep(4)))
    c, e = sol.output("conc_mg_l")[0], sol.output("effect")[0]
    assert np.argmax(e) > np.argmax(c) + 30
    peak = int(np.argmax(c))
    falling = peak + int(np.argmax(c[peak:] <= c[peak] / 2))
    # The effect on the rising limb at the falling limb's concentration.
    rising = np.interp(c[falling], c[: peak + 1], e[: peak + 1])
    assert e[falling] > rising + 1.0


# --------------------------------------------------------------------------------------
# Fast path against the reference path; cohorts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_fast_path_matches_the_reference(model: Compartmental) -> None:
    p = params_for(model, CL=np.array([6.0, 12.0, 3.0]), hill=np.array([1.0, 2.0, 0.7]))
    values = np.concatenate(
        [
            dose_inputs(MIXED, duration_min=600, dt_min=2.0),
            dose_inputs([Dose(10, 80.0, "oral")], duration_min=600, dt_min=2.0, tlag_min=20),
            dose_inputs([Dose(0, 50.0, "iv-infusion", 45)], duration_min=600, dt_min=2.0),
        ]
    )
    kwargs: dict[str, Any] = {
        "x0": model.initial_state(3),
        "params": p,
        "inputs": Inputs(values, 2.0),
    }
    methods = (
        (RK4(), ConstantStep(2), 1e-9),
        (Dopri5(), AdaptiveStep(rtol=1e-10, atol=1e-12), 1e-7),
    )
    for solver, stepsize, rtol in methods:
        fast = simulate(model, solver=solver, stepsize=stepsize, **kwargs)
        ref = simulate_reference(model, solver=solver, stepsize=stepsize, **kwargs)
        np.testing.assert_allclose(fast.y, ref.y, rtol=rtol, atol=1e-12)
        np.testing.assert_allclose(fast.x_final, ref.x_final, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_many_patients_with_their_own_parameters_and_doses(solver: Any) -> None:
    # 150 patients: two full SIMD blocks and a partial one.
    rng = np.random.default_rng(7)
    n = 150
    cl, v = rng.uniform(2, 20, n), rng.uniform(20, 100, n)
    k = cl / v
    ka = k * rng.uniform(1.5, 5, n)  # away from ka = k, where Bateman cancels
    f, dose = rng.uniform(0.3, 1, n), rng.uniform(50, 500, n)
    p = params_for(ONE, CL=cl, V1=v, ka=ka, F=f)
    values = np.concatenate([dose_inputs([Dose(0, d, "oral")], duration_min=1440) for d in dose])
    sol = simulate(
        ONE,
        solver=solver[0],
        stepsize=solver[1],
        x0=ONE.initial_state(n),
        params=p,
        inputs=Inputs(values),
    )
    assert (sol.status == Status.OK).all()
    t = sol.t_min / H
    for i in range(n):
        assert_profile(sol.output("conc_mg_l")[i], bateman(t, dose[i], f[i], ka[i], k[i], v[i]))


@settings(max_examples=40, deadline=None)
@given(
    cl=st.floats(0.5, 20),
    v1=st.floats(5, 100),
    q2=st.floats(0.5, 30),
    v2=st.floats(5, 300),
    ka=st.floats(0.05, 10),
    ke0=st.floats(0.05, 10),
    f=st.floats(0.05, 1),
    dose=st.floats(0.1, 1000),
    route=st.sampled_from(["iv-bolus", "iv-infusion", "oral"]),
)
def test_concentration_is_linear_in_dose_and_never_negative(
    cl: float,
    v1: float,
    q2: float,
    v2: float,
    ka: float,
    ke0: float,
    f: float,
    dose: float,
    route: str,
) -> None:
    p = params_for(TWO, CL=cl, V1=v1, Q2=q2, V2=v2, ka=ka, ke0=ke0, F=f)
    p = np.repeat(p, 2, axis=0)
    duration = 60.0 if route == "iv-infusion" else None
    values = np.concatenate(
        [
            dose_inputs([Dose(0, d, route, duration)], duration_min=720)  # type: ignore[arg-type]
            for d in (dose, 2 * dose)
        ]
    )
    sol = simulate(TWO, solver=RK4(), x0=TWO.initial_state(2), params=p, inputs=Inputs(values))
    c = sol.output("conc_mg_l")
    # The schedule is linear in the dose; doubling is exact in binary floating point.
    np.testing.assert_array_equal(c[1], 2 * c[0])
    assert np.all(c >= 0)
    e = sol.output("effect")
    assert np.all((e >= PD["E0"]) & (e <= PD["E0"] + PD["Emax"]))


# --------------------------------------------------------------------------------------
# Dosing schedules
# --------------------------------------------------------------------------------------


def test_dose_inputs_place_doses_on_the_grid() -> None:
    doses = [
        Dose(0, 100.0, "iv-bolus"),
        Dose(4, 30.0, "iv-bolus"),
        Dose(4, 20.0, "iv-bolus"),
        Dose(2, 50.0, "oral"),
        Dose(8, 70.0, "oral"),  # arrives at 8 + 4 = 12, after the end: no effect here
    ]
    v = dose_inputs(doses, duration_min=10, dt_min=2.0, tlag_min=4.0)
    assert v.shape == (1, 5, 3)
    np.testing.assert_array_equal(v[0, :, 1], [100.0, 0, 50.0, 0, 0])
    np.testing.assert_array_equal(v[0, :, 2], [0, 0, 0, 50.0, 0])
    np.testing.assert_array_equal(v[0, :, 0], 0.0)


def test_infusions_off_the_grid_are_averaged_over_their_intervals() -> None:
    # 10 mg over 2.5 min from 0.5 min: 4 mg/min, half of the first interval covered.
    v = dose_inputs([Dose(0.5, 10.0, "iv-infusion", 2.5)], duration_min=4)
    np.testing.assert_allclose(v[0, :, 0], [2.0, 4.0, 4.0, 0.0])
    # Cut off at the end of the schedule.
    v = dose_inputs([Dose(2, 60.0, "iv-infusion", 6)], duration_min=4)
    np.testing.assert_allclose(v[0, :, 0], [0, 0, 10.0, 10.0])


def test_regimen_repeats_a_dose() -> None:
    doses = regimen(Dose(30, 5.0, "iv-infusion", 10), every_min=60, count=3)
    assert [d.at_min for d in doses] == [30, 90, 150]
    assert all(d.duration_min == 10 and d.amount_mg == 5.0 for d in doses)


# --------------------------------------------------------------------------------------
# Invalid input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "location"),
    [
        ({"CL": 0.0}, "params[0].CL"),
        ({"V1": np.array([40.0, 40.0, -1.0])}, "params[2].V1"),
        ({"Q2": math.nan}, "params[0].Q2"),
        ({"V2": -3.0}, "params[0].V2"),
        ({"ka": 0.0}, "params[0].ka"),
        ({"F": 0.0}, "params[0].F"),
        ({"F": 1.5}, "params[0].F"),
        ({"EC50": 0.0}, "params[0].EC50"),
        ({"hill": -1.0}, "params[0].hill"),
        ({"ke0": math.inf}, "params[0].ke0"),
        ({"E0": math.nan}, "params[0].E0"),
        ({"Q3": 1.0}, "Q3"),
        ({"CL": np.ones((2, 2))}, "CL"),
        ({"CL": np.ones(2), "V1": np.ones(3)}, "params"),
    ],
)
def test_bad_parameters_are_named(values: dict[str, Any], location: str) -> None:
    with pytest.raises(InputError) as err:
        params_for(TWO, **values)
    assert err.value.location == location


def test_missing_parameter_is_named() -> None:
    with pytest.raises(InputError) as err:
        ONE.parameters(CL=1.0, V1=1.0, ka=1.0, Emax=1.0, EC50=1.0)
    assert err.value.location == "ke0"


def test_check_params_wants_the_declared_width() -> None:
    with pytest.raises(InputError) as err:
        ONE.check_params(np.ones((2, 3)))
    assert err.value.location == "params"


@pytest.mark.parametrize(
    ("doses", "kwargs", "location"),
    [
        ([Dose(0, -1.0, "iv-bolus")], {}, "doses[0].amount_mg"),
        ([Dose(0, 1.0, "oral"), Dose(0, 1.0, "im")], {}, "doses[1].route"),  # type: ignore[arg-type]
        ([Dose(0, 1.0, "iv-infusion")], {}, "doses[0].duration_min"),
        ([Dose(0, 1.0, "iv-infusion", 0.0)], {}, "doses[0].duration_min"),
        ([Dose(0, 1.0, "iv-bolus", 5.0)], {}, "doses[0].duration_min"),
        ([Dose(60, 1.0, "oral")], {}, "doses[0].at_min"),
        ([Dose(-1, 1.0, "oral")], {}, "doses[0].at_min"),
        ([Dose(1.5, 1.0, "iv-bolus")], {}, "doses[0].at_min"),
        ([Dose(60 - 1e-12, 1.0, "iv-bolus")], {}, "doses[0].at_min"),
        ([Dose(0, 1.0, "oral")], {"tlag_min": 0.5}, "tlag_min"),
        ([], {"tlag_min": -1.0}, "tlag_min"),
        ([], {"dt_min": 0.0}, "dt_min"),
        ([], {"dt_min": 7.0}, "duration_min"),
    ],
)
def test_bad_doses_are_named(doses: list[Dose], kwargs: dict[str, Any], location: str) -> None:
    with pytest.raises(InputError) as err:
        dose_inputs(doses, duration_min=60, **kwargs)
    assert err.value.location == location


@pytest.mark.parametrize(
    ("every", "count", "location"),
    [(0.0, 3, "every_min"), (math.nan, 3, "every_min"), (1, 0, "count"), (1, 2.5, "count")],
)
def test_bad_regimens_are_named(every: float, count: int, location: str) -> None:
    with pytest.raises(InputError) as err:
        regimen(Dose(0, 1.0, "oral"), every, count)
    assert err.value.location == location
