"""Transaction and batch semantics: atomicity, references, ifNoneExist, PUT, limits."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data import mappings
from medtwin.data.store import SqlStore, open_store, schema
from medtwin.devices.fhir import (
    FhirService,
    InvalidResourceError,
    PreconditionFailedError,
    TooLargeError,
    UnprocessableError,
)
from tests.devices.fhir.conftest import data_dir, make_service

CLINICAL = ("patients", "observations", "interventions", "fhir_resources", "fhir_search")


def patient(pid: str = "p-1", ssn: str = "999-11-2222") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Quixotefamily", "given": ["Alonsogiven"]}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
        "birthDate": "1960-02-03",
        "gender": "male",
    }


def heart_rate(value: Any = 72, subject: str = "urn:uuid:p-1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-05-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
        **extra,
    }  # fmt: skip


def transaction(*resources: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    entries = []
    for index, resource in enumerate(resources):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{resource.get('id', f'e-{index}')}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def counts(store: SqlStore) -> dict[str, int]:
    return {table: store.count(table) for table in CLINICAL}


def test_transaction_with_one_bad_entry_changes_nothing_clinical(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    before = counts(service.store)
    quarantined = service.store.count("quarantine")
    bundle = transaction(
        heart_rate(70, subject="Patient/p-1"),
        heart_rate(71, subject="Patient/p-1"),
        heart_rate(72, subject="Patient/p-1"),
        heart_rate("fast", subject="Patient/p-1"),
    )
    with pytest.raises(InvalidResourceError) as caught:
        service.process_bundle(bundle)
    outcome = caught.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[3].resource.valueQuantity.value"]
    assert counts(service.store) == before
    assert service.store.count("quarantine") == quarantined + 1
    entry = service.store.quarantined(limit=1)[0]
    assert entry.channel == "fhir"
    assert entry.location == "Bundle.entry[3].resource.valueQuantity.value"


def test_impossible_value_fails_the_transaction_with_its_path(service: FhirService) -> None:
    bundle = transaction(patient(), heart_rate(72), heart_rate(900))
    with pytest.raises(UnprocessableError) as caught:
        service.process_bundle(bundle)
    assert caught.value.issues[0].expression == "Bundle.entry[2].resource.valueQuantity.value"
    assert counts(service.store) == dict.fromkeys(CLINICAL, 0)


def test_batch_entries_are_independent(service: FhirService) -> None:
    bundle = transaction(patient(), heart_rate(72), heart_rate(900), kind="batch")
    result = service.process_bundle(bundle)
    statuses = [e["response"]["status"] for e in result.response["entry"]]
    assert statuses == ["201 Created", "201 Created", "400 Bad Request"]
    assert result.report.failed == 1
    assert service.store.count("observations") == 1
    assert service.store.count("quarantine") == 1


def test_urn_references_resolve_and_the_twin_gets_the_values(service: FhirService) -> None:
    result = service.process_bundle(transaction(patient(), heart_rate(72)))
    location = result.response["entry"][1]["response"]["location"]
    stored = service.read(*location.split("/")[:2])
    assert stored.resource["subject"] == {"reference": "Patient/p-1"}
    assert stored.patient_id == "p-1"
    runtime = service.ingestor.runtime
    assert runtime.vitals(int(runtime.rows_of(["p-1"])[0]))["8867-4"]["value"] == 72


def test_unresolvable_internal_reference_fails_the_transaction(service: FhirService) -> None:
    with pytest.raises(UnprocessableError) as caught:
        service.process_bundle(transaction(heart_rate(72, subject="urn:uuid:nobody")))
    assert caught.value.issues[0].expression == "Bundle.entry[0].resource.subject.reference"
    assert service.store.count("fhir_resources") == 0


def test_literal_reference_not_held_is_reported_or_refused_when_strict(store: SqlStore) -> None:
    lenient = make_service(store)
    result = lenient.process_bundle(transaction(heart_rate(72, subject="Patient/elsewhere")))
    assert result.report.unresolved == ["Patient/elsewhere"]
    outcome = result.response["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["severity"] == "warning"
    strict = make_service(store, strict_references=True)
    with pytest.raises(UnprocessableError):
        strict.process_bundle(transaction(heart_rate(73, subject="Patient/elsewhere")))


def test_if_none_exist_creates_reuses_or_refuses(service: FhirService) -> None:
    def org(name: str, value: str) -> dict[str, Any]:
        return {
            "fullUrl": f"urn:uuid:{name}",
            "resource": {
                "resourceType": "Organization",
                "name": name,
                "identifier": [{"system": "urn:test", "value": value}],
            },
            "request": {
                "method": "POST",
                "url": "Organization",
                "ifNoneExist": f"identifier=urn:test|{value}",
            },
        }

    first = service.process_bundle({"resourceType": "Bundle", "type": "batch",
                                    "entry": [org("a", "1")]})  # fmt: skip
    assert first.report.created == 1
    again = service.process_bundle(
        {"resourceType": "Bundle", "type": "transaction", "entry": [org("b", "1")]}
    )
    assert again.report.reused == 1
    assert again.response["entry"][0]["response"]["status"] == "200 OK"
    # A second organization with the same identifier, made without the condition.
    plain = org("c", "1")
    del plain["request"]["ifNoneExist"]
    service.process_bundle({"resourceType": "Bundle", "type": "batch", "entry": [plain]})
    with pytest.raises(PreconditionFailedError):
        service.process_bundle(
            {"resourceType": "Bundle", "type": "transaction", "entry": [org("d", "1")]}
        )
    conditional = heart_rate(70, subject="Patient/p-9")
    conditional["performer"] = [{"reference": "Organization?identifier=urn:test|1"}]
    with pytest.raises(PreconditionFailedError):
        service.process_bundle(transaction(conditional))


def test_reposting_the_same_bundle_replays_the_response(service: FhirService) -> None:
    bundle = transaction(patient(), heart_rate(72))
    first = service.process_bundle(copy.deepcopy(bundle))
    before = counts(service.store)
    second = service.process_bundle(bundle)
    assert second.report.replayed
    assert second.response == first.response
    assert counts(service.store) == before


def test_put_creates_updates_and_keeps_history(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    observation = heart_rate(72, subject="Patient/p-1", id="hr-1")
    stored, created = service.put("Observation", "hr-1", observation)
    assert created
    assert stored.version == 1
    same, created = service.put("Observation", "hr-1", observation)
    assert not created
    assert same.version == 1
    corrected = {**observation, "status": "corrected", "valueQuantity": {
        **observation["valueQuantity"], "value": 80}}  # fmt: skip
    updated, created = service.put("Observation", "hr-1", corrected)
    assert not created
    assert updated.version == 2
    history = service.history("Observation", "hr-1")
    assert [v.version for v in history] == [2, 1]
    assert [v.resource["meta"]["versionId"] for v in history] == ["2", "1"]
    page = service.store.history("p-1", codes=["8867-4"])
    assert [(s.observation.version, s.observation.value_num) for s in page.items] == [
        (1, 72.0),
        (2, 80.0),
    ]
    runtime = service.ingestor.runtime
    assert runtime.vitals(int(runtime.rows_of(["p-1"])[0]))["8867-4"]["value"] == 80


def test_limits_on_entries_and_depth(store: SqlStore) -> None:
    small = make_service(store, max_entries=2, max_depth=12)
    with pytest.raises(TooLargeError):
        small.process_bundle(transaction(patient("a"), patient("b"), patient("c")))
    deep: dict[str, Any] = {"url": "x"}
    for _ in range(20):
        deep = {"url": "x", "extension": [deep]}
    with pytest.raises(TooLargeError):
        small.process_bundle(transaction({**patient(), "extension": [deep]}))


def test_search_patient_by_blind_index_and_observations_by_date(service: FhirService) -> None:
    service.process_bundle(transaction(patient(), heart_rate(72)))
    for params in (
        [("name", "alonsogiven")],
        [("identifier", "http://hl7.org/fhir/sid/us-ssn|999-11-2222")],
        [("birthdate", "1960-02-03")],
    ):
        total, page = service.search("Patient", params)
        assert total == 1
        assert page[0].id == "p-1", params
    assert service.search("Patient", [("name", "nobody")])[0] == 0
    for params, expected in (
        ([("patient", "p-1"), ("code", "http://loinc.org|8867-4")], 1),
        ([("subject", "Patient/p-1"), ("date", "ge2024-05-01")], 1),
        ([("subject", "Patient/p-1"), ("date", "lt2024-05-01")], 0),
        ([("category", "vital-signs"), ("date", "2024-05-01")], 1),
        ([("date", "gt2024-05-01")], 0),
    ):
        assert service.search("Observation", params)[0] == expected, params


def test_code_mapping_applies_to_unmapped_synthea_hiv_codes(tmp_path: Path) -> None:
    """synthea-hiv's local codes are reported unmapped; once mapped, a reload stores them mapped."""
    hiv = data_dir("synthea-hiv")
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    service = make_service(store)
    try:
        for path in sorted(hiv.glob("*Information*.json")):
            service.process_bundle(json.loads(path.read_text()))
        patient = sorted(p for p in hiv.glob("*.json") if "Information" not in p.name)[0]
        document = json.loads(patient.read_text())
        service.process_bundle(document)
        unmapped = mappings.unmapped_codes(store)
        assert unmapped
        local, entry = next(
            (u, e)
            for u in unmapped
            for e in document["entry"]
            if e["resource"]["resourceType"] == "Observation"
            and any(c.get("code") == u.code for c in e["resource"]["code"]["coding"])
            and "valueQuantity" in e["resource"]
        )
        stored = service.read("Observation", entry["resource"]["id"]).resource
        resource = {k: v for k, v in stored.items() if k != "meta"}  # references resolved
        mappings.add_mapping(store, local.system, local.code, "8867-4", "/min")
        resource["valueQuantity"] = {"value": 72, "unit": "/min", "code": "/min"}
        service.put("Observation", resource["id"], resource)
        table = schema.observations
        with store.reading() as conn:
            codes = {
                row[0]
                for row in conn.execute(
                    sa.select(table.c.code).where(table.c.source_id.like(f"{resource['id']}%"))
                )
            }
        assert "8867-4" in codes
    finally:
        store.close()
