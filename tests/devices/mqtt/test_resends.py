"""Resent bad messages are quarantined once; interventions take the ingestion path."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from medtwin.data.crypto import Keyring, generate_key
from medtwin.data.store import QuarantineEntry, SqlStore
from medtwin.data.store.schema import interventions
from medtwin.devices.mqtt.loadgen import publish

from .conftest import Broker, Rig, hours_ago, wait_for


@pytest.fixture
def sqlite_store(stores: object) -> SqlStore:
    return stores.new("sqlite")  # type: ignore[attr-defined, no-any-return]


def _reading(seq: int, hours: float = 1.0, **extra: object) -> bytes:
    document: dict[str, Any] = {
        "code": "8867-4",
        "value": 70,
        "unit": "/min",
        "boot_id": "b",
        "seq": seq,
        "time": hours_ago(hours).isoformat().replace("+00:00", "Z"),
    }
    document.update(extra)
    return json.dumps(document).encode()


def _bolus(seq: int, **extra: object) -> bytes:
    document: dict[str, Any] = {
        "kind": "insulin-bolus",
        "amount": 2.5,
        "unit": "U",
        "time": hours_ago(1).isoformat(),
        "boot_id": "b",
        "seq": seq,
    }
    document.update(extra)
    return json.dumps(document).encode()


def _entries(store: SqlStore, **filters: Any) -> list[QuarantineEntry]:
    return store.quarantined(limit=1000, channel="mqtt", **filters)


def test_bad_payload_sent_three_times_is_quarantined_once(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    rig.bind("mon", "p1", hours_ago(3))
    bad = _reading(1, value="fast")
    subscriber = rig.subscriber()
    try:
        for _ in range(3):  # apart, so that each is its own batch
            publish(rig.host, rig.port, [(rig.topic("mon"), bad)])
            time.sleep(0.05)
        publish(rig.host, rig.port, [(rig.topic("mon"), bad)] * 3)  # and in one batch
        wait_for(lambda: subscriber.stats.acked == 6, 10, "every delivery acknowledged")
    finally:
        rig.close()
    entries = _entries(store)
    assert [e.location for e in entries] == [f"{rig.topic('mon')}: value"]
    assert entries[0].payload == bad.decode()
    assert re.fullmatch(r".+ \[sha256:[0-9a-f]{12}\]", entries[0].reason)
    assert subscriber.stats.rejected == 6
    assert subscriber.stats.requarantined == 5


def test_same_fault_with_other_content_is_its_own_entry(
    sqlite_store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(sqlite_store, *shared_broker)
    subscriber = rig.subscriber()
    try:
        # Unbound device: same location and fault, different readings.
        one, two = _reading(1), _reading(2)
        publish(rig.host, rig.port, [(rig.topic("stray"), p) for p in (one, two, two)])
        wait_for(lambda: subscriber.stats.acked == 3, 10, "acknowledgements")
    finally:
        rig.close()
    entries = _entries(sqlite_store)
    assert len(entries) == 2
    assert {json.loads(e.payload)["seq"] for e in entries} == {1, 2}


def test_sealed_payloads_are_deduplicated_too(
    sqlite_store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    sqlite_store.seal_payloads(Keyring.from_spec(f"k1:{generate_key()}"))
    rig = Rig(sqlite_store, *shared_broker)
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, [(rig.topic("mon"), b"\xff not json")] * 3)
        wait_for(lambda: subscriber.stats.acked == 3, 10, "acknowledgements")
    finally:
        rig.close()
    entries = _entries(sqlite_store)
    assert len(entries) == 1
    assert entries[0].payload.startswith("\ufffd not json")  # unsealed on read
    with sqlite_store.reading() as conn:
        (stored,) = conn.exec_driver_sql("SELECT payload FROM quarantine").one()
    assert sqlite_store.sealed_payload(stored) is not None


def test_redelivery_after_an_abort_is_not_quarantined_again(
    tmp_path: Path, own_broker: Broker
) -> None:
    from medtwin.data.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'redeliver.db'}")
    rig = Rig(store, own_broker.host, own_broker.port)
    bad = b'{"code": "8867-4", "seq": 5}'  # no boot_id
    try:
        first = rig.subscriber()
        first._ack = lambda batch: None  # type: ignore[method-assign]  # the PUBACK is lost
        publish(rig.host, rig.port, [(rig.topic("mon"), bad)])
        wait_for(lambda: first.stats.batches == 1, 10, "the first delivery")
        first.abort()
        assert len(_entries(store)) == 1
        second = rig.subscriber()  # same client id: the broker resends the unacknowledged
        wait_for(lambda: second.stats.acked == 1, 10, "the redelivery acknowledged")
        assert second.stats.requarantined == 1
        second.stop()
        third = rig.subscriber()  # acknowledged: nothing comes back
        time.sleep(0.5)
        assert third.stats.received == 0
    finally:
        rig.close()
        store.close()
    entries = _entries(store)
    assert [e.location for e in entries] == [f"{rig.topic('mon')}: boot_id"]


def test_fix_and_resend_after_replay(
    sqlite_store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(sqlite_store, *shared_broker)
    message = (rig.topic("late"), _reading(7))
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, [message, message])
        wait_for(lambda: subscriber.stats.acked == 2, 10, "the unbound reading")
        (entry,) = _entries(sqlite_store)
        assert entry.row_id is not None
        # A replay took it in: a new fault of the same message is quarantined anew.
        sqlite_store.resolve_quarantine([entry.row_id], rig.clock.now_us())
        publish(rig.host, rig.port, [message])
        wait_for(lambda: subscriber.stats.acked == 3, 10, "the resend")
        assert len(_entries(sqlite_store, resolved=False)) == 1
        assert len(_entries(sqlite_store)) == 2
        # The cause fixed (the device bound), the resend is stored.
        rig.bind("late", "p9", hours_ago(3))
        publish(rig.host, rig.port, [message])
        wait_for(lambda: subscriber.stats.stored == 1, 10, "the fixed reading")
    finally:
        rig.close()
    assert [i.observation.source_id for i in sqlite_store.history("p9").items] == ["b.7"]
    assert len(_entries(sqlite_store)) == 2


def test_interventions_take_the_ingestion_path(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    rig.bind("pump", "p3", hours_ago(3))
    events: list[dict[str, Any]] = []

    def listen(batch: Sequence[Any]) -> None:
        events.extend(e for e in batch if e.get("type") == "twin.intervention")

    rig.ingestor.bus.listen(listen)
    topic = rig.topic("pump", "interventions")
    good = _bolus(1)
    bad = _bolus(2, unit="mL")  # a unit the HTTP route refuses too
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, [(topic, good), (topic, bad), (topic, good), (topic, bad)])
        wait_for(lambda: subscriber.stats.acked == 4, 10, "acknowledgements")
    finally:
        rig.close()
    with store.reading() as conn:
        rows = conn.execute(interventions.select()).all()
    assert [(r.source, r.source_id, r.patient_id, r.kind, r.amount, r.unit) for r in rows] == [
        ("pump", "b.1", "p3", "insulin-bolus", 2.5, "[IU]")
    ]
    entries = _entries(store)
    assert [e.location for e in entries] == [f"{topic}: unit"]
    assert entries[0].reason.startswith("unit of insulin-bolus must be one of")
    assert entries[0].source == "pump"
    assert len(events) == 1
    assert events[0]["patient"] == "p3"
    assert events[0]["kind"] == "insulin-bolus"
    assert events[0]["amount"] == 2.5
    assert "p3" in rig.ingestor.runtime
