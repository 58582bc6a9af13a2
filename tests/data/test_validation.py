"""Validation of observation items: every kind of bad input, conversions, flags, properties."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.core.clock import FixedClock, to_us
from medtwin.core.records import LOINC, Observation, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, VITAL_SIGNS
from medtwin.data.validation import (
    DEFAULT_MAX_FUTURE_US,
    FIELDS,
    REQUIRED,
    Rejection,
    parse_time_us,
    validate_items,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NOW_US = to_us(NOW)
T_TEXT = "2026-01-01T11:00:00Z"
T_US = to_us(datetime(2026, 1, 1, 11, 0, tzinfo=UTC))
DROP = object()  # marks a field to leave out of an item

NUMERIC_SPECS = [spec for spec in VITAL_SIGNS if spec.numeric]


def item(**fields: Any) -> dict[str, Any]:
    """A valid respiratory-rate item with ``fields`` replaced (``DROP`` removes one)."""
    base: dict[str, Any] = {
        "id": "msg-1",
        "source": "monitor-7",
        "patient": "p1",
        "code": "9279-1",
        "value": 18,
        "unit": "/min",
        "time": T_TEXT,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not DROP}


def check(entry: Any, *, now_us: int = NOW_US, **kwargs: Any) -> Observation | Rejection:
    """The one outcome of validating ``entry`` alone."""
    result = validate_items([entry], now_us=now_us, **kwargs)
    assert len(result.accepted) + len(result.rejected) == 1
    if result.accepted:
        index, obs = result.accepted[0]
        assert index == 0
        return obs
    return result.rejected[0]


def accepted(entry: Any, **kwargs: Any) -> Observation:
    outcome = check(entry, **kwargs)
    assert isinstance(outcome, Observation), outcome
    return outcome


def rejected(entry: Any, field: str, **kwargs: Any) -> Rejection:
    outcome = check(entry, **kwargs)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.field == field, outcome
    assert outcome.index == 0
    assert outcome.item is entry
    assert outcome.reason
    expected = f"observations[0].{field}" if field else "observations[0]"
    assert outcome.location() == expected
    return outcome


# -- accepted items -------------------------------------------------------------


def test_valid_item_becomes_an_observation() -> None:
    obs = accepted(item())
    assert obs == Observation(
        source="monitor-7",
        source_id="msg-1",
        patient="p1",
        system=LOINC,
        code="9279-1",
        value_num=18.0,
        value_text=None,
        unit="/min",
        effective_us=T_US,
        status="final",
        version=1,
        flags=0,
    )
    assert type(obs.value_num) is float


def test_explicit_loinc_system_and_float_value() -> None:
    obs = accepted(item(system=LOINC, value=17.5))
    assert obs.system == LOINC
    assert obs.value_num == 17.5


def test_time_offset_is_converted_to_utc() -> None:
    obs = accepted(item(time="2026-01-01T13:00:00+02:00"))
    assert obs.effective_us == T_US
    obs = accepted(item(time="2026-01-01T11:00:00.250000+00:00"))
    assert obs.effective_us == T_US + 250_000


def test_empty_batch() -> None:
    result = validate_items([], now_us=NOW_US)
    assert result.accepted == []
    assert result.rejected == []


# -- structure ------------------------------------------------------------------


@pytest.mark.parametrize("entry", [[], ["a"], "item", 7, 1.5, None, True], ids=repr)
def test_not_an_object(entry: Any) -> None:
    rejection = rejected(entry, "")
    assert "JSON object" in rejection.reason


def test_unknown_field() -> None:
    rejection = rejected(item(colour="red"), "colour")
    assert "unknown field 'colour'" in rejection.reason


def test_unknown_fields_name_the_first_in_order() -> None:
    rejected(item(zeta=1, alpha=2), "alpha")


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_required_field(name: str) -> None:
    rejection = rejected(item(**{name: DROP}), name)
    assert f"missing required field {name!r}" in rejection.reason


@pytest.mark.parametrize("name", REQUIRED)
def test_null_required_field(name: str) -> None:
    rejection = rejected(item(**{name: None}), name)
    assert "missing" in rejection.reason


def test_every_required_field_is_a_known_field() -> None:
    assert set(REQUIRED) <= FIELDS
    assert FIELDS - set(REQUIRED) == {"unit", "system", "status", "version"}


def test_a_correction_is_a_new_version_with_its_status() -> None:
    obs = check(item(status="corrected", version=2))
    assert isinstance(obs, Observation)
    assert (obs.status, obs.version) == ("corrected", 2)
    plain = check(item())
    assert isinstance(plain, Observation)
    assert (plain.status, plain.version) == ("final", 1)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"status": "draft"}, "status"), ({"version": 0}, "version"), ({"version": "2"}, "version"),
     ({"version": True}, "version")],
)  # fmt: skip
def test_bad_status_or_version_is_rejected(change: dict[str, Any], field: str) -> None:
    fault = check(item(**change))
    assert isinstance(fault, Rejection)
    assert fault.field == field


# -- field types ----------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, [18], {"v": 18}, "18", "eighteen"], ids=repr)
def test_numeric_code_needs_a_number(value: Any) -> None:
    rejection = rejected(item(value=value), "value")
    assert "must be a number" in rejection.reason


@pytest.mark.parametrize("name", ["id", "source", "code"])
@pytest.mark.parametrize(
    "bad", [5, 1.5, True, ["a"], {"a": 1}, "", "x" * 257, "a\x00b", "a\ud800"], ids=repr
)
def test_text_fields_must_be_bounded_strings(name: str, bad: Any) -> None:
    rejection = rejected(item(**{name: bad}), name)
    assert "must" in rejection.reason


@pytest.mark.parametrize("name", ["id", "source", "code"])
def test_text_fields_may_be_256_characters(name: str) -> None:
    entry = item(**{name: "x" * 256})
    obs = accepted(entry)
    assert "x" * 256 in obs


@pytest.mark.parametrize(
    "patient",
    ["", "p 1", "p/1", "p1\n", "-p1", ".p1", "_p1", "pätient", "p;1", "x" * 65, 7, ["p1"], True],
    ids=repr,
)
def test_bad_patient_ids(patient: Any) -> None:
    rejection = rejected(item(patient=patient), "patient")
    assert "1-64 characters" in rejection.reason


@pytest.mark.parametrize("patient", ["p", "P1", "ward-3.bed_12", "0", "x" * 64])
def test_good_patient_ids(patient: str) -> None:
    assert accepted(item(patient=patient)).patient == patient


@pytest.mark.parametrize(
    "system", ["", 5, "x" * 257, ["http://loinc.org"], None, "a\x00"], ids=repr
)
def test_bad_system(system: Any) -> None:
    rejected(item(system=system), "system")


@pytest.mark.parametrize("unit", [5, ["/min"], "x" * 257, "/min\x00"], ids=repr)
def test_unit_must_be_a_string(unit: Any) -> None:
    rejected(item(unit=unit), "unit")


# -- units and limits -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("9279-1", "mm[Hg]"),
        ("9279-1", ""),
        ("9279-1", "/MIN"),
        ("8310-5", "degF"),
        ("8310-5", "[degC]"),
        ("8480-6", "Pa"),
        ("2339-0", "mmol"),
        ("59408-5", "1"),
    ],
)
def test_unit_not_fitting_a_registered_code(code: str, unit: str) -> None:
    rejection = rejected(item(code=code, unit=unit, value=50), "unit")
    assert f"does not fit code {code}" in rejection.reason


def test_unit_missing_or_null_is_the_empty_unit() -> None:
    rejected(item(unit=DROP), "unit")
    rejected(item(unit=None), "unit")
    assert accepted(item(code="80288-4", value="A", unit=DROP)).unit == ""
    assert accepted(item(code="80288-4", value="A", unit=None)).unit == ""


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=repr)
@pytest.mark.parametrize("code", ["9279-1", "99999-9"])
def test_values_must_be_finite(code: str, value: float) -> None:
    rejection = rejected(item(code=code, value=value), "value")
    assert "finite" in rejection.reason


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), 2**1024, 10**5000], ids=["1e400", "-1e400", "2^1024", "1e5000"]
)
@pytest.mark.parametrize("code", ["9279-1", "99999-9"])
def test_integers_beyond_float_range_are_rejected(code: str, value: int) -> None:
    rejection = rejected(item(code=code, value=value), "value")
    assert "finite" in rejection.reason


@pytest.mark.parametrize("spec", NUMERIC_SPECS, ids=lambda s: s.code)
def test_hard_limits_on_both_sides(spec: Any) -> None:
    low, high = spec.hard
    for value in (low - 0.001, high + 0.001, low - 1000, high * 10 + 1):
        rejection = rejected(item(code=spec.code, unit=spec.unit, value=value), "value")
        assert "impossible" in rejection.reason
    for value in (low, high):
        obs = accepted(item(code=spec.code, unit=spec.unit, value=value))
        assert obs.value_num == value


@pytest.mark.parametrize("spec", NUMERIC_SPECS, ids=lambda s: s.code)
def test_soft_limits_flag_out_of_range(spec: Any) -> None:
    (hard_low, hard_high), (soft_low, soft_high) = spec.hard, spec.soft
    inside = (soft_low + soft_high) / 2
    assert accepted(item(code=spec.code, unit=spec.unit, value=inside)).flags == 0
    for edge in (soft_low, soft_high):
        assert accepted(item(code=spec.code, unit=spec.unit, value=edge)).flags == 0
    outside = [
        v
        for v in ((hard_low + soft_low) / 2, (soft_high + hard_high) / 2)
        if not soft_low <= v <= soft_high
    ]
    assert outside or (hard_low, hard_high) == (soft_low, soft_high)
    for value in outside:
        obs = accepted(item(code=spec.code, unit=spec.unit, value=value))
        assert obs.flags == QualityFlag.OUT_OF_RANGE
        assert QualityFlag.names_of(obs.flags) == ["out-of-range"]


def test_soft_limit_uses_the_converted_value() -> None:
    # 104 °F = 40 °C: within the soft limits; 109.4 °F = 43 °C: beyond them.
    assert accepted(item(code="8310-5", unit="[degF]", value=104)).flags == 0
    obs = accepted(item(code="8310-5", unit="[degF]", value=109.4))
    assert obs.flags == QualityFlag.OUT_OF_RANGE
    # 212 °F = 100 °C: beyond the hard limits after conversion.
    rejected(item(code="8310-5", unit="[degF]", value=212), "value")


# -- conversions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "unit", "value", "canonical_unit", "expected"),
    [
        ("8310-5", "[degF]", 98.6, "Cel", 37.0),
        ("8310-5", "[degF]", 104, "Cel", 40.0),
        ("8310-5", "[degF]", 95, "Cel", 35.0),
        ("8310-5", "K", 310.15, "Cel", 37.0),
        ("8310-5", "K", 308.15, "Cel", 35.0),
        ("8480-6", "kPa", 16, "mm[Hg]", 16 * 7.500616827),
        ("8462-4", "kPa", 10.5, "mm[Hg]", 10.5 * 7.500616827),
        ("2339-0", "mmol/L", 5.5, "mg/dL", 99.088),
        ("2339-0", "mmol/L", 10, "mg/dL", 180.16),
        ("9279-1", "{breaths}/min", 18, "/min", 18.0),
        ("8867-4", "{beats}/min", 72, "/min", 72.0),
    ],
)
def test_unit_conversion(
    code: str, unit: str, value: float, canonical_unit: str, expected: float
) -> None:
    obs = accepted(item(code=code, unit=unit, value=value))
    assert obs.unit == canonical_unit
    assert obs.value_num == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert obs.value_text is None


# -- coded values -------------------------------------------------------------------


@pytest.mark.parametrize("level", ["A", "C", "V", "P", "U"])
@pytest.mark.parametrize("unit", ["", "1", "{score}"])
def test_acvpu_values(level: str, unit: str) -> None:
    obs = accepted(item(code="80288-4", value=level, unit=unit))
    assert obs.value_text == level
    assert obs.value_num is None
    assert obs.unit == ""
    assert obs.flags == 0


@pytest.mark.parametrize("value", ["a", "X", "Alert", "", 1, 1.0, True, ["A"]], ids=repr)
def test_acvpu_bad_values(value: Any) -> None:
    rejection = rejected(item(code="80288-4", value=value, unit=""), "value")
    assert "one of A, C, V, P, U" in rejection.reason


def test_acvpu_bad_unit() -> None:
    rejection = rejected(item(code="80288-4", value="A", unit="/min"), "unit")
    assert "coded value" in rejection.reason


# -- unmapped codes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "value_num", "value_text"),
    [
        (3.5, 3.5, None),
        (7, 7.0, None),
        (-1e300, -1e300, None),
        (0, 0.0, None),
        ("positive", None, "positive"),
        ("", None, ""),
        ("x" * 256, None, "x" * 256),
    ],
    ids=repr,
)
def test_unmapped_codes_are_stored_flagged(
    value: Any, value_num: float | None, value_text: str | None
) -> None:
    obs = accepted(item(code="12345-6", value=value, unit="mg"))
    assert obs.code == "12345-6"
    assert obs.value_num == value_num
    assert obs.value_text == value_text
    assert obs.unit == "mg"  # kept as sent: there is nothing to convert to
    assert obs.flags == QualityFlag.UNMAPPED
    assert QualityFlag.names_of(obs.flags) == ["unmapped"]


def test_registered_code_in_another_system_is_unmapped() -> None:
    snomed = "http://snomed.info/sct"
    # 500 /min would be impossible for LOINC 9279-1; here it is someone else's code.
    obs = accepted(item(system=snomed, value=500, unit="whatever"))
    assert obs.system == snomed
    assert obs.flags == QualityFlag.UNMAPPED
    assert obs.value_num == 500.0


def test_unmapped_codes_need_no_unit() -> None:
    obs = accepted(item(code="12345-6", value="positive", unit=DROP))
    assert obs.unit == ""


@pytest.mark.parametrize("value", [True, [1], {"a": 1}, "x" * 257, "a\x00", "\udc80"], ids=repr)
def test_unmapped_codes_still_reject_bad_values(value: Any) -> None:
    rejected(item(code="12345-6", value=value), "value")


# -- time ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["yesterday", "", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", "01/01/2026 10:00", "\x00"],
    ids=repr,
)
def test_unparseable_time(text: str) -> None:
    rejection = rejected(item(time=text), "time")
    assert "unparseable time" in rejection.reason


@pytest.mark.parametrize("value", [1767261600, 1.5, True, ["2026-01-01T11:00:00Z"]], ids=repr)
def test_time_must_be_a_string(value: Any) -> None:
    rejection = rejected(item(time=value), "time")
    assert "ISO 8601 string" in rejection.reason


@pytest.mark.parametrize("text", ["2026-01-01T11:00:00", "2026-01-01", "2026-01-01 11:00"])
def test_time_without_zone(text: str) -> None:
    rejection = rejected(item(time=text), "time")
    assert "timezone" in rejection.reason


def test_future_limit_is_five_minutes_inclusive() -> None:
    clock = FixedClock(NOW)
    at_limit = (NOW + timedelta(minutes=5)).isoformat()
    beyond = (NOW + timedelta(minutes=5, microseconds=1)).isoformat()
    obs = accepted(item(time=at_limit), now_us=clock.now_us())
    assert obs.effective_us == NOW_US + DEFAULT_MAX_FUTURE_US
    rejection = rejected(item(time=beyond), "time", now_us=clock.now_us())
    assert "300 s ahead of the clock" in rejection.reason
    # The limit follows the clock.
    clock.advance(1e-6)
    accepted(item(time=beyond), now_us=clock.now_us())


def test_future_limit_can_be_changed() -> None:
    ahead = (NOW + timedelta(seconds=10)).isoformat()
    rejected(item(time=ahead), "time", max_future_us=0)
    accepted(item(time=NOW.isoformat()), max_future_us=0)


def test_past_times_are_accepted() -> None:
    assert accepted(item(time="1999-12-31T23:59:59Z")).effective_us < NOW_US


def test_parse_time_us() -> None:
    assert parse_time_us("1970-01-01T00:00:00Z") == 0
    assert parse_time_us("1970-01-01T01:00:00.000001+01:00") == 1
    with pytest.raises(ValueError, match="timezone"):
        parse_time_us("1970-01-01T00:00:00")


# -- batches and locations ------------------------------------------------------


def test_batch_keeps_indices_and_locations() -> None:
    batch = [
        item(id="a"),
        item(id="b", value="fast"),
        "not an item",
        item(id="d", unit="kPa"),
        item(id="e", code="80288-4", value="V", unit=""),
        item(id="f", patient="bad patient"),
    ]
    result = validate_items(batch, now_us=NOW_US)
    assert [(i, obs.source_id) for i, obs in result.accepted] == [(0, "a"), (4, "e")]
    assert [(r.index, r.field) for r in result.rejected] == [
        (1, "value"),
        (2, ""),
        (3, "unit"),
        (5, "patient"),
    ]
    assert [r.location() for r in result.rejected] == [
        "observations[1].value",
        "observations[2]",
        "observations[3].unit",
        "observations[5].patient",
    ]
    assert result.rejected[0].location("items") == "items[1].value"
    assert all(r.item is batch[r.index] for r in result.rejected)


def test_first_fault_wins() -> None:
    # Field order: structure, id, source, patient, code, system, unit, time, value.
    entry = item(id=5, patient="bad patient", value="x")
    rejected(entry, "id")
    rejected(item(patient="bad patient", time="never", value="x"), "patient")
    rejected(item(time="never", value="x"), "time")


def test_rejection_is_json_serialisable_information() -> None:
    rejection = rejected(item(value=500), "value")
    assert rejection.reason == "500 /min is impossible for 9279-1 (limits 0-100)"
    json.dumps({"location": rejection.location(), "reason": rejection.reason})


# -- properties ------------------------------------------------------------------


def storable(text: str) -> bool:
    """Whether both stores can keep ``text`` (UTF-8 encodable, no NUL for PostgreSQL)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


