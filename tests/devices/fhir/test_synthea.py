"""Loading the Synthea reference sets: counts, references, twins, unmapped codes, privacy."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data.store import SqlStore, open_store, schema
from medtwin.devices.fhir import BundleResult, FhirService
from tests.devices.fhir.conftest import data_dir, make_service


def bundles() -> list[tuple[Path, dict[str, Any]]]:
    """HIV batches (hospital, practitioner) first, then every transaction Bundle."""
    hiv = data_dir("synthea-hiv")
    r4 = data_dir("synthea-r4")
    batches = sorted(hiv.glob("*Information*.json"))
    patients = sorted(p for p in hiv.glob("*.json") if p not in batches)
    return [
        (p, json.loads(p.read_text())) for p in [*batches, *patients, *sorted(r4.glob("*.json"))]
    ]


@dataclass
class Loaded:
    service: FhirService
    store: SqlStore
    path: Path
    bundles: list[tuple[Path, dict[str, Any]]]
    results: list[BundleResult]
    again: list[BundleResult]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    path = tmp_path_factory.mktemp("synthea") / "fhir.db"
    store = open_store(f"sqlite:///{path}")
    service = make_service(store)
    documents = bundles()
    results = [service.process_bundle(document) for _, document in documents]
    again = [service.process_bundle(document) for _, document in documents]
    yield Loaded(service, store, path, documents, results, again)
    store.close()


def _held(store: SqlStore) -> Counter[str]:
    table = schema.fhir_resources
    with store.reading() as conn:
        rows = conn.execute(
            sa.select(table.c.resource_type, sa.func.count(sa.distinct(table.c.id))).group_by(
                table.c.resource_type
            )
        )
        return Counter({row[0]: int(row[1]) for row in rows})


def test_every_resource_is_stored_once(loaded: Loaded) -> None:
    expected: Counter[str] = Counter()
    conditional: set[tuple[str, str]] = set()
    for _, document in loaded.bundles:
        for entry in document["entry"]:
            resource_type = entry["resource"]["resourceType"]
            condition = entry["request"].get("ifNoneExist")
            if condition is not None:
                if (resource_type, condition) in conditional:
                    continue  # the second one reuses the first
                conditional.add((resource_type, condition))
            expected[resource_type] += 1
    assert _held(loaded.store) == expected
    assert all(r.report.failed == 0 for r in loaded.results)
    created = sum(r.report.created for r in loaded.results)
    assert created == sum(expected.values())


def test_loading_again_replays_and_duplicates_nothing(loaded: Loaded) -> None:
    assert all(r.report.replayed for r in loaded.again)
    assert [r.response for r in loaded.again] == [r.response for r in loaded.results]
    held = _held(loaded.store)
    assert sum(held.values()) == sum(r.report.created for r in loaded.results)
    assert loaded.store.count("patients") == 25 + 14
    with loaded.store.reading() as conn:
        versions = conn.execute(sa.select(sa.func.max(schema.fhir_resources.c.version))).scalar()
    assert versions == 1


def test_every_bundle_internal_reference_resolves(loaded: Loaded) -> None:
    repository = loaded.service.repository
    held: dict[tuple[str, str], dict[str, Any]] = {}
    for resource_type in _held(loaded.store):
        _, page = repository.search(resource_type, [], count=100_000)
        held.update({(r.resource_type, r.id): r.resource for r in page})
    checked = 0
    for (_, document), result in zip(loaded.bundles, loaded.results, strict=True):
        assert result.report.unresolved == []
        for entry, answer in zip(document["entry"], result.response["entry"], strict=True):
            resource_type, resource_id = answer["response"]["location"].split("/")[:2]
            assert entry["resource"]["resourceType"] == resource_type
            for reference in _references(held[(resource_type, resource_id)]):
                assert not reference.startswith(("urn:uuid:", "urn:oid:")), reference
                assert "?" not in reference, reference
                if not reference.startswith("#"):
                    target_type, target_id = reference.split("/")[:2]
                    assert (target_type, target_id) in held, reference
                    checked += 1
    assert checked > 40_000


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for child in value.values():
            yield from _references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _references(child)


def test_twins_hold_vital_signs_with_the_blood_pressure_panel_split(loaded: Loaded) -> None:
    runtime = loaded.service.ingestor.runtime
    r4 = [
        (document, result)
        for (path, document), result in zip(loaded.bundles, loaded.results, strict=True)
        if path.parent.name == "synthea-r4"
    ]
    assert len(r4) == 25
    with_bp = 0
    for document, result in r4:
        patient = result.response["entry"][0]["response"]["location"].split("/")[1]
        assert document["entry"][0]["resource"]["resourceType"] == "Patient"
        vitals = runtime.vitals(int(runtime.rows_of([patient])[0]))
        panels = [
            e["resource"]
            for e in document["entry"]
            if e["resource"]["resourceType"] == "Observation"
            and "component" in e["resource"]
            and any(c["code"]["coding"][0]["code"] == "8480-6" for c in e["resource"]["component"])
        ]
        if panels:
            with_bp += 1
            assert {"8480-6", "8462-4"} <= set(vitals)
            newest = max(panels, key=lambda r: r["effectiveDateTime"])
            systolic = next(
                c for c in newest["component"] if c["code"]["coding"][0]["code"] == "8480-6"
            )
            assert vitals["8480-6"]["value"] == pytest.approx(systolic["valueQuantity"]["value"])
        assert vitals, patient
    assert with_bp >= 20
    history = loaded.store.history(patient, codes=["8480-6", "8462-4"], limit=10_000)
    assert {s.observation.code for s in history.items} == {"8480-6", "8462-4"}


def test_synthea_hiv_codes_are_stored_and_reported_unmapped(loaded: Loaded) -> None:
    hiv = [
        result
        for (path, document), result in zip(loaded.bundles, loaded.results, strict=True)
        if path.parent.name == "synthea-hiv" and document["type"] == "transaction"
    ]
    assert len(hiv) == 14
    unmapped = sum(r.report.unmapped.get("http://loinc.org", 0) for r in hiv)
    assert unmapped > 1000
    assert all(r.report.observations > 0 for r in hiv)
    notes = [
        issue["diagnostics"]
        for r in hiv
        for e in r.response["entry"]
        for issue in e["response"].get("outcome", {}).get("issue", ())
    ]
    assert any("not in the registry" in note for note in notes)
    table = schema.observations
    with loaded.store.reading() as conn:
        flagged = conn.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.flags.op("&")(1) == 1)
        ).scalar_one()
    assert flagged >= unmapped


def test_database_file_holds_no_personal_data(loaded: Loaded) -> None:
    secrets: set[str] = set()
    for _, document in loaded.bundles:
        for entry in document["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Patient":
                continue
            for name in resource.get("name", ()):
                secrets.update(n for n in [name.get("family"), *name.get("given", ())] if n)
            for identifier in resource.get("identifier", ()):
                code = identifier.get("type", {}).get("coding", [{}])[0].get("code")
                if code in ("SS", "PPN", "DL"):
                    secrets.add(identifier["value"])
    assert len(secrets) > 100
    loaded.store.close()  # everything on disk (WAL checkpointed)
    raw = b"".join(p.read_bytes() for p in loaded.path.parent.glob("fhir.db*"))
    # Whole words only: a short name turns up by chance inside megabytes of base64.
    words = set(re.findall(rb"[\w-]+", raw))
    leaked = sorted(s for s in secrets if s.encode() in words)
    assert leaked == []
