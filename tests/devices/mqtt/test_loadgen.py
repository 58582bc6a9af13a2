"""The load generator that the benchmark measures with, end to end."""

from __future__ import annotations

import shutil

import pytest

from medtwin.data.store import SqlStore
from medtwin.devices.mqtt.loadgen import measure_readings_per_s

from .conftest import Rig, _unavailable, hours_ago


@pytest.mark.parametrize("use_mosquitto_pub", [True, False])
def test_measure_stores_every_reading(
    sqlite_store: SqlStore, shared_broker: tuple[str, int], use_mosquitto_pub: bool
) -> None:
    if use_mosquitto_pub and shutil.which("mosquitto_pub") is None:
        _unavailable("no mosquitto_pub")
    rig = Rig(sqlite_store, *shared_broker)
    start = hours_ago(2)
    devices = ["d0", "d1", "d2"]
    for n, device in enumerate(devices):
        rig.bind(device, f"p{n}", start)
    subscriber = rig.subscriber()
    try:
        rate = measure_readings_per_s(
            subscriber,
            devices,
            per_device=400,
            start=start,
            timeout_s=30,
            use_mosquitto_pub=use_mosquitto_pub,
        )
    finally:
        rig.close()
    assert rate > 0
    assert subscriber.stats.stored == 1200
    assert sqlite_store.count("observations") == 1200
    assert {i.observation.source_id for i in sqlite_store.history("p2", limit=500).items} == {
        f"bench.{seq}" for seq in range(400)
    }


@pytest.fixture
def sqlite_store(stores: object) -> SqlStore:
    return stores.new("sqlite")  # type: ignore[attr-defined, no-any-return]
