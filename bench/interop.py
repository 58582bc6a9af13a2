"""Interoperability throughput: FHIR bundles, HL7 v2 over MLLP, MQTT device readings.

- FHIR: resources/s loading the Synthea folders (../shared/data/synthea-r4 and
  synthea-hiv, batch bundles first) into a fresh SQLite store (synchronous
  FULL); baseline: the same bundles only parsed with ``json.loads``.
- HL7 v2: ORU^R01 messages/s over MLLP with acknowledgements after commit
  (see bench/interop_hl7.py, run here too).
- MQTT: readings/s from publish to stored against the Mosquitto on
  127.0.0.1:1883, QoS 1, PUBACK after commit; baseline: a plain paho
  publisher sending the same readings at QoS 1 with nobody subscribed (what
  the broker and one client manage without medtwin), in the same run.

Each figure is the median of the runs with its baseline's ratio.
Run: ``medtwin bench interop`` or ``python bench/interop.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.core.clock import SystemClock
from medtwin.data.store import open_store
from medtwin.devices.mqtt import MqttConfig, MqttSubscriber
from medtwin.devices.mqtt.bindings import DeviceBindings
from medtwin.devices.mqtt.loadgen import measure_readings_per_s, observation_payloads, publish
from medtwin.twins import EventBus, Ingestor, TwinRuntime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mqtt_run(readings: int, devices: int = 10) -> tuple[float, float]:
    """(medtwin readings/s, plain counting subscriber messages/s) for one run."""
    root = f"bench-{uuid.uuid4().hex[:8]}"
    names = [f"dev{i}" for i in range(devices)]
    start = datetime.now(UTC) - timedelta(hours=6)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        clock = SystemClock()
        ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
        bindings = DeviceBindings(store)
        for i, name in enumerate(names):
            bindings.bind(name, f"p{i}", from_us=0, now_us=clock.now_us())
        config = MqttConfig(client_id=f"bench-{uuid.uuid4().hex[:8]}", root=root)
        subscriber = MqttSubscriber(config, ingestor)
        subscriber.start()
        subscriber.wait_connected(10)
        try:
            rate = measure_readings_per_s(
                subscriber, names, per_device=readings // devices, start=start
            )
        finally:
            subscriber.stop()
            store.close()
    return rate, _publish_rate(readings, start)


def _publish_rate(readings: int, start: datetime) -> float:
    """Messages/s the broker takes at QoS 1 (PUBACK each) with nobody subscribed."""
    topic = f"bench-plain-{uuid.uuid4().hex[:8]}/d/observations"
    payloads = observation_payloads(readings, start=start)
    began = time.perf_counter()
    publish("127.0.0.1", 1883, [(topic, p) for p in payloads])
    return readings / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    readings = 2_000 if args.quick else 10_000

    mqtt = [mqtt_run(readings) for _ in range(args.runs)]
    ours = statistics.median(r for r, _ in mqtt)
    plain = statistics.median(b for _, b in mqtt)
    print(
        f"MQTT, {readings:,} readings from 10 devices, QoS 1, PUBACK after commit\n"
        f"  medtwin publish -> stored: {ours:,.0f} readings/s (median of {args.runs})\n"
        f"  plain QoS 1 publishing, no subscriber: {plain:,.0f} messages/s "
        f"(medtwin at {ours / plain:.0%} of it)"
    )
    hl7 = Path(__file__).with_name("interop_hl7.py")
    if hl7.is_file():
        runpy.run_path(str(hl7), run_name="__main__")


if __name__ == "__main__":
    main()
