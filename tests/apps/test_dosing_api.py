"""Vancomycin dosing routes: the recommendation with its curve, band, parameters and
statement; the stored result and its provenance; care teams, consent-checked reads
with audit, and validation errors with field paths."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.apps.api import ServiceContext, create_app
from medtwin.core.clock import FixedClock
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from medtwin.data.vault import Demographics
from medtwin.twins.dosing import MODULE, STATEMENT
from tests.apps.conftest import user_token
from tests.twins.test_dosing import AGE, START, simulated_patient

PATH = "/api/v1/patients/{}/dosing/vancomycin"
TROUGH = {"target": {"kind": "trough", "low": 10, "high": 20}, "interval_h": 12, "infusion_h": 1}


def _context(client: TestClient) -> ServiceContext:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    return context


def _headers(client: TestClient, user: str, team: str) -> dict[str, str]:
    token = user_token(_context(client), user, Role.CLINICIAN, team)
    return {"Authorization": f"Bearer {token}"}


def feed(context: ServiceContext, patient: str, *, weight: bool = True) -> None:
    """A simulated vancomycin course (see tests.twins.test_dosing) through the ingestion
    path, with the patient's birth date and sex in the vault."""
    items = simulated_patient(patient, weight=weight)
    context.ingestor.ingest(items["observations"], channel="api", care_team="ward")
    context.ingestor.ingest_interventions(items["interventions"], channel="api", care_team="ward")
    born = START.date().replace(year=START.year - AGE, month=1, day=1)
    context.vault.put(
        patient, Demographics(birth_date=born, sex="male"), now_us=context.clock.now_us()
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("dosing")
    settings = Settings(
        store_url=f"sqlite:///{tmp / 'dosing.db'}",
        secrets_file=tmp / "secrets.json",
        audit_checkpoint_path=tmp / "checkpoints.jsonl",
    )
    clock = FixedClock(START + timedelta(hours=50))
    with TestClient(create_app(settings, clock=clock, background=())) as test_client:
        context = _context(test_client)
        feed(context, "vanc-a")
        feed(context, "vanc-noweight", weight=False)
        yield test_client


@pytest.fixture(scope="module")
def alice(client: TestClient) -> dict[str, str]:
    return _headers(client, "alice", "ward")


def test_the_recommendation_has_a_dose_curve_band_parameters_and_the_statement(
    client: TestClient, alice: dict[str, str]
) -> None:
    answer = client.post(PATH.format("vanc-a"), json=TROUGH, headers=alice)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["statement"] == STATEMENT
    assert body["module"] == MODULE
    assert body["dose_mg"] > 0
    assert body["dose_mg"] % 250 == 0
    assert body["interval_h"] == 12
    assert body["in_target"] is True
    curve = body["curve"]
    assert len(curve["t_h"]) == len(curve["time"]) == len(curve["conc_mg_l"]) == 145
    assert curve["time"][0].endswith("Z")
    for lo, mid, hi in zip(curve["lower90"], curve["conc_mg_l"], curve["upper90"], strict=True):
        assert lo <= mid + 1e-9 <= hi + 2e-9
    assert [p["name"] for p in body["parameters"]] == ["CL", "V1", "Q2", "V2"]
    cl = body["parameters"][0]
    assert cl["unit"] == "L/h"
    assert cl["lower90"] < cl["value"] < cl["upper90"]
    assert len(body["levels"]) == 3
    assert all(level["predicted_mg_l"] > 0 for level in body["levels"])
    assert len(body["doses"]) == 5
    assert body["provenance"] == f"/api/v1/derived/{body['id']}/provenance"


def test_the_recommendation_is_stored_with_provenance_to_the_levels(
    client: TestClient, alice: dict[str, str]
) -> None:
    body = client.post(PATH.format("vanc-a"), json=TROUGH, headers=alice).json()
    tree = client.get(body["provenance"], headers=alice)
    assert tree.status_code == 200, tree.text
    nodes = tree.json()["inputs"]
    levels = [n for n in nodes if n["input"] == "level"]
    assert sorted(n["code"] for n in levels) == ["20578-1", "4090-7", "4092-3"]
    assert all(n["patient"] == "vanc-a" for n in levels)
    assert len([n for n in nodes if n["input"] == "dose"]) == 5
    assert {n["input"] for n in nodes} >= {"body_weight", "creatinine", "demographics"}
    assert tree.json()["parameters"]["statement"] == STATEMENT
    summary = client.get(PATH.format("vanc-a"), headers=alice)
    assert summary.status_code == 200, summary.text
    assert summary.json()["latest"]["id"] == body["id"]
    assert len(summary.json()["levels"]) == 3


def test_an_auc_target(client: TestClient, alice: dict[str, str]) -> None:
    body = {"target": {"kind": "auc24", "low": 400, "high": 600}, "interval_h": 8}
    answer = client.post(PATH.format("vanc-a"), json=body, headers=alice)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["predicted"] == pytest.approx(out["auc24_mg_h_l"])
    assert out["curve"]["t_h"][-1] == 8
    assert out["daily_dose_mg"] == out["dose_mg"] * 3
    # What if a dose of our own: predicted for that dose, in target or not.
    asked = client.post(PATH.format("vanc-a"), json={**body, "dose_mg": 750}, headers=alice)
    assert asked.status_code == 200, asked.text
    what = asked.json()
    assert (what["dose_mg"], what["dose_chosen"]) == (750, True)
    assert what["in_target"] is (400 <= what["predicted"] <= 600)
    assert out["dose_chosen"] is False


def test_other_care_teams_and_unknown_patients_get_404(
    client: TestClient, alice: dict[str, str]
) -> None:
    bob = _headers(client, "bob", "other-ward")
    for headers, patient in ((bob, "vanc-a"), (alice, "nobody")):
        assert client.get(PATH.format(patient), headers=headers).status_code == 404
        answer = client.post(PATH.format(patient), json=TROUGH, headers=headers)
        assert answer.status_code == 404, answer.text
    assert client.post(PATH.format("vanc-a"), json=TROUGH).status_code == 401
    assert client.get(PATH.format("vanc-a")).status_code == 401


def test_reads_and_recommendations_are_audited(client: TestClient, alice: dict[str, str]) -> None:
    context = _context(client)
    before = context.store.count("audit")
    client.get(PATH.format("vanc-a"), headers=alice)
    client.post(PATH.format("vanc-a"), json=TROUGH, headers=alice)
    assert context.store.count("audit") == before + 2


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({}, "body.target"),
        ({"target": {"kind": "peak", "low": 1, "high": 2}}, "body.target.kind"),
        ({"target": {"kind": "trough", "low": -1, "high": 2}}, "body.target.low"),
        ({"target": {"kind": "trough", "low": 15, "high": 10}}, "body.target.high"),
        ({"target": {"kind": "trough", "low": 10, "high": "x"}}, "body.target.high"),
        ({**TROUGH, "interval_h": 2}, "body.interval_h"),
        ({**TROUGH, "interval_h": 12.01}, "body.interval_h"),
        ({**TROUGH, "infusion_h": 12}, "body.infusion_h"),
        ({**TROUGH, "infusion_h": 0.51}, "body.infusion_h"),
        ({**TROUGH, "dialysis": "maybe"}, "body.dialysis"),
        ({**TROUGH, "dose": 1000}, "body.dose"),
        ({**TROUGH, "dose_mg": -5}, "body.dose_mg"),
        ({**TROUGH, "dose_mg": 5000}, "body.dose_mg"),
    ],
)
def test_bad_requests_answer_422_with_the_field(
    client: TestClient, alice: dict[str, str], body: dict[str, Any], location: str
) -> None:
    answer = client.post(PATH.format("vanc-a"), json=body, headers=alice)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["location"] == location


def test_a_missing_covariate_answers_422_naming_it(
    client: TestClient, alice: dict[str, str]
) -> None:
    answer = client.post(PATH.format("vanc-noweight"), json=TROUGH, headers=alice)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["location"] == "covariates.weight_kg"
    assert "29463-7" in error["message"]
