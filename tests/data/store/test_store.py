"""The store, on both backends: one suite run against SQLite and PostgreSQL.

Every PostgreSQL test has its own schema (see ``StoreFactory`` in tests/conftest.py).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.errors import ConfigurationError, NotFoundError, StoreError
from medtwin.core.records import LOINC, Observation, Patient, QualityFlag
from medtwin.data.store import (
    AppendStatus,
    DerivedValue,
    QuarantineEntry,
    SqlStore,
    StoredObservation,
    open_store,
    schema,
)
from medtwin.data.store.base import schema_head

if TYPE_CHECKING:
    from conftest import StoreFactory  # tests/conftest.py

STORED, DUPLICATE, CONFLICT = AppendStatus.STORED, AppendStatus.DUPLICATE, AppendStatus.CONFLICT
HR, RR, SPO2, ACVPU = "8867-4", "9279-1", "59408-5", "80288-4"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
MINUTE = 60_000_000
RECEIVED = T0 + 10 * 24 * 60 * MINUTE
TABLES = tuple(schema.metadata.tables)


def obs(
    n: int,
    *,
    patient: str = "p1",
    code: str = HR,
    value: float | None = 70.0,
    t: int | None = None,
    source: str = "monitor-1",
    **fields: Any,
) -> Observation:
    """Observation ``n`` (id ``m-n``), by default one minute after the previous one."""
    item = Observation(
        source=source,
        source_id=f"m-{n}",
        patient=patient,
        system=LOINC,
        code=code,
        value_num=value,
        value_text=None,
        unit="/min",
        effective_us=T0 + n * MINUTE if t is None else t,
    )
    return item._replace(**fields)


def patient(n: int) -> Patient:
    return Patient(f"p{n}", f"pt-{n:04d}", 1, T0 + n)


def counts(store: SqlStore) -> dict[str, int]:
    return {table: store.count(table) for table in TABLES}


def everything(store: SqlStore, patient_id: str = "p1") -> list[StoredObservation]:
    return store.history(patient_id, limit=100_000).items


def snapshot(store: SqlStore) -> dict[str, object]:
    """Every readable piece of a store, for comparing copies."""
    patients = store.patients()
    return {
        "counts": counts(store),
        "patients": patients,
        "history": {p.id: everything(store, p.id) for p in patients},
        "derived": {p.id: store.derived_history(p.id, "news2") for p in patients},
        "quarantine": store.quarantined(limit=10_000),
    }


def populate(store: SqlStore) -> None:
    """A bit of everything: patients, observations of several kinds, derived, quarantine."""
    store.append(
        [
            obs(1),
            obs(2, code=RR, value=18.0),
            obs(3, patient="p2", code=SPO2, value=95.0, unit="%", flags=int(QualityFlag.UNMAPPED)),
            obs(4, code=ACVPU, value=None, value_text="A", unit=""),
            obs(5, value=300.0, flags=int(QualityFlag.OUT_OF_RANGE)),
        ],
        received_us=RECEIVED,
        new_patients=[patient(1), patient(2)],
        rejected=[QuarantineEntry("api", "observations[5].value", "bad", '{"value": true}', "s")],
    )
    store.append([obs(1, value=99.0)], received_us=RECEIVED + 1)  # a conflict
    store.append_derived(
        [
            DerivedValue("p1", "news2", T0 + MINUTE, 3.0, {"score": 3, "parts": {"hr": 0}}),
            DerivedValue("p2", "news2", T0 + 2 * MINUTE, None, {"missing": ["hr"]}),
        ]
    )


# -- schema ----------------------------------------------------------------------


def at_revision(stores: StoreFactory, backend: str, revision: str) -> SqlStore:
    """A new store of ``backend`` migrated up to ``revision`` only (to test a migration)."""
    from alembic import command

    from medtwin.data.store.base import _alembic_config

    store = stores.open(stores.url(backend), migrate=False)
    config = _alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return store


def test_migrations_from_empty_database_reach_head(stores: StoreFactory, backend: str) -> None:
    url = stores.url(backend)
    store = stores.open(url, migrate=False)
    assert store.ping()
    assert store.schema_version() is None
    store.migrate()
    assert store.schema_version() == schema_head()
    assert counts(store) == dict.fromkeys(TABLES, 0)
    store.append([obs(1)], received_us=RECEIVED, new_patients=[patient(1)])
    store.migrate()  # a second time: nothing changes
    assert store.schema_version() == schema_head()
    assert counts(store)["observations"] == 1
    assert [s.observation for s in everything(store)] == [obs(1)]
    # open_store migrates by default, also when already at head.
    again = stores.open(url)
    assert again.schema_version() == schema_head()
    assert again.count("observations") == 1


@pytest.mark.postgres
def test_postgres_tables_land_in_the_test_schema(stores: StoreFactory) -> None:
    url = stores.url("postgres")
    schema = stores.schema_of(url)
    stores.open(url)
    with psycopg.connect(stores.pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    assert {name for (name,) in rows} == {"alembic_version", *TABLES}


def test_unknown_table_and_url_scheme(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        store.count("alembic_version")
    with pytest.raises(ConfigurationError):
        open_store("mysql://localhost/db")


# -- append ------------------------------------------------------------------------


def test_append_stores_a_batch(store: SqlStore) -> None:
    batch = [obs(1), obs(2, code=RR, value=18.0), obs(3, code=ACVPU, value=None, value_text="V")]
    assert store.append(batch, received_us=RECEIVED) == [STORED] * 3
    stored = everything(store)
    assert [s.observation for s in stored] == batch
    assert all(s.received_us == RECEIVED for s in stored)
    assert len({s.row_id for s in stored}) == 3
    assert store.count("observations") == 3
    assert store.count("quarantine") == 0


def test_append_nothing(store: SqlStore) -> None:
    assert store.append([], received_us=RECEIVED) == []
    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_flags_and_status_round_trip(store: SqlStore) -> None:
    flags = int(QualityFlag.OUT_OF_RANGE | QualityFlag.ARTIFACT_SUSPECTED)
    item = obs(1, flags=flags, status="amended", version=3, value=-0.5)
    store.append([item], received_us=RECEIVED)
    assert everything(store)[0].observation == item


def test_same_item_twice_in_one_batch_is_a_duplicate(store: SqlStore) -> None:
    assert store.append([obs(1), obs(1)], received_us=RECEIVED) == [STORED, DUPLICATE]
    assert store.count("observations") == 1
    assert store.count("quarantine") == 0


def test_same_item_in_a_later_batch_is_a_duplicate(store: SqlStore) -> None:
    assert store.append([obs(1)], received_us=RECEIVED) == [STORED]
    assert store.append([obs(1)], received_us=RECEIVED + 5) == [DUPLICATE]
    assert store.append([obs(1), obs(1)], received_us=RECEIVED + 6) == [DUPLICATE, DUPLICATE]
    [stored] = everything(store)
    assert stored.received_us == RECEIVED  # the first copy is kept as it was
    assert store.count("quarantine") == 0


def test_flags_alone_do_not_make_a_conflict(store: SqlStore) -> None:
    store.append([obs(1)], received_us=RECEIVED)
    again = obs(1, flags=int(QualityFlag.SMOOTHED))
    assert store.append([again], received_us=RECEIVED) == [DUPLICATE]


def test_same_key_other_content_is_a_quarantined_conflict(store: SqlStore) -> None:
    original = obs(1)
    assert store.append([original], received_us=RECEIVED) == [STORED]
    changed = obs(1, value=71.0)
    statuses = store.append([changed], received_us=RECEIVED + 7, channel="mqtt")
    assert statuses == [CONFLICT]
    assert [s.observation for s in everything(store)] == [original]  # original unchanged
    [entry] = store.quarantined()
    assert entry.channel == "mqtt"
    assert entry.source == "monitor-1"
    assert entry.received_us == RECEIVED + 7
    assert "conflict" in entry.reason
    assert "m-1" in entry.location
    assert json.loads(entry.payload) == changed._asdict()  # the raw refused content


@pytest.mark.parametrize(
    "change",
    [
        {"patient": "p2"},
        {"code": RR},
        {"value": None, "value_text": "A"},
        {"unit": "%"},
        {"t": T0},
        {"status": "corrected"},
        {"system": "http://snomed.info/sct"},
    ],
    ids=lambda change: ",".join(change),
)
def test_every_content_field_can_conflict(store: SqlStore, change: dict[str, object]) -> None:
    store.append([obs(1)], received_us=RECEIVED)
    assert store.append([obs(1, **change)], received_us=RECEIVED) == [CONFLICT]  # type: ignore[arg-type]
    assert store.count("quarantine") == 1


def test_conflict_inside_one_batch(store: SqlStore) -> None:
    statuses = store.append([obs(1), obs(1, value=99.0)], received_us=RECEIVED)
    assert statuses == [STORED, CONFLICT]
    assert [s.observation.value_num for s in everything(store)] == [70.0]
    [entry] = store.quarantined()
    assert json.loads(entry.payload)["value_num"] == 99.0


def test_new_version_is_not_a_conflict(store: SqlStore) -> None:
    store.append([obs(1)], received_us=RECEIVED)
    amended = obs(1, value=72.0, version=2, status="amended")
    assert store.append([amended], received_us=RECEIVED) == [STORED]
    assert [s.observation.version for s in everything(store)] == [1, 2]


def test_same_id_from_another_source_is_another_item(store: SqlStore) -> None:
    batch = [obs(1), obs(1, source="monitor-2", value=80.0)]
    assert store.append(batch, received_us=RECEIVED) == [STORED, STORED]


def test_mixed_batch_keeps_per_item_order(store: SqlStore) -> None:
    store.append([obs(1), obs(2)], received_us=RECEIVED)
    batch = [
        obs(3),  # new
        obs(1),  # stored before
        obs(2, value=1.0),  # conflicts with what is stored
        obs(4),  # new
        obs(3),  # repeat inside the batch
        obs(1, value=2.0),  # conflict again
        obs(4, value=3.0),  # conflicts with an item of this batch
        obs(5),  # new
    ]
    statuses = store.append(batch, received_us=RECEIVED + 1)
    assert statuses == [
        STORED,
        DUPLICATE,
        CONFLICT,
        STORED,
        DUPLICATE,
        CONFLICT,
        CONFLICT,
        STORED,
    ]
    assert [s.observation for s in everything(store)] == [obs(1), obs(2), obs(3), obs(4), obs(5)]
    payloads = [json.loads(e.payload) for e in reversed(store.quarantined())]
    assert [(p["source_id"], p["value_num"]) for p in payloads] == [
        ("m-2", 1.0),
        ("m-1", 2.0),
        ("m-4", 3.0),
    ]


def test_rejected_entries_are_quarantined_with_the_batch(store: SqlStore) -> None:
    rejected = [
        QuarantineEntry(
            "api", "observations[1].value", "value must be finite", '{"value": NaN}', "monitor-1"
        ),
        QuarantineEntry("cli", "obs.jsonl:7", "not JSON", "{oops", None, received_us=42),
    ]
    statuses = store.append([obs(1)], received_us=RECEIVED, rejected=rejected)
    assert statuses == [STORED]
    newest_first = store.quarantined()
    assert [e.location for e in newest_first] == ["obs.jsonl:7", "observations[1].value"]
    second, first = newest_first
    assert first == replace(rejected[0], received_us=RECEIVED, row_id=first.row_id)
    assert second == replace(rejected[1], row_id=second.row_id)  # its own time kept


def test_rejected_entries_without_observations(store: SqlStore) -> None:
    entry = QuarantineEntry("api", "observations[0]", "not an object", "[]", None)
    assert store.append([], received_us=RECEIVED, rejected=[entry]) == []
    assert [e.reason for e in store.quarantined()] == ["not an object"]
    store.quarantine([replace(entry, reason="again", received_us=5)])
    assert [e.reason for e in store.quarantined()] == ["again", "not an object"]
    assert [e.reason for e in store.quarantined(limit=1, offset=1)] == ["not an object"]


def test_quarantine_keeps_raw_payload_exactly(store: SqlStore) -> None:
    payload = '{"value": "\\u00e9", "note": "ünïcode ✓", "big": ' + "9" * 5000 + "}"
    store.quarantine([QuarantineEntry("api", "observations[0]", "bad", payload, None, 1)])
    assert store.quarantined()[0].payload == payload


def test_failed_batch_stores_nothing(store: SqlStore) -> None:
    broken = QuarantineEntry(None, "x", "y", "z")  # type: ignore[arg-type]  # channel NOT NULL
    with pytest.raises(StoreError):
        store.append(
            [obs(1), obs(2), obs(1, value=5.0)],
            received_us=RECEIVED,
            new_patients=[patient(1)],
            rejected=[broken],
        )
    assert counts(store) == dict.fromkeys(TABLES, 0)
    # The store is still usable and the same batch goes through without the bad entry.
    statuses = store.append([obs(1), obs(2)], received_us=RECEIVED, new_patients=[patient(1)])
    assert statuses == [STORED, STORED]
    assert counts(store)["patients"] == 1


# -- patients ----------------------------------------------------------------------


def test_patients_created_with_a_batch(store: SqlStore) -> None:
    store.append(
        [obs(1), obs(2, patient="p2")], received_us=RECEIVED, new_patients=[patient(2), patient(1)]
    )
    assert store.patients() == [patient(1), patient(2)]
    assert store.patient("p2") == patient(2)
    assert store.patient("p3") is None


def test_add_patients_is_idempotent(store: SqlStore) -> None:
    store.add_patients([patient(1)])
    store.add_patients([patient(1), patient(2)])
    store.add_patients([Patient("p1", "other-pseudonym", 2, 99)])  # existing: left as it is
    store.add_patients([])
    assert store.patients() == [patient(1), patient(2)]
    store.append([obs(1)], received_us=RECEIVED, new_patients=[patient(1)])
    assert store.count("patients") == 2


def test_set_spo2_scale(store: SqlStore) -> None:
    store.add_patients([patient(1)])
    assert store.set_spo2_scale("p1", 2) == replace(patient(1), spo2_scale=2)
    assert store.patient("p1") == replace(patient(1), spo2_scale=2)
    assert store.set_spo2_scale("p1", 1) == patient(1)
    for bad in (0, 3, -1):
        with pytest.raises(ValueError, match="1 or 2"):
            store.set_spo2_scale("p1", bad)
    with pytest.raises(NotFoundError):
        store.set_spo2_scale("nobody", 2)
    assert store.patient("p1") == patient(1)


# -- history ------------------------------------------------------------------------


def _history_fixture(store: SqlStore) -> list[Observation]:
    """Observations of p1 stored out of time order, plus noise from another patient."""
    p1 = [obs(n, code=(HR, RR, SPO2)[n % 3]) for n in range(30)]
    shuffled = p1[:]
    random.Random(7).shuffle(shuffled)
    noise = [obs(100 + n, patient="p2") for n in range(10)]
    store.append(shuffled[:15] + noise, received_us=RECEIVED)
    store.append(shuffled[15:], received_us=RECEIVED + 1)
    return p1


def test_history_is_ordered_by_time(store: SqlStore) -> None:
    p1 = _history_fixture(store)
    page = store.history("p1")
    assert [s.observation for s in page.items] == p1
    assert page.next_cursor is None
    assert store.history("nobody").items == []


def test_history_filters_by_codes(store: SqlStore) -> None:
    p1 = _history_fixture(store)
    only_hr = store.history("p1", codes=[HR]).items
    assert [s.observation for s in only_hr] == [o for o in p1 if o.code == HR]
    two = store.history("p1", codes=[HR, RR]).items
    assert [s.observation for s in two] == [o for o in p1 if o.code in (HR, RR)]
    assert store.history("p1", codes=["0000-0"]).items == []


def test_history_filters_by_time_range_inclusive(store: SqlStore) -> None:
    p1 = _history_fixture(store)
    start, end = T0 + 5 * MINUTE, T0 + 12 * MINUTE
    ranged = store.history("p1", start_us=start, end_us=end).items
    assert [s.observation for s in ranged] == [o for o in p1 if start <= o.effective_us <= end]
    assert len(ranged) == 8
    assert len(store.history("p1", start_us=T0 + 25 * MINUTE).items) == 5
    assert len(store.history("p1", end_us=T0 + 4 * MINUTE).items) == 5
    both = store.history("p1", codes=[HR], start_us=start, end_us=end).items
    assert [s.observation for s in both] == [
        o for o in p1 if o.code == HR and start <= o.effective_us <= end
    ]


def test_history_ties_are_ordered_by_arrival(store: SqlStore) -> None:
    same_time = [obs(n, t=T0) for n in range(5)]
    store.append(same_time[3:], received_us=RECEIVED)
    store.append(same_time[:3], received_us=RECEIVED)
    items = everything(store)
    assert [s.observation for s in items] == same_time[3:] + same_time[:3]
    assert [s.row_id for s in items] == sorted(s.row_id for s in items)


@pytest.mark.parametrize("page_size", [1, 2, 7, 59, 60, 61, 500])
def test_paging_covers_every_item_exactly_once(store: SqlStore, page_size: int) -> None:
    # Many items share a time so that pages break inside runs of equal times.
    items = [obs(n, t=T0 + (n // 4) * MINUTE, code=(HR, RR)[n % 2]) for n in range(60)]
    random.Random(page_size).shuffle(items)
    store.append(items[:30], received_us=RECEIVED)
    store.append(items[30:], received_us=RECEIVED)
    expected = everything(store)
    for codes, start in (((), None), ((HR,), None), ((), T0 + 3 * MINUTE)):
        want = [
            s
            for s in expected
            if (not codes or s.observation.code in codes)
            and (start is None or s.observation.effective_us >= start)
        ]
        seen: list[StoredObservation] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = store.history("p1", codes=codes, start_us=start, limit=page_size, cursor=cursor)
            assert len(page.items) <= page_size
            seen.extend(page.items)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
            assert len(page.items) == page_size
        assert seen == want
        assert pages == max(1, -(-len(want) // page_size))


def test_history_rejects_bad_cursor_and_limit(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.history("p1", cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        store.history("p1", limit=0)


# -- latest ----------------------------------------------------------------------------


def test_latest_is_the_newest_per_patient_and_code(store: SqlStore) -> None:
    t1, t2, t3 = T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE
    store.append(
        [
            obs(1, t=t3, value=73.0),
            obs(2, t=t1, value=71.0),
            obs(3, t=t2, value=72.0),
            obs(4, t=t2, code=RR, value=18.0),
            obs(5, t=t1, patient="p2", value=60.0),
            obs(6, t=t3, patient="p2", code=SPO2, value=94.0),
            obs(7, t=t3 + MINUTE, code="0000-0", value=1.0),
        ],
        received_us=RECEIVED,
    )
    newest = store.latest(codes=[HR, RR], since_us=t2)
    assert [(o.patient, o.code, o.value_num) for o in newest] == [
        ("p1", HR, 73.0),
        ("p1", RR, 18.0),
    ]
    newest = store.latest(codes=[HR, RR, SPO2], since_us=t1)  # since is inclusive
    assert [(o.patient, o.code, o.value_num) for o in newest] == [  # by patient, then code
        ("p1", HR, 73.0),
        ("p1", RR, 18.0),
        ("p2", SPO2, 94.0),
        ("p2", HR, 60.0),
    ]
    assert store.latest(codes=[HR], since_us=t3 + 1) == []
    assert store.latest(codes=[], since_us=T0) == []


def test_latest_gives_one_value_when_times_tie(store: SqlStore) -> None:
    store.append([obs(1, t=T0, value=70.0)], received_us=RECEIVED)
    store.append(
        [obs(1, t=T0, value=75.0, version=2, status="amended"), obs(2, t=T0, value=90.0)],
        received_us=RECEIVED + 1,
    )
    [newest] = store.latest(codes=[HR], since_us=T0)
    assert (newest.version, newest.value_num) == (2, 75.0)  # highest version wins


# -- derived values ----------------------------------------------------------------


def test_derived_values(store: SqlStore) -> None:
    values = [
        DerivedValue("p1", "news2", T0 + n * MINUTE, float(n), {"score": n, "parts": [n, None]})
        for n in (5, 1, 3, 2, 4)
    ]
    store.append_derived(values)
    store.append_derived([])
    store.append_derived([DerivedValue("p1", "qsofa", T0, 1.0), DerivedValue("p2", "news2", T0, 7)])
    history = store.derived_history("p1", "news2")
    assert history == sorted(values, key=lambda v: v.computed_us)
    assert [v.value_num for v in store.derived_history("p1", "news2", limit=2)] == [4.0, 5.0]
    ranged = store.derived_history("p1", "news2", start_us=T0 + 2 * MINUTE, end_us=T0 + 4 * MINUTE)
    assert [v.value_num for v in ranged] == [2.0, 3.0, 4.0]
    assert store.derived_history("p1", "qsofa") == [DerivedValue("p1", "qsofa", T0, 1.0, {})]
    assert [v.value_num for v in store.derived_history("p2", "news2")] == [7.0]
    assert store.derived_history("p3", "news2") == []
    assert store.count("derived") == 7


def test_derived_ties_keep_insertion_order(store: SqlStore) -> None:
    store.append_derived([DerivedValue("p1", "news2", T0, float(n)) for n in range(4)])
    assert [v.value_num for v in store.derived_history("p1", "news2")] == [0.0, 1.0, 2.0, 3.0]
    assert [v.value_num for v in store.derived_history("p1", "news2", limit=2)] == [2.0, 3.0]


# -- durability, backup and restore --------------------------------------------------


def test_restart_keeps_data(stores: StoreFactory, backend: str) -> None:
    url = stores.url(backend)
    store = stores.open(url)
    populate(store)
    store.set_spo2_scale("p2", 2)
    before = snapshot(store)
    store.close()
    reopened = stores.open(url)
    assert reopened.schema_version() == schema_head()
    assert snapshot(reopened) == before
    assert reopened.patient("p2") == replace(patient(2), spo2_scale=2)
    assert reopened.append([obs(1)], received_us=RECEIVED) == [DUPLICATE]


RESTORE_PAIRS = [
    pytest.param(
        source,
        target,
        id=f"{source}-to-{target}",
        marks=([pytest.mark.postgres] if "postgres" in (source, target) else []),
    )
    for source in ("sqlite", "postgres")
    for target in ("sqlite", "postgres")
]


@pytest.mark.parametrize(("source_backend", "target_backend"), RESTORE_PAIRS)
def test_backup_and_restore(stores: StoreFactory, source_backend: str, target_backend: str) -> None:
    source = stores.new(source_backend)
    populate(source)
    path = stores.backup_path()
    source.backup(path)
    target = stores.new(target_backend)
    target.append([obs(50, patient="p9")], received_us=1, new_patients=[patient(9)])  # replaced
    target.restore(path)
    assert snapshot(target) == snapshot(source)
    assert target.patient("p9") is None
    # New rows get ids after the restored ones (PostgreSQL sequences are moved on).
    restored_ids = {s.row_id for s in everything(target)}
    assert target.append([obs(60)], received_us=RECEIVED) == [STORED]
    [new] = [s for s in everything(target) if s.observation.source_id == "m-60"]
    assert new.row_id > max(restored_ids)
    target.quarantine([QuarantineEntry("api", "x", "y", "z", None, 1)])
    target.append_derived([DerivedValue("p1", "news2", T0, 1.0)])
    assert target.count("quarantine") == source.count("quarantine") + 1
    assert target.count("derived") == source.count("derived") + 1


def test_backup_while_writing(stores: StoreFactory, backend: str) -> None:
    source = stores.new(backend)
    batch_size, batches = 50, 30
    started = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for b in range(batches):
                items = [obs(b * batch_size + n) for n in range(batch_size)]
                assert source.append(items, received_us=RECEIVED + b) == [STORED] * batch_size
                source.append_derived([DerivedValue("p1", "news2", T0 + b, float(b))])
                if b == 4:
                    started.set()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            started.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert started.wait(30)
    path = stores.backup_path()
    source.backup(path)
    writer.join(60)
    assert not writer.is_alive()
    assert not errors, errors

    # The copy is one consistent moment: whole batches only, in order.
    copy = stores.new(backend)
    copy.restore(path)
    copied = everything(copy)
    assert len(copied) % batch_size == 0
    assert len(copied) >= 5 * batch_size
    assert copied == everything(source)[: len(copied)]
    # Each batch's derived value is written in a transaction of its own, just after it.
    assert copy.count("derived") in (len(copied) // batch_size - 1, len(copied) // batch_size)

    # Once the writer is done, a backup is the whole store.
    final = stores.backup_path()
    source.backup(final)
    restored = stores.new(backend)
    restored.restore(final)
    assert snapshot(restored) == snapshot(source)
    assert restored.count("observations") == batch_size * batches


def test_restore_refuses_missing_or_other_schema(
    stores: StoreFactory, backend: str, tmp_path: Path
) -> None:
    store = stores.new(backend)
    populate(store)
    before = snapshot(store)
    with pytest.raises(StoreError, match="no backup"):
        store.restore(tmp_path / "missing.sqlite")
    path = stores.backup_path()
    store.backup(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(StoreError, match="schema"):
        store.restore(path)
    assert snapshot(store) == before


# -- bulk ----------------------------------------------------------------------------


def test_bulk_append(store: SqlStore) -> None:
    n = 5_000
    items = [
        obs(i, patient=f"p{i % 50}", code=(HR, RR, SPO2, ACVPU)[i % 4], t=T0 + i * 1_000_000)
        for i in range(n)
    ]
    statuses = store.append(
        items, received_us=RECEIVED, new_patients=[patient(k) for k in range(50)]
    )
    assert statuses == [STORED] * n
    assert store.count("observations") == n
    assert store.count("patients") == 50
    page = store.history("p7", limit=n)
    assert [s.observation for s in page.items] == [o for o in items if o.patient == "p7"]
    assert len(store.latest(codes=[HR, RR, SPO2, ACVPU], since_us=T0)) == 50 * 2
    # The same batch again: all duplicates, nothing added.
    assert store.append(items, received_us=RECEIVED + 1) == [DUPLICATE] * n
    assert store.count("observations") == n


def test_latest_skips_results_entered_in_error(store: SqlStore) -> None:
    base = Observation("m", "hr-9", "p9", LOINC, "8867-4", 150.0, None, "/min", 2_000_000)
    older = base._replace(source_id="hr-8", value_num=70.0, effective_us=1_000_000)
    store.append([older, base], received_us=3_000_000)
    assert [o.value_num for o in store.latest(codes=["8867-4"], since_us=0)] == [150.0]
    store.append([base._replace(status="entered-in-error", version=2)], received_us=4_000_000)
    assert [o.value_num for o in store.latest(codes=["8867-4"], since_us=0)] == [70.0]


def test_append_extra_hook_writes_in_the_same_transaction(store: SqlStore) -> None:
    def log_row(conn: Connection, digest: str = "d1") -> None:
        conn.execute(
            sa.insert(schema.hl7_messages).values(
                sender="LAB", control_id="C1", digest=digest, received_us=RECEIVED, ack_code="AA"
            )
        )

    assert store.append([obs(1)], received_us=RECEIVED, extra=log_row) == [STORED]
    assert store.count("observations") == 1
    assert store.count("hl7_messages") == 1

    class RefusedError(Exception):
        pass

    def refuse(conn: Connection) -> None:
        log_row(conn, "d2")  # written, then rolled back with the batch
        raise RefusedError

    with pytest.raises(RefusedError):
        store.append(
            [obs(2)],
            received_us=RECEIVED,
            new_patients=[patient(2)],
            rejected=[QuarantineEntry("mllp", "OBX[1]-5", "bad", "OBX|1")],
            extra=refuse,
        )
    assert store.count("observations") == 1
    assert store.count("hl7_messages") == 1
    assert store.count("quarantine") == 0
    assert store.patient("p2") is None


def test_merge_patients_moves_records_and_teams(store: SqlStore) -> None:
    a = Observation("m", "a1", "old", LOINC, "8867-4", 80.0, None, "/min", 1_000_000)
    b = Observation("m", "b1", "new", LOINC, "8867-4", 70.0, None, "/min", 2_000_000)
    store.append(
        [a], received_us=3_000_000, new_patients=[Patient("old", "pt-o", 1, 0)], care_team="ward-a"
    )
    store.append(
        [b], received_us=3_000_000, new_patients=[Patient("new", "pt-n", 1, 0)], care_team="ward-b"
    )
    with store.transaction() as conn:
        conn.execute(
            sa.insert(schema.alarms).values(
                id="al-1", rule="news2-high", patient_id="old", priority="high", title="NEWS2",
                status="active", level=0, recipient="care-team", raised_us=2_500_000,
                escalated_us=2_500_000,
            )
        )  # fmt: skip
    moved = store.merge_patients("old", "new", at_us=4_000_000)
    assert moved >= 2
    assert sorted(i.observation.source_id for i in store.history("new").items) == ["a1", "b1"]
    with store.reading() as conn:
        alarm_patients = conn.execute(sa.select(schema.alarms.c.patient_id)).scalars().all()
    assert alarm_patients == ["new"]  # the survivor's alarms now
    assert store.history("old").items == []
    assert "old" not in {p.id for p in store.patients()}
    with store.reading() as conn:
        teams = conn.exec_driver_sql(
            "SELECT team, patient_id FROM care_team_patients ORDER BY team"
        ).all()
    assert [tuple(t) for t in teams] == [("ward-a", "new"), ("ward-b", "new")]
    with pytest.raises(NotFoundError):
        store.merge_patients("nobody", "new", at_us=5_000_000)
