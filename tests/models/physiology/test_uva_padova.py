"""UVA/Padova: steady state, fast vs reference path, and simglucose as the independent check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medtwin.models.physiology import (
    RK4,
    AdaptiveStep,
    Dopri5,
    Status,
    simulate,
    simulate_reference,
)
from medtwin.models.physiology.glycemic import glycemic_outcomes
from medtwin.models.physiology.scenario import Scenario, meal_intake, parse_scenario, run_scenario
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY, UvaPadova
from medtwin.models.physiology.uva_padova.patients import cohort, virtual_patients
from medtwin.models.physiology.uva_padova.steady_state import steady_state

from . import simglucose_reference as sg

NAMES = sorted(virtual_patients())
DAY = 1440
# Three meals with matching boluses (grams, units) at 07:00, 12:00, 18:00.
MEALS = [(420, 45.0), (720, 70.0), (1080, 80.0)]
BOLUSES = [(420, 4.5), (720, 7.0), (1080, 8.0)]


def _open_loop_scenario() -> Scenario:
    events: list[dict[str, Any]] = [{"at_min": 0, "basal_u_per_h": "patient"}]
    events += [{"at_min": at, "meal_g": g} for at, g in MEALS]
    events += [{"at_min": at, "bolus_u": u} for at, u in BOLUSES]
    return parse_scenario(
        {"model": "uva-padova", "patients": NAMES, "duration_min": DAY, "events": events}
    )


@pytest.fixture(scope="module")
def open_loop() -> Scenario:
    return _open_loop_scenario()


@pytest.fixture(scope="module")
def simglucose_open_loop() -> sg.OpenLoopResult:
    return sg.open_loop(NAMES, duration_min=DAY, meals=MEALS, boluses=BOLUSES)


def test_thirty_patients_ship_with_therapy_settings() -> None:
    patients = virtual_patients()
    assert len(patients) == 30
    for group in ("adolescent", "adult", "child"):
        assert {f"{group}#{i:03d}" for i in range(1, 11)} <= set(patients)
    adult = patients["adult#001"]
    assert adult.parameter("BW") == pytest.approx(102.32)
    assert adult.cr_g_per_u == 10
    assert adult.basal_u_per_min == pytest.approx(
        adult.parameter("u2ss") * adult.parameter("BW") / 6000
    )


def test_every_patient_rests_at_the_shipped_state_on_basal(open_loop: Scenario) -> None:
    model = UvaPadova()
    x = open_loop.x0.T
    p = open_loop.params.T
    z = model.initial_discrete(x, p)
    u = open_loop.inputs.values[:, 0, :].T
    dx = model.rhs(0.0, x, u, z, p)
    assert np.abs(dx).max() < 1e-9
    glucose = model.observe(0.0, x, u, z, p)[0]
    gb = p[[q.name for q in PHYSIOLOGY].index("Gb")]
    np.testing.assert_allclose(glucose, gb, rtol=1e-9)
    # And it stays there: a fasting day on basal moves no state.
    fasting = parse_scenario(
        {
            "model": "uva-padova",
            "patients": NAMES,
            "duration_min": 600,
            "events": [{"at_min": 0, "basal_u_per_h": "patient"}],
        }
    )
    sol = run_scenario(fasting, solver=Dopri5())
    np.testing.assert_allclose(sol.solution.x_final, fasting.x0, rtol=1e-7, atol=1e-9)


def test_steady_state_solution_reproduces_the_shipped_states() -> None:
    x0, p = cohort(NAMES)
    x, q = steady_state(p)
    np.testing.assert_allclose(x, x0, rtol=1e-7, atol=1e-9)
    kp1 = [s.name for s in PHYSIOLOGY].index("kp1")
    np.testing.assert_allclose(q[:, kp1], p[:, kp1], rtol=1e-8)


def test_jittered_patients_start_at_rest() -> None:
    x0, p = cohort(NAMES * 4, jitter_cv=0.2, rng=np.random.default_rng(7))
    _, shipped = cohort(NAMES * 4)
    assert not np.allclose(p, shipped)  # they really differ
    model = UvaPadova()
    scenario = _open_loop_scenario()
    devices = np.repeat(scenario.params[:, len(PHYSIOLOGY) :], 4, axis=0)
    params = np.hstack([p, devices]).T
    u = np.zeros((4, x0.shape[0]))
    u[1] = p[:, -1] * p[:, 0] / 6000  # u2ss * BW / 6000
    dx = model.rhs(0.0, x0.T, u, model.initial_discrete(x0.T, params), params)
    assert np.abs(dx).max() < 1e-9


def test_meal_intake_queues_at_five_grams_per_minute(
    simglucose_open_loop: sg.OpenLoopResult,
) -> None:
    eaten = meal_intake(MEALS, DAY)
    np.testing.assert_array_equal(eaten, simglucose_open_loop.carbs_g_per_min[0])
    # Two meals in quick succession queue behind each other; 47 g ends on a 2 g minute.
    queued = meal_intake([(0, 47.0), (3, 10.0)], 20)
    np.testing.assert_array_equal(queued[:12], [5.0] * 11 + [2.0])
    assert queued.sum() == pytest.approx(57.0)


def test_rk4_fast_path_equals_numpy_reference(open_loop: Scenario) -> None:
    args = {"x0": open_loop.x0, "params": open_loop.params, "inputs": open_loop.inputs}
    fast = simulate(UvaPadova(), solver=RK4(), **args)
    ref = simulate_reference(UvaPadova(), solver=RK4(), **args)
    finite = ~np.isnan(ref.y)
    np.testing.assert_array_equal(np.isnan(fast.y), ~finite)
    np.testing.assert_allclose(fast.y[finite], ref.y[finite], rtol=1e-9)
    np.testing.assert_allclose(fast.x_final, ref.x_final, rtol=1e-9, atol=1e-12)


def test_adaptive_fast_path_agrees_with_scipy_reference(open_loop: Scenario) -> None:
    step = AdaptiveStep(rtol=1e-8, atol=1e-10)
    args = {"x0": open_loop.x0, "params": open_loop.params, "inputs": open_loop.inputs}
    fast = simulate(UvaPadova(), solver=Dopri5(), stepsize=step, **args)
    ref = simulate_reference(UvaPadova(), solver=Dopri5(), stepsize=step, **args)
    # Both control local error to 1e-8; what accumulates over a day, with the renal
    # threshold and meal starts as kinks, stays far below a thousandth of a mg/dL.
    diff = np.abs(fast.output("glucose_mg_dl") - ref.output("glucose_mg_dl"))
    assert diff.max() < 1e-3
    assert np.median(diff) < 1e-6
    assert (fast.status == Status.OK).all()


def test_open_loop_day_matches_simglucose(
    open_loop: Scenario, simglucose_open_loop: sg.OpenLoopResult
) -> None:
    reference = simglucose_open_loop
    assert list(reference.names) == NAMES
    adaptive = run_scenario(open_loop, solver=Dopri5()).solution
    fixed = run_scenario(open_loop, solver=RK4()).solution
    np.testing.assert_allclose(
        adaptive.output("insulin_u_per_min"), reference.insulin_u_per_min, rtol=1e-12
    )
    plasma = reference.plasma_glucose_mg_dl
    assert np.abs(adaptive.output("glucose_mg_dl") - plasma).max() < 0.1
    assert np.abs(adaptive.output("sc_glucose_mg_dl") - reference.sc_glucose_mg_dl).max() < 0.1
    assert np.abs(fixed.output("glucose_mg_dl") - plasma).max() < 1.0
    # The day is not trivial: every patient's glucose moves by tens of mg/dL.
    assert (np.ptp(plasma, axis=1) > 20).all()


def test_closed_loop_time_in_range_matches_simglucose() -> None:
    reference = sg.closed_loop(NAMES, duration_min=DAY, meals=MEALS, sensor="Dexcom")
    # simglucose's Insulet pump rounds rates to 0.05 pmol/min: as increments, that is
    # 0.05 / 6000 U/min of basal (0.0005 U/h) and 0.05 / 6000 * 3 U per 3-min bolus.
    step_u_per_min = 0.05 / 6000
    scenario = parse_scenario(
        {
            "model": "uva-padova",
            "patients": NAMES,
            "duration_min": DAY,
            "events": [{"at_min": at, "meal_g": g} for at, g in MEALS],
            "controller": "basal-bolus",
            "sensor": {"preset": "Dexcom", "noise": False},
            "pump": {
                "basal_increment_u_per_h": step_u_per_min * 60,
                "bolus_increment_u": step_u_per_min * 3,
                "max_basal_u_per_h": 30 * 60,
                "max_bolus_u": 30 * 3,
            },
        }
    )
    sol = run_scenario(scenario, solver=Dopri5()).solution
    ours = glycemic_outcomes(sol.output("sc_glucose_mg_dl")).tir_pct
    diff = np.abs(ours - reference.time_in_range_pct)
    assert diff.max() <= 2.0, dict(zip(NAMES, diff.round(2), strict=True))
    # The controller really doses: more insulin than basal alone, around every meal.
    insulin = sol.output("insulin_u_per_min")
    basal = insulin[:, :400].mean(axis=1)
    assert (insulin[:, 420:440].max(axis=1) > 10 * basal).all()
    np.testing.assert_allclose(
        insulin.sum(axis=1), reference.insulin_u_per_min.sum(axis=1), rtol=0.05
    )
