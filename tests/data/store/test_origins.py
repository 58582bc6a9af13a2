"""Origins: the message each stored observation came in, on both backends.

``append(origins=...)`` records one origin per newly stored observation in the
batch's transaction; a duplicate, a conflict or a rolled-back batch leaves the
first origin as it was. ``ingest_stream`` carries origins through the writer too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from medtwin.core.clock import FixedClock
from medtwin.data.store import Origin, SqlStore, open_store
from medtwin.data.store.writer import WriterProcess
from medtwin.twins.events import EventBus
from medtwin.twins.ingest import Ingestor
from medtwin.twins.runtime import TwinRuntime
from tests.data.store.test_store import CONFLICT, DUPLICATE, RECEIVED, STORED, at_revision, obs

Key = tuple[str, str, int]


def key(n: int, version: int = 1, source: str = "monitor-1") -> Key:
    return (source, f"m-{n}", version)


def test_append_records_each_stored_observations_origin(store: SqlStore) -> None:
    first = Origin("api", "req-1", "observations[0]")
    third = Origin("mqtt", "medtwin/devices/mon/observations")  # no entry
    statuses = store.append(
        [obs(1), obs(2), obs(3)], received_us=RECEIVED, origins=[first, None, third]
    )
    assert statuses == [STORED] * 3
    # A None origin is skipped: the observation is stored without one.
    assert store.origins_of([key(1), key(2), key(3)]) == {key(1): first, key(3): third}
    assert store.count("observation_origins") == 2
    assert store.origins_of([]) == {}
    assert store.origins_of([key(99)]) == {}


def test_a_duplicate_or_a_conflict_keeps_the_first_origin(store: SqlStore) -> None:
    first = Origin("mllp", "LAB|C1", "OBX[1]")
    store.append([obs(1)], received_us=RECEIVED, origins=[first])
    resent = Origin("mllp", "LAB|C2", "OBX[1]")
    changed = Origin("mllp", "LAB|C3", "OBX[1]")
    statuses = store.append(
        [obs(1), obs(1, value=99.0)], received_us=RECEIVED + 1, origins=[resent, changed]
    )
    assert statuses == [DUPLICATE, CONFLICT]
    assert store.origins_of([key(1)]) == {key(1): first}
    # Repeated inside one batch: the first occurrence's origin is the one kept.
    inside = store.append(
        [obs(2), obs(2), obs(2, value=1.0)],
        received_us=RECEIVED + 2,
        origins=[Origin("file", "a.jsonl", "a.jsonl:1"), resent, changed],
    )
    assert inside == [STORED, DUPLICATE, CONFLICT]
    assert store.origins_of([key(2)]) == {key(2): Origin("file", "a.jsonl", "a.jsonl:1")}
    assert store.count("observation_origins") == 2


def test_a_new_version_has_an_origin_of_its_own(store: SqlStore) -> None:
    store.append([obs(1)], received_us=RECEIVED, origins=[Origin("fhir", "b1", "Bundle.entry[3]")])
    correction = Origin("fhir", "Observation/m-1")
    store.append(
        [obs(1, version=2, status="corrected", value=75.0)],
        received_us=RECEIVED + 1,
        origins=[correction],
    )
    assert store.origins_of([key(1), key(1, 2)]) == {
        key(1): Origin("fhir", "b1", "Bundle.entry[3]"),
        key(1, 2): correction,
    }


def test_origins_of_many_keys(store: SqlStore) -> None:
    batch = [obs(n, source=f"dev-{n % 3}") for n in range(700)]
    origins: list[Origin | None] = [Origin("api", f"req-{n // 100}", f"[{n}]") for n in range(700)]
    store.append(batch, received_us=RECEIVED, origins=origins)
    keys = [key(n, source=f"dev-{n % 3}") for n in range(700)]
    found = store.origins_of([*keys, *keys[:10], key(1, source="elsewhere")])
    assert found == dict(zip(keys, origins, strict=True))


def test_origins_must_match_the_observations(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="2 origins for 1 observations"):
        store.append([obs(1)], received_us=RECEIVED, origins=[Origin("api", "r"), None])
    with pytest.raises(ValueError, match="0 origins for 1 observations"):
        store.append([obs(1)], received_us=RECEIVED, origins=[])
    assert store.count("observations") == 0
    assert store.count("observation_origins") == 0


def test_a_rolled_back_batch_records_no_origin(store: SqlStore) -> None:
    def fail(conn: Connection) -> None:
        raise RuntimeError("the adapter's own rows could not be written")

    with pytest.raises(RuntimeError):
        store.append([obs(1)], received_us=RECEIVED, origins=[Origin("api", "r1")], extra=fail)
    assert store.origins_of([key(1)]) == {}
    # Sent again, the batch is stored with the origin it carries now.
    store.append([obs(1)], received_us=RECEIVED, origins=[Origin("api", "r2")])
    assert store.origins_of([key(1)]) == {key(1): Origin("api", "r2")}


def test_append_without_origins_records_none(store: SqlStore) -> None:
    store.append([obs(1)], received_us=RECEIVED)
    assert store.origins_of([key(1)]) == {}
    assert store.count("observation_origins") == 0


# -- through the ingestion path, with and without the writer process -----------------

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _items(batch: int) -> list[Any]:
    time = (NOW - timedelta(minutes=30 - batch)).isoformat().replace("+00:00", "Z")
    return [
        {
            "id": f"b{batch}-{n}",
            "source": "monitor",
            "patient": f"p{n}",
            "code": "8867-4",
            "value": 70 + n,
            "unit": "/min",
            "time": time,
        }
        for n in range(3)
    ] + [{"id": f"bad-{batch}", "source": "monitor"}]  # rejected: no origin stored


def _origins(request: str) -> list[Origin | None]:
    return [Origin("api", request, f"observations[{n}]") for n in range(4)]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'stream.db'}"
    open_store(url).close()
    return url


@pytest.mark.parametrize("with_writer", [False, True], ids=["in-process", "writer"])
def test_ingest_stream_records_origins(sqlite_url: str, with_writer: bool) -> None:
    store = open_store(sqlite_url, migrate=False)
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    writer = WriterProcess(sqlite_url, migrate=False) if with_writer else None
    try:
        answers = list(
            ingestor.ingest_stream(
                [_items(b) for b in range(4)],
                writer=writer,
                origins=(_origins(f"req-{b}") for b in range(4)),
            )
        )
        assert [[r.status for r in a] for a in answers] == [[*["stored"] * 3, "rejected"]] * 4
        # Sent again with other request ids: duplicates, the first origins stay.
        again = list(
            ingestor.ingest_stream(
                [_items(b) for b in range(4)],
                writer=writer,
                origins=(_origins(f"again-{b}") for b in range(4)),
            )
        )
        assert {r.status for a in again for r in a} == {"duplicate", "rejected"}
    finally:
        if writer is not None:
            writer.close()
    keys = [("monitor", f"b{b}-{n}", 1) for b in range(4) for n in range(3)]
    assert store.origins_of(keys) == {
        ("monitor", f"b{b}-{n}", 1): Origin("api", f"req-{b}", f"observations[{n}]")
        for b in range(4)
        for n in range(3)
    }
    assert store.count("observation_origins") == 12
    store.close()


def test_ingest_stream_needs_one_origin_sequence_per_batch(sqlite_url: str) -> None:
    store = open_store(sqlite_url, migrate=False)
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    try:
        with pytest.raises(ValueError, match="origins for"):
            list(ingestor.ingest_stream([_items(0)], origins=[[Origin("api", "r")]]))
        assert store.count("observations") == 0
    finally:
        store.close()


def test_migration_0010_keeps_origins_stored_by_key(stores: Any, backend: str) -> None:
    """Origins stored before 0010 (keyed by source, id, version) follow their observations."""
    store = at_revision(stores, backend, "0009")
    with store.engine.begin() as conn:
        for n, source_id in enumerate(("m-1", "m-2", "m-3"), start=1):
            conn.exec_driver_sql(
                "INSERT INTO observations (row_id, source, source_id, version, patient_id, "
                "system, code, value_num, value_text, unit, effective_us, status, flags, "
                "received_us) VALUES "
                f"({10 * n}, 'monitor-1', '{source_id}', 1, 'p1', 'http://loinc.org', "
                f"'8867-4', 70, NULL, '/min', {n}, 'final', 0, 0)"
            )
        conn.exec_driver_sql(
            "INSERT INTO observation_origins VALUES "
            "('monitor-1', 'm-1', 1, 'api', 'req-1', 'observations[0]', NULL), "
            "('monitor-1', 'm-3', 1, 'mllp', 'S|c9', 'OBX[2]', '{\"raw\": 1}')"
        )
    store.migrate()
    assert store.origins_of([key(1), key(2), key(3)]) == {
        key(1): Origin("api", "req-1", "observations[0]"),
        key(3): Origin("mllp", "S|c9", "OBX[2]", '{"raw": 1}'),
    }
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT observation_id FROM observation_origins ORDER BY observation_id"
        ).all()
    assert [r[0] for r in rows] == [10, 30]
    # Stored after the migration: the next row ids, their origins found by key.
    store.append([obs(4)], received_us=RECEIVED, origins=[Origin("api", "req-2")])
    assert store.origins_of([key(4)]) == {key(4): Origin("api", "req-2")}
