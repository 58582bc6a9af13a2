"""Resources handed over as a Body (JSON with slots): the same JSON, paths and versions
as parsed resources, and the nesting checked without a walk of the whole document."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data.crypto import CryptoError
from medtwin.data.store import SqlStore, schema
from medtwin.devices.fhir import FhirService, TooLargeError, UnprocessableError
from medtwin.devices.fhir import body as body_module
from medtwin.devices.fhir.body import make_body
from medtwin.devices.fhir.errors import FhirError
from medtwin.devices.fhir.fastcheck import check_resource
from medtwin.devices.fhir.loader import BundleLoader
from medtwin.devices.fhir.repository import dump_json
from medtwin.devices.fhir.service import read_bundle
from tests.devices.fhir.conftest import make_privacy
from tests.devices.fhir.test_bundles import patient, transaction


def encounter(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "urn:uuid:p-1", "display": "Mr. Q"},
        "participant": [
            {"individual": {"reference": "Practitioner/pr-1", "display": "Dr. A"}},
            {"individual": {"reference": "Practitioner/pr-2"}},
        ],
        **extra,
    }


def _checked(resource: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    found = check_resource(resource, 60)
    assert found is not None
    return found


def test_entries_and_bodies_survive_the_trip_to_the_committing_process() -> None:
    """Pickled as their constructor's arguments: every field comes back."""
    document = transaction(patient(), encounter())
    read = read_bundle(document, max_entries=100, max_depth=64, source="s")
    assert isinstance(read.entries[1].body, body_module.Body)
    read.entries[0].status = "201 Created"  # values set after reading come back too
    read.entries[1].patient, read.entries[1].version = "p-1", 3
    back = pickle.loads(pickle.dumps(read))
    assert back == read
    assert back.entries[1].body == read.entries[1].body
    assert back.entries[1].body is not read.entries[1].body


def test_content_is_the_json_of_the_resource_with_its_slots_filled() -> None:
    copied, holders = _checked(encounter())
    body = make_body(copied, holders)
    assert body is not None
    assert copied == encounter()  # left as it was
    # Shipped to the committing process: no trace of the reader's objects needed.
    body = pickle.loads(pickle.dumps(body))
    for holder, target in zip(body.holders, ["Patient/p-9", "Practitioner/x", "P/y"], strict=True):
        holder["reference"] = target
    body.id_value = "enc-9"
    expected = encounter(id="enc-9")
    expected["subject"]["reference"] = "Patient/p-9"
    expected["participant"][0]["individual"]["reference"] = "Practitioner/x"
    expected["participant"][1]["individual"]["reference"] = "P/y"
    assert body.content() == dump_json(expected)
    assert body.materialize() == expected
    assert [body.holders[i]["reference"] for i in body.patient_refs] == ["Patient/p-9"]
    assert body.subject is not None
    assert body.holders[body.subject]["reference"] == "Patient/p-9"


def test_materialized_resource_holds_the_bodys_reference_holders() -> None:
    copied, holders = _checked(encounter())
    body = make_body(copied, holders)
    assert body is not None
    resource = body.materialize()
    body.holders[1]["reference"] = "Practitioner/z"
    assert resource["participant"][0]["individual"] == {
        "reference": "Practitioner/z",
        "display": "Dr. A",
    }


def test_a_resource_without_id_gets_its_id_last() -> None:
    source = encounter()
    del source["id"]
    copied, holders = _checked(source)
    body = make_body(copied, holders)
    assert body is not None
    assert body.materialize() == source
    body.id_value = "new"
    assert json.loads(body.content()) == {**source, "id": "new"}
    assert list(json.loads(body.content()))[-1] == "id"


def test_text_holding_a_mark_gets_no_body() -> None:
    copied, holders = _checked(encounter())
    copied["participant"][1]["individual"]["display"] = "\x00" + body_module._NONCE + "0"
    assert make_body(copied, holders) is None


def test_bundle_entries_of_most_types_arrive_as_bodies() -> None:
    read = read_bundle(
        transaction(patient(), encounter()), max_entries=10, max_depth=64, source=None
    )
    assert read.entries[0].body is None  # a Patient: its demographics are read
    assert read.entries[1].body is not None


def test_stored_json_and_search_rows_of_a_body_entry(service: FhirService) -> None:
    service.process_bundle(transaction(patient(), encounter()))
    stored = service.read("Encounter", "enc-1")
    expected = encounter()
    expected["subject"]["reference"] = "Patient/p-1"
    assert {k: v for k, v in stored.resource.items() if k != "meta"} == expected
    assert stored.patient_id == "p-1"
    with service.store.reading() as conn:
        rows = conn.execute(
            sa.select(schema.fhir_search.c.param, schema.fhir_search.c.value).where(
                schema.fhir_search.c.resource_type == "Encounter"
            )
        ).all()
    assert set(rows) == {("subject", "Patient/p-1")}


def test_a_fault_in_a_body_entry_names_its_element(service: FhirService) -> None:
    broken = encounter(serviceProvider={"reference": "urn:uuid:missing", "display": "Org"})
    with pytest.raises(FhirError) as caught:
        service.process_bundle(transaction(patient(), broken))
    assert isinstance(caught.value, UnprocessableError)
    assert caught.value.issues[0].expression == "Bundle.entry[1].resource.serviceProvider.reference"


