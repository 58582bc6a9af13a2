"""FHIR origins: each stored observation traces to its Bundle and ``Bundle.entry[i]``,
or to ``Type/id`` when a resource was PUT on its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from medtwin.data.store import Origin, SqlStore, schema
from medtwin.devices.fhir import FhirService
from tests.devices.fhir.conftest import data_dir
from tests.devices.fhir.test_bundles import heart_rate, patient, transaction

Key = tuple[str, str, int]


def _keys(store: SqlStore) -> set[Key]:
    table = schema.observations
    with store.reading() as conn:
        rows = conn.execute(sa.select(table.c.source, table.c.source_id, table.c.version))
        return {(r.source, r.source_id, r.version) for r in rows}


def _digest_name(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return f"bundle-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _synthea_bundle() -> tuple[Path, dict[str, Any]]:
    path = min(data_dir("synthea-r4").glob("*.json"))
    return path, json.loads(path.read_text())


def test_a_synthea_bundle_names_its_entries(service: FhirService) -> None:
    _, document = _synthea_bundle()
    assert "id" not in document  # Synthea's Bundles have none: the digest names them
    result = service.process_bundle(document)
    assert result.report.observations > 50
    entry_of = {
        entry["resource"]["id"]: index
        for index, entry in enumerate(document["entry"])
        if entry["resource"]["resourceType"] == "Observation"
    }
    keys = _keys(service.store)
    assert len(keys) == result.report.observations
    message = _digest_name(document)
    # Components (blood pressure) are observations of their own, from the same entry.
    expected = {
        key: Origin("fhir", message, f"Bundle.entry[{entry_of[key[1].split('.')[0]]}]")
        for key in keys
    }
    assert service.store.origins_of(list(keys)) == expected
    # Posted again: replayed, nothing new, the origins as they were.
    assert service.process_bundle(document).report.replayed
    assert _keys(service.store) == keys
    assert service.store.origins_of(list(keys)) == expected


def test_a_bundle_id_names_the_message(service: FhirService) -> None:
    bundle = transaction(patient(), heart_rate(72), heart_rate(900), heart_rate(80), kind="batch")
    bundle["id"] = "lab-batch.7"
    result = service.process_bundle(bundle)
    assert [e["response"]["status"][:3] for e in result.response["entry"]] == [
        "201", "201", "400", "201",
    ]  # fmt: skip
    responses = [e["response"] for e in result.response["entry"]]
    ids = [r["location"].split("/")[1] for r in responses[1:] if "location" in r]
    keys = [("fhir", resource_id, 1) for resource_id in ids]
    # The failed entry is left out; the others keep their own positions.
    assert service.store.origins_of(keys) == {
        keys[0]: Origin("fhir", "lab-batch.7", "Bundle.entry[1]"),
        keys[1]: Origin("fhir", "lab-batch.7", "Bundle.entry[3]"),
    }
    # A Bundle id that is not a FHIR id is not used.
    odd = transaction(heart_rate(75, subject="Patient/p-1"))
    odd["id"] = "not an id!"
    (entry,) = service.process_bundle(odd).response["entry"]
    key = ("fhir", entry["response"]["location"].split("/")[1], 1)
    assert service.store.origins_of([key]) == {
        key: Origin("fhir", _digest_name(odd), "Bundle.entry[0]")
    }


def test_a_put_names_the_resource_and_a_resend_keeps_it(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    observation = heart_rate(72, subject="Patient/p-1")
    service.put("Observation", "hr-1", observation)
    first = ("fhir", "hr-1", 1)
    assert service.store.origins_of([first]) == {first: Origin("fhir", "Observation/hr-1")}
    # The same content again, alone or in a Bundle: unchanged, no new version or origin.
    service.put("Observation", "hr-1", observation)
    again: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": "resend",
        "type": "transaction",
        "entry": [
            {"resource": observation, "request": {"method": "PUT", "url": "Observation/hr-1"}}
        ],
    }
    service.process_bundle(again)
    assert _keys(service.store) == {first}
    assert service.store.origins_of([first]) == {first: Origin("fhir", "Observation/hr-1")}
    # A changed value is a new version, traced to the Bundle that brought it.
    again["entry"][0]["resource"] = heart_rate(90, subject="Patient/p-1")
    service.process_bundle(again)
    second = ("fhir", "hr-1", 2)
    assert service.store.origins_of([first, second]) == {
        first: Origin("fhir", "Observation/hr-1"),
        second: Origin("fhir", "resend", "Bundle.entry[0]"),
    }
