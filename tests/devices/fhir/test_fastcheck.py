"""The fast pre-validator never accepts what the R4B models refuse."""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.devices.fhir.fastcheck import check_resource
from medtwin.devices.fhir.validation import validate_resource
from tests.devices.fhir.conftest import data_dir

_LIMIT = 61


@cache
def _samples() -> tuple[str, ...]:
    """One resource of each type and shape from both Synthea sets (as JSON text)."""
    seen: dict[tuple[str, frozenset[str]], str] = {}
    for name in ("synthea-hiv", "synthea-r4"):
        for path in sorted(data_dir(name).glob("*.json"))[:4]:
            for entry in json.loads(path.read_text())["entry"]:
                resource = entry["resource"]
                key = (resource["resourceType"], frozenset(resource))
                seen.setdefault(key, json.dumps(resource))
    return tuple(seen.values())


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) inside ``value``."""
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((value, key))
            _slots(child, out)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((value, index))
            _slots(child, out)
    return out


_BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            " ",
            "2021-02-30",
            "2021-13-01",
            "2021-01-01T10:00:00",
            "2021-01-01T25:00:00Z",
            "2016-12-31T23:59:60Z",
            "2021-01-01T10:00:00.1234567Z",
            "1e5",
            "a b",
            "a  b",
            " x",
            "x\n",
            "é",
            "urn:uuid:x",
            "Patient/1",
            "0000",
            "12345678901234567890",
        ]
    ),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["value", "code", "reference", "x"]), st.text(max_size=3)),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads(draw(st.sampled_from(_samples())))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        slots = _slots(resource, [])
        holder, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["value", "delete", "unknown", "wrap", "unwrap"]))
        if action == "value":
            holder[key] = draw(_BAD_VALUES)
        elif action == "delete":
            del holder[key]
        elif action == "unknown" and isinstance(holder, dict):
            holder[draw(st.sampled_from(["foo", "_status", "valueFoo", "resourceType"]))] = "x"
        elif action == "wrap":
            holder[key] = [holder[key]]
        elif isinstance(holder[key], list) and holder[key]:
            holder[key] = holder[key][0]
    return resource


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fast_path_never_accepts_what_the_models_refuse(resource: dict[str, Any]) -> None:
    before = copy.deepcopy(resource)
    fast = check_resource(resource, _LIMIT)
    assert resource == before  # the caller's document is left as it was
    if fast is not None:
        assert fast[0] == resource
        assert validate_resource(resource, "Resource") == [] or _only_codes(resource)


def _only_codes(resource: dict[str, Any]) -> bool:
    """Issues the service's own code checks raise (the fast path runs those too)."""
    return all(i.code == "code-invalid" for i in validate_resource(resource, "Resource"))


def test_fast_path_accepts_the_synthea_resources() -> None:
    for text in _samples():
        resource = json.loads(text)
        fast = check_resource(resource, _LIMIT)
        assert fast is not None, resource["resourceType"]
        copied, holders = fast
        assert copied == resource
        assert copied is not resource
        assert all(isinstance(h["reference"], str) for h in holders)


def _observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "subject": {"reference": "Patient/p-1"},
        **extra,
    }


def test_calendar_days_instants_and_leap_seconds() -> None:
    accepted = ["2020-02-29", "2021-02-28T23:59:59.123456+14:00", "2021", "2021-04"]
    for value in accepted:
        assert check_resource(_observation(effectiveDateTime=value), _LIMIT) is not None, value
    refused = [
        "2021-02-29",  # no such day (the regex alone accepts it)
        "2021-04-31T10:00:00Z",
        "2021-02-29T10:00:00Z",
        "2016-12-31T23:59:60Z",  # a leap second
        "2021-01-01T10:00:00.1234567Z",
        "2021-01-01T10:00:00",  # a time needs its zone
        "2021-01T10:00:00Z",  # a time needs a full date
        "0000-01-01",
    ]
    for value in refused:
        assert check_resource(_observation(effectiveDateTime=value), _LIMIT) is None, value
    assert check_resource(_observation(issued="2021-01-01T10:00:00Z"), _LIMIT) is not None
    assert check_resource(_observation(issued="2021-01-01"), _LIMIT) is None  # an instant