def test_batch_quarantines_a_failed_body_entry_as_received(service: FhirService) -> None:
    broken = encounter(serviceProvider={"reference": "urn:uuid:missing"})
    result = service.process_bundle(transaction(patient(), broken, kind="batch"))
    assert result.report.failed == 1
    [entry] = service.store.quarantined()
    payload = json.loads(entry.payload)
    assert payload["serviceProvider"] == {"reference": "urn:uuid:missing"}
    assert payload["subject"]["reference"] == "Patient/p-1"  # resolved before the fault


def test_updates_of_a_body_entry_are_versions_or_no_ops(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    sent = encounter(subject={"reference": "Patient/p-1"})
    first, created = service.put("Encounter", "enc-1", copy.deepcopy(sent))
    assert created
    assert first.version == 1
    same, created = service.put("Encounter", "enc-1", copy.deepcopy(sent))
    assert not created
    assert same.version == 1
    changed, _ = service.put("Encounter", "enc-1", {**sent, "status": "cancelled"})
    assert changed.version == 2
    assert changed.resource["status"] == "cancelled"
    assert [v.version for v in service.history("Encounter", "enc-1")] == [2, 1]


def test_raw_payloads_stay_sealed(service: FhirService, store: SqlStore) -> None:
    service.process_bundle(transaction(patient(), encounter()))
    with store.reading() as conn:
        contents = [row[0] for row in conn.execute(sa.select(schema.fhir_resources.c.content))]
    assert len(contents) == 2
    assert all(content.startswith("sealed:") for content in contents)
    assert not any("Quixotefamily" in c or "Mr. Q" in c for c in contents)


def _deep(levels: int) -> dict[str, Any]:
    deep: dict[str, Any] = {"url": "x"}
    for _ in range(levels):
        deep = {"url": "x", "extension": [deep]}
    return deep


@pytest.mark.parametrize(
    "document",
    [
        transaction({**encounter(), "extension": [_deep(40)]}),
        # An entry refused before its resource is read: its depth still counts.
        {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": _deep(40)}]},
        # Not a Bundle at all, and too deep.
        {"resourceType": "Patient", "extension": [_deep(40)]},
    ],
    ids=["in-a-resource", "in-a-refused-entry", "not-a-bundle"],
)
def test_the_loader_refuses_too_deep_files(
    service: FhirService, tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(document))
    service.max_depth = 64
    [loaded] = BundleLoader(service, reader=False).load([path])
    assert isinstance(loaded.outcome, TooLargeError)
    assert len(service.store.quarantined()) == 1


def test_sealing_a_batch_gives_blobs_each_key_opens_alone() -> None:
    keyring = make_privacy().keyring
    plaintexts = [b"one", b"two", b"one"]
    aads = [b"fhir:A/1/1", b"fhir:A/2/1", b"fhir:A/3/1"]
    blobs = keyring.encrypt_many(plaintexts, aads)
    assert [keyring.decrypt(b, aad=a) for b, a in zip(blobs, aads, strict=True)] == plaintexts
    assert len({b[:-16] for b in blobs}) == 3  # a nonce of its own each
    with pytest.raises(CryptoError):
        keyring.decrypt(blobs[0], aad=aads[2])


def test_a_body_from_another_process_is_read_with_its_own_marks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copied, holders = _checked(encounter())
    shipped = pickle.dumps(make_body(copied, holders))
    # A reader started by a fork server drew another nonce than this process.
    monkeypatch.setattr(body_module, "_NONCE", "0123456789abcdef")
    body = pickle.loads(shipped)
    assert body.materialize() == encounter()
    body.holders[0]["reference"] = "Patient/p-1"
    assert json.loads(body.content())["subject"]["reference"] == "Patient/p-1"


def test_a_resource_with_many_references_gets_a_slot_each() -> None:
    people = [{"individual": {"reference": f"Practitioner/pr-{i}"}} for i in range(150)]
    source = encounter(participant=people)
    copied, holders = _checked(source)
    body = make_body(copied, holders)
    assert body is not None
    assert copied == source
    assert sorted(body.slots) == list(range(-1, 151))
    for i, holder in enumerate(body.holders):
        holder["reference"] = f"X/{i}"
    content = json.loads(body.content())
    assert content["subject"]["reference"] == f"X/{body.subject}"
    assert [p["individual"]["reference"] for p in content["participant"]] == [
        f"X/{i}" for i in range(1, 151)
    ]
    assert body.materialize() == content


def test_marks_follow_the_process_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    copied, holders = _checked(encounter())
    assert make_body(copied, holders) is not None
    monkeypatch.setattr(body_module, "_NONCE", "fedcba9876543210")
    body = make_body(copied, holders)
    assert body is not None
    assert body.nonce == "fedcba9876543210"
    assert body.materialize() == encounter()
    copied["participant"][1]["individual"]["display"] = "\x00fedcba9876543210i"
    assert make_body(copied, holders) is None


def test_no_body_for_a_resource_that_is_its_own_holder_or_has_an_odd_id() -> None:
    copied, holders = _checked(encounter())
    assert make_body(copied, [*holders, copied]) is None
    assert make_body({**copied, "id": 5}, holders) is None
    assert copied == encounter()
