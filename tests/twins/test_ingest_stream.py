"""Ingestor.ingest_stream: the same answers, store and twins as ingest() batch by batch.

With a writer process, batch N+1 is validated while the writer stores batch N; none
of that may show: results, store contents, twin state and events must be those of
calling ``ingest`` once per batch. A batch the store refuses ends the stream with
an error after the results of every batch before it, and nothing after it is stored.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.errors import StoreError
from medtwin.data.store import SqlStore, open_store
from medtwin.data.store.writer import WriterProcess
from medtwin.twins.events import Event, EventBus
from medtwin.twins.ingest import Ingestor, IngestResult
from medtwin.twins.runtime import TwinRuntime

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
VITALS = (
    ("9279-1", "/min", 18),
    ("59408-5", "%", 95),
    ("3150-0", "%", 21),
    ("8480-6", "mm[Hg]", 120),
    ("8867-4", "/min", 80),
    ("80288-4", "", "A"),
    ("8310-5", "Cel", 37.5),
)


def _time(minutes_before: int) -> str:
    return (T0 - timedelta(minutes=minutes_before)).isoformat().replace("+00:00", "Z")


def make_batches() -> list[list[Any]]:
    """Batches with new patients in consecutive batches, repeats, conflicts and rejects."""
    batches: list[list[Any]] = []
    for b in range(8):
        items: list[Any] = []
        for p in range(b, b + 4):  # patients p{b}..p{b+3}: new ones in every batch
            code, unit, value = VITALS[(b + p) % len(VITALS)]
            items.append(
                {
                    "id": f"m{b}-{p}",
                    "source": f"monitor-{p % 3}",
                    "patient": f"p{p}",
                    "code": code,
                    "value": value,
                    "unit": unit,
                    "time": _time(60 - b),
                }
            )
        if b:
            items.append(dict(batches[b - 1][0]))  # duplicate of a stored item
            conflict = dict(batches[b - 1][1])
            conflict["time"] = _time(90)
            items.append(conflict)  # same (source, id), other content
        items.append(dict(items[0]))  # repeat inside the batch
        items.append({"id": f"bad-{b}", "source": "monitor-0", "patient": "p0", "code": "8867-4"})
        items.append("not an object")
        items.append(
            {
                "id": f"x{b}",
                "source": "lab",
                "patient": f"p{b}",
                "code": "2345-7",  # not in the registry: stored as unmapped
                "value": 5.5,
                "unit": "mmol/L",
                "time": _time(30),
            }
        )
        batches.append(items)
    batches.insert(3, [])  # an empty batch is answered too
    return batches


class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[list[Event]] = []
        self.listen(lambda events: None)  # a subscriber, so that events are built

    def publish(self, events: Any) -> None:
        self.published.append(list(events))
        super().publish(events)


class Side:
    """One ingestor on its own SQLite file."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.store: SqlStore = open_store(self.url)
        self.clock = FixedClock(T0)
        self.bus = RecordingBus()
        self.runtime = TwinRuntime(self.clock)
        self.ingestor = Ingestor(self.store, self.runtime, self.bus, self.clock)

    def contents(self) -> dict[str, Any]:
        """Everything stored, less what is random (pseudonyms)."""
        with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
            return {
                "observations": conn.execute(
                    "SELECT * FROM observations ORDER BY row_id"
                ).fetchall(),
                "quarantine": conn.execute(
                    "SELECT row_id, received_us, channel, source, location, reason, payload "
                    "FROM quarantine ORDER BY row_id"
                ).fetchall(),
                "patients": conn.execute(
                    "SELECT id, spo2_scale, created_us FROM patients ORDER BY id"
                ).fetchall(),
            }

    def twins(self) -> dict[str, Any]:
        runtime = self.runtime
        n = len(runtime)
        return {
            "ids": list(runtime.patient_ids),
            "summaries": runtime.summaries(),
            "values": [
                [None if v != v else v for v in row] for row in runtime._values[:n].tolist()
            ],
            "times": runtime._times[:n].tolist(),
            "flags": runtime._flags[:n].tolist(),
            "news2": runtime._news2_state[:n].tolist(),
        }

    def metrics(self) -> dict[str, float]:
        return {
            f"{s.name}{sorted(s.labels.items())}": s.value
            for metric in self.ingestor.metrics.registry.collect()
            if metric.name == "medtwin_ingest_items"
            for s in metric.samples
            if s.name.endswith("_total")
        }

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    reference, streamed = Side(tmp_path / "reference.db"), Side(tmp_path / "streamed.db")
    yield reference, streamed
    reference.close()
    streamed.close()


