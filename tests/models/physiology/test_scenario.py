"""Scenario files: checking, running, and the ``medtwin simulate`` CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.core.errors import InputError
from medtwin.models.physiology import AdaptiveStep, Dopri5
from medtwin.models.physiology.scenario import (
    UVA_COLUMNS,
    parse_scenario,
    run_scenario,
    write_csv,
)

ISSUE_EXAMPLE: dict[str, Any] = {
    "model": "uva-padova",
    "patients": ["adult#001", "child#004"],
    "duration_min": 1440,
    "events": [
        {"at_min": 420, "meal_g": 45},
        {"at_min": 420, "bolus_u": 4.5},
        {"at_min": 0, "basal_u_per_h": 0.9},
    ],
    "controller": "none",
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(ISSUE_EXAMPLE)), **changes}


def _rows(scenario: dict[str, Any]) -> list[dict[str, str]]:
    out = io.StringIO()
    write_csv(run_scenario(parse_scenario(scenario)), out)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_issue_example_writes_one_row_per_patient_minute() -> None:
    rows = _rows(ISSUE_EXAMPLE)
    assert tuple(rows[0]) == UVA_COLUMNS
    assert len(rows) == 2 * 1440
    assert [r["patient"] for r in rows[::1440]] == ["adult#001", "child#004"]
    assert [r["time_min"] for r in rows[:3]] == ["0", "1", "2"]
    adult = rows[:1440]
    # 0.9 U/h basal all day; the 4.5 U bolus within minute 420.
    assert float(adult[0]["insulin_u_per_min"]) == pytest.approx(0.015)
    assert float(adult[420]["insulin_u_per_min"]) == pytest.approx(4.515)
    # 45 g eaten at 5 g/min from minute 420: nine minutes.
    carbs = [float(r["carbs_g_per_min"]) for r in adult]
    assert carbs[420:429] == [5.0] * 9
    assert sum(carbs) == pytest.approx(45.0)
    # No sensor configured: the CGM column is empty.
    assert {r["cgm_mg_dl"] for r in rows} == {""}
    glucose = np.array([float(r["glucose_mg_dl"]) for r in adult])
    assert glucose[0] == pytest.approx(138.56)
    assert glucose[440:600].max() > glucose[419] + 20  # the meal shows


def test_patient_basal_and_closed_loop_with_a_sensor() -> None:
    scenario = _with(
        events=[{"at_min": 60, "meal_g": 50}],
        controller="basal-bolus",
        sensor={"preset": "Dexcom", "noise": True},
        seed=3,
        duration_min=240,
    )
    rows = _rows(scenario)
    cgm = [float(r["cgm_mg_dl"]) for r in rows[:240]]
    assert all(39 <= v <= 600 for v in cgm)
    # Held for three minutes between Dexcom samples, and noisy.
    assert cgm[0] == cgm[1] == cgm[2] != cgm[3]
    glucose = [float(r["sc_glucose_mg_dl"]) for r in rows[:240]]
    assert cgm[:60] != pytest.approx(glucose[:60], abs=1e-6)
    # The controller boluses for the meal in the sample period after it is announced.
    insulin = [float(r["insulin_u_per_min"]) for r in rows[:240]]
    assert max(insulin[63:66]) > 10 * insulin[30]
    # Same seed, same readings.
    assert _rows(scenario) == rows


def test_patient_steady_state_basal() -> None:
    scenario = _with(events=[{"at_min": 0, "basal_u_per_h": "patient"}], duration_min=30)
    rows = _rows(scenario)
    assert float(rows[0]["insulin_u_per_min"]) == pytest.approx(0.021122675, rel=1e-6)
    glucose = {round(float(r["glucose_mg_dl"]), 6) for r in rows[:30]}
    assert glucose == {138.56}


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"patients": ["adult#011"]}, "patients[0]"),
        ({"patients": []}, "patients"),
        ({"events": [{"at_min": 10, "bolus_u": -1}]}, "events[0].bolus_u"),
        ({"events": [{"at_min": 1440, "meal_g": 20}]}, "events[0].at_min"),
        ({"events": [{"at_min": 5, "meal_g": 20, "bolus_u": 2}]}, "events[0]"),
        ({"events": [{"at_min": 5, "meal": 20}]}, "events[0].meal"),
        ({"events": [{"at_min": 2.5, "meal_g": 20}]}, "events[0].at_min"),
        ({"events": [{"at_min": 0, "basal_u_per_h": "lots"}]}, "events[0].basal_u_per_h"),
        ({"colour": "blue"}, "colour"),
        ({"controller": "pid"}, "controller"),
        ({"duration_min": 0}, "duration_min"),
        ({"model": "bergman"}, "model"),
        ({"sensor": {"preset": "Libre"}}, "sensor.preset"),
        ({"sensor": {"preset": "Dexcom", "drift": 1}}, "sensor.drift"),
        ({"pump": {"max_bolus_u": 0}}, "pump.max_bolus_u"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_scenarios_name_the_field(change: dict[str, Any], location: str) -> None:
    with pytest.raises(InputError) as err:
        parse_scenario(_with(**change))
    assert err.value.location == location


def test_cli_writes_the_csv_and_rejects_bad_files(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "scenario.json"
    good.write_text(json.dumps(_with(duration_min=480)))
    out = tmp_path / "result.csv"
    for solver in ("rk4", "dopri5"):
        result = runner.invoke(app, ["simulate", str(good), "--out", str(out), "--solver", solver])
        assert result.exit_code == 0, result.output
        lines = out.read_text().splitlines()
        assert lines[0] == ",".join(UVA_COLUMNS)
        assert len(lines) == 1 + 2 * 480
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(patients=["adult#001", "teen#001"])))
    result = runner.invoke(app, ["simulate", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "patients[1]" in result.output
    assert "unknown virtual patient" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": "uva-padova",\n "patients": [}')
    result = runner.invoke(app, ["simulate", str(broken), "--out", str(out)])
    assert result.exit_code == 2
    assert "broken.json:2" in result.output
    result = runner.invoke(app, ["simulate", str(good), "--out", str(out), "--solver", "euler"])
    assert result.exit_code == 2


PK_EXAMPLE: dict[str, Any] = {
    "model": "pk-2cmt",
    "params": {"CL": 5.0, "V1": 20.0, "Q2": 10.0, "V2": 40.0, "ka": 1.0, "EC50": 5.0,
               "Emax": 100.0, "ke0": 0.5},
    "duration_min": 720,
    "events": [{"at_min": 0, "dose_mg": 1000, "route": "iv-infusion", "duration_min": 60}],
}  # fmt: skip


def test_pk_scenario_writes_concentration_and_effect() -> None:
    rows = _rows(PK_EXAMPLE)
    assert tuple(rows[0]) == ("patient", "time_min", "conc_mg_l", "effect")
    assert len(rows) == 720
    conc = np.array([float(r["conc_mg_l"]) for r in rows])
    assert conc[0] == 0.0
    assert int(np.argmax(conc)) == 60  # the end of the one-hour infusion
    effect = np.array([float(r["effect"]) for r in rows])
    assert int(np.argmax(effect)) > 60  # the effect site lags the plasma


def test_pk_iv_bolus_scenario_matches_the_closed_form() -> None:
    scenario = {
        "model": "pk-1cmt",
        "patients": [
            {"id": "a", "params": {"CL": 6.0, "V1": 30.0, "ka": 1.0, "EC50": 1.0, "Emax": 1.0,
                                   "ke0": 1.0}},
            {"id": "b", "params": {"CL": 2.0, "V1": 10.0, "ka": 1.0, "EC50": 1.0, "Emax": 1.0,
                                   "ke0": 1.0}},
        ],
        "duration_min": 600,
        "events": [{"at_min": 0, "dose_mg": 500, "route": "iv-bolus"}],
    }  # fmt: skip
    result = run_scenario(
        parse_scenario(scenario), solver=Dopri5(), stepsize=AdaptiveStep(rtol=1e-10, atol=1e-12)
    )
    t_h = result.solution.t_min / 60
    for i, (cl, v) in enumerate([(6.0, 30.0), (2.0, 10.0)]):
        exact = 500 / v * np.exp(-cl / v * t_h)
        np.testing.assert_allclose(result.solution.output("conc_mg_l")[i], exact, rtol=1e-7)
    assert result.scenario.patients == ("a", "b")


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"events": [{"at_min": 0, "dose_mg": -5, "route": "oral"}]}, "events[0].dose_mg"),
        ({"events": [{"at_min": 0, "dose_mg": 5, "route": "im"}]}, "events[0].route"),
        ({"events": [{"at_min": 0, "dose_mg": 5, "route": "iv-infusion"}]},
         "events[0].duration_min"),
        ({"events": [{"at_min": 720, "dose_mg": 5, "route": "oral"}]}, "events[0].at_min"),
        ({"events": [{"at_min": 0, "dose_mg": 5, "route": "oral", "rate": 1}]}, "events[0].rate"),
        ({"params": {"CL": 5.0, "V1": 20.0}}, "params.Q2"),
        ({"params": {**PK_EXAMPLE["params"], "V2": -1}}, "params.V2"),
        ({"params": {**PK_EXAMPLE["params"], "Vmax": 1}}, "params.Vmax"),
        ({"params": {**PK_EXAMPLE["params"], "F": 1.5}}, "params.F"),
        ({"params": {**PK_EXAMPLE["params"], "tlag": 0.01}}, "params.tlag"),
        ({"patients": [{"id": "x", "params": PK_EXAMPLE["params"]}]}, "params"),
        ({"events": [{"at_min": 0, "dose_mg": 5, "route": "oral", "every_min": 300, "count": 4}]},
         "events[0].count"),
        ({"events": [{"at_min": 0, "dose_mg": 5, "route": "oral", "count": 2}]},
         "events[0].every_min"),
    ],
)  # fmt: skip
def test_invalid_pk_scenarios_name_the_field(change: dict[str, Any], location: str) -> None:
    with pytest.raises(InputError) as err:
        parse_scenario({**PK_EXAMPLE, **change})
    assert err.value.location == location


def test_pk_oral_lag_time_shifts_the_curve() -> None:
    base = {**PK_EXAMPLE, "events": [{"at_min": 0, "dose_mg": 100, "route": "oral"}]}
    lagged = {**base, "params": {**PK_EXAMPLE["params"], "tlag": 0.5}}
    plain = [float(r["conc_mg_l"]) for r in _rows(base)]
    late = [float(r["conc_mg_l"]) for r in _rows(lagged)]
    assert late[:31] == [0.0] * 31
    np.testing.assert_allclose(late[30:], plain[: 720 - 30], rtol=1e-12)


def test_pk_regimen_repeats_a_dose() -> None:
    one = {"at_min": 0, "dose_mg": 100, "route": "iv-bolus"}
    listed = {**PK_EXAMPLE, "events": [{**one, "at_min": m} for m in (0, 240, 480)]}
    repeated = {**PK_EXAMPLE, "events": [{**one, "every_min": 240, "count": 3}]}
    assert _rows(repeated) == _rows(listed)
    conc = [float(r["conc_mg_l"]) for r in _rows(repeated)]
    assert conc[240] > conc[239]  # each dose shows
    assert conc[480] > conc[479]
