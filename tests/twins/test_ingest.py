"""The ingestion path end to end on a real SQLite store: results, quarantine, twins, events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from medtwin.core.clock import FixedClock, to_us
from medtwin.core.records import LOINC
from medtwin.data.store import SqlStore
from medtwin.twins.events import Event, EventBus
from medtwin.twins.ingest import IngestMetrics, Ingestor, IngestResult
from medtwin.twins.runtime import TwinRuntime
from tests.twins.vitals import ACVPU_CODE, FIO2, HR, RR, SBP, SPO2, TEMP

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0_US = to_us(T0)
T_TEXT = "2026-01-01T11:59:00Z"
T_US = T0_US - 60_000_000


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "msg-1",
        "source": "monitor-7",
        "patient": "p1",
        "code": RR,
        "value": 18,
        "unit": "/min",
        "time": T_TEXT,
    }
    base.update(fields)
    return base


def vital_items(
    patient: str, *, time: str = T_TEXT, override: dict[str, tuple[Any, str]] | None = None
) -> list[dict[str, Any]]:
    """A complete NEWS2 vital set: RR 22, SpO2 95 on air, SBP 105, HR 95, A, 38.2 Cel.

    ``override`` maps codes to other (value, unit) pairs.
    """
    values: dict[str, tuple[Any, str]] = {
        RR: (22, "/min"),
        SPO2: (95, "%"),
        FIO2: (21, "%"),
        SBP: (105, "mm[Hg]"),
        HR: (95, "/min"),
        ACVPU_CODE: ("A", ""),
        TEMP: (38.2, "Cel"),
    }
    values.update(override or {})
    return [
        {
            "id": f"v-{patient}-{code}",
            "source": "monitor-7",
            "patient": patient,
            "code": code,
            "value": value,
            "unit": unit,
            "time": time,
        }
        for code, (value, unit) in values.items()
    ]


class RecordingBus(EventBus):
    """A real event bus that also remembers every batch it was asked to publish."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[list[Event]] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.published.append(list(events))
        super().publish(events)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def ingestor(store: SqlStore, clock: FixedClock, bus: RecordingBus) -> Ingestor:
    return Ingestor(store, TwinRuntime(clock), bus, clock)


def listen(bus: EventBus) -> list[Event]:
    received: list[Event] = []
    bus.listen(received.extend)
    return received


# -- per-item results ------------------------------------------------------------


def test_results_per_item_in_order(ingestor: Ingestor) -> None:
    results = ingestor.ingest(
        [
            item(),
            item(id="msg-2", code="99999-9", value=4.2, unit="mmol/L"),
            item(),  # the same item again
            item(value=19),  # same (source, id), other content
            item(id="msg-5", value="fast"),
            "not an object",
            item(id="msg-7", code=HR, value=400),
        ]
    )
    assert results == [
        IngestResult(0, "msg-1", "stored"),
        IngestResult(1, "msg-2", "stored", ("unmapped",)),
        IngestResult(2, "msg-1", "duplicate"),
        IngestResult(3, "msg-1", "conflict"),
        IngestResult(
            4,
            "msg-5",
            "rejected",
            reason="value of 9279-1 must be a number, got a string",
            field="value",
            location="observations[4].value",
        ),
        IngestResult(
            5,
            None,
            "rejected",
            reason="item must be a JSON object, got a string",
            field=None,
            location="observations[5]",
        ),
        IngestResult(
            6,
            "msg-7",
            "rejected",
            reason="400 /min is impossible for 8867-4 (limits 0-350)",
            field="value",
            location="observations[6].value",
        ),
    ]
    assert results[4].as_json() == {
        "index": 4,
        "id": "msg-5",
        "status": "rejected",
        "reason": "value of 9279-1 must be a number, got a string",
        "field": "value",
        "location": "observations[4].value",
    }
    assert results[1].as_json() == {
        "index": 1,
        "id": "msg-2",
        "status": "stored",
        "flags": ["unmapped"],
    }


def test_out_of_range_is_stored_with_its_flag(ingestor: Ingestor) -> None:
    [result] = ingestor.ingest([item(code=HR, value=240)])
    assert result.status == "stored"
    assert result.flags == ("out-of-range",)


def test_repeats_across_batches(ingestor: Ingestor, store: SqlStore) -> None:
    assert ingestor.ingest([item()])[0].status == "stored"
    assert ingestor.ingest([item()])[0].status == "duplicate"
    assert ingestor.ingest([item(value=30)])[0].status == "conflict"
    assert store.count("observations") == 1
    [stored] = store.history("p1").items
    assert stored.observation.value_num == 18.0


