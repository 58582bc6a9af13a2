"""The shipped R4 checkers are what the installed models give, and the generator's CLI."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from medtwin.devices.fhir import checkgen, r4b_checks
from medtwin.devices.fhir.fastcheck import check_resource
from medtwin.devices.fhir.validation import validate_resource


@cache
def _source() -> str:
    return checkgen.module_source()


def test_the_shipped_checkers_are_those_the_installed_models_give() -> None:
    assert checkgen.TARGET.read_text() == _source()
    assert sorted(r4b_checks.RESOURCES) == checkgen.resource_types()
    assert {"Patient", "Observation", "Bundle"} - set(r4b_checks.RESOURCES) == {"Bundle"}


def test_the_check_fails_on_a_stale_module_until_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "r4b_checks.py"
    monkeypatch.setattr(checkgen, "TARGET", target)
    monkeypatch.setattr(checkgen, "module_source", _source)
    assert checkgen.main(["--check"]) == 1  # missing
    target.write_text(_source().replace("_r_Patient(", "_r_Patient_old(", 1))
    assert checkgen.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert checkgen.main([]) == 0
    assert target.read_text() == _source()
    assert checkgen.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("element", "good", "bad"),
    [
        ("valueTime", "10:15:00", "25:15:00"),
        ("effectiveInstant", "2021-01-01T10:00:00Z", "2021-01-01"),
    ],
)
def test_time_and_instant_values_against_the_models(element: str, good: str, bad: str) -> None:
    base = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert check_resource({**base, element: good}, 10) is not None
    assert validate_resource({**base, element: good}, "Observation") == []
    assert check_resource({**base, element: bad}, 10) is None
    assert validate_resource({**base, element: bad}, "Observation") != []


@pytest.mark.parametrize(
    ("value", "valid"),
    [("aGVsbG8=", True), ("abc", False), (5, False)],
)
def test_rare_primitives_use_the_models_own_types(value: object, valid: bool) -> None:
    """base64Binary (like url, oid, xhtml, time) goes through fhir_core's type."""
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"data": value}}],
    }
    assert (check_resource(resource, 10) is not None) is valid
    assert (validate_resource(resource, "DocumentReference") == []) is valid
