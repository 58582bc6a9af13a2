"""The FHIR facade over HTTP: bundles in, read, history, search, auth, OperationOutcome."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.apps.api import create_app
from medtwin.apps.api.routes import fhir
from medtwin.core.clock import FixedClock
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from tests.apps.conftest import user_token

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path: Path = tmp_path_factory.mktemp("fhir-api") / "fhir.db"
    settings = Settings(
        store_url=f"sqlite:///{path}",
        secrets_file=path.parent / "secrets.json",
        audit_checkpoint_path=path.parent / "checkpoints.jsonl",
        max_body_bytes=200_000,
    )
    app = create_app(settings, clock=FixedClock(datetime(2031, 1, 1, tzinfo=UTC)))
    if not any(getattr(r, "path", "") == "/fhir" for r in app.routes):
        app.include_router(fhir.router)  # until the app registers it
    with TestClient(app) as test_client:
        yield test_client


def auth(client: TestClient, user: str, role: Role, team: str | None = None) -> dict[str, str]:
    context = client.app.state.context  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {user_token(context, user, role, team)}"}


def bundle(pid: str, value: Any = 72) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{pid}",
                "resource": {
                    "resourceType": "Patient",
                    "id": pid,
                    "name": [{"family": "Testfamily", "given": ["Given"]}],
                    "birthDate": "1970-01-02",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{pid}-hr",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"urn:uuid:{pid}"},
                    "effectiveDateTime": "2030-12-31T10:00:00Z",
                    "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org",
                                      "code": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }  # fmt: skip


def test_metadata_describes_what_is_implemented(client: TestClient) -> None:
    answer = client.get("/fhir/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(FHIR)
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement"
    types = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {p["name"] for p in types["Observation"]["searchParam"]} == {
        "subject", "patient", "code", "date", "category"
    }  # fmt: skip


def test_post_read_history_search(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    answer = client.post("/fhir", json=bundle("api-p1"), headers={**admin, "content-type": FHIR})
    assert answer.status_code == 200, answer.text
    response = answer.json()
    assert response["type"] == "transaction-response"
    location = response["entry"][1]["response"]["location"]
    observation = client.get(f"/fhir/{location.split('/_history')[0]}", headers=admin)
    assert observation.status_code == 200
    assert observation.json()["subject"] == {"reference": "Patient/api-p1"}
    history = client.get(f"/fhir/{location.split('/_history')[0]}/_history", headers=admin)
    assert history.json()["type"] == "history"
    assert history.json()["total"] == 1
    found = client.get("/fhir/Patient", params={"name": "testfamily"}, headers=admin).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["api-p1"]
    counted = client.get(
        "/fhir/Observation", params={"patient": "api-p1", "_summary": "count"}, headers=admin
    ).json()
    assert counted["total"] == 1
    assert "entry" not in counted


def test_paging_links(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    for index in range(3):
        client.post("/fhir", json=bundle(f"page-{index}"), headers=admin)
    first = client.get("/fhir/Patient", params={"name": "given", "_count": 2}, headers=admin).json()
    assert first["total"] >= 3
    assert len(first["entry"]) == 2
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = client.get(following, headers=admin).json()
    assert len(second["entry"]) >= 1
    assert {e["resource"]["id"] for e in first["entry"]}.isdisjoint(
        e["resource"]["id"] for e in second["entry"]
    )


def test_bad_entry_answers_operation_outcome_with_the_path(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    answer = client.post("/fhir", json=bundle("api-bad", value="x"), headers=admin)
    assert answer.status_code == 400
    issue = answer.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.valueQuantity.value"]
    assert client.get("/fhir/Patient/api-bad", headers=admin).status_code == 404


def test_roles_and_care_teams(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    client.post("/fhir", json=bundle("api-team"), headers=admin)
    clinician = auth(client, "fhir-outsider", Role.CLINICIAN, "other-team")
    assert client.post("/fhir", json=bundle("api-x"), headers=clinician).status_code == 403
    assert client.get("/fhir/Patient/api-team", headers=clinician).status_code == 404
    found = client.get("/fhir/Patient", params={"name": "testfamily"}, headers=clinician).json()
    assert found["total"] == 0
    context = client.app.state.context  # type: ignore[attr-defined]
    context.accounts.assign("fhir-team", ["api-team"])
    member = auth(client, "fhir-member", Role.CLINICIAN, "fhir-team")
    assert client.get("/fhir/Patient/api-team", headers=member).status_code == 200
    assert client.post("/fhir", json=bundle("api-y")).status_code == 401


def test_body_limit_and_put(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    huge = b'{"resourceType":"Bundle","type":"batch","entry":[' + b" " * 300_000 + b"]}"
    assert client.post("/fhir", content=huge, headers=admin).status_code == 413
    resource = {"resourceType": "Device", "id": "dev-1", "status": "active"}
    created = client.put("/fhir/Device/dev-1", json=resource, headers=admin)
    assert created.status_code == 201
    assert created.json()["meta"]["versionId"] == "1"
    changed = client.put("/fhir/Device/dev-1", json={**resource, "status": "inactive"},
                         headers=admin)  # fmt: skip
    assert changed.status_code == 200
    assert changed.json()["meta"]["versionId"] == "2"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bodies_never_answer_500(client: TestClient, body: bytes) -> None:
    admin = auth(client, "fhir-fuzz", Role.ADMIN)
    answer = client.post("/fhir", content=body, headers=admin)
    assert answer.status_code < 500
    assert client.put("/fhir/Observation/x", content=body, headers=admin).status_code < 500


def test_delete_read_gone_history_search_and_twin(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    answer = client.post("/fhir", json=bundle("api-del", value=66), headers=admin)
    assert answer.status_code == 200, answer.text
    url = answer.json()["entry"][1]["response"]["location"].split("/_history")[0]
    runtime = client.app.state.context.ingestor.runtime  # type: ignore[attr-defined]
    row = int(runtime.rows_of(["api-del"])[0])
    assert runtime.vitals(row)["8867-4"]["value"] == 66
    deleted = client.delete(f"/fhir/{url}", headers=admin)
    assert deleted.status_code == 204
    assert deleted.headers["ETag"] == 'W/"2"'
    gone = client.get(f"/fhir/{url}", headers=admin)
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    history = client.get(f"/fhir/{url}/_history", headers=admin).json()
    assert history["total"] == 2
    assert history["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in history["entry"][0]
    assert history["entry"][1]["resource"]["valueQuantity"]["value"] == 66
    found = client.get("/fhir/Observation", params={"patient": "api-del"}, headers=admin).json()
    assert found["total"] == 0
    # The twin forgot the value: the heart-rate input of NEWS2 is missing.
    assert "8867-4" not in runtime.vitals(row)
    # Idempotent: deleting again (or something never held) answers 204 too.
    assert client.delete(f"/fhir/{url}", headers=admin).status_code == 204
    assert client.delete("/fhir/Observation/never-held", headers=admin).status_code == 204


def test_delete_policies_and_patient_refused(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    client.post("/fhir", json=bundle("api-keep"), headers=admin)
    refused = client.delete("/fhir/Patient/api-keep", headers=admin)
    assert refused.status_code == 405
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/api-keep", headers=admin).status_code == 200
    clinician = auth(client, "fhir-del-clin", Role.CLINICIAN, "other-team")
    assert client.delete("/fhir/Device/whatever", headers=clinician).status_code == 403
    assert client.delete("/fhir/Device/whatever").status_code == 401
    statement = client.get("/fhir/metadata").json()
    types = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"code": "delete"} in types["Observation"]["interaction"]
    assert {"code": "delete"} not in types["Patient"]["interaction"]
    assert types["Device"]["conditionalUpdate"] is True


def test_delete_in_a_transaction_bundle(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)
    client.put("/fhir/Device/api-dev-del", json={"resourceType": "Device", "status": "active"},
               headers=admin)  # fmt: skip
    document = bundle("api-tx-del")
    document["entry"].append({"request": {"method": "DELETE", "url": "Device/api-dev-del"}})
    answer = client.post("/fhir", json=document, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["entry"][2]["response"]["status"] == "204 No Content"
    assert client.get("/fhir/Device/api-dev-del", headers=admin).status_code == 410
    assert client.get("/fhir/Patient/api-tx-del", headers=admin).status_code == 200


def test_conditional_put(client: TestClient) -> None:
    admin = auth(client, "fhir-admin", Role.ADMIN)

    def device(status: str, serial: str = "API-SN-1") -> dict[str, Any]:
        return {"resourceType": "Device", "status": status,
                "identifier": [{"system": "urn:serial", "value": serial}]}  # fmt: skip

    query = {"identifier": "urn:serial|API-SN-1"}
    created = client.put("/fhir/Device", params=query, json=device("active"), headers=admin)
    assert created.status_code == 201, created.text
    did = created.json()["id"]
    assert created.headers["Location"] == f"/fhir/Device/{did}/_history/1"
    updated = client.put("/fhir/Device", params=query, json=device("inactive"), headers=admin)
    assert updated.status_code == 200
    assert (updated.json()["id"], updated.json()["meta"]["versionId"]) == (did, "2")
    client.put("/fhir/Device/api-dev-twin", json=device("active"), headers=admin)
    several = client.put("/fhir/Device", params=query, json=device("active"), headers=admin)
    assert several.status_code == 412
    assert several.json()["resourceType"] == "OperationOutcome"
    assert client.put("/fhir/Device", json=device("active"), headers=admin).status_code == 400
    device_role = auth(client, "fhir-device", Role.DEVICE)
    other = client.put(
        "/fhir/Device", params={"identifier": "urn:serial|API-SN-2"},
        json=device("active", "API-SN-2"), headers=device_role,
    )  # fmt: skip
    assert other.status_code == 201
    clinician = auth(client, "fhir-cp-clin", Role.CLINICIAN, "other-team")
    assert (
        client.put("/fhir/Device", params=query, json=device("x"), headers=clinician).status_code
        == 403
    )
