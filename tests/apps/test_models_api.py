"""Model registry routes and the patient's risk: listing, admin-only audited promotion,
drift, and the risk route behind the same guard as every patient read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.apps.api import ServiceContext, create_app
from medtwin.core.settings import Settings
from medtwin.models.learning import GbmParams, PatientSeries, generate_cohort
from medtwin.models.learning.features import CHANNEL_CODES
from medtwin.twins.risk import MODULE_NAME, REFRESH_S, STATEMENT, TOP_K, register_trained
from tests.apps.conftest import WARD_PASSWORD, add_ward_users

PASSWORD = WARD_PASSWORD
VITALS = {
    "HR": 112.0,
    "O2Sat": 92.0,
    "Temp": 38.4,
    "SBP": 98.0,
    "MAP": 70.0,
    "DBP": 55.0,
    "Resp": 24.0,
    "GCS": 14.0,
}


def _context(client: TestClient) -> ServiceContext:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    return context


@pytest.fixture(scope="module")
def cohort() -> tuple[PatientSeries, ...]:
    return generate_cohort(150, seed=8, setting="ward").patients


def post_vitals(client: TestClient, key: str, patient: str, hours: int = 12) -> None:
    now = datetime.now(UTC) - timedelta(minutes=2)
    items = []
    for h in range(hours):
        for channel, value in VITALS.items():
            code, unit = CHANNEL_CODES[channel]
            items.append(
                {
                    "id": f"{patient}-{channel}-{h}",
                    "source": f"mon-{patient}",
                    "patient": patient,
                    "code": code,
                    "value": value + (h % 3) if channel != "GCS" else value,
                    "unit": unit,
                    "time": (now - timedelta(hours=h)).isoformat(),
                }
            )
    answer = client.post(
        "/api/v1/observations", json={"observations": items}, headers={"X-API-Key": key}
    )
    assert answer.json()["summary"]["stored"] == len(items), answer.text


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'models.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    with TestClient(create_app(settings, background=())) as test_client:
        accounts = _context(test_client).accounts
        add_ward_users(accounts)
        for patient, team in (("pa", "ward-a"), ("pb", "ward-b")):
            _, key = accounts.add_api_key(
                f"monitor-{patient}", sources=[f"mon-{patient}"], care_team=team, now_us=0
            )
            post_vitals(test_client, key, patient)
        yield test_client


def bearer(client: TestClient, user: str) -> dict[str, str]:
    answer = client.post(
        "/auth/token", data={"grant_type": "password", "username": user, "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _register(client: TestClient, cohort: tuple[PatientSeries, ...], seed: int = 1) -> int:
    version = register_trained(
        _context(client).models,
        list(cohort),
        seed=seed,
        params=GbmParams(n_estimators=30),
        source=f"generated:150:{seed}",
    )
    return version.version


def _promote(client: TestClient, version: int, user: str = "ada", reason: str = "validated") -> Any:
    return client.post(
        f"/api/v1/models/deterioration/versions/{version}/promote",
        json={"reason": reason},
        headers=bearer(client, user),
    )


def test_nothing_is_served_until_a_version_is_promoted(
    client: TestClient, cohort: tuple[PatientSeries, ...]
) -> None:
    context = _context(client)
    assert context.risk is None
    assert MODULE_NAME not in context.planner.graph
    answer = client.get("/api/v1/patients/pa/risk", headers=bearer(client, "alice"))
    assert answer.status_code == 404
    version = _register(client, cohort)
    listed = client.get("/api/v1/models", headers=bearer(client, "rita")).json()
    assert listed["served"] is None
    (model,) = listed["models"]
    assert model["name"] == "deterioration"
    assert model["serving"] is None
    (v,) = model["versions"]
    assert v["version"] == version
    assert v["serving"] is False
    assert len(v["fingerprint"]) == 64
    assert 0.0 <= v["metrics"]["auroc"] <= 1.0
    assert v["source"] == "generated:150:1"
    assert "HR_last" in v["features"]
    assert MODULE_NAME not in context.planner.graph  # registered is not served


def test_only_an_admin_promotes_with_a_reason_and_it_is_audited(
    client: TestClient, cohort: tuple[PatientSeries, ...]
) -> None:
    context = _context(client)
    first = _register(client, cohort, seed=1)
    assert _promote(client, first, user="alice").status_code == 403
    assert _promote(client, first, user="rita").status_code == 403
    assert _promote(client, first, reason="").status_code == 422
    assert _promote(client, 99).status_code == 404
    assert context.risk is None

    answer = _promote(client, first)
    assert answer.status_code == 200, answer.text
    assert answer.json()["by"] == "ada"
    assert answer.json()["module_version"] == f"1+m{first}"
    assert context.risk is not None
    assert context.planner.graph[MODULE_NAME].version == f"1+m{first}"

    second = _register(client, cohort, seed=2)
    assert _promote(client, second, reason="retrained on more patients").status_code == 200
    assert context.planner.graph[MODULE_NAME].version == f"1+m{second}"
    listed = client.get("/api/v1/models", headers=bearer(client, "ada")).json()
    assert listed["served"] == {"name": "deterioration", "version": second, "module": MODULE_NAME}
    (model,) = listed["models"]
    assert model["serving"] == second
    assert [p["version"] for p in model["promotions"]] == [first, second]
    assert model["promotions"][1]["reason"] == "retrained on more patients"

    records = [r.entry for r in context.audit.records(limit=10_000)]
    promotions = [e for e in records if e.action == "model-promote"]
    assert [(e.actor, e.detail["version"]) for e in promotions] == [("ada", first), ("ada", second)]
    assert promotions[1].detail["previous"] == first
    assert promotions[1].priority == "high"
    denied = [e for e in records if e.action == "promote-model" and e.outcome == "denied"]
    assert {e.actor for e in denied} == {"alice", "rita"}


def test_the_patient_risk_with_its_factors_behind_the_patient_guard(
    client: TestClient, cohort: tuple[PatientSeries, ...]
) -> None:
    context = _context(client)
    version = _register(client, cohort)
    assert _promote(client, version).status_code == 200

    answer = client.get("/api/v1/patients/pa/risk", headers=bearer(client, "alice"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": "deterioration", "version": version}
    assert body["module_version"] == f"1+m{version}"
    assert 0.0 < body["risk"] < 1.0
    assert body["statement"] == STATEMENT
    assert "not replace" in body["statement"]
    assert len(body["factors"]) == TOP_K
    served = context.risk
    assert served is not None
    for factor in body["factors"]:
        assert factor["feature"] in served.feature_names
        assert isinstance(factor["contribution"], float)
    total = body["base_value"] + body["other_contribution"]
    total += sum(f["contribution"] for f in body["factors"])
    assert total == pytest.approx(body["log_odds"], abs=1e-6)
    # The same value as the derived route, with provenance.
    derived = client.get(
        f"/api/v1/patients/pa/derived/{MODULE_NAME}", headers=bearer(client, "alice")
    )
    assert derived.status_code == 200
    assert derived.json()["id"] == body["id"]
    assert derived.json()["cached"] is True

    # Care team, role, unknown patient.
    assert client.get("/api/v1/patients/pa/risk", headers=bearer(client, "bob")).status_code == 404
    assert client.get("/api/v1/patients/pa/risk", headers=bearer(client, "rita")).status_code == 403
    assert client.get("/api/v1/patients/pa/risk").status_code == 401
    assert client.get("/api/v1/patients/pb/risk", headers=bearer(client, "ada")).status_code == 200
    records = [r.entry for r in context.audit.records(limit=10_000)]
    reads = [e for e in records if e.detail.get("route") == "/api/v1/patients/{patient}/risk"]
    assert {(e.actor, e.outcome) for e in reads} >= {
        ("alice", "success"),
        ("bob", "denied"),
        ("rita", "denied"),
        ("ada", "success"),
    }
    assert all(e.patient != "pa" for e in reads)  # recorded by pseudonym


def test_drift_of_the_served_features(
    client: TestClient, cohort: tuple[PatientSeries, ...]
) -> None:
    version = _register(client, cohort)
    assert (
        client.get("/api/v1/models/deterioration/drift", headers=bearer(client, "ada")).status_code
        == 404
    )
    assert _promote(client, version).status_code == 200
    empty = client.get("/api/v1/models/deterioration/drift", headers=bearer(client, "ada")).json()
    assert empty["rows"] == 0
    _context(client).planner.derive()  # the refresh pass scores every twin
    answer = client.get("/api/v1/models/deterioration/drift", headers=bearer(client, "rita"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["version"] == version
    assert report["rows"] == 2
    assert report["max_psi"] > 0
    assert report["days"] == 7
    # Counted in the store: the registry of a restarted service reports the same.
    assert _context(client).models.served_drift("deterioration", version).rows == 2
    assert (
        client.get(
            "/api/v1/models/deterioration/drift", headers=bearer(client, "alice")
        ).status_code
        == 403
    )


def test_the_refresh_pass_scores_the_risk_at_its_own_pace(
    client: TestClient, cohort: tuple[PatientSeries, ...]
) -> None:
    context = _context(client)
    assert MODULE_NAME not in {e["module"] for e in context.planner.derive()}  # nothing served
    assert _promote(client, _register(client, cohort)).status_code == 200
    assert context.planner.graph[MODULE_NAME].refresh_s == REFRESH_S
    seconds = [1000.0]  # the planner's timer: real seconds, moved by hand here
    context.planner.timer = lambda: seconds[0]
    first = [e for e in context.planner.derive() if e["module"] == MODULE_NAME]
    assert {e["patient"] for e in first} == {"pa", "pb"}  # a promotion scores at once
    assert first[0]["version"] == context.planner.graph[MODULE_NAME].version
    _, key = context.accounts.add_api_key(
        "monitor-pa-2", sources=["mon-pa"], care_team="ward-a", now_us=0
    )
    answer = client.post(
        "/api/v1/observations",
        json={
            "observations": [
                {
                    "id": "pa-new-hr",
                    "source": "mon-pa",
                    "patient": "pa",
                    "code": "8867-4",
                    "value": 113,
                    "unit": "/min",
                    "time": datetime.now(UTC).isoformat(),
                }
            ]
        },
        headers={"X-API-Key": key},
    )
    assert answer.json()["summary"]["stored"] == 1, answer.text
    seconds[0] += REFRESH_S - 1
    derived = context.planner.derive()
    assert not [e for e in derived if e["module"] == MODULE_NAME]  # not due yet
    assert "news2" in {e["module"] for e in derived}  # the other modules are
    seconds[0] += 1
    again = [e for e in context.planner.derive() if e["module"] == MODULE_NAME]
    assert [e["patient"] for e in again] == ["pa"]