def test_values_accepted_for_one_type_are_not_taken_for_another() -> None:
    # "a b" is a code (accepted and remembered as one), not a uri.
    coded = _observation(code={"coding": [{"code": "a b"}]})
    assert check_resource(coded, _LIMIT) is not None
    assert check_resource(_observation(code={"coding": [{"system": "a b"}]}), _LIMIT) is None
    assert check_resource(_observation(code={"coding": [{"code": "a  b"}]}), _LIMIT) is None


def test_required_elements_choice_groups_and_unknown_elements() -> None:
    assert check_resource({**_observation(), "status": None}, _LIMIT) is None
    del_status = _observation()
    del del_status["status"]
    assert check_resource(del_status, _LIMIT) is None
    two_values = _observation(valueString="x", valueBoolean=True)
    assert check_resource(two_values, _LIMIT) is None  # one of value[x] at most
    assert check_resource(_observation(valueString="x"), _LIMIT) is not None
    assert check_resource(_observation(valueFoo="x"), _LIMIT) is None
    assert check_resource(_observation(_status={"id": "x"}), _LIMIT) is None
    # Extension.value[x] is optional, but one at most; url is required.
    extension = {"url": "http://x", "valueCode": "a", "valueString": "b"}
    assert check_resource(_observation(extension=[extension]), _LIMIT) is None
    assert check_resource(_observation(extension=[{"valueCode": "a"}]), _LIMIT) is None
    assert check_resource(_observation(extension=[{"url": "http://x"}]), _LIMIT) is not None


def test_the_copy_and_the_reference_holders_in_walk_order() -> None:
    assigner = {"reference": "Organization/o-1"}
    performer = {"reference": "Practitioner/p-2", "identifier": {"assigner": assigner}}
    resource = _observation(performer=[performer], focus=[{"display": "no reference"}])
    found = check_resource(resource, _LIMIT)
    assert found is not None
    copied, holders = found
    assert copied == resource
    assert list(copied) == list(resource)  # the keys in their order
    # Each object after the objects inside it (the assigner before the performer).
    assert holders == [{"reference": "Patient/p-1"}, assigner, performer]
    assert holders[0] is copied["subject"]
    assert holders[1] is copied["performer"][0]["identifier"]["assigner"]
    assert holders[2] is copied["performer"][0]
    assert copied["code"]["coding"] is not resource["code"]["coding"]
    copied["subject"]["reference"] = "Patient/p-9"
    assert resource["subject"]["reference"] == "Patient/p-1"


def test_the_nesting_budget() -> None:
    # The resource, an array, an item, an object: 4 levels (and 3 to the array of codings).
    resource = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "participant": [{"individual": {"reference": "Practitioner/p-1"}}],
    }
    assert check_resource(resource, 4) is not None
    assert check_resource(resource, 3) is None
    flat = {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}}
    assert check_resource(flat, 2) is not None
    assert check_resource(flat, 1) is None
    # An array of primitives counts as a level of its own.
    assert check_resource({**flat, "class": {"code": "AMB"}, "id": "e-1"}, 2) is not None
    names = {"resourceType": "Patient", "name": [{"given": ["A"]}]}
    assert check_resource(names, 4) is not None
    assert check_resource(names, 3) is None


def test_types_the_fast_path_leaves_to_the_models() -> None:
    for resource_type in ("Bundle", "Parameters", "Nope", "Pati ent", "Résumé", ""):
        assert check_resource({"resourceType": resource_type}, _LIMIT) is None
    assert check_resource({"resourceType": 1}, _LIMIT) is None
    assert check_resource([], _LIMIT) is None
    assert check_resource({}, _LIMIT) is None
