"""Tests of the simulated virtual ward."""

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.devices.simulated import CODES, UNITS, VirtualWard, WardConfig

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NUMERIC_CODES = {"9279-1", "59408-5", "8480-6", "8462-4", "8867-4", "8310-5"}
Item = dict[str, object]


def run(config: WardConfig, hours: float) -> list[Item]:
    return VirtualWard(config).readings(T0, T0 + timedelta(hours=hours))


@pytest.fixture(scope="module")
def twelve_hours() -> tuple[VirtualWard, list[Item]]:
    ward = VirtualWard(WardConfig(seed=0))
    return ward, ward.readings(T0, T0 + timedelta(hours=12))


def test_patient_ids_and_trends() -> None:
    ward = VirtualWard(WardConfig(patients=24))
    assert ward.patient_ids[0] == "ward-01"
    assert ward.patient_ids[-1] == "ward-24"
    assert len(set(ward.patient_ids)) == 24
    assert VirtualWard(WardConfig(patients=120)).patient_ids[0] == "ward-001"
    trends = list(ward.trends.values())
    assert trends.count("deteriorating") == 6
    assert trends.count("recovering") == 6
    assert trends.count("stable") == 12


def test_deterministic_by_seed() -> None:
    a = run(WardConfig(seed=7), 2)
    b = run(WardConfig(seed=7), 2)
    c = run(WardConfig(seed=8), 2)
    assert a == b
    assert a != c


def test_chunking_does_not_change_output() -> None:
    whole = run(WardConfig(seed=3), 3)
    ward = VirtualWard(WardConfig(seed=3))
    pieces = ward.advance(T0)
    now = T0
    while now < T0 + timedelta(hours=3):
        now = min(now + timedelta(seconds=137), T0 + timedelta(hours=3))
        pieces += ward.advance(now)
    assert pieces == whole
    assert ward.advance(now) == []
    assert ward.advance(now - timedelta(hours=1)) == []


def test_ids_unique(twelve_hours: tuple[VirtualWard, list[Item]]) -> None:
    _, items = twelve_hours
    ids = [x["id"] for x in items]
    assert len(ids) == len(set(ids))


def test_item_shape_codes_units(twelve_hours: tuple[VirtualWard, list[Item]]) -> None:
    ward, items = twelve_hours
    sources = dict(zip(ward.patient_ids, ward.monitor_ids, strict=True))
    assert {x["code"] for x in items} == set(CODES)
    for x in items:
        assert set(x) == {"id", "source", "patient", "code", "value", "unit", "time"}
        assert isinstance(x["id"], str)
        assert x["patient"] in sources
        assert x["source"] == sources[str(x["patient"])]
        assert x["unit"] == UNITS[str(x["code"])]
        assert isinstance(x["time"], str)
        assert ISO_Z.match(x["time"])
        value = x["value"]
        if x["code"] == "80288-4":
            assert value in {"A", "C", "V", "P", "U"}
            assert x["unit"] == "{score}"
        else:
            assert isinstance(value, float)
            assert np.isfinite(value)
    units = {x["code"]: x["unit"] for x in items}
    assert units["9279-1"] == "/min"
    assert units["59408-5"] == "%"
    assert units["8480-6"] == units["8462-4"] == "mm[Hg]"
    assert units["8310-5"] == "Cel"
    assert units["3150-0"] == "%"


def test_values_plausible_and_rounded(twelve_hours: tuple[VirtualWard, list[Item]]) -> None:
    _, items = twelve_hours
    ranges = {
        "9279-1": (4, 60),
        "59408-5": (50, 100),
        "8480-6": (50, 250),
        "8462-4": (25, 150),
        "8867-4": (25, 220),
        "8310-5": (33, 42.5),
        "3150-0": (21, 40),
    }
    for x in items:
        code = str(x["code"])
        if code in ranges:
            value = x["value"]
            assert isinstance(value, float)
            low, high = ranges[code]
            assert low <= value <= high
            if code == "8310-5":
                assert value == round(value, 1)
            else:
                assert value == round(value)


def test_times_monotone_and_bounded() -> None:
    ward = VirtualWard(WardConfig(seed=1, sample_interval_s=45.0))
    end = T0 + timedelta(minutes=61, seconds=30)
    first = ward.readings(T0, end)
    later_end = end + timedelta(minutes=30)
    second = ward.readings(T0, later_end)
    assert all(str(x["time"]) <= "2026-01-01T11:01:30.000Z" for x in first)
    assert all(str(x["time"]) <= "2026-01-01T11:31:30.000Z" for x in second)
    assert min(str(x["time"]) for x in first) == "2026-01-01T10:00:00.000Z"
    assert max(str(x["time"]) for x in first) < min(str(x["time"]) for x in second)
    per_patient: dict[object, list[str]] = defaultdict(list)
    for x in first + second:
        per_patient[x["patient"]].append(str(x["time"]))
    for times in per_patient.values():
        assert times == sorted(times)


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualWard().advance(datetime(2026, 1, 1))


def test_expected_count_one_hour() -> None:
    # Per patient in [T0, T0 + 1 h]: 61 ticks x (RR, SpO2, pulse) + 5 cuff readings x 2
    # + 2 rounds x (temperature, consciousness, FiO2) = 199, plus FiO2 changes.
    ward = VirtualWard(WardConfig(seed=0, dropout_probability=0.0))
    items = ward.readings(T0, T0 + timedelta(hours=1))
    by_code: dict[object, int] = defaultdict(int)
    for x in items:
        by_code[x["code"]] += 1
    assert by_code["9279-1"] == by_code["59408-5"] == by_code["8867-4"] == 24 * 61
    assert by_code["8480-6"] == by_code["8462-4"] == 24 * 5
    assert by_code["8310-5"] == by_code["80288-4"] == 24 * 2
    assert 24 * 2 <= by_code["3150-0"] <= 24 * 2 + 24
    with_dropout = run(WardConfig(seed=0), 1)
    assert len(with_dropout) == pytest.approx(24 * 199 * 0.98, rel=0.03)