_huge_ints = st.sampled_from([10**400, -(10**400), 2**1024, -(2**1024)])
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | _huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_like = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_units = sorted({unit for spec in VITAL_SIGNS for unit in spec.units})
_codes = [spec.code for spec in VITAL_SIGNS]
_zones = st.sampled_from(["Z", "+00:00", "+02:00", "-05:30", "+14:00", ""])
_times = st.builds(
    lambda moment, zone: moment.isoformat() + zone,
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2026, 1, 1, 12, 10)),
    _zones,
)

# Items close to valid, so that every branch of the checks is reached.
plausible_item = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8) | json_like,
        "source": st.sampled_from(["monitor-1", "lab"]) | json_like,
        "patient": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,8}", fullmatch=True) | json_like,
        "code": st.sampled_from([*_codes, "12345-6"]) | json_like,
        "value": st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(min_value=-(10**310), max_value=10**310)
        | _huge_ints
        | st.sampled_from(["A", "C", "V", "P", "U", "x"])
        | json_like,
        "time": _times | json_like,
    },
    optional={
        "unit": st.sampled_from(_units) | json_like,
        "system": st.sampled_from([LOINC, "http://snomed.info/sct"]) | json_like,
        "extra": json_like,
    },
)

batches = st.lists(plausible_item | json_like, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_validation_never_raises_and_answers_every_item(items: list[Any]) -> None:
    now_us = NOW_US
    result = validate_items(items, now_us=now_us)
    indices = sorted([i for i, _ in result.accepted] + [r.index for r in result.rejected])
    assert indices == list(range(len(items)))
    for rejection in result.rejected:
        assert rejection.reason
        assert rejection.item is items[rejection.index]
        rejection.location()
    for index, obs in result.accepted:
        assert isinstance(items[index], dict)
        for text in (obs.source, obs.source_id, obs.patient, obs.system, obs.code, obs.unit):
            assert storable(text)
        assert obs.value_text is None or storable(obs.value_text)
        assert obs.effective_us <= now_us + DEFAULT_MAX_FUTURE_US
        spec = DEFAULT_REGISTRY.get(obs.code, obs.system)
        if obs.value_num is not None:
            assert type(obs.value_num) is float
            assert math.isfinite(obs.value_num)
        if spec is None:
            assert obs.flags == QualityFlag.UNMAPPED
            continue
        assert obs.unit == spec.unit
        assert not obs.flags & QualityFlag.UNMAPPED
        if spec.numeric:
            assert obs.value_num is not None
            low, high = spec.hard
            assert low <= obs.value_num <= high
            soft_low, soft_high = spec.soft
            outside = not soft_low <= obs.value_num <= soft_high
            assert bool(obs.flags & QualityFlag.OUT_OF_RANGE) == outside
        else:
            assert obs.value_text in spec.values


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(NUMERIC_SPECS).flatmap(
        lambda spec: st.tuples(
            st.just(spec),
            st.sampled_from(sorted(spec.units)),
            st.floats(allow_nan=True, allow_infinity=True)
            | st.integers(min_value=-(10**6), max_value=10**6),
        )
    )
)
def test_accepted_numbers_are_within_hard_limits(case: tuple[Any, str, float]) -> None:
    spec, unit, value = case
    outcome = check(item(code=spec.code, unit=unit, value=value))
    canonical = spec.to_canonical(float(value), unit) if math.isfinite(float(value)) else None
    if isinstance(outcome, Observation):
        assert outcome.value_num is not None
        assert math.isfinite(outcome.value_num)
        low, high = spec.hard
        assert low <= outcome.value_num <= high
        assert outcome.value_num == canonical
    else:
        assert outcome.field == "value"
        assert canonical is None or not spec.hard[0] <= canonical <= spec.hard[1]
