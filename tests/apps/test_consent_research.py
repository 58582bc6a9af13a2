"""Consent enforced on reads (official examples) and research access through the API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.apps.api import create_app
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from tests.apps.conftest import user_token

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4-examples"
RESEARCH_OPT_OUT = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}
        ]
    },
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/p2"},
    "policyRule": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]
    },
}


def example(name: str) -> dict[str, Any]:
    path = EXAMPLES / f"Consent-{name}.json"
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {path}")
        pytest.skip(f"no FHIR examples at {EXAMPLES}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def observation(patient: str, value: float, n: int = 0) -> dict[str, Any]:
    when = (datetime.now(UTC) - timedelta(minutes=1 + n)).isoformat()
    return {
        "id": f"{patient}-{n}",
        "source": "mon",
        "patient": patient,
        "code": "8867-4",
        "value": value,
        "unit": "/min",
        "time": when,
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'c.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    with TestClient(create_app(settings)) as test_client:
        context = test_client.app.state.context  # type: ignore[attr-defined]
        admin = {"Authorization": f"Bearer {user_token(context, 'root')}"}
        items = [
            observation(p, 60 + i, n) for i, p in enumerate(["f001", "p2", "p3"]) for n in range(3)
        ]
        assert (
            test_client.post(
                "/api/v1/observations", json={"observations": items}, headers=admin
            ).status_code
            == 200
        )
        context.accounts.assign("ward", ["f001", "p2", "p3"])
        test_client.admin = admin  # type: ignore[attr-defined]
        yield test_client


def headers(client: TestClient, user: str, role: Role = Role.CLINICIAN) -> dict[str, str]:
    context = client.app.state.context  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {user_token(context, user, role, 'ward')}"}


def test_consent_denying_a_named_practitioner_is_enforced(client: TestClient) -> None:
    nurse, colleague = headers(client, "f204"), headers(client, "f300")
    assert client.get("/api/v1/twins/f001", headers=nurse).status_code == 200
    stored = client.post(
        "/api/v1/patients/f001/consents", json=example("consent-example-notThem"), headers=colleague
    )
    assert stored.status_code == 201, stored.text
    for path in (
        "/api/v1/twins/f001",
        "/api/v1/patients/f001/observations",
        "/api/v1/patients/f001",
        "/patients/f001",
    ):
        assert client.get(path, headers=nurse).status_code == 404, path
        assert client.get(path, headers=colleague).status_code == 200, path
    # Break-glass overrides a generic deny, and the override is audited with high priority.
    emergency = client.get("/api/v1/twins/f001", headers={**nurse, "X-Break-Glass": "arrest"})
    assert emergency.status_code == 200
    context = client.app.state.context  # type: ignore[attr-defined]
    last = context.audit.records(limit=10_000)[-1]
    assert last.entry.priority == "high"
    assert "consent_overridden" in last.entry.detail
    listed = client.get("/api/v1/patients/f001/consents", headers=colleague).json()
    assert listed[0]["provision"]["actor"][0]["reference"]["reference"] == "Practitioner/f204"


def test_consent_out_of_its_period_does_not_block(client: TestClient) -> None:
    nurse = headers(client, "f204")
    client.post(
        "/api/v1/patients/f001/consents", json=example("consent-example-notTime"), headers=nurse
    )
    # notTime denies access during January 2015 only.
    assert client.get("/api/v1/twins/f001", headers=nurse).status_code == 200


def test_bad_consent_is_refused_with_its_location(client: TestClient) -> None:
    bad = {**example("consent-example-notThem"), "status": 7}
    answer = client.post(
        "/api/v1/patients/f001/consents", json=bad, headers=headers(client, "f300")
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["location"].startswith("Consent.status")


def test_research_export_is_pseudonymized_and_honours_opt_outs(client: TestClient) -> None:
    researcher = headers(client, "rosa", Role.RESEARCHER)
    assert client.get("/api/v1/twins", headers=researcher).status_code == 403
    client.post("/api/v1/patients/p2/consents", json=RESEARCH_OPT_OUT, headers=client.admin)  # type: ignore[attr-defined]
    answer = client.get("/api/v1/research/observations", headers=researcher)
    assert answer.status_code == 200
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert len(rows) == 6  # f001 and p3; p2 opted out
    assert len({r["subject"] for r in rows}) == 2
    for patient in ("f001", "p2", "p3", "mon", "f001-0"):
        assert patient not in answer.text
    clinician = headers(client, "f300")
    assert client.get("/api/v1/research/observations", headers=clinician).status_code == 403


def test_dp_aggregates_spend_the_budget_until_refused(client: TestClient) -> None:
    researcher = headers(client, "rosa", Role.RESEARCHER)
    limit = client.put(
        "/api/v1/research/budgets/rosa", json={"epsilon_limit": 1.0}, headers=client.admin
    )  # type: ignore[attr-defined]
    assert limit.status_code == 200
    query = {"statistic": "mean", "code": "8867-4", "epsilon": 0.4, "bounds": [30, 200]}
    first = client.post("/api/v1/research/aggregate", json=query, headers=researcher)
    assert first.status_code == 200, first.text
    assert 30 <= first.json()["value"] <= 200
    assert first.json()["budget_remaining"] == pytest.approx(0.6)
    count = client.post(
        "/api/v1/research/aggregate",
        headers=researcher,
        json={"statistic": "count", "code": "8867-4", "epsilon": 0.4},
    )
    assert count.status_code == 200
    refused = client.post("/api/v1/research/aggregate", json=query, headers=researcher)
    assert refused.status_code == 403
    assert "budget" in refused.json()["error"]["message"]
    no_bounds = {k: v for k, v in query.items() if k != "bounds"} | {"epsilon": 0.1}
    assert (
        client.post("/api/v1/research/aggregate", json=no_bounds, headers=researcher).status_code
        == 422
    )


def test_consent_posted_over_fhir_is_enforced(client: TestClient) -> None:
    nurse = headers(client, "f204")
    assert client.get("/api/v1/twins/f001", headers=nurse).status_code == 200
    consent = example("consent-example-notThem")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": consent, "request": {"method": "PUT", "url": f"Consent/{consent['id']}"}}
        ],
    }
    answer = client.post(
        "/fhir",
        content=json.dumps(bundle),
        headers={**client.admin, "Content-Type": "application/fhir+json"},  # type: ignore[attr-defined]
    )
    assert answer.status_code == 200, answer.text
    assert client.get("/api/v1/twins/f001", headers=nurse).status_code == 404
    # A Consent the rules engine cannot read fails the Bundle: nothing half-applied.
    broken = {**consent, "id": "broken", "patient": None}
    put = {"method": "PUT", "url": "Consent/broken"}
    bad = {**bundle, "entry": [{"resource": broken, "request": put}]}
    refused = client.post(
        "/fhir",
        content=json.dumps(bad),
        headers={**client.admin, "Content-Type": "application/fhir+json"},  # type: ignore[attr-defined]
    )
    assert refused.status_code in (400, 422), refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
