"""Replay of quarantined MQTT messages through ``Replayers`` once the cause is fixed.

Entries are made by the subscriber from messages sent through the real broker, and
replayed with the replayer registered the way the application registers it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from medtwin.data.store import Origin, QuarantineEntry, SqlStore
from medtwin.data.store.schema import interventions
from medtwin.devices.mqtt import MqttReplayer, replayer
from medtwin.devices.mqtt.loadgen import publish
from medtwin.twins.replay import Replayers

from .conftest import Rig, hours_ago, wait_for


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


def _replayers(rig: Rig) -> Replayers:
    replayers = Replayers(rig.store, rig.ingestor, rig.clock)
    replayers.register("mqtt", replayer(rig.ingestor, root=rig.root))
    return replayers


def _quarantine(rig: Rig, messages: list[tuple[str, bytes]]) -> list[QuarantineEntry]:
    """Send ``messages`` through the broker; the open MQTT entries, oldest first."""
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, messages)
        wait_for(lambda: subscriber.stats.acked >= len(messages), 10, "acknowledgements")
    finally:
        subscriber.stop(timeout_s=5)
    entries = rig.store.quarantined(limit=100, channel="mqtt", resolved=False)
    return sorted(entries, key=lambda e: e.row_id or 0)


def test_unbound_reading_is_taken_in_after_the_device_is_bound(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    replayers = _replayers(rig)
    message = (rig.topic("late-mon"), _reading(7))
    try:
        (entry,) = _quarantine(rig, [message])
        assert entry.location == f"{rig.topic('late-mon')}: patient"
        assert entry.row_id is not None
        # Not bound yet: refused, for the reason it was quarantined, and nothing written.
        outcome = replayers.replay(entry.row_id)
        assert not outcome.taken
        assert outcome.location == entry.location
        assert outcome.reason is not None
        assert outcome.reason.startswith("device late-mon is not bound to a patient at ")
        assert store.count("observations") == 0
        assert store.quarantine_entry(entry.row_id) == entry

        rig.bind("late-mon", "p9", hours_ago(3))
        outcome = replayers.replay(entry.row_id)
        assert outcome.taken, outcome
        items = store.history("p9").items
        assert [(i.observation.source, i.observation.source_id) for i in items] == [
            ("late-mon", "b.7")
        ]
        assert items[0].observation.value_num == 70
        assert store.origins_of([("late-mon", "b.7", 1)]) == {
            ("late-mon", "b.7", 1): Origin("mqtt", f"quarantine/{entry.row_id}", "b.7")
        }
        resolved = store.quarantine_entry(entry.row_id)
        assert resolved is not None
        assert resolved.resolved_us is not None
        assert resolved.payload == message[1].decode()  # kept for audit
        assert "p9" in rig.ingestor.runtime
        # Again: already taken in, nothing new.
        assert replayers.replay(entry.row_id).taken
        assert store.count("observations") == 1

        # The device resends it over MQTT after the replay: the same reading, a duplicate.
        subscriber = rig.subscriber()
        publish(rig.host, rig.port, [message])
        wait_for(lambda: subscriber.stats.acked == 1, 10, "the resend")
        assert subscriber.stats.duplicate == 1
        assert store.count("observations") == 1
    finally:
        rig.close()


def test_still_bad_messages_stay_quarantined_with_their_reason(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    rig.bind("mon", "p1", hours_ago(3))
    replayers = _replayers(rig)
    topic = rig.topic("mon")
    messages = [
        (topic, _reading(1, value="fast")),  # not a heart rate
        (topic, _reading(2, value=900)),  # beyond the code's hard limit (350/min)
        (topic, b'{"code": "8867-4", "seq": 3}'),  # no boot_id
        (topic, b"\xff not json"),
        # Bad UTF-8 inside a string: the text kept (U+FFFD) would parse, but is not what
        # the device sent.
        (topic, _reading(5).replace(b'"/min"', b'"/min\xff"')),
        (topic, b" " * (64 * 1024 + 1)),  # too large: only its size is kept
    ]
    try:
        entries = _quarantine(rig, messages)
        assert [e.location for e in entries] == [
            f"{topic}: value",
            f"{topic}: value",
            f"{topic}: boot_id",
            topic,
            topic,
            topic,
        ]
        assert entries[4].reason.startswith("payload is not UTF-8")
        before = store.count("quarantine")
        for entry in entries:
            assert entry.row_id is not None
            outcome = replayers.replay(entry.row_id)
            assert not outcome.taken
            assert outcome.location == entry.location
            # The reason is the one the entry holds (less the content tag).
            assert outcome.reason is not None
            assert entry.reason.startswith(outcome.reason)
            stored = store.quarantine_entry(entry.row_id)
            assert stored == entry  # unresolved, reason unchanged
        assert store.count("quarantine") == before
        assert store.count("observations") == 0
    finally:
        rig.close()


def test_unbound_intervention_is_taken_in_after_the_device_is_bound(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    replayers = _replayers(rig)
    events: list[dict[str, Any]] = []
    rig.ingestor.bus.listen(
        lambda batch: events.extend(e for e in batch if e.get("type") == "twin.intervention")
    )
    bolus = {
        "kind": "insulin-bolus",
        "amount": 2.5,
        "unit": "U",
        "time": hours_ago(1).isoformat(),
        "boot_id": "b",
        "seq": 11,
    }
    topic = rig.topic("pump", "interventions")
    try:
        (entry,) = _quarantine(rig, [(topic, json.dumps(bolus).encode())])
        assert entry.location == f"{topic}: patient"
        assert entry.row_id is not None
        rig.bind("pump", "p4", hours_ago(2))
        assert replayers.replay(entry.row_id).taken
        assert replayers.replay(entry.row_id).taken  # already taken in
    finally:
        rig.close()
    with store.reading() as conn:
        rows = conn.execute(interventions.select()).all()
    assert [(r.source, r.source_id, r.patient_id, r.kind, r.amount) for r in rows] == [
        ("pump", "b.11", "p4", "insulin-bolus", 2.5)
    ]
    assert [(e["patient"], e["kind"]) for e in events] == [("p4", "insulin-bolus")]
    assert "p4" in rig.ingestor.runtime


def test_topic_is_found_whatever_the_fault_location(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    entry = QuarantineEntry(
        "mqtt",
        "elsewhere/x: value",
        "a reason without a content tag",
        _reading(1).decode(),
        row_id=None,
    )
    replay = MqttReplayer(rig.ingestor, root=rig.root)
    assert replay.topic_of(entry) is None
    assert replay(entry) == (
        f"the location 'elsewhere/x: value' does not start with a device topic under {rig.root}/",
        "topic",
    )
    # Without the tag, the longest prefix of the location that is a device topic.
    untagged = QuarantineEntry("mqtt", f"{rig.topic('m')}: patient", "why", entry.payload)
    assert replay.topic_of(untagged) == rig.topic("m")


@pytest.fixture
def sqlite_store(stores: object) -> SqlStore:
    return stores.new("sqlite")  # type: ignore[attr-defined, no-any-return]
