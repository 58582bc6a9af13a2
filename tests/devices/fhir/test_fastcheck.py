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
