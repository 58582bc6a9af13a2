"""MQTT origins: each stored reading traces to its topic and ``boot_id.seq``."""

from __future__ import annotations

import json
from datetime import datetime

from medtwin.data.store import Origin, SqlStore
from medtwin.devices.mqtt.loadgen import publish

from .conftest import Rig, hours_ago, wait_for


def _reading(seq: int, when: datetime, boot_id: str = "b1", **extra: object) -> bytes:
    document = {"code": "8867-4", "value": 70 + seq, "unit": "/min", "boot_id": boot_id}
    document.update(seq=seq, time=when.isoformat().replace("+00:00", "Z"), **extra)
    return json.dumps(document).encode()


def test_topic_and_reading_id_are_the_origin(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    start = hours_ago(2)
    rig.bind("mon-a", "p1", start)
    rig.bind("mon-b", "p2", start)
    messages = [
        (rig.topic("mon-a"), _reading(1, hours_ago(1))),
        (rig.topic("mon-b"), _reading(1, hours_ago(1))),
        (rig.topic("mon-a"), _reading(2, hours_ago(1), value="fast")),  # quarantined
        (rig.topic("mon-a"), _reading(3, hours_ago(0.5), boot_id="b2")),
    ]
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, messages)
        wait_for(lambda: subscriber.stats.processed >= len(messages), 20, "every message")
        # Resent (a device retrying): duplicates, the origins stay as they were.
        publish(rig.host, rig.port, messages)
        wait_for(lambda: subscriber.stats.processed >= 2 * len(messages), 20, "the resends")
    finally:
        rig.close()
    assert subscriber.stats.stored == 3
    assert subscriber.stats.duplicate == 3
    keys = [("mon-a", "b1.1", 1), ("mon-b", "b1.1", 1), ("mon-a", "b1.2", 1), ("mon-a", "b2.3", 1)]
    assert store.origins_of(keys) == {
        ("mon-a", "b1.1", 1): Origin("mqtt", rig.topic("mon-a"), "b1.1"),
        ("mon-b", "b1.1", 1): Origin("mqtt", rig.topic("mon-b"), "b1.1"),
        ("mon-a", "b2.3", 1): Origin("mqtt", rig.topic("mon-a"), "b2.3"),
    }
    assert store.count("observation_origins") == 3
