"""Glucose routes: the live forecast, the derived value and its provenance, what-if
branches; care teams, validation with field paths, and what the branches must obey."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medtwin.apps.api import ServiceContext, create_app
from medtwin.core.clock import FixedClock
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from medtwin.devices.simulated.diabetes import DiabetesConfig, DiabetesWard
from medtwin.twins.glucose import STATEMENT
from tests.apps.conftest import user_token

START = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
BANDS = ("lower90", "lower50", "median", "upper50", "upper90")


def _context(client: TestClient) -> ServiceContext:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    return context


def _headers(client: TestClient, user: str, team: str) -> dict[str, str]:
    token = user_token(_context(client), user, Role.CLINICIAN, team)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Three hours of two simulated patients with type 1 diabetes (breakfast at 07:00),
    fed through the ingestion path; the glucose twins refreshed every 15 minutes."""
    tmp: Path = tmp_path_factory.mktemp("glucose")
    settings = Settings(
        store_url=f"sqlite:///{tmp / 'glucose.db'}",
        secrets_file=tmp / "secrets.json",
        audit_checkpoint_path=tmp / "checkpoints.jsonl",
    )
    clock = FixedClock(START)
    ward = DiabetesWard(DiabetesConfig(("adult#001", "child#002"), ("t1d-a", "t1d-b"), days=1))
    with TestClient(create_app(settings, clock=clock, background=())) as test_client:
        context = _context(test_client)
        for step in range(13):
            if step:
                clock.advance(15 * 60)
            observations, interventions = ward.advance(clock.now())
            context.ingestor.ingest(observations, channel="simulator", care_team="ward")
            context.ingestor.ingest_interventions(
                interventions, channel="simulator", care_team="ward"
            )
            context.glucose.refresh()
        # A ward patient without CGM: no glucose twin.
        context.ingestor.ingest(
            [
                {
                    "id": "hr-1",
                    "source": "mon-1",
                    "patient": "no-cgm",
                    "code": "8867-4",
                    "value": 70,
                    "unit": "/min",
                    "time": "2026-03-02T07:59:00Z",
                }
            ],
            channel="api",
            care_team="ward",
        )
        yield test_client


@pytest.fixture(scope="module")
def alice(client: TestClient) -> dict[str, str]:
    return _headers(client, "alice", "ward")


