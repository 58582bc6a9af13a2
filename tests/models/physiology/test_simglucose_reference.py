"""The simglucose reference harness runs simglucose faithfully (and fast)."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Imported through the harness, which silences gym's import-time DeprecationWarnings.
from tests.models.physiology.simglucose_reference import (
    CONTROL_QUEST,
    Action,
    PatientParams,
    T1DPatient,
    closed_loop,
    make_patient,
    open_loop,
)


def test_fast_patient_is_bit_identical_to_with_name() -> None:
    fast = make_patient("adolescent#001")
    slow = T1DPatient.withName("adolescent#001")
    assert isinstance(fast._params, PatientParams)
    assert fast.name == slow.name == "adolescent#001"
    basal = slow._params.u2ss * slow._params.BW / 6000
    assert np.array_equal(fast.state, slow.state)
    for minute in range(300):
        meal = 60.0 if minute in (30, 200) else 0.0
        bolus = 5.0 if minute in (30, 200) else 0.0
        action = Action(CHO=meal, insulin=basal + bolus)
        fast.step(action)
        slow.step(action)
        assert np.array_equal(fast.state, slow.state), minute
        assert fast.observation.Gsub == slow.observation.Gsub, minute


def test_open_loop_records_start_of_minute_values_and_runs_in_parallel() -> None:
    names = ["adult#001", "child#004"]
    kwargs = {"duration_min": 60, "meals": [(10, 12.0), (10, 3.0)], "boluses": [(10, 2.0)]}
    serial = open_loop(names, processes=1, **kwargs)  # type: ignore[arg-type]
    parallel = open_loop(names, processes=2, **kwargs)  # type: ignore[arg-type]
    for field in ("plasma_glucose_mg_dl", "sc_glucose_mg_dl", "final_state"):
        assert np.array_equal(getattr(serial, field), getattr(parallel, field)), field

    patient = make_patient("adult#001")
    basal = patient._params.u2ss * patient._params.BW / 6000
    assert serial.plasma_glucose_mg_dl.shape == (2, 60)
    assert serial.final_state.shape == (2, 13)
    assert serial.plasma_glucose_mg_dl[0, 0] == patient.state[3] / patient._params.Vg
    assert serial.sc_glucose_mg_dl[0, 0] == patient.observation.Gsub
    # 15 g announced at minute 10 is eaten at 5 g/min during minutes 10, 11, 12.
    assert serial.carbs_g_per_min[0].tolist() == [0.0] * 10 + [5.0] * 3 + [0.0] * 47
    assert serial.insulin_u_per_min[0, 10] == basal + 2.0
    assert serial.insulin_u_per_min[0, 11] == basal


def test_closed_loop_is_noise_free_and_boluses_one_step_after_the_meal() -> None:
    result = closed_loop(["adult#001"], duration_min=480, meals=[(420, 45.0)])
    assert result.sample_time_min == 3.0
    assert result.bg_mg_dl.shape == result.cgm_mg_dl.shape == (1, 161)
    assert result.cho.shape == result.insulin.shape == (1, 160)
    assert result.plasma_glucose_mg_dl.shape == (1, 480)

    gsub = result.sc_glucose_mg_dl[0]
    assert result.cgm_mg_dl[0, 0] == result.bg_mg_dl[0, 0] == gsub[0]
    # Noise-free Dexcom: each env step averages the held sample twice and the new one once.
    k = 50
    assert np.isclose(result.cgm_mg_dl[0, k], (2 * gsub[3 * k - 3] + gsub[3 * k]) / 3)
    assert np.isclose(result.bg_mg_dl[0, k], gsub[3 * k - 2 : 3 * k + 1].mean())

    quest = pd.read_csv(CONTROL_QUEST).set_index("Name")
    bolus_rate = 45.0 / quest.loc["adult#001", "CR"] / 3  # glucose ~139 < 150: no correction
    insulin = result.insulin_u_per_min[0]
    basal = insulin[0]
    assert np.allclose(insulin[423:426] - basal, bolus_rate, atol=1e-5)  # pump: 0.05 pmol/min
    assert np.array_equal(insulin[420:423], [basal] * 3)
    assert np.array_equal(insulin[426:], [basal] * 54)
    assert result.carbs_g_per_min[0, 420:430].tolist() == [5.0] * 9 + [0.0]
    assert 0.0 <= result.time_in_range_pct[0] <= 100.0
