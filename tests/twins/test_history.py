"""NEWS2 over time from the store: equal to the live twin at every observation time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock, from_us, to_us
from medtwin.core.records import LOINC, Observation, ObservationStatus, Patient, QualityFlag
from medtwin.data.store import SqlStore
from medtwin.models.scores import ACVPU
from medtwin.twins.events import EventBus
from medtwin.twins.history import news2_series
from medtwin.twins.ingest import Ingestor
from medtwin.twins.runtime import TwinRuntime
from tests.twins.vitals import ACVPU_CODE, FIO2, HR, RR, SBP, SPO2, TEMP, UNITS

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
T0_US = to_us(T0)
S = 1_000_000
HOUR = 3600 * S

SIX = {RR: 22, SPO2: 95, FIO2: 21, SBP: 105, HR: 95, ACVPU_CODE: "A", TEMP: 38.2}


def iso(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def runtime(clock: FixedClock) -> TwinRuntime:
    return TwinRuntime(clock)


@pytest.fixture
def ingestor(store: SqlStore, runtime: TwinRuntime, clock: FixedClock) -> Ingestor:
    return Ingestor(store, runtime, EventBus(), clock)


class Live:
    """Feeds items batch by batch at their own time and records the live NEWS2 after each."""

    def __init__(self, ingestor: Ingestor, clock: FixedClock) -> None:
        self.ingestor = ingestor
        self.clock = clock
        self.n = 0
        self.scores: dict[str, dict[str, Any]] = {}

    def at(self, patient: str, time_us: int, values: dict[str, Any]) -> None:
        self.clock.set(from_us(time_us))
        items = []
        for code, value in values.items():
            self.n += 1
            items.append(
                {
                    "id": f"m{self.n}",
                    "source": "monitor",
                    "patient": patient,
                    "code": code,
                    "value": value,
                    "unit": UNITS.get(code, "1"),
                    "time": iso(time_us),
                }
            )
        results = self.ingestor.ingest(items)
        assert all(r.status == "stored" for r in results), results
        self.record(patient, time_us)

    def record(self, patient: str, time_us: int) -> None:
        result = self.ingestor.runtime.view(patient)["news2"]
        self.scores[iso(time_us)] = {
            "time": iso(time_us),
            "score": result["score"],
            "partial_score": result["partial_score"],
            "band": result["band"],
        }

    def series(self) -> list[dict[str, Any]]:
        return [self.scores[t] for t in sorted(self.scores)]


def test_series_equals_the_live_score(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore, runtime: TwinRuntime
) -> None:
    live = Live(ingestor, clock)
    live.at("p1", T0_US, SIX)
    live.at("p1", T0_US + 10 * 60 * S, {HR: 135, RR: 26})
    live.at("p1", T0_US + 50 * 60 * S, {SPO2: 91, FIO2: 35})
    live.at("p1", T0_US + 61 * 60 * S, {HR: 80})  # RR, SBP, ACVPU, temp of 08:00 aged out
    live.at("p1", T0_US + 70 * 60 * S, {SBP: 95, ACVPU_CODE: "V", TEMP: 35.0, RR: 12})
    live.at("p1", T0_US + 4 * HOUR, {HR: 60})  # everything else aged out
    live.at("p1", T0_US + 4 * HOUR + S, {**SIX, HR: 60})
    series = news2_series(
        store, "p1", start_us=T0_US, end_us=T0_US + 5 * HOUR, window_us=runtime.window_us
    )
    assert series == live.series()
    scores = [point["score"] for point in series]
    assert scores[0] == 6
    assert scores[3] is None
    assert scores[5] is None
    assert scores[6] == 5


def test_series_equals_the_live_score_for_a_random_course(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore, runtime: TwinRuntime
) -> None:
    rng = np.random.default_rng(3)
    live = Live(ingestor, clock)
    time_us = T0_US
    for _ in range(60):
        time_us += int(rng.choice([30, 300, 900, 2400, 4000])) * S
        codes = [c for c in SIX if rng.random() < 0.5] or [HR]
        values: dict[str, Any] = {
            RR: int(rng.integers(6, 32)),
            SPO2: int(rng.integers(85, 101)),
            FIO2: int(rng.choice([21, 21, 30, 45])),
            SBP: int(rng.integers(85, 230)),
            HR: int(rng.integers(38, 140)),
            ACVPU_CODE: str(rng.choice(list(ACVPU))),
            TEMP: round(float(rng.uniform(34.8, 39.6)), 1),
        }
        live.at("p1", time_us, {c: values[c] for c in codes})
    series = news2_series(store, "p1", start_us=T0_US, end_us=time_us, window_us=runtime.window_us)
    assert len(series) == 60
    assert series == live.series()
    assert {p["score"] is None for p in series} == {True, False}


def test_series_on_scale_2(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore, runtime: TwinRuntime
) -> None:
    live = Live(ingestor, clock)
    runtime.add("p1", spo2_scale=2)
    live.at("p1", T0_US, {**SIX, SPO2: 97, FIO2: 40})
    live.at("p1", T0_US + 60 * S, {SPO2: 90, FIO2: 21})
    series = news2_series(
        store,
        "p1",
        start_us=T0_US,
        end_us=T0_US + HOUR,
        window_us=runtime.window_us,
        spo2_scale=2,
    )
    assert series == live.series()
    assert [p["score"] for p in series] == [10, 5]


def test_series_respects_the_window_parameter(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore
) -> None:
    live = Live(ingestor, clock)
    live.at("p1", T0_US, SIX)
    live.at("p1", T0_US + 20 * 60 * S, {HR: 95})
    args: dict[str, Any] = {"start_us": T0_US, "end_us": T0_US + HOUR}
    wide = news2_series(store, "p1", window_us=HOUR, **args)
    narrow = news2_series(store, "p1", window_us=10 * 60 * S, **args)
    assert [p["score"] for p in wide] == [6, 6]
    assert [p["score"] for p in narrow] == [6, None]
    assert narrow[1]["partial_score"] == 1  # only the fresh pulse
    # Exactly window old is still in the window, as in the live twin.
    assert [p["score"] for p in news2_series(store, "p1", window_us=20 * 60 * S, **args)] == [6, 6]


def test_series_respects_start_and_end(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore
) -> None:
    live = Live(ingestor, clock)
    live.at("p1", T0_US, SIX)
    for minutes in (10, 20, 30):
        live.at("p1", T0_US + minutes * 60 * S, {HR: 95 + minutes})
    series = news2_series(
        store, "p1", start_us=T0_US + 15 * 60 * S, end_us=T0_US + 25 * 60 * S, window_us=HOUR
    )
    # Only the 08:20 point, scored with the 08:00 values from before the start.
    assert series == [
        {"time": "2026-01-01T08:20:00Z", "score": 7, "partial_score": 7, "band": "high"}
    ]
    assert series == [live.scores["2026-01-01T08:20:00Z"]]


def test_series_max_points_keeps_the_newest(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore
) -> None:
    live = Live(ingestor, clock)
    for minutes in range(10):
        live.at("p1", T0_US + minutes * 60 * S, SIX)
    series = news2_series(
        store, "p1", start_us=T0_US, end_us=T0_US + HOUR, window_us=HOUR, max_points=3
    )
    assert [p["time"] for p in series] == [iso(T0_US + m * 60 * S) for m in (7, 8, 9)]


def test_series_pages_through_long_histories(store: SqlStore) -> None:
    store.add_patients([Patient("p1", "pt-1")])
    observations = [
        Observation("m", f"id{i}", "p1", LOINC, HR, 60.0 + i % 50, None, "/min", T0_US + i * S)
        for i in range(10_050)
    ]
    store.append(observations, received_us=T0_US)
    series = news2_series(
        store, "p1", start_us=T0_US, end_us=T0_US + 3 * HOUR, window_us=HOUR, max_points=20_000
    )
    assert len(series) == 10_050
    assert series[-1]["partial_score"] == 1  # 60 + 10049 % 50 = 109 /min


def test_series_without_data(ingestor: Ingestor, clock: FixedClock, store: SqlStore) -> None:
    args: dict[str, Any] = {"start_us": T0_US, "end_us": T0_US + HOUR, "window_us": HOUR}
    assert news2_series(store, "nobody", **args) == []
    live = Live(ingestor, clock)
    live.at("p1", T0_US, {"2339-0": 120})  # glucose: no NEWS2 input
    assert news2_series(store, "p1", **args) == []
    live.at("p1", T0_US + 2 * HOUR, {HR: 70})  # after the range
    assert news2_series(store, "p1", **args) == []


def test_series_of_a_single_parameter(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore
) -> None:
    live = Live(ingestor, clock)
    live.at("p1", T0_US, {HR: 135})
    series = news2_series(store, "p1", start_us=T0_US, end_us=T0_US + HOUR, window_us=HOUR)
    assert series == [{"time": iso(T0_US), "score": None, "partial_score": 3, "band": None}]


def _append_and_observe(
    store: SqlStore, runtime: TwinRuntime, observations: Sequence[Observation]
) -> None:
    patients = sorted({o.patient for o in observations if o.patient not in runtime})
    store.append(
        observations, received_us=T0_US, new_patients=[Patient(p, f"pt-{p}") for p in patients]
    )
    runtime.observe(observations)


def test_series_skips_what_the_live_twin_skips(
    store: SqlStore, runtime: TwinRuntime, clock: FixedClock
) -> None:
    def hr(i: int, value: float, at: int, **kw: Any) -> Observation:
        return Observation(
            "m", f"x{i}", "p1", kw.pop("system", LOINC), HR, value, None, "/min", at, **kw
        )

    live: list[dict[str, Any]] = []
    batches = [
        # 08:00 a good pulse, 95 /min (1 point)
        [hr(1, 95, T0_US)],
        # 08:01 the same code from another system: unmapped, not a pulse
        [hr(2, 150, T0_US + 60 * S, system="urn:other", flags=int(QualityFlag.UNMAPPED))],
        # 08:02 a pulse entered in error
        [hr(3, 150, T0_US + 120 * S, status=ObservationStatus.ENTERED_IN_ERROR.value)],
        # 08:03 a suspected artifact: not scored, the 08:00 pulse stays in use
        [hr(4, 150, T0_US + 180 * S, flags=int(QualityFlag.ARTIFACT_SUSPECTED))],
        # 08:04 a good pulse again, 135 /min (3 points)
        [hr(5, 135, T0_US + 240 * S)],
    ]
    for batch in batches:
        clock.set(from_us(batch[0].effective_us))
        _append_and_observe(store, runtime, batch)
        result = runtime.view("p1")["news2"]
        live.append(
            {
                "time": iso(clock.now_us()),
                "score": result["score"],
                "partial_score": result["partial_score"],
                "band": result["band"],
            }
        )
    series = news2_series(
        store, "p1", start_us=T0_US, end_us=T0_US + HOUR, window_us=runtime.window_us
    )
    assert [p["partial_score"] for p in live] == [1, 1, 1, 1, 3]
    by_time = {p["time"]: p for p in live}
    assert series == [by_time[p["time"]] for p in series]
    assert [p["partial_score"] for p in series] == [1, 1, 3]


def test_series_ignores_a_registered_code_of_another_system(
    ingestor: Ingestor, clock: FixedClock, store: SqlStore, runtime: TwinRuntime
) -> None:
    live = Live(ingestor, clock)
    live.at("p1", T0_US, SIX)
    clock.set(from_us(T0_US + 60 * S))
    [result] = ingestor.ingest(
        [
            {
                "id": "other-1",
                "source": "lab",
                "patient": "p1",
                "system": "urn:local",
                "code": HR,
                "value": 150,
                "unit": "/min",
                "time": iso(T0_US + 60 * S),
            }
        ]
    )
    assert result.flags == ("unmapped",)
    assert runtime.view("p1")["news2"]["score"] == 6
    series = news2_series(
        store, "p1", start_us=T0_US, end_us=T0_US + HOUR, window_us=runtime.window_us
    )
    assert series == live.series()
    assert [p["score"] for p in series] == [6]