@pytest.fixture
def writer(sides: tuple[Side, Side]) -> Iterator[WriterProcess]:
    with WriterProcess(sides[1].url, migrate=False) as writer:
        yield writer


def assert_same(reference: Side, streamed: Side) -> None:
    assert streamed.contents() == reference.contents()
    assert streamed.twins() == reference.twins()
    assert streamed.bus.published == reference.bus.published
    assert streamed.metrics() == reference.metrics()


def fail_on(side: Side, source_id: str) -> None:
    """Make the store refuse any batch holding the item ``source_id``."""
    with sqlite3.connect(side.url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON observations "
            f"WHEN NEW.source_id = '{source_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )


def allow_all(side: Side) -> None:
    with sqlite3.connect(side.url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TRIGGER refuse")


# -- same outcome as ingest() batch by batch ----------------------------------------


def test_stream_with_writer_matches_ingest_batch_by_batch(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    reference, streamed = sides
    batches = make_batches()
    expected = [reference.ingestor.ingest(b, channel="cli") for b in batches]
    got = list(streamed.ingestor.ingest_stream(batches, channel="cli", writer=writer))
    assert got == expected
    statuses = {r.status for results in got for r in results}
    assert statuses == {"stored", "duplicate", "conflict", "rejected"}
    assert [] in got  # the empty batch, in its place
    assert_same(reference, streamed)
    # Each new patient was created once, by the first batch that brought it.
    assert len(streamed.store.patients()) == len(streamed.runtime)


def test_stream_without_writer_is_ingest_batch_by_batch(sides: tuple[Side, Side]) -> None:
    reference, streamed = sides
    batches = make_batches()
    expected = [reference.ingestor.ingest(b, channel="cli") for b in batches]
    assert list(streamed.ingestor.ingest_stream(batches, channel="cli")) == expected
    assert_same(reference, streamed)


def test_results_are_given_in_order_as_batches_are_stored(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    _, streamed = sides
    batches = make_batches()
    stream = streamed.ingestor.ingest_stream(iter(batches), channel="cli", writer=writer)
    for n, results in enumerate(stream):
        ids = [item["id"] if isinstance(item, dict) else None for item in batches[n]]
        assert [r.id for r in results] == ids
        assert [r.index for r in results] == list(range(len(batches[n])))
        # Batch n is stored and in the twins when its results are given.
        assert all(streamed.store.patient(f"p{p}") for p in range(n))
    assert n == len(batches) - 1


def test_batches_are_validated_against_the_clock_when_prepared(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    _, streamed = sides
    late = {
        "id": "late",
        "source": "monitor-0",
        "patient": "p0",
        "code": "8867-4",
        "value": 70,
        "unit": "/min",
        "time": (T0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }

    def batches() -> Iterator[list[Any]]:
        yield [late]  # an hour in the future: rejected
        streamed.clock.set(T0 + timedelta(hours=1))
        yield [dict(late)]  # now it is on time

    got = list(streamed.ingestor.ingest_stream(batches(), writer=writer))
    assert [r.status for results in got for r in results] == ["rejected", "stored"]
    late_us = int((T0 + timedelta(hours=1)).timestamp() * 1_000_000)
    quarantined = streamed.store.quarantined()
    assert [e.received_us for e in quarantined] == [int(T0.timestamp() * 1_000_000)]
    stored = streamed.store.history("p0").items
    assert [s.received_us for s in stored] == [late_us]


# -- failures ---------------------------------------------------------------------


@pytest.mark.parametrize("use_writer", [True, False], ids=["writer", "no-writer"])
def test_failed_batch_raises_after_the_earlier_results_and_stores_nothing_later(
    sides: tuple[Side, Side], tmp_path: Path, use_writer: bool
) -> None:
    reference, streamed = sides
    batches = make_batches()
    failing = 5
    fail_on(streamed, batches[failing][0]["id"])
    given: list[list[IngestResult]] = []
    with WriterProcess(streamed.url, migrate=False) if use_writer else _no_writer() as writer:
        stream = streamed.ingestor.ingest_stream(batches, channel="cli", writer=writer)
        # The store in this process lets the driver's error through; the writer's is a
        # StoreError with the child's message.
        with pytest.raises((StoreError, sqlite3.Error), match="refused") as raised:
            given.extend(stream)
        assert f"batch {failing} (counted from 0) failed" in "".join(raised.value.__notes__)
        expected = [reference.ingestor.ingest(b, channel="cli") for b in batches[:failing]]
        assert given == expected
        # Nothing after the failed batch is stored: store and twins are those of the
        # batches before it (the batch sent after it was not carried out).
        assert_same(reference, streamed)
        # The ingestor is free again, and sending the rest completes the stream.
        allow_all(streamed)
        rest = list(
            streamed.ingestor.ingest_stream(batches[failing:], channel="cli", writer=writer)
        )
    expected_rest = [reference.ingestor.ingest(b, channel="cli") for b in batches[failing:]]
    assert rest == expected_rest
    assert_same(reference, streamed)


class _no_writer:  # noqa: N801 - a stand-in for the WriterProcess context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_first_batch_failing(sides: tuple[Side, Side], writer: WriterProcess) -> None:
    _, streamed = sides
    batches = make_batches()
    fail_on(streamed, batches[0][0]["id"])
    with pytest.raises(StoreError, match="refused") as raised:
        next(streamed.ingestor.ingest_stream(batches, writer=writer))
    assert "batch 0 (counted from 0)" in "".join(raised.value.__notes__)
    assert streamed.store.count("observations") == 0
    assert len(streamed.runtime) == 0
    assert writer.pending == 0


def test_closing_early_keeps_store_and_twins_together(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    reference, streamed = sides
    batches = make_batches()
    stream = streamed.ingestor.ingest_stream(batches, channel="cli", writer=writer)
    next(stream)
    stream.close()
    assert writer.pending == 0
    # The batch already sent after the one given is stored, and in the twins.
    for b in batches[:2]:
        reference.ingestor.ingest(b, channel="cli")
    assert streamed.contents() == reference.contents()
    assert streamed.twins() == reference.twins()
    # The locks are free: a plain ingest works (it would wait for ever otherwise).
    done = threading.Event()

    def ingest() -> None:
        streamed.ingestor.ingest(batches[2], channel="cli")
        done.set()

    threading.Thread(target=ingest, daemon=True).start()
    assert done.wait(10)


def test_other_ingests_wait_for_the_stream(sides: tuple[Side, Side], writer: WriterProcess) -> None:
    _, streamed = sides
    batches = make_batches()
    stream = streamed.ingestor.ingest_stream(batches, channel="cli", writer=writer)
    next(stream)
    done = threading.Event()
    other = threading.Thread(
        target=lambda: (streamed.ingestor.ingest(batches[0]), done.set()), daemon=True
    )
    other.start()
    assert not done.wait(0.3)  # held while batches are in flight
    for _ in stream:
        pass
    assert done.wait(10)


def test_writer_must_write_to_the_ingestors_store(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    reference, _ = sides
    with pytest.raises(ValueError, match="not to"):
        next(reference.ingestor.ingest_stream([[]], writer=writer))


def test_twins_equal_after_stream_of_many_small_batches(
    sides: tuple[Side, Side], writer: WriterProcess
) -> None:
    reference, streamed = sides
    items = [i for b in make_batches() for i in b]
    batches = [items[i : i + 3] for i in range(0, len(items), 3)]
    for b in batches:
        reference.ingestor.ingest(b)
    for _ in streamed.ingestor.ingest_stream(batches, writer=writer):
        pass
    assert_same(reference, streamed)
    assert np.isfinite(streamed.runtime._values[: len(streamed.runtime)]).any()


def test_ingest_files_with_a_writer(sides: tuple[Side, Side], tmp_path: Path) -> None:
    import json

    from medtwin.apps.ingest_files import ingest_files

    reference, streamed = sides
    lines = [json.dumps(i) for b in make_batches() for i in b]
    lines.insert(7, "{oops")
    path = tmp_path / "obs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reports: dict[str, list[str]] = {"reference": [], "streamed": []}
    expected = ingest_files(reference.ingestor, [path], batch=4, report=reports["reference"].append)
    with WriterProcess(streamed.url, migrate=False) as writer:
        got = ingest_files(
            streamed.ingestor, [path], batch=4, report=reports["streamed"].append, writer=writer
        )
    assert got == expected
    assert reports["streamed"] == reports["reference"]
    assert any(":8: line is not JSON" in text for text in reports["streamed"])
    assert streamed.twins() == reference.twins()
    assert streamed.contents()["observations"] == reference.contents()["observations"]
