"""What a Bundle's reader hands over, and what the commit makes of it."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data.store import SqlStore, schema
from medtwin.devices.fhir import FhirService, UnprocessableError
from medtwin.devices.fhir.repository import NewVersion
from medtwin.devices.fhir.service import read_bundle
from tests.devices.fhir.test_bundles import patient, transaction

ORGANIZATION = "https://example.org/organizations"


def blood_pressure(systolic: Any = 120, diastolic: Any = 80) -> dict[str, Any]:
    def component(code: str, value: Any) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mm[Hg]",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }  # fmt: skip

    return {
        "resourceType": "Observation",
        "id": "bp-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "urn:uuid:p-1"},
        "effectiveDateTime": "2024-05-01T10:00:00Z",
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def organization(value: str = "org-1") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": value,
        "identifier": [{"system": ORGANIZATION, "value": value}],
        "name": f"Clinic {value}",
    }


def encounter(index: int, provider: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"enc-{index}",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "urn:uuid:p-1"},
        "serviceProvider": {"reference": provider},
    }


def test_an_observation_arrives_as_its_json_and_values(service: FhirService) -> None:
    read = read_bundle(
        transaction(patient(), blood_pressure()), max_entries=10, max_depth=64, source=None
    )
    observation = read.entries[1]
    assert observation.body is not None
    assert observation.doc is None
    assert [value[:3] for value in observation.values or ()] == [
        ("8480-6", "8480-6", 120),
        ("8462-4", "8462-4", 80),
    ]
    # As the loader's reader hands it over.
    [result] = service.commit_group([pickle.loads(pickle.dumps(read))])
    assert not isinstance(result, Exception)
    stored = service.read("Observation", "bp-1")
    expected = blood_pressure()
    expected["subject"]["reference"] = "Patient/p-1"
    assert {k: v for k, v in stored.resource.items() if k != "meta"} == expected
    with service.store.reading() as conn:
        table = schema.observations
        rows = conn.execute(sa.select(table.c.source_id, table.c.code, table.c.value_num)).all()
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("bp-1.8462-4", "8462-4", 80.0),
        ("bp-1.8480-6", "8480-6", 120.0),
    ]


def test_a_rejected_component_names_its_element(service: FhirService) -> None:
    result = service.process_bundle(
        transaction(patient(), blood_pressure(diastolic=9000), kind="batch")
    )
    response = result.response["entry"][1]["response"]
    assert response["status"] == "400 Bad Request"
    [issue] = response["outcome"]["issue"]
    assert issue["expression"] == ["Bundle.entry[1].resource.component[1].valueQuantity.value"]
    assert service.store.count("observations") == 0


def test_entries_sharing_a_conditional_reference_resolve_alike(service: FhirService) -> None:
    service.process_bundle(transaction(organization()))
    provider = f"Organization?identifier={ORGANIZATION}|org-1"
    service.process_bundle(transaction(patient(), *(encounter(i, provider) for i in range(3))))
    for index in range(3):
        stored = service.read("Encounter", f"enc-{index}")
        assert stored.resource["serviceProvider"] == {"reference": "Organization/org-1"}


def test_a_conditional_reference_matching_nothing_fails_each_entry_naming_it(
    service: FhirService,
) -> None:
    provider = f"Organization?identifier={ORGANIZATION}|nowhere"
    bundle = transaction(patient(), *(encounter(i, provider) for i in range(2)), kind="batch")
    result = service.process_bundle(bundle)
    failed = [e["response"] for e in result.response["entry"][1:]]
    assert [r["status"] for r in failed] == ["400 Bad Request"] * 2
    assert [r["outcome"]["issue"][0]["expression"] for r in failed] == [
        [f"Bundle.entry[{index}].resource.serviceProvider.reference"] for index in (1, 2)
    ]
    with pytest.raises(UnprocessableError):
        service.process_bundle(transaction(patient(), encounter(0, provider)))


def test_warnings_go_to_the_entries_they_concern(service: FhirService) -> None:
    held = encounter(0, "urn:uuid:org-1")
    unheld = encounter(1, "Organization/elsewhere")
    result = service.process_bundle(transaction(patient(), organization(), held, unheld))
    outcomes = [e["response"].get("outcome") for e in result.response["entry"]]
    assert outcomes[:3] == [None, None, None]
    assert outcomes[3] is not None
    [warning] = outcomes[3]["issue"]
    assert warning["severity"] == "warning"
    assert warning["expression"] == ["Bundle.entry[3].resource.serviceProvider.reference"]
    assert result.report.unresolved == ["Organization/elsewhere"]


def test_a_patient_written_twice_in_one_bundle_keeps_the_last_demographics(
    service: FhirService,
) -> None:
    first = patient("p-1", ssn="999-11-0001")
    last = {**patient("p-1", ssn="999-11-0002"), "birthDate": "1970-01-01"}
    last["name"] = [{"family": "Lastfamily", "given": ["Lastgiven"]}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": resource, "request": {"method": "PUT", "url": "Patient/p-1"}}
            for resource in (first, last)
        ],
    }
    service.process_bundle(bundle)
    demographics = service.vault.get("p-1")
    assert demographics is not None
    assert [name.family for name in demographics.names] == ["Lastfamily"]
    assert [i.value for i in demographics.identifiers] == ["999-11-0002"]
    with service.store.reading() as conn:
        table = schema.blind_index
        digests = {
            (row[0], row[1])
            for row in conn.execute(
                sa.select(table.c.kind, table.c.digest).where(table.c.patient_id == "p-1")
            )
        }
    assert digests == set(service.vault._digests(demographics))


def test_held_versions_are_those_of_each_type_and_id(store: SqlStore, service: FhirService) -> None:
    repository = service.repository
    versions = [
        NewVersion("Encounter", f"e-{i}", 1, None, {"resourceType": "Encounter", "id": f"e-{i}"})
        for i in range(600)
    ]
    versions.append(NewVersion("Claim", "e-1", 1, None, {"resourceType": "Claim", "id": "e-1"}))
    versions.append(NewVersion("Claim", "e-1", 2, None, {"resourceType": "Claim", "id": "e-1"}))
    with store.transaction() as conn:
        repository.write(conn, versions, 1)
    asked = {("Encounter", f"e-{i}") for i in range(0, 1200, 2)}
    asked |= {("Claim", "e-1"), ("Claim", "e-2"), ("Encounter", "x")}
    with store.transaction() as conn:
        held = repository.held_versions(conn, asked)
    expected = {("Encounter", f"e-{i}"): 1 for i in range(0, 600, 2)}
    assert held == {**expected, ("Claim", "e-1"): 2}