def test_duplicates_are_stored_once(ingestor: Ingestor, store: SqlStore) -> None:
    ingestor.ingest([item(), item(), item(id="msg-2"), item(id="msg-2")])
    ingestor.ingest([item(), item(id="msg-2")])
    assert store.count("observations") == 2
    assert [s.observation.source_id for s in store.history("p1").items] == ["msg-1", "msg-2"]


def test_quarantine_holds_rejections_and_conflicts(ingestor: Ingestor, store: SqlStore) -> None:
    bad = item(id="msg-5", value="fast")
    ingestor.ingest([item(), bad, item(value=19), [1, 2]], channel="cli")
    entries = {e.location: e for e in store.quarantined()}
    assert set(entries) == {
        "observations[1].value",
        "observations[3]",
        "source=monitor-7 id=msg-1",
    }

    rejected = entries["observations[1].value"]
    assert rejected.reason == "value of 9279-1 must be a number, got a string"
    assert json.loads(rejected.payload) == bad
    assert rejected.channel == "cli"
    assert rejected.source == "monitor-7"
    assert rejected.received_us == T0_US

    not_object = entries["observations[3]"]
    assert json.loads(not_object.payload) == [1, 2]
    assert not_object.source is None

    conflict = entries["source=monitor-7 id=msg-1"]
    assert conflict.reason.startswith("conflict")
    assert json.loads(conflict.payload)["value_num"] == 19.0
    assert conflict.channel == "cli"
    assert conflict.received_us == T0_US
    assert store.count("observations") == 1


def test_batch_of_only_rejections_is_quarantined(ingestor: Ingestor, store: SqlStore) -> None:
    results = ingestor.ingest([item(time="yesterday"), item(id="x", patient="bad patient")])
    assert [r.field for r in results] == ["time", "patient"]
    assert store.count("observations") == 0
    assert len(store.quarantined()) == 2
    assert len(ingestor.runtime) == 0


# -- patients ----------------------------------------------------------------------


def test_patients_are_created_on_first_sight(
    ingestor: Ingestor, store: SqlStore, clock: FixedClock
) -> None:
    ingestor.ingest([item(patient="p2"), item(id="msg-2", patient="p1")])
    patients = {p.id: p for p in store.patients()}
    assert set(patients) == {"p1", "p2"}
    for patient in patients.values():
        assert patient.pseudonym.startswith("pt-")
        assert len(patient.pseudonym) == len("pt-") + 16
        assert patient.pseudonym != patient.id
        assert patient.created_us == T0_US
        assert patient.spo2_scale == 1
    assert patients["p1"].pseudonym != patients["p2"].pseudonym
    assert "p1" in ingestor.runtime
    assert "p2" in ingestor.runtime

    clock.advance(60)
    ingestor.ingest([item(id="msg-3", patient="p1", time="2026-01-01T12:00:30Z")])
    assert store.patient("p1") == patients["p1"]  # not created again


def test_no_patient_for_a_rejected_item(ingestor: Ingestor, store: SqlStore) -> None:
    ingestor.ingest([item(patient="p9", value=-5)])
    assert store.patients() == []
    assert "p9" not in ingestor.runtime


# -- twins and events ---------------------------------------------------------------


def test_no_events_without_subscribers(ingestor: Ingestor, bus: RecordingBus) -> None:
    ingestor.ingest(vital_items("p1"))
    assert bus.published == []
    assert ingestor.refresh() == 0
    assert bus.published == []


def test_events_reach_a_listener(ingestor: Ingestor, bus: RecordingBus) -> None:
    received = listen(bus)
    ingestor.ingest(vital_items("p1") + vital_items("p2", override={HR: (130, "/min")}))
    assert [e["patient"] for e in received] == ["p1", "p2"]
    event = received[0]
    assert set(event) == {"type", "patient", "time", "spo2_scale", "vitals", "other", "news2"}
    assert event["type"] == "twin.updated"
    assert event["time"] == "2026-01-01T12:00:00Z"
    assert event["spo2_scale"] == 1
    assert event["vitals"][HR] == {
        "value": 95.0,
        "unit": "/min",
        "time": "2026-01-01T11:59:00Z",
        "flags": [],
    }
    assert event["other"] == []
    assert set(event["news2"]) == {
        "score",
        "partial_score",
        "band",
        "subscores",
        "missing",
        "ignored",
    }
    assert received[1]["news2"]["subscores"]["pulse"] == 2
    assert event == {"type": "twin.updated", **ingestor.runtime.view("p1")}
    json.dumps(received)  # JSON-ready


