"""The Bundle loader: reader process, group commits with savepoints, outcomes in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from medtwin.data.consent import ConsentStore
from medtwin.data.store import SqlStore, open_store, schema
from medtwin.devices.fhir import BundleResult, FhirService, InvalidResourceError
from medtwin.devices.fhir.errors import FhirError, UnprocessableError
from medtwin.devices.fhir.loader import BundleLoader
from tests.devices.fhir.conftest import DATA, data_dir, make_privacy, make_service
from tests.devices.fhir.test_bundles import heart_rate, patient, transaction


def _write(folder: Path, name: str, document: Any) -> Path:
    path = folder / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _resources(store: SqlStore) -> set[tuple[str, str, int, bool, str | None]]:
    table = schema.fhir_resources
    with store.reading() as conn:
        rows = conn.execute(
            sa.select(
                table.c.resource_type, table.c.id, table.c.version, table.c.deleted,
                table.c.patient_id,
            )
        )  # fmt: skip
        return {(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows}


def _unenforceable_consent() -> dict[str, Any]:
    """An official Consent example without its patient: stored, then refused by the
    consent store inside the transaction (after the Bundle's resources are written)."""
    path = DATA / "fhir-r4-examples" / "Consent-consent-example-notThem.json"
    consent = json.loads(path.read_text())
    consent.pop("patient")
    return {**consent, "id": "broken"}


@pytest.mark.parametrize("reader", [False, True], ids=["in-process", "reader-process"])
def test_refused_bundles_in_a_group_leave_the_others_committed(
    store: SqlStore, tmp_path: Path, reader: bool
) -> None:
    service = make_service(store, consents=ConsentStore(store, make_privacy().keyring))
    first = transaction(patient("p-1", ssn="999-11-0001"), heart_rate(71, "urn:uuid:p-1"))
    # Refused on reading: one entry's value is not a decimal.
    unreadable = transaction(patient("p-2", ssn="999-11-0002"), heart_rate("x", "urn:uuid:p-2"))
    # Refused at commit, after its Patient and Observation were written: the savepoint
    # takes them back.
    late = transaction(
        patient("p-3", ssn="999-11-0003"), heart_rate(73, "urn:uuid:p-3"), kind="batch"
    )
    late["entry"].append(
        {
            "resource": _unenforceable_consent(),
            "request": {"method": "PUT", "url": "Consent/broken"},
        }
    )
    last = transaction(patient("p-4", ssn="999-11-0004"), heart_rate(74, "urn:uuid:p-4"))
    paths = [
        _write(tmp_path, "1.json", first),
        _write(tmp_path, "2.json", unreadable),
        _write(tmp_path, "3.json", "{not json"),
        _write(tmp_path, "4.json", late),
        _write(tmp_path, "5.json", last),
    ]
    # Every file is read before the first commit: one group of five.
    loader = BundleLoader(service, reader=reader, ahead=8)
    outcomes = list(loader.load(paths, source="test"))

    assert [o.path for o in outcomes] == paths
    kinds = [type(o.outcome) for o in outcomes]
    assert kinds == [
        BundleResult, InvalidResourceError, InvalidResourceError, UnprocessableError,
        BundleResult,
    ]  # fmt: skip
    unreadable_issue = outcomes[1].outcome
    assert isinstance(unreadable_issue, FhirError)
    assert unreadable_issue.issues[0].expression == ("Bundle.entry[1].resource.valueQuantity.value")
    assert "Consent.patient" in str(outcomes[3].outcome)
    held = _resources(store)
    assert {(t, i) for t, i, *_ in held} == {
        ("Patient", "p-1"), ("Patient", "p-4"),
        *((t, i) for t, i, *_ in held if t == "Observation"),
    }  # fmt: skip
    assert sum(1 for t, *_ in held if t == "Observation") == 2
    assert store.count("observations") == 2
    assert [len(store.history(p).items) for p in ("p-1", "p-2", "p-3", "p-4")] == [1, 0, 0, 1]
    # The refused three are quarantined with the file's text, each once.
    quarantined = store.quarantined(channel="fhir")
    assert sorted(q.location for q in quarantined) == [
        "Bundle.entry[1].resource.valueQuantity.value",
        "Consent/broken: Consent.patient",
        "body",
    ]
    assert "{not json" in {q.payload for q in quarantined}
    # The twins hold the committed ones only.
    runtime = service.ingestor.runtime
    assert [p in runtime for p in ("p-1", "p-2", "p-3", "p-4")] == [True, False, False, True]


def test_loading_synthea_through_the_reader_matches_loading_one_by_one(
    tmp_path: Path,
) -> None:
    folder = data_dir("synthea-hiv")
    batches = sorted(folder.glob("*Information*.json"))
    paths = batches + sorted(p for p in folder.glob("*.json") if p not in batches)
    one = open_store(f"sqlite:///{tmp_path / 'one.db'}")
    grouped = open_store(f"sqlite:///{tmp_path / 'grouped.db'}")
    try:
        single = make_service(one)
        for path in paths:
            single.process_bundle(json.loads(path.read_text()))
        service: FhirService = make_service(grouped)
        with BundleLoader(service, group_entries=3_000) as loader:
            outcomes = list(loader.load(paths))
        assert all(isinstance(o.outcome, BundleResult) for o in outcomes)
        assert _resources(grouped) == _resources(one)
        assert grouped.count("observations") == one.count("observations") > 1000
        assert grouped.count("fhir_search") == one.count("fhir_search")
        # Loading again replays every Bundle and stores nothing new.
        with BundleLoader(service) as loader:
            again = list(loader.load(paths))
        assert all(isinstance(o.outcome, BundleResult) and o.outcome.report.replayed for o in again)
        assert _resources(grouped) == _resources(one)
    finally:
        one.close()
        grouped.close()