def test_deteriorating_worse_than_recovering(
    twelve_hours: tuple[VirtualWard, list[Item]],
) -> None:
    ward, items = twelve_hours
    values: dict[tuple[str, object], list[float]] = defaultdict(list)
    for x in items:
        if str(x["time"]) >= "2026-01-01T19:00" and isinstance(x["value"], float):
            values[(ward.trends[str(x["patient"])], x["code"])].append(x["value"])

    def mean(trend: str, code: str) -> float:
        return float(np.mean(values[(trend, code)]))

    assert mean("deteriorating", "9279-1") > mean("recovering", "9279-1") + 5.0
    assert mean("deteriorating", "59408-5") < mean("recovering", "59408-5") - 1.0
    assert mean("deteriorating", "8867-4") > mean("recovering", "8867-4") + 10.0
    severity = {s.patient: s.severity for s in ward.state()}
    det = [severity[p] for p, t in ward.trends.items() if t == "deteriorating"]
    rec = [severity[p] for p, t in ward.trends.items() if t == "recovering"]
    assert min(det) > max(rec)


def test_consciousness_impaired_only_at_high_severity() -> None:
    ward = VirtualWard(WardConfig(seed=2))
    now = T0
    items = ward.advance(now)
    for _ in range(12 * 60):
        now += timedelta(minutes=1)
        severity = {s.patient: s.severity for s in ward.state()}
        for x in ward.advance(now):
            if x["code"] == "80288-4" and x["value"] != "A":
                assert severity[str(x["patient"])] > 0.65
            items.append(x)
    assert any(x["code"] == "80288-4" and x["value"] != "A" for x in items)


def test_dropout_rate() -> None:
    config = WardConfig(seed=4, dropout_probability=0.0, artifact_probability=0.0)
    complete = {str(x["id"]) for x in run(config, 12)}
    config = WardConfig(seed=4, dropout_probability=0.02, artifact_probability=0.0)
    sent = {str(x["id"]) for x in run(config, 12)}
    assert sent <= complete
    assert len(complete) > 50_000
    assert 1 - len(sent) / len(complete) == pytest.approx(0.02, abs=0.004)


def test_artifact_rate() -> None:
    clean = run(WardConfig(seed=5, artifact_probability=0.0), 12)
    noisy = run(WardConfig(seed=5, artifact_probability=0.005), 12)
    assert [x["id"] for x in clean] == [x["id"] for x in noisy]
    eligible = [(a, b) for a, b in zip(clean, noisy, strict=True) if a["code"] in NUMERIC_CODES]
    changed = [(a, b) for a, b in eligible if a["value"] != b["value"]]
    assert len(changed) / len(eligible) == pytest.approx(0.005, abs=0.0015)
    spo2 = [b["value"] for a, b in changed if b["code"] == "59408-5"]
    assert spo2
    assert all(isinstance(v, float) and 60 <= v <= 80 for v in spo2)
    for a, b in zip(clean, noisy, strict=True):
        if a["code"] not in NUMERIC_CODES:
            assert a == b


def test_oxygen_on_iff_low_spo2() -> None:
    ward = VirtualWard(WardConfig(seed=0))
    now = T0
    ward.advance(now)
    on_ticks = 0
    was_on = {p: False for p in ward.patient_ids}
    for _ in range(12 * 60):
        now += timedelta(minutes=1)
        ward.advance(now)
        for s in ward.state():
            on = s.fio2 > 21.0
            assert on == (s.spo2_on_air < 92.0 or (was_on[s.patient] and s.spo2_on_air < 94.0))
            if on:
                assert 28.0 <= s.fio2 <= 40.0
                assert s.spo2 > s.spo2_on_air
            else:
                assert s.spo2 == s.spo2_on_air
            was_on[s.patient] = on
            on_ticks += on
    assert on_ticks > 0


def test_oxygen_readings_follow_spo2(twelve_hours: tuple[VirtualWard, list[Item]]) -> None:
    # FiO2 is reported on every change, so the current FiO2 is known at each SpO2 reading.
    _, items = twelve_hours
    fio2: dict[object, float] = {}
    on_air: list[float] = []
    on_oxygen: list[float] = []
    for x in items:
        value = x["value"]
        assert isinstance(value, (float, str))
        if x["code"] == "3150-0":
            assert isinstance(value, float)
            fio2[x["patient"]] = value
        elif x["code"] == "59408-5" and x["patient"] in fio2:
            assert isinstance(value, float)
            (on_oxygen if fio2[x["patient"]] > 21.0 else on_air).append(value)
    assert on_oxygen
    assert on_air
    # On room air the monitor reads >= 92 % apart from noise and artifacts.
    assert np.mean(np.array(on_air) >= 90.0) > 0.99
    assert np.mean(on_oxygen) < np.mean(on_air)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patients": 0},
        {"deteriorating_fraction": 0.7, "recovering_fraction": 0.5},
        {"dropout_probability": 1.5},
        {"sample_interval_s": 0.0},
    ],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        WardConfig(**kwargs)  # type: ignore[arg-type]
