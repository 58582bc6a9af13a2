"""Reading device messages: every fault is a clean rejection naming its field."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.devices.mqtt.payload import (
    DeviceIntervention,
    DeviceObservation,
    PayloadRejection,
    parse_message,
)

OBS = "medtwin/devices/d1/observations"
INT = "medtwin/devices/d1/interventions"
GOOD = {
    "code": "8867-4",
    "value": 72,
    "unit": "/min",
    "time": "2026-01-01T10:00:00Z",
    "boot_id": "b7",
    "seq": 3,
}


def _parse(document: object, topic: str = OBS) -> object:
    return parse_message(topic, json.dumps(document).encode())


def test_observation_becomes_an_item_with_a_deterministic_id() -> None:
    reading = _parse(GOOD)
    assert isinstance(reading, DeviceObservation)
    assert reading.item("p1") == {
        "id": "b7.3",
        "source": "d1",
        "patient": "p1",
        "code": "8867-4",
        "value": 72,
        "unit": "/min",
        "time": "2026-01-01T10:00:00Z",
    }


def test_intervention() -> None:
    reading = _parse(
        {
            "kind": "drug",
            "amount": 1000,
            "unit": "mg",
            "time": "2026-01-01T10:00:00+01:00",
            "duration_s": 1800,
            "drug": "paracetamol",
            "route": "IV",
            "boot_id": "b",
            "seq": 0,
        },
        INT,
    )
    assert isinstance(reading, DeviceIntervention)
    assert (reading.kind, reading.amount, reading.duration_s, reading.reading_id) == (
        "drug",
        1000.0,
        1800.0,
        "b.0",
    )


def test_faults_name_their_field() -> None:
    cases = [
        ({**GOOD, "seq": -1}, "seq"),
        ({**GOOD, "seq": True}, "seq"),
        ({**GOOD, "boot_id": "a.b"}, "boot_id"),
        ({**GOOD, "time": "2026-01-01T10:00:00"}, "time"),
        ({**GOOD, "colour": "red"}, "colour"),
        ({k: v for k, v in GOOD.items() if k != "value"}, "value"),
        ({**GOOD, "code": 5}, "code"),
    ]
    for document, field in cases:
        rejection = _parse(document)
        assert isinstance(rejection, PayloadRejection), document
        assert rejection.location == f"{OBS}: {field}"
    bolus = {"kind": "insulin", "amount": 1, "unit": "U", "time": GOOD["time"]}
    rejection = _parse({**bolus, "boot_id": "b", "seq": 1}, INT)
    assert isinstance(rejection, PayloadRejection)
    assert rejection.field == "kind"
    rejection = _parse({**bolus, "kind": "drug", "boot_id": "b", "seq": 1}, INT)
    assert isinstance(rejection, PayloadRejection)
    assert rejection.field == "drug"


def test_whole_message_faults() -> None:
    for topic, payload in [
        (OBS, b"\xff\xfe"),
        (OBS, b"[1, 2]"),
        (OBS, b"[" * 100_000),
        (OBS, b"1" * 10_000),
        ("medtwin/devices/d 1/observations", json.dumps(GOOD).encode()),
        ("medtwin/devices/d1/other", json.dumps(GOOD).encode()),
        (OBS, b"x" * 100_000),
    ]:
        rejection = parse_message(topic, payload)
        assert isinstance(rejection, PayloadRejection)
        assert rejection.field == ""
        assert "\x00" not in rejection.raw


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=512), interventions=st.booleans())
def test_arbitrary_bytes_never_crash(payload: bytes, interventions: bool) -> None:
    result = parse_message(INT if interventions else OBS, payload)
    assert isinstance(result, (DeviceObservation, DeviceIntervention, PayloadRejection))


@settings(max_examples=300, deadline=None)
@given(
    document=st.dictionaries(
        st.sampled_from([*GOOD, "kind", "amount", "duration_s", "drug", "route", "system"]),
        _json,
    ),
    interventions=st.booleans(),
)
def test_arbitrary_json_objects_never_crash(
    document: dict[str, object], interventions: bool
) -> None:
    payload = json.dumps(document).encode()
    result = parse_message(INT if interventions else OBS, payload)
    assert isinstance(result, (DeviceObservation, DeviceIntervention, PayloadRejection))
    if isinstance(result, PayloadRejection):
        assert result.reason
