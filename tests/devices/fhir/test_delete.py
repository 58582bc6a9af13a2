"""DELETE (alone and in Bundles) and conditional update (PUT Type?search)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data.store import schema
from medtwin.devices.fhir import (
    FhirService,
    InvalidResourceError,
    MethodNotAllowedError,
    PreconditionFailedError,
    ResourceGoneError,
    ResourceNotFoundError,
    capability_statement,
)
from tests.devices.fhir.test_bundles import heart_rate, patient, transaction

HR = "8867-4"


def hr_of(service: FhirService, pid: str = "p-1") -> dict[str, Any] | None:
    runtime = service.ingestor.runtime
    return runtime.vitals(int(runtime.rows_of([pid])[0])).get(HR)


def observation_id(service: FhirService) -> str:
    result = service.process_bundle(transaction(patient(), heart_rate(72)))
    location: str = result.response["entry"][1]["response"]["location"]
    return location.split("/")[1]


def delete_entry(url: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": url}}


def device(did: str = "dev-1", serial: str = "SN-1", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": did,
        "status": status,
        "identifier": [{"system": "urn:serial", "value": serial}],
    }


def test_delete_then_read_gone_history_and_search(service: FhirService) -> None:
    oid = observation_id(service)
    deleted = service.delete("Observation", oid)
    assert deleted is not None
    assert deleted.deleted
    assert deleted.version == 2
    with pytest.raises(ResourceGoneError) as caught:
        service.read("Observation", oid)
    assert caught.value.status == 410
    assert caught.value.outcome()["issue"][0]["code"] == "deleted"
    assert caught.value.patient == "p-1"
    # The earlier version is still there to vread.
    assert service.read("Observation", oid, 1).resource["valueQuantity"]["value"] == 72
    history = service.history("Observation", oid)
    assert [(v.version, v.deleted) for v in history] == [(2, True), (1, False)]
    for params in ([("patient", "p-1")], [("code", HR)], []):
        total, page = service.search("Observation", params)
        assert total == 0, params
        assert page == []
    with service.store.reading() as conn:
        rows = conn.execute(
            sa.select(schema.fhir_search).where(schema.fhir_search.c.id == oid)
        ).all()
    assert rows == []


def test_delete_is_idempotent(service: FhirService) -> None:
    oid = observation_id(service)
    assert service.delete("Observation", oid) is not None
    assert service.delete("Observation", oid) is None  # nothing more to delete
    assert service.delete("Observation", "never-held") is None
    assert len(service.history("Observation", oid)) == 2
    with pytest.raises(ResourceNotFoundError):
        service.read("Observation", "never-held")


def test_deleted_observation_is_forgotten_by_the_twin(service: FhirService) -> None:
    oid = observation_id(service)
    assert hr_of(service) is not None
    assert hr_of(service)["value"] == 72  # type: ignore[index]
    service.delete("Observation", oid)
    # The NEWS2 heart-rate input is missing now.
    assert hr_of(service) is None
    with service.store.reading() as conn:
        rows = conn.execute(
            sa.select(schema.observations.c.version, schema.observations.c.status)
            .where(schema.observations.c.source_id == oid)
            .order_by(schema.observations.c.version)
        ).all()
    assert [tuple(r) for r in rows] == [(1, "final"), (2, "entered-in-error")]


def test_delete_in_a_transaction_is_atomic_with_the_rest(service: FhirService) -> None:
    oid = observation_id(service)
    bad = transaction(heart_rate("x", subject="Patient/p-1"))
    bad["entry"].append(delete_entry(f"Observation/{oid}"))
    with pytest.raises(InvalidResourceError):
        service.process_bundle(bad)
    assert service.read("Observation", oid).version == 1
    assert hr_of(service) is not None

    good = transaction(
        heart_rate(90, subject="Patient/p-1", effectiveDateTime="2024-05-02T10:00:00Z")
    )
    good["entry"].insert(0, delete_entry(f"Observation/{oid}"))
    result = service.process_bundle(good)
    statuses = [e["response"]["status"] for e in result.response["entry"]]
    assert statuses == ["204 No Content", "201 Created"]
    assert result.report.deleted == 1
    assert result.response["entry"][0]["response"]["etag"] == 'W/"2"'
    with pytest.raises(ResourceGoneError):
        service.read("Observation", oid)
    assert hr_of(service)["value"] == 90  # type: ignore[index]


def test_delete_in_a_batch(service: FhirService) -> None:
    oid = observation_id(service)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            delete_entry(f"Observation/{oid}"),
            delete_entry("Patient/p-1"),
            delete_entry("Observation/missing"),
        ],
    }
    result = service.process_bundle(batch)
    statuses = [e["response"]["status"] for e in result.response["entry"]]
    assert statuses == ["204 No Content", "405 Method Not Allowed", "204 No Content"]
    assert service.read("Patient", "p-1").version == 1


def test_patient_delete_is_refused(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    with pytest.raises(MethodNotAllowedError) as caught:
        service.delete("Patient", "p-1")
    assert caught.value.status == 405
    assert "vault" in caught.value.outcome()["issue"][0]["diagnostics"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [delete_entry("Patient/p-1")],
    }
    with pytest.raises(MethodNotAllowedError):
        service.process_bundle(bundle)
    assert service.read("Patient", "p-1").version == 1


def test_put_after_delete_creates_again(service: FhirService) -> None:
    _, created = service.put("Device", "dev-1", device())
    assert created
    service.delete("Device", "dev-1")
    again, created = service.put("Device", "dev-1", device())
    assert created
    assert again.version == 3
    assert service.read("Device", "dev-1").version == 3


def test_conditional_put_create_update_and_412(service: FhirService) -> None:
    query = "identifier=urn:serial|SN-1"
    created, was_created = service.conditional_put("Device", query, device())
    assert was_created
    assert created.id == "dev-1"
    updated, was_created = service.conditional_put(
        "Device", query, {k: v for k, v in device(status="inactive").items() if k != "id"}
    )
    assert not was_created
    assert (updated.id, updated.version) == ("dev-1", 2)
    assert updated.resource["status"] == "inactive"
    # No id and no match: the server names it.
    fresh, was_created = service.conditional_put(
        "Device", "identifier=urn:serial|SN-9", {"resourceType": "Device", "status": "active",
                                                 "identifier": [{"system": "urn:serial",
                                                                 "value": "SN-9"}]}
    )  # fmt: skip
    assert was_created
    assert fresh.id != "dev-1"
    service.put("Device", "dev-2", device("dev-2", serial="SN-1"))
    with pytest.raises(PreconditionFailedError) as caught:
        service.conditional_put("Device", query, device("dev-1"))
    assert caught.value.status == 412
    assert caught.value.outcome()["issue"][0]["code"] == "multiple-matches"


def test_conditional_put_in_a_bundle_and_patient_identifier(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    renamed = {**patient(), "name": [{"family": "Otherfamily"}]}
    del renamed["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": renamed,
                "request": {
                    "method": "PUT",
                    "url": "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-11-2222",
                },
            }
        ],
    }
    result = service.process_bundle(bundle)
    response = result.response["entry"][0]["response"]
    assert response["status"] == "200 OK"
    assert response["location"] == "Patient/p-1/_history/2"
    assert service.read("Patient", "p-1").resource["name"] == [{"family": "Otherfamily"}]


def test_capability_lists_delete_and_conditional_update() -> None:
    resources = {r["type"]: r for r in capability_statement()["rest"][0]["resource"]}
    observation = resources["Observation"]
    assert {"code": "delete"} in observation["interaction"]
    assert observation["conditionalUpdate"] is True
    assert {"code": "delete"} not in resources["Patient"]["interaction"]
    assert "vault" in resources["Patient"]["documentation"]
