"""The twin runtime: newest values, NEWS2 windows, flags, change detection and scale."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock, to_us
from medtwin.core.records import LOINC, Observation, ObservationStatus, QualityFlag
from medtwin.models.scores import ACVPU, PARAMETERS, news2
from medtwin.twins.runtime import TwinRuntime
from tests.twins.vitals import ACVPU_CODE, FIO2, GLUCOSE, HR, RR, SBP, SPO2, TEMP, UNITS

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0_US = to_us(T0)
S = 1_000_000  # µs per second


Vitals = dict[str, float | str]

# A complete vital set scoring 0 on every parameter.
CALM: Vitals = {RR: 16.0, SPO2: 98.0, FIO2: 21.0, SBP: 120.0, HR: 70.0, ACVPU_CODE: "A", TEMP: 37.0}
# A complete vital set with a known score: 2 + 1 + 0 + 1 + 1 + 0 + 1 = 6, medium.
SIX: Vitals = {RR: 22.0, SPO2: 95.0, FIO2: 21.0, SBP: 105.0, HR: 95.0, ACVPU_CODE: "A", TEMP: 38.2}

_ids = iter(range(10**9))


def obs(
    patient: str,
    code: str,
    value: float | str,
    *,
    at: int = T0_US,
    flags: int = 0,
    status: str = ObservationStatus.FINAL.value,
    system: str = LOINC,
    unit: str | None = None,
) -> Observation:
    text = value if isinstance(value, str) else None
    number = None if isinstance(value, str) else float(value)
    return Observation(
        "test",
        f"id-{next(_ids)}",
        patient,
        system,
        code,
        number,
        text,
        UNITS.get(code, "1") if unit is None else unit,
        at,
        status,
        1,
        flags,
    )


def vital_set(
    patient: str, values: dict[str, float | str], *, at: int = T0_US
) -> list[Observation]:
    return [obs(patient, code, value, at=at) for code, value in values.items()]


def direct_news2(
    values: dict[str, float | str], *, scale: int = 1, ignored: Sequence[str] = ()
) -> dict[str, object]:
    """NEWS2 of one vital set by calling news2() directly (``ignored``: parameters whose
    newest reading the twin held back as a suspected artifact)."""

    def arg(code: str) -> list[float]:
        value = values.get(code, np.nan)
        return [float(ACVPU.index(value)) if isinstance(value, str) else float(value)]

    return news2(
        respiration_rate=arg(RR),
        spo2=arg(SPO2),
        fio2=arg(FIO2),
        systolic_bp=arg(SBP),
        pulse=arg(HR),
        consciousness=arg(ACVPU_CODE),
        temperature=arg(TEMP),
        spo2_scale=scale,
    ).result(0) | {"ignored": list(ignored)}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def runtime(clock: FixedClock) -> TwinRuntime:
    return TwinRuntime(clock)


def score_of(runtime: TwinRuntime, patient: str) -> Any:
    return runtime.view(patient)["news2"]["score"]


# -- newest values ------------------------------------------------------------


def test_first_observation_creates_the_twin(runtime: TwinRuntime) -> None:
    assert "p1" not in runtime
    update = runtime.observe([obs("p1", HR, 72)])
    assert "p1" in runtime
    assert len(runtime) == 1
    assert list(update.rows) == [0]
    assert runtime.view("p1")["vitals"][HR] == {
        "value": 72.0,
        "unit": "/min",
        "time": "2026-01-01T12:00:00Z",
        "flags": [],
    }


def test_newer_value_replaces_older(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", HR, 72, at=T0_US - 60 * S)])
    runtime.observe([obs("p1", HR, 90, at=T0_US)])
    assert runtime.view("p1")["vitals"][HR]["value"] == 90.0


def test_older_reading_after_newer_does_not_overwrite(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", HR, 90, at=T0_US)])
    runtime.observe([obs("p1", HR, 72, at=T0_US - 60 * S)])
    vital = runtime.view("p1")["vitals"][HR]
    assert vital["value"] == 90.0
    assert vital["time"] == "2026-01-01T12:00:00Z"


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]])
def test_newest_in_a_batch_wins_regardless_of_order(runtime: TwinRuntime, order: list[int]) -> None:
    readings = [
        obs("p1", HR, 70, at=T0_US - 20 * S),
        obs("p1", HR, 80, at=T0_US - 10 * S),
        obs("p1", HR, 100, at=T0_US - 15 * S),
    ]
    others = [obs("p2", HR, 50 + i, at=T0_US - i * S) for i in range(3)]
    runtime.observe([readings[i] for i in order] + [others[i] for i in order])
    assert runtime.view("p1")["vitals"][HR]["value"] == 80.0
    assert runtime.view("p2")["vitals"][HR]["value"] == 50.0


def test_batch_older_than_held_value_is_ignored(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", HR, 90, at=T0_US)])
    runtime.observe([obs("p1", HR, 60, at=T0_US - 2 * S), obs("p1", HR, 61, at=T0_US - S)])
    assert runtime.view("p1")["vitals"][HR]["value"] == 90.0


def test_codes_are_independent(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", HR, 90, at=T0_US), obs("p1", RR, 18, at=T0_US - 300 * S)])
    vitals = runtime.view("p1")["vitals"]
    assert vitals[HR]["value"] == 90.0
    assert vitals[RR]["value"] == 18.0
    assert vitals[RR]["time"] == "2026-01-01T11:55:00Z"


# -- NEWS2 --------------------------------------------------------------------


@pytest.mark.parametrize("values", [CALM, SIX, {**SIX, FIO2: 35.0, ACVPU_CODE: "C", TEMP: 35.0}])
def test_news2_matches_news2_called_directly(runtime: TwinRuntime, values: dict[str, Any]) -> None:
    runtime.observe(vital_set("p1", values))
    assert runtime.view("p1")["news2"] == direct_news2(values)


def test_news2_of_known_vital_set(runtime: TwinRuntime) -> None:
    runtime.observe(vital_set("p1", SIX))
    result = runtime.view("p1")["news2"]
    assert result["score"] == 6
    assert result["band"] == "medium"
    assert result["missing"] == []


def test_incomplete_set_has_null_score_and_partial(runtime: TwinRuntime) -> None:
    partial = {code: value for code, value in SIX.items() if code != TEMP}
    runtime.observe(vital_set("p1", partial))
    result = runtime.view("p1")["news2"]
    assert result["score"] is None
    assert result["band"] is None
    assert result["partial_score"] == 5
    assert result["missing"] == ["temperature"]
    assert result == direct_news2(partial)


def test_acvpu_values(runtime: TwinRuntime) -> None:
    for i, letter in enumerate(ACVPU):
        runtime.observe(vital_set(f"p{i}", {**CALM, ACVPU_CODE: letter}))
    for i, letter in enumerate(ACVPU):
        view = runtime.view(f"p{i}")
        assert view["vitals"][ACVPU_CODE]["value"] == letter
        assert view["news2"]["subscores"]["consciousness"] == (0 if letter == "A" else 3)
        assert view["news2"]["score"] == (0 if letter == "A" else 3)


def test_newer_acvpu_replaces_older(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", ACVPU_CODE, "A", at=T0_US - 60 * S)])
    runtime.observe([obs("p1", ACVPU_CODE, "V")])
    assert runtime.view("p1")["vitals"][ACVPU_CODE]["value"] == "V"


# -- the NEWS2 window -----------------------------------------------------------


def test_values_older_than_the_default_window_drop_out(
    runtime: TwinRuntime, clock: FixedClock
) -> None:
    runtime.observe(vital_set("p1", SIX))
    clock.advance(3600)  # exactly one hour old: still in the window
    assert score_of(runtime, "p1") == 6
    clock.advance(1)
    result = runtime.view("p1")["news2"]
    assert result["score"] is None
    assert result["partial_score"] == 0
    assert result["missing"] == list(PARAMETERS)
    # The value itself is still shown, only no longer scored.
    assert runtime.view("p1")["vitals"][HR]["value"] == 95.0


def test_custom_window(clock: FixedClock) -> None:
    runtime = TwinRuntime(clock, news2_window_s=600)
    runtime.observe(vital_set("p1", SIX, at=T0_US - 500 * S))
    assert score_of(runtime, "p1") == 6
    clock.advance(101)
    assert score_of(runtime, "p1") is None


def test_only_the_stale_parameter_goes_missing(runtime: TwinRuntime, clock: FixedClock) -> None:
    runtime.observe(vital_set("p1", SIX, at=T0_US - 50 * 60 * S))
    runtime.observe([obs("p1", code, SIX[code]) for code in SIX if code != TEMP])
    clock.advance(11 * 60)
    result = runtime.view("p1")["news2"]
    assert result["missing"] == ["temperature"]
    assert result["partial_score"] == 5


def test_refresh_reports_twins_whose_values_age_out(
    runtime: TwinRuntime, clock: FixedClock
) -> None:
    runtime.observe(vital_set("old", SIX, at=T0_US - 50 * 60 * S))
    runtime.observe(vital_set("new", SIX))
    first = runtime.refresh()
    assert not first.changed.any()  # observe() already recorded these scores
    clock.advance(11 * 60)
    update = runtime.refresh()
    changed = [runtime.patient_ids[row] for row in update.rows[update.changed]]
    assert changed == ["old"]
    assert update.at_us == clock.now_us()
    assert not runtime.refresh().changed.any()  # reported once
    clock.advance(50 * 60)
    update = runtime.refresh()
    assert [runtime.patient_ids[row] for row in update.rows[update.changed]] == ["new"]


def test_refresh_without_twins(runtime: TwinRuntime) -> None:
    update = runtime.refresh()
    assert len(update.rows) == 0
    assert not update.changed.any()
    assert runtime.summaries() == []


def test_view_does_not_consume_a_change(runtime: TwinRuntime, clock: FixedClock) -> None:
    runtime.observe(vital_set("p1", SIX))
    clock.advance(3601)
    assert score_of(runtime, "p1") is None  # view scores without committing
    assert runtime.summaries()[0]["news2"]["score"] is None
    assert runtime.refresh().changed.tolist() == [True]


# -- flags, status, unmapped codes ------------------------------------------------


def test_unmapped_codes_are_listed_and_not_scored(runtime: TwinRuntime) -> None:
    unmapped = int(QualityFlag.UNMAPPED)
    runtime.observe(
        [
            *vital_set("p1", SIX),
            obs("p1", "12345-6", 4.2, flags=unmapped, unit="mmol/L"),
            obs("p1", "local-note", "restless", flags=unmapped, system="urn:ward"),
            # A registered code from another system is a different code: unmapped.
            obs("p1", HR, 150, flags=unmapped, system="urn:other", at=T0_US + S),
        ]
    )
    view = runtime.view("p1")
    assert view["news2"] == direct_news2(SIX)
    assert view["vitals"][HR]["value"] == 95.0
    assert "12345-6" not in view["vitals"]
    other = sorted(view["other"], key=lambda o: o["code"])
    assert other == [
        {
            "system": LOINC,
            "code": "12345-6",
            "value": 4.2,
            "unit": "mmol/L",
            "time": "2026-01-01T12:00:00Z",
            "flags": ["unmapped"],
        },
        {
            "system": "urn:other",
            "code": HR,
            "value": 150.0,
            "unit": "/min",
            "time": "2026-01-01T12:00:01Z",
            "flags": ["unmapped"],
        },
        {
            "system": "urn:ward",
            "code": "local-note",
            "value": "restless",
            "unit": "1",
            "time": "2026-01-01T12:00:00Z",
            "flags": ["unmapped"],
        },
    ]


def test_unmapped_keeps_the_newest_per_code(runtime: TwinRuntime) -> None:
    unmapped = int(QualityFlag.UNMAPPED)
    runtime.observe([obs("p1", "x-1", 2, flags=unmapped, at=T0_US)])
    runtime.observe([obs("p1", "x-1", 1, flags=unmapped, at=T0_US - S)])
    runtime.observe([obs("p1", "x-1", 3, flags=unmapped, at=T0_US + S)])
    assert [o["value"] for o in runtime.view("p1")["other"]] == [3.0]


def test_registered_code_without_news2_role_is_shown_not_scored(runtime: TwinRuntime) -> None:
    runtime.observe([*vital_set("p1", SIX), obs("p1", GLUCOSE, 540)])
    view = runtime.view("p1")
    assert view["vitals"][GLUCOSE]["value"] == 540.0
    assert view["news2"] == direct_news2(SIX)


def test_entered_in_error_is_ignored(runtime: TwinRuntime) -> None:
    runtime.observe(vital_set("p1", SIX))
    runtime.observe(
        [obs("p1", HR, 180, at=T0_US + S, status=ObservationStatus.ENTERED_IN_ERROR.value)]
    )
    view = runtime.view("p1")
    assert view["vitals"][HR]["value"] == 95.0
    assert view["news2"]["score"] == 6


def test_entered_in_error_alone_still_creates_the_twin(runtime: TwinRuntime) -> None:
    runtime.observe([obs("p1", HR, 180, status=ObservationStatus.ENTERED_IN_ERROR.value)])
    assert "p1" in runtime
    assert runtime.view("p1")["vitals"] == {}


def test_artifact_suspected_values_are_ignored_for_news2(runtime: TwinRuntime) -> None:
    artifact = int(QualityFlag.ARTIFACT_SUSPECTED)
    without_hr = {code: value for code, value in SIX.items() if code != HR}
    runtime.observe([*vital_set("p1", without_hr), obs("p1", HR, 250, flags=artifact)])
    view = runtime.view("p1")
    assert view["news2"] == direct_news2(without_hr, ignored=["pulse"])
    assert view["news2"]["missing"] == ["pulse"]
    assert view["vitals"][HR] == {
        "value": 250.0,
        "unit": "/min",
        "time": "2026-01-01T12:00:00Z",
        "flags": ["artifact-suspected"],
    }


def test_an_artifact_leaves_the_last_good_value_in_use_and_is_shown(
    runtime: TwinRuntime, clock: FixedClock
) -> None:
    artifact = int(QualityFlag.ARTIFACT_SUSPECTED)
    runtime.observe(vital_set("p1", SIX))
    before = runtime.view("p1")["news2"]
    clock.advance(60)
    runtime.observe([obs("p1", SPO2, 60, at=T0_US + 60_000_000, flags=artifact)])
    view = runtime.view("p1")
    assert view["news2"] == before | {"ignored": ["spo2"]}  # the burst changes no score
    assert view["vitals"][SPO2]["value"] == SIX[SPO2]
    assert view["vitals"][SPO2]["artifact"] == {
        "value": 60.0,
        "time": "2026-01-01T12:01:00Z",
        "flags": ["artifact-suspected"],
    }
    clock.advance(60)
    runtime.observe([obs("p1", SPO2, 97, at=T0_US + 120_000_000)])
    view = runtime.view("p1")
    assert "artifact" not in view["vitals"][SPO2]  # a newer good reading replaces it
    assert view["news2"]["ignored"] == []


def test_other_flags_are_scored(runtime: TwinRuntime) -> None:
    flags = int(QualityFlag.OUT_OF_RANGE | QualityFlag.SMOOTHED | QualityFlag.CALIBRATED)
    runtime.observe([o._replace(flags=flags) for o in vital_set("p1", SIX)])
    view = runtime.view("p1")
    assert view["news2"]["score"] == 6
    assert view["vitals"][HR]["flags"] == ["out-of-range", "calibrated", "smoothed"]


# -- SpO2 scale -------------------------------------------------------------------


def test_set_spo2_scale_switches_scoring(runtime: TwinRuntime) -> None:
    on_oxygen = {**CALM, SPO2: 97.0, FIO2: 35.0}
    runtime.observe(vital_set("p1", on_oxygen))
    view = runtime.view("p1")
    assert view["spo2_scale"] == 1
    assert view["news2"]["subscores"]["spo2"] == 0
    assert view["news2"]["score"] == 2  # on oxygen

    update = runtime.set_spo2_scale("p1", 2)
    assert update.changed.tolist() == [True]
    assert update.news2.result(0) == direct_news2(on_oxygen, scale=2)
    view = runtime.view("p1")
    assert view["spo2_scale"] == 2
    assert view["news2"]["subscores"]["spo2"] == 3  # Scale 2, >= 97 % on oxygen
    assert view["news2"]["score"] == 5

    assert runtime.set_spo2_scale("p1", 2).changed.tolist() == [False]
    assert runtime.set_spo2_scale("p1", 1).changed.tolist() == [True]
    assert score_of(runtime, "p1") == 2


def test_scale_given_on_add_is_used(runtime: TwinRuntime) -> None:
    runtime.add("p1", spo2_scale=2)
    runtime.observe(vital_set("p1", {**CALM, SPO2: 90.0}))  # Scale 2, air: 88-92 scores 0
    view = runtime.view("p1")
    assert view["spo2_scale"] == 2
    assert view["news2"] == direct_news2({**CALM, SPO2: 90.0}, scale=2)
    assert view["news2"]["subscores"]["spo2"] == 0


def test_set_spo2_scale_of_unknown_patient(runtime: TwinRuntime) -> None:
    with pytest.raises(KeyError):
        runtime.set_spo2_scale("nobody", 2)


# -- change detection ------------------------------------------------------------


def test_changed_mask(runtime: TwinRuntime) -> None:
    first = runtime.observe(vital_set("p1", SIX) + vital_set("p2", CALM))
    assert first.changed.tolist() == [True, True]

    # p1 identical again, p2 with a new score.
    update = runtime.observe([*vital_set("p1", SIX), obs("p2", RR, 26, at=T0_US + S)])
    assert [runtime.patient_ids[r] for r in update.rows] == ["p1", "p2"]
    assert update.changed.tolist() == [False, True]

    # A newer value that leaves NEWS2 as it was is not a change.
    update = runtime.observe([obs("p1", HR, 96, at=T0_US + S)])
    assert update.changed.tolist() == [False]

    # A sub-score that changes while the total stays is a change.
    update = runtime.observe(
        [obs("p1", HR, 115, at=T0_US + 2 * S), obs("p1", SBP, 120, at=T0_US + 2 * S)]
    )
    assert update.changed.tolist() == [True]
    assert update.news2.result(0)["score"] == 6


def test_changed_only_for_touched_twins(runtime: TwinRuntime) -> None:
    runtime.observe(vital_set("p1", SIX) + vital_set("p2", CALM) + vital_set("p3", CALM))
    update = runtime.observe([obs("p2", HR, 130, at=T0_US + S)])
    assert update.rows.tolist() == [1]
    assert update.changed.tolist() == [True]


def test_events_of_an_update(runtime: TwinRuntime) -> None:
    update = runtime.observe(vital_set("p1", SIX) + vital_set("p2", CALM))
    events = runtime.events(update)
    assert [e["patient"] for e in events] == ["p1", "p2"]
    assert all(e["type"] == "twin.updated" for e in events)
    assert events[0]["news2"] == direct_news2(SIX)
    assert events[0]["time"] == "2026-01-01T12:00:00Z"
    update = runtime.observe([*vital_set("p1", SIX), obs("p2", RR, 26, at=T0_US + S)])
    assert [e["patient"] for e in runtime.events(update, only_changed=True)] == ["p2"]


# -- scale of a ward ---------------------------------------------------------------


def test_capacity_grows_beyond_64_patients(runtime: TwinRuntime) -> None:
    for i in range(500):
        runtime.observe(vital_set(f"p{i}", {**CALM, HR: 40.0 + i % 100}))
    assert len(runtime) == 500
    for i in (0, 63, 64, 65, 127, 128, 255, 256, 499):
        view = runtime.view(f"p{i}")
        assert view["vitals"][HR]["value"] == 40.0 + i % 100
        assert view["news2"] == direct_news2({**CALM, HR: 40.0 + i % 100})
    assert len(runtime.summaries()) == 500


def test_growth_keeps_scales_and_change_state(runtime: TwinRuntime) -> None:
    runtime.add("first", spo2_scale=2)
    runtime.observe(vital_set("first", CALM))
    for i in range(200):
        runtime.add(f"p{i}")
    assert runtime.view("first")["spo2_scale"] == 2
    assert runtime.observe(vital_set("first", CALM)).changed.tolist() == [False]


def _random_ward(n: int, seed: int = 7) -> tuple[list[Observation], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    observations: list[Observation] = []
    sets: list[dict[str, Any]] = []
    for i in range(n):
        values: dict[str, Any] = {
            RR: float(rng.integers(5, 35)),
            SPO2: float(rng.integers(80, 101)),
            FIO2: float(rng.choice([21.0, 21.0, 28.0, 40.0])),
            SBP: float(rng.integers(80, 230)),
            HR: float(rng.integers(35, 140)),
            ACVPU_CODE: str(rng.choice(list(ACVPU), p=[0.8, 0.05, 0.05, 0.05, 0.05])),
            TEMP: round(float(rng.uniform(34.5, 40.0)), 1),
        }
        if i % 10 == 0:  # some incomplete sets
            del values[TEMP]
        sets.append(values)
        observations += vital_set(f"w{i}", values, at=T0_US - int(rng.integers(0, 600)) * S)
    order = rng.permutation(len(observations))
    return [observations[i] for i in order], sets


def test_one_batch_scores_a_whole_ward(runtime: TwinRuntime) -> None:
    observations, sets = _random_ward(2000)
    scales = [2 if i % 7 == 0 else 1 for i in range(2000)]
    for i, scale in enumerate(scales):
        runtime.add(f"w{i}", spo2_scale=scale)
    update = runtime.observe(observations)
    assert len(update.rows) == 2000
    assert update.changed.all()
    by_patient = {runtime.patient_ids[row]: i for i, row in enumerate(update.rows)}
    for i, values in enumerate(sets):
        assert update.news2.result(by_patient[f"w{i}"]) == direct_news2(values, scale=scales[i])
    scores = np.asarray(update.news2.score)
    assert (scores[[by_patient[f"w{i}"] for i in range(0, 2000, 10)]] == -1).all()
    assert (scores >= 0).sum() == 1800


def test_batch_equals_patient_by_patient(clock: FixedClock) -> None:
    observations, _ = _random_ward(300, seed=11)
    batch = TwinRuntime(clock)
    batch.observe(observations)
    single = TwinRuntime(clock)
    for patient in sorted({o.patient for o in observations}):
        single.observe([o for o in observations if o.patient == patient])
    assert len(batch) == len(single) == 300
    for patient in single.patient_ids:
        assert batch.view(patient) == single.view(patient)


def test_corrections_replace_and_entered_in_error_retracts() -> None:
    clock = FixedClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    runtime = TwinRuntime(clock)
    at = clock.now_us() - 60_000_000
    first = Observation("m", "hr-1", "p1", LOINC, HR, 150.0, None, "/min", at)
    runtime.observe([first])
    assert runtime.view("p1")["vitals"][HR]["value"] == 150.0
    corrected = first._replace(value_num=75.0, status="corrected", version=2)
    runtime.observe([corrected])
    assert runtime.view("p1")["vitals"][HR]["value"] == 75.0
    runtime.observe([first._replace(status="entered-in-error", version=3)])
    assert HR not in runtime.view("p1")["vitals"]


def test_merge_folds_the_prior_twin_into_the_survivor_and_keeps_rows_dense() -> None:
    clock = FixedClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    runtime = TwinRuntime(clock)
    now = clock.now_us()

    def reading(patient: str, code: str, value: float, minutes_ago: int) -> Observation:
        at = now - minutes_ago * 60_000_000
        return Observation("m", f"{patient}-{code}", patient, LOINC, code, value, None, "", at)

    runtime.observe(
        [
            reading("old", HR, 90.0, 1),  # newer than the survivor's heart rate
            reading("old", RR, 30.0, 30),  # older than the survivor's respiration rate
            reading("new", HR, 70.0, 10),
            reading("new", RR, 16.0, 5),
            reading("other", HR, 60.0, 1),
        ]
    )
    runtime.merge("old", "new")
    assert "old" not in runtime
    assert len(runtime) == 2
    vitals = runtime.view("new")["vitals"]
    assert (vitals[HR]["value"], vitals[RR]["value"]) == (90.0, 16.0)
    assert runtime.view("other")["vitals"][HR]["value"] == 60.0  # moved row intact
    # A survivor not seen before takes the prior twin over whole.
    runtime.merge("other", "brand-new")
    assert runtime.view("brand-new")["vitals"][HR]["value"] == 60.0
    assert sorted(runtime.patient_ids) == ["brand-new", "new"]


# -- NEWS2 kept for twins whose inputs did not change ------------------------------


def _scored_from_scratch(runtime: TwinRuntime, clock: FixedClock) -> dict[str, Any]:
    """Each twin's NEWS2 now, by a fresh runtime fed the twin's held values (scored anew)."""
    fresh = TwinRuntime(clock)
    readings: list[Observation] = []
    for row, patient in enumerate(runtime.patient_ids):
        fresh.add(patient, spo2_scale=int(runtime.attribute(np.array([row]), "spo2_scale")[0]))
        for code, held in runtime.vitals(row).items():  # (no artifacts in these tests)
            at = to_us(datetime.fromisoformat(held["time"]))
            readings.append(obs(patient, code, held["value"], at=at))
    fresh.observe(readings)
    return {patient: fresh.view(patient)["news2"] for patient in fresh.patient_ids}


def test_rescoring_unchanged_twins_equals_scoring_them_anew(clock: FixedClock) -> None:
    runtime = TwinRuntime(clock)
    observations, _ = _random_ward(40, seed=3)
    runtime.observe(observations)
    # Every twin touched; a few get new NEWS2 inputs, the rest a glucose or unmapped value.
    batch: list[Observation] = []
    for i, patient in enumerate(list(runtime.patient_ids)):
        if i % 9 == 0:
            batch.append(obs(patient, HR, 125, at=T0_US + S))
        elif i % 2:
            batch.append(obs(patient, GLUCOSE, 110, at=T0_US + S))
        else:
            batch.append(obs(patient, "99999-9", 1, at=T0_US + S, flags=QualityFlag.UNMAPPED))
    runtime.set_spo2_scale(runtime.patient_ids[5], 2)
    update = runtime.observe(batch)
    expected = _scored_from_scratch(runtime, clock)
    got = {runtime.patient_ids[row]: update.news2.result(i) for i, row in enumerate(update.rows)}
    assert got == expected
    assert update.changed.tolist() == [i % 9 == 0 for i in range(40)]
    # Values age out of the window: the same inputs no more, scored anew.
    clock.advance(3000)
    update = runtime.observe([obs(p, GLUCOSE, 120, at=T0_US + 2 * S) for p in runtime.patient_ids])
    got = {runtime.patient_ids[row]: update.news2.result(i) for i, row in enumerate(update.rows)}
    assert got == _scored_from_scratch(runtime, clock)
    # A merge moves the last row into the prior twin's: its kept inputs move with it.
    runtime.merge(runtime.patient_ids[0], runtime.patient_ids[1])
    update = runtime.observe([obs(p, GLUCOSE, 130, at=T0_US + 3 * S) for p in runtime.patient_ids])
    got = {runtime.patient_ids[row]: update.news2.result(i) for i, row in enumerate(update.rows)}
    assert got == _scored_from_scratch(runtime, clock)
    assert not update.changed.any()
