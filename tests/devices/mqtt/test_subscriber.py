"""The MQTT subscriber against real Mosquitto brokers."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from medtwin.data.store import SqlStore
from medtwin.data.store.schema import interventions
from medtwin.devices.mqtt.loadgen import observation_payloads, publish
from medtwin.devices.mqtt.provisioning import BrokerAccounts

from .conftest import Broker, Rig, hours_ago, wait_for


def _stored_ids(store: SqlStore, device: str) -> set[str]:
    with store.reading() as conn:
        rows = conn.exec_driver_sql(
            "SELECT source_id FROM observations WHERE source = ?"
            if store.url.startswith("sqlite")
            else "SELECT source_id FROM observations WHERE source = %s",
            (device,),
        ).all()
    return {row[0] for row in rows}


@pytest.fixture
def sqlite_store(stores: object) -> SqlStore:
    return stores.new("sqlite")  # type: ignore[attr-defined, no-any-return]


def test_ten_thousand_readings_with_duplicates_and_reordering(
    sqlite_store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(sqlite_store, *shared_broker)
    start = hours_ago(4)
    devices = [f"dev{i}" for i in range(8)]
    for i, device in enumerate(devices):
        rig.bind(device, f"patient-{i}", start)
    unique = [
        (rig.topic(device), payload)
        for device in devices
        for payload in observation_payloads(1000, start=start, boot_id="b1")
    ]
    rng = random.Random(5)
    messages = unique + rng.sample(unique, 2000)  # resends
    rng.shuffle(messages)  # arrival in any order
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, messages)
        wait_for(lambda: subscriber.stats.processed >= len(messages), 30, "10,000 readings")
        assert subscriber.stats.stored == 8000
        assert subscriber.stats.duplicate == 2000
        assert sqlite_store.count("observations") == 8000
        assert _stored_ids(sqlite_store, "dev3") == {f"b1.{seq}" for seq in range(1000)}
        wait_for(lambda: subscriber.stats.acked == len(messages), 10, "acknowledgements")
    finally:
        rig.close()


def test_killed_subscriber_loses_nothing(tmp_path: Path, own_broker: Broker) -> None:
    from medtwin.data.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'kill.db'}")
    rig = Rig(store, own_broker.host, own_broker.port)
    start = hours_ago(2)
    rig.bind("pump", "p1", start)
    first = rig.subscriber(batch_size=200)
    messages = [
        (rig.topic("pump"), payload)
        for payload in observation_payloads(6000, start=start, boot_id="k")
    ]
    publisher = threading.Thread(target=publish, args=(rig.host, rig.port, messages))
    publisher.start()
    try:
        wait_for(lambda: first.stats.stored >= 500, 20, "the first readings")
        first.abort()  # mid-stream, with messages received and not acknowledged
        killed_at = store.count("observations")
        assert killed_at < len(messages)
        publisher.join(30)
        second = rig.subscriber()  # same client id: the broker's session resumes
        wait_for(lambda: store.count("observations") == len(messages), 30, "every reading")
        assert _stored_ids(store, "pump") == {f"k.{seq}" for seq in range(6000)}
        assert second.stats.received >= len(messages) - killed_at
    finally:
        publisher.join(30)
        rig.close()
        store.close()


def test_unbound_bad_and_bound_readings(store: SqlStore, shared_broker: tuple[str, int]) -> None:
    rig = Rig(store, *shared_broker)
    bound_from, unbound_at = hours_ago(3), hours_ago(1)
    rig.bind("mon", "p7", bound_from, unbound_at)

    def reading(seq: int, when: object, **extra: object) -> bytes:
        document = {"code": "8867-4", "value": 70, "unit": "/min", "boot_id": "b", "seq": seq}
        document["time"] = when.isoformat().replace("+00:00", "Z")  # type: ignore[attr-defined]
        document.update(extra)
        return json.dumps(document).encode()

    messages = [
        (rig.topic("mon"), reading(1, hours_ago(4))),  # before the binding
        (rig.topic("mon"), reading(2, hours_ago(2))),  # during it
        (rig.topic("mon"), reading(3, hours_ago(0.5))),  # after the unbind
        (rig.topic("stray"), reading(1, hours_ago(2))),  # a device never bound
        (rig.topic("mon"), reading(4, hours_ago(2), value="fast")),  # value of wrong type
        (rig.topic("mon"), b'{"code": "8867-4", "seq": 5}'),  # no boot_id
        (rig.topic("mon"), b"\xff not json"),
        (
            rig.topic("mon", "interventions"),
            json.dumps(
                {
                    "kind": "insulin-bolus",
                    "amount": 2.5,
                    "unit": "U",
                    "time": hours_ago(2).isoformat(),
                    "boot_id": "b",
                    "seq": 6,
                }
            ).encode(),
        ),
    ]
    subscriber = rig.subscriber()
    try:
        publish(rig.host, rig.port, messages + messages[-1:])  # the bolus twice
        wait_for(lambda: subscriber.stats.processed >= len(messages) + 1, 20, "every message")
    finally:
        rig.close()
    page = store.history("p7")
    assert [item.observation.source_id for item in page.items] == ["b.2"]
    with store.reading() as conn:
        rows = conn.execute(interventions.select()).all()
    assert [(r.source, r.source_id, r.patient_id, r.kind, r.amount) for r in rows] == [
        ("mon", "b.6", "p7", "insulin-bolus", 2.5)
    ]
    entries = {(e.location, e.reason.split(" at ")[0]) for e in store.quarantined()}
    mon = rig.topic("mon")
    assert (f"{mon}: patient", "device mon is not bound to a patient") in entries
    assert (f"{rig.topic('stray')}: patient", "device stray is not bound to a patient") in entries
    locations = [e.location for e in store.quarantined()]
    assert locations.count(f"{mon}: patient") == 2  # before the bind and after the unbind
    assert f"{mon}: value" in locations
    assert f"{mon}: boot_id" in locations
    assert mon in locations  # not JSON: the whole message
    assert all(e.channel == "mqtt" for e in store.quarantined())


def test_device_may_publish_only_to_its_own_topics(tmp_path: Path) -> None:
    from medtwin.data.store import open_store

    from .conftest import MOSQUITTO, _unavailable

    if not Path(MOSQUITTO).exists():
        _unavailable(f"no mosquitto binary at {MOSQUITTO}")
    accounts = BrokerAccounts(tmp_path / "passwd", tmp_path / "acl", root="medtwin/devices")
    d1_password = accounts.add_device("d1")
    accounts.add_device("d2")
    service_password = accounts.add_service("medtwin-ingest")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = Broker(directory, password_file=accounts.password_file, acl_file=accounts.acl_file)
    broker.start()
    store = open_store(f"sqlite:///{tmp_path / 'acl.db'}")
    rig = Rig(
        store,
        broker.host,
        broker.port,
        root="medtwin/devices",
        username="medtwin-ingest",
        password=service_password,
    )
    start = hours_ago(1)
    rig.bind("d1", "p1", start)
    rig.bind("d2", "p2", start)
    try:
        subscriber = rig.subscriber()
        own = observation_payloads(3, start=start, boot_id="own")
        forged = observation_payloads(3, start=start, boot_id="forged")
        publish(
            broker.host,
            broker.port,
            [(rig.topic("d2"), p) for p in forged] + [(rig.topic("d1"), p) for p in own],
            username="d1",
            password=d1_password,
        )
        wait_for(lambda: subscriber.stats.stored >= 3, 10, "d1's own readings")
        assert _stored_ids(store, "d1") == {"own.0", "own.1", "own.2"}
        assert _stored_ids(store, "d2") == set()
        assert subscriber.stats.received == 3  # the broker never passed the forged ones on
        # A wrong password is refused outright.
        refused = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="x")
        refused.username_pw_set("d1", "wrong")
        assert refused.connect(broker.host, broker.port) == paho.MQTT_ERR_SUCCESS
        outcome: list[object] = []
        refused.on_connect = lambda _c, _u, _f, reason, _p: outcome.append(reason)
        refused.loop_start()
        wait_for(lambda: outcome, 5, "the broker's answer")
        refused.loop_stop()
        assert outcome[0].is_failure  # type: ignore[attr-defined]
    finally:
        rig.close()
        broker.stop()
        store.close()


def test_reconnects_after_the_broker_goes_away(tmp_path: Path, own_broker: Broker) -> None:
    from medtwin.data.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'reconnect.db'}")
    rig = Rig(store, own_broker.host, own_broker.port)
    start = hours_ago(1)
    rig.bind("hr", "p1", start)
    try:
        subscriber = rig.subscriber()
        payloads = observation_payloads(4, start=start, boot_id="r")
        publish(rig.host, rig.port, [(rig.topic("hr"), payloads[0])])
        wait_for(lambda: subscriber.stats.stored == 1, 10, "the first reading")
        own_broker.stop()
        wait_for(lambda: not subscriber.connected, 10, "the disconnect")
        own_broker.start()  # a fresh broker: no session, the subscriber subscribes again
        wait_for(lambda: subscriber.connected, 15, "the reconnect")
        publish(rig.host, rig.port, [(rig.topic("hr"), p) for p in payloads[1:]])
        wait_for(lambda: subscriber.stats.stored == 4, 10, "the readings after the reconnect")
        assert subscriber.stats.connects == 2
    finally:
        rig.close()
        store.close()