def test_no_event_for_a_batch_that_stores_nothing(ingestor: Ingestor, bus: RecordingBus) -> None:
    received = listen(bus)
    ingestor.ingest([item(value="fast")])
    assert received == []
    ingestor.ingest([item()])
    received.clear()
    ingestor.ingest([item()])  # duplicate: nothing new for the twins
    assert received == []


def test_unmapped_values_reach_the_twin_view(ingestor: Ingestor, bus: RecordingBus) -> None:
    received = listen(bus)
    ingestor.ingest([item(code="99999-9", value=4.2, unit="mmol/L")])
    [event] = received
    assert event["vitals"] == {}
    assert event["other"] == [
        {
            "system": LOINC,
            "code": "99999-9",
            "value": 4.2,
            "unit": "mmol/L",
            "time": "2026-01-01T11:59:00Z",
            "flags": ["unmapped"],
        },
    ]
    assert event["news2"]["score"] is None


def test_refresh_publishes_only_changed_twins(
    ingestor: Ingestor, bus: RecordingBus, clock: FixedClock
) -> None:
    ingestor.ingest(vital_items("old", time="2026-01-01T11:10:00Z"))
    ingestor.ingest(vital_items("new", time="2026-01-01T12:00:00Z"))
    received = listen(bus)
    assert ingestor.refresh() == 0
    assert received == []

    clock.advance(15 * 60)  # the "old" set is now 65 minutes old
    assert ingestor.refresh() == 1
    [event] = received
    assert event["patient"] == "old"
    assert event["news2"]["score"] is None
    assert event["news2"]["missing"] == [
        "respiration_rate",
        "spo2",
        "air_or_oxygen",
        "systolic_bp",
        "pulse",
        "consciousness",
        "temperature",
    ]
    assert ingestor.refresh() == 0
    assert len(received) == 1


def test_refresh_without_subscribers_still_counts(ingestor: Ingestor, clock: FixedClock) -> None:
    ingestor.ingest(vital_items("p1"))
    clock.advance(2 * 3600)
    assert ingestor.refresh() == 1
    assert ingestor.bus.published == []  # type: ignore[attr-defined]


# -- metrics ------------------------------------------------------------------------


def _count(metrics: IngestMetrics, status: str, channel: str = "api") -> float | None:
    value: float | None = metrics.registry.get_sample_value(
        "medtwin_ingest_items_total", {"channel": channel, "status": status}
    )
    return value


def test_metrics_count_by_status(ingestor: Ingestor) -> None:
    metrics = ingestor.metrics
    ingestor.ingest([item(), item(), item(value=19), item(id="msg-4", value="x")])
    ingestor.ingest([item(id="msg-5"), item(id="msg-6", patient="p2")], channel="mqtt")
    ingestor.ingest([item(id="msg-5")], channel="mqtt")
    assert _count(metrics, "stored") == 1
    assert _count(metrics, "duplicate") == 1
    assert _count(metrics, "conflict") == 1
    assert _count(metrics, "rejected") == 1
    assert _count(metrics, "stored", "mqtt") == 2
    assert _count(metrics, "duplicate", "mqtt") == 1
    assert _count(metrics, "rejected", "mqtt") is None
    registry = metrics.registry
    assert registry.get_sample_value("medtwin_ingest_batch_seconds_count", {"channel": "api"}) == 1
    assert registry.get_sample_value("medtwin_ingest_batch_seconds_count", {"channel": "mqtt"}) == 2
    assert registry.get_sample_value("medtwin_twins") == 2


def test_metrics_registries_are_separate(store: SqlStore, clock: FixedClock) -> None:
    first = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    second = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    first.ingest([item()])
    assert _count(first.metrics, "stored") == 1
    assert _count(second.metrics, "stored") is None


# -- NEWS2 after ingestion ---------------------------------------------------------


def _chart(value: float, bands: Sequence[tuple[float, float, int]]) -> int:
    """Points of ``value`` on one RCP chart row given as (low, high, points), inclusive."""
    [points] = [p for low, high, p in bands if low <= value <= high]
    return points


