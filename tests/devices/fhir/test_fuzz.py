"""Arbitrary JSON never crashes the FHIR processing: it is processed or refused as FhirError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.data.store import open_store
from medtwin.devices.fhir import FhirError, FhirService, parse_json
from tests.devices.fhir.conftest import make_service

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(
    ["resourceType", "id", "status", "code", "subject", "valueQuantity", "value", "reference",
     "component", "effectiveDateTime", "name", "identifier", "birthDate", "coding", "system"]
)  # fmt: skip
fhir_like = st.recursive(
    json_values,
    lambda children: st.dictionaries(names, children, max_size=6),
    max_leaves=30,
)
resource_types = st.sampled_from(["Patient", "Observation", "Encounter", "Bundle", "Nope", ""])


@st.composite
def bundles(draw: st.DrawFn) -> dict[str, Any]:
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        resource = draw(st.dictionaries(names, fhir_like, max_size=6))
        resource["resourceType"] = draw(resource_types)
        entries.append(
            {
                "fullUrl": draw(st.sampled_from(["urn:uuid:a", "urn:uuid:b", None])),
                "resource": resource,
                "request": {
                    "method": draw(st.sampled_from(["POST", "PUT", "GET", 3])),
                    "url": draw(st.sampled_from(["Patient", "Observation/x", "Patient?x=1", ""])),
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["transaction", "batch", "collection"])),
        "entry": entries,
    }


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirService]:
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")
    yield make_service(store)
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=json_values | bundles())
def test_arbitrary_json_is_processed_or_refused(fuzz_service: FhirService, document: Any) -> None:
    try:
        fuzz_service.process_bundle(document)
    except FhirError as exc:
        outcome = exc.outcome()
    else:
        return
    assert outcome["issue"]


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_parses_or_is_refused(text: str | bytes) -> None:
    try:
        parse_json(text, max_depth=64)
    except FhirError as exc:
        status = exc.status
    else:
        return
    assert status in (400, 413)


def test_deep_json_is_refused_not_crashed(tmp_path: Path) -> None:
    with pytest.raises(FhirError) as caught:
        parse_json("[" * 100_000 + "]" * 100_000, max_depth=64)
    assert caught.value.status == 413