def _whatif(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return client.post("/api/v1/twins/t1d-a/whatif", json=body, headers=headers)


def test_the_forecast_has_ordered_bands_parameters_readings_and_the_statement(
    client: TestClient, alice: dict[str, str]
) -> None:
    answer = client.get("/api/v1/patients/t1d-a/glucose", headers=alice)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # The service takes a step 30 s after it ends (readings at its end are stored first).
    assert body["time"] == "2026-03-02T07:55:00Z"
    assert body["statement"] == STATEMENT
    assert [p["horizon_min"] for p in body["forecast"]] == [30, 60, 120]
    for point in body["forecast"]:
        values = [point[b] for b in BANDS]
        assert values == sorted(values)
    assert {p["name"] for p in body["parameters"]} == {"Vmx", "kmax"}
    for p in body["parameters"]:
        assert 0 < p["lower90"] <= p["value"] <= p["upper90"]
    assert len(body["readings"]) >= 30  # every 5 minutes over the last 3 h
    assert body["last_reading"] == "2026-03-02T07:55:00Z"
    assert body["readings"][-1]["time"] == "2026-03-02T08:00:00Z"
    assert body["planned"] == []  # nothing recorded ahead of the twin


def test_the_forecast_is_a_derived_value_with_provenance_to_the_cgm(
    client: TestClient, alice: dict[str, str]
) -> None:
    latest = client.get("/api/v1/patients/t1d-a/glucose", headers=alice).json()
    derived = client.get("/api/v1/patients/t1d-a/derived/glucose.forecast", headers=alice)
    assert derived.status_code == 200, derived.text
    assert derived.json()["id"] == latest["id"]
    outputs = {o["name"]: o for o in derived.json()["outputs"]}
    assert outputs["median_60"]["unit"] == "mg/dL"
    assert outputs["median_60"]["value"] == latest["forecast"][1]["median"]
    tree = client.get(f"/api/v1/derived/{latest['id']}/provenance", headers=alice).json()
    glucose = [node for node in tree["inputs"] if node["input"] == "glucose"]
    assert len(glucose) == 3  # the readings of the last 15-minute pass
    assert all(node["code"] == "2339-0" and node["patient"] == "t1d-a" for node in glucose)
    assert tree["parameters"]["statement"] == STATEMENT
    # A module of the graph, published by the glucose twins (not run by the planner).
    modules = {m["name"]: m for m in client.get("/api/v1/modules", headers=alice).json()}
    assert modules["glucose.forecast"]["published"] is True
    assert modules["news2"]["published"] is False
    assert {o["name"] for o in modules["glucose.forecast"]["outputs"]} >= {"median_30", "Vmx"}
    # A twin without CGM has no forecast.
    none = client.get("/api/v1/patients/no-cgm/derived/glucose.forecast", headers=alice)
    assert none.status_code == 404
    assert "no result" in none.text


def test_another_care_team_and_patients_without_a_twin_get_404(
    client: TestClient, alice: dict[str, str]
) -> None:
    bob = _headers(client, "bob", "other-ward")
    body = {"scenarios": [{"name": "bolus", "bolus_u": 2}]}
    for headers, patient in ((bob, "t1d-a"), (alice, "no-cgm"), (alice, "nobody")):
        assert client.get(f"/api/v1/patients/{patient}/glucose", headers=headers).status_code == 404
        answer = client.post(f"/api/v1/twins/{patient}/whatif", json=body, headers=headers)
        assert answer.status_code == 404, answer.text
    path = "/api/v1/patients/t1d-a/derived/glucose.forecast"
    assert client.get(path, headers=bob).status_code == 404
    assert client.get("/api/v1/patients/t1d-a/glucose").status_code == 401


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"scenarios": []}, "body.scenarios"),
        ({"scenarios": [{"name": "x", "bolus_u": -1}]}, "body.scenarios.0.bolus_u"),
        (
            {"scenarios": [{"name": "a"}, {"name": "b", "meal_g": "lots"}]},
            "body.scenarios.1.meal_g",
        ),
        ({"scenarios": [{"name": "x", "at_min": 1.5}]}, "body.scenarios.0.at_min"),
        ({"scenarios": [{"name": "x", "dose": 1}]}, "body.scenarios.0.dose"),
        ({"scenarios": [{"bolus_u": 1}]}, "body.scenarios.0.name"),
        ({"scenarios": [{"name": "x", "at_min": 240}]}, "body.scenarios.0.at_min"),
        ({"scenarios": [{"name": "x"}], "horizon_min": 5}, "body.horizon_min"),
    ],
)
def test_bad_scenarios_answer_422_with_the_field(
    client: TestClient, alice: dict[str, str], body: dict[str, Any], location: str
) -> None:
    answer = _whatif(client, alice, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["location"] == location


def test_the_no_change_branch_is_the_forecast(client: TestClient, alice: dict[str, str]) -> None:
    forecast = client.get("/api/v1/patients/t1d-a/glucose", headers=alice).json()
    answer = _whatif(client, alice, {"scenarios": [{"name": "meal", "meal_g": 40}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["statement"] == STATEMENT
    assert body["time"] == forecast["time"]
    assert [b["name"] for b in body["branches"]] == ["no change", "meal"]
    same = body["branches"][0]
    assert same["scenario"] is None
    assert same["t_min"][0] == 5
    assert same["t_min"][-1] == 240
    assert same["time"][0] == "2026-03-02T08:00:00Z"
    for point in forecast["forecast"]:
        k = same["t_min"].index(point["horizon_min"])
        for band in BANDS:
            # The stored forecast draws its errors over the whole ward, the branch over
            # this twin alone: the same distribution, sampled apart.
            assert same[band][k] == pytest.approx(point[band], abs=12), (band, point)
    meal = body["branches"][1]
    assert max(meal["median"]) > max(same["median"]) + 20


def test_a_larger_bolus_never_gives_higher_glucose(
    client: TestClient, alice: dict[str, str]
) -> None:
    doses = [0.5, 1, 2, 4, 8]
    body = {
        "scenarios": [{"name": f"{u} U", "bolus_u": u, "at_min": 10} for u in doses],
        "horizon_min": 360,
    }
    answer = _whatif(client, alice, body)
    assert answer.status_code == 200, answer.text
    branches = answer.json()["branches"]
    for band in BANDS:
        curves = np.array([b[band] for b in branches])  # no change first, then the doses
        assert np.all(np.diff(curves, axis=0) <= 1e-9), band
    # Before the bolus is given the branches agree.
    first = np.array([b["median"][0] for b in branches])
    np.testing.assert_allclose(first, first[0])


def test_a_basal_change_and_a_later_start_shift_the_branch(
    client: TestClient, alice: dict[str, str]
) -> None:
    body = {
        "scenarios": [
            {"name": "more basal", "basal_change_u_per_h": 1.0},
            {"name": "bolus later", "bolus_u": 3, "at_min": 60},
        ]
    }
    branches = _whatif(client, alice, body).json()["branches"]
    same, basal, later = (np.array(b["median"]) for b in branches)
    assert basal[-1] < same[-1] - 10
    k = branches[0]["t_min"].index(60)
    np.testing.assert_allclose(later[: k + 1], same[: k + 1])
    assert later[-1] < same[-1] - 10


def test_reads_and_what_ifs_are_audited(client: TestClient, alice: dict[str, str]) -> None:
    context = _context(client)
    before = context.store.count("audit")
    _whatif(client, alice, {"scenarios": [{"name": "bolus", "bolus_u": 1}]})
    client.get("/api/v1/patients/t1d-a/glucose", headers=alice)
    assert context.store.count("audit") == before + 2