RCP_RESPIRATION = [(0, 8, 3), (9, 11, 1), (12, 20, 0), (21, 24, 2), (25, 999, 3)]
RCP_SPO2_SCALE1 = [(0, 91, 3), (92, 93, 2), (94, 95, 1), (96, 100, 0)]
RCP_SYSTOLIC = [(0, 90, 3), (91, 100, 2), (101, 110, 1), (111, 219, 0), (220, 999, 3)]
RCP_PULSE = [(0, 40, 3), (41, 50, 1), (51, 90, 0), (91, 110, 1), (111, 130, 2), (131, 999, 3)]
RCP_TEMPERATURE = [(0, 35.0, 3), (35.1, 36.0, 1), (36.1, 38.0, 0), (38.1, 39.0, 1), (39.1, 99, 2)]


def test_news2_after_a_complete_vital_set_matches_the_chart(
    ingestor: Ingestor, bus: RecordingBus
) -> None:
    received = listen(bus)
    ingestor.ingest(vital_items("p1"))
    expected = {
        "respiration_rate": _chart(22, RCP_RESPIRATION),  # 2
        "spo2": _chart(95, RCP_SPO2_SCALE1),  # 1
        "air_or_oxygen": 0,  # air
        "systolic_bp": _chart(105, RCP_SYSTOLIC),  # 1
        "pulse": _chart(95, RCP_PULSE),  # 1
        "consciousness": 0,  # Alert
        "temperature": _chart(38.2, RCP_TEMPERATURE),  # 1
    }
    total = sum(expected.values())
    assert total == 6
    result = ingestor.runtime.view("p1")["news2"]
    assert result == {
        "score": total,
        "partial_score": total,
        "band": "medium",  # 5-6: medium
        "subscores": expected,
        "missing": [],
        "ignored": [],
    }
    assert received[-1]["news2"] == result


def test_fahrenheit_is_converted_before_scoring(ingestor: Ingestor, store: SqlStore) -> None:
    ingestor.ingest(vital_items("f", override={TEMP: (100.76, "[degF]")}))  # 38.2 Cel
    ingestor.ingest(vital_items("c", override={TEMP: (95.0, "[degF]")}))  # 35.0 Cel
    f = ingestor.runtime.view("f")
    assert f["vitals"][TEMP]["unit"] == "Cel"
    assert f["vitals"][TEMP]["value"] == pytest.approx(38.2)
    assert f["news2"]["subscores"]["temperature"] == _chart(38.2, RCP_TEMPERATURE) == 1
    assert f["news2"]["score"] == 6
    c = ingestor.runtime.view("c")
    assert c["vitals"][TEMP]["value"] == pytest.approx(35.0)
    assert c["news2"]["subscores"]["temperature"] == _chart(35.0, RCP_TEMPERATURE) == 3
    [stored] = store.history("f", codes=[TEMP]).items
    assert stored.observation.unit == "Cel"
    assert stored.observation.value_num == pytest.approx(38.2)


def test_conflicting_value_does_not_reach_the_twin(ingestor: Ingestor) -> None:
    ingestor.ingest(vital_items("p1"))
    ingestor.ingest(vital_items("p1", override={HR: (150, "/min")}))  # same ids, other HR
    assert ingestor.runtime.view("p1")["vitals"][HR]["value"] == 95.0
    assert ingestor.runtime.view("p1")["news2"]["score"] == 6


def test_interventions_may_be_planned_ahead_readings_may_not(ingestor: Ingestor) -> None:
    """A meal or a bolus up to a day ahead is a plan (the forecasts count on it); a
    reading from the future is a clock fault (beyond max_future_s, 5 min)."""

    def meal(n: int, hours: float) -> dict[str, Any]:
        at = datetime.fromtimestamp(T0.timestamp() + hours * 3600, UTC).isoformat()
        return {"id": f"meal-{n}", "source": "meal-app", "patient": "p1", "kind": "meal",
                "amount": 40, "unit": "g", "time": at}  # fmt: skip

    results = ingestor.ingest_interventions([meal(1, 2.0), meal(2, 23.9), meal(3, 24.5)])
    assert [r.status for r in results] == ["stored", "stored", "rejected"]
    assert "ahead of the clock" in str(results[2].reason)
    ahead = datetime.fromtimestamp(T0.timestamp() + 3600, UTC).isoformat()
    (reading,) = ingestor.ingest([item(id="soon", time=ahead)])
    assert reading.status == "rejected"
    assert "ahead of the clock" in str(reading.reason)
