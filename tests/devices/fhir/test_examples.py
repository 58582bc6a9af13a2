"""The official FHIR R4 examples of the implemented types: stored and read back as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from medtwin.devices.fhir import FhirService
from medtwin.devices.fhir.capability import MAPPED_TYPES
from tests.devices.fhir.conftest import data_dir


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_examples_are_stored_and_read_back_equal(service: FhirService) -> None:
    folder = data_dir("fhir-r4-examples")
    examples = [
        json.loads(path.read_text())
        for path in sorted(folder.glob("*.json"))
        if path.name.split("-", 1)[0] in MAPPED_TYPES
    ]
    assert len(examples) > 150
    refused = []
    for resource in examples:
        try:
            _, created = service.put(resource["resourceType"], resource["id"], resource)
        except Exception as exc:  # collected, to name every failing example at once
            refused.append(f"{resource['resourceType']}/{resource['id']}: {exc}")
            continue
        assert created
        read = service.read(resource["resourceType"], resource["id"])
        assert without_meta(read.resource) == without_meta(resource)
        assert read.resource["meta"]["versionId"] == "1"
    assert refused == []
