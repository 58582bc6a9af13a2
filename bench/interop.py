"""Interoperability throughput: FHIR bundles, HL7 v2 over MLLP, MQTT device readings.

- FHIR: resources/s loading the Synthea folders (../shared/data/synthea-r4 and
  synthea-hiv, batch bundles first) into a fresh SQLite store (synchronous
  FULL) as ``medtwin ingest`` does: ``BundleLoader`` (reading the files, JSON
  parsing and R4 checks in a reader process, group commits here; the reader's
  start included);
  baseline: ``json.loads`` and a plain sqlite3 insert of each raw resource's
  JSON (one transaction per bundle, synchronous FULL), in the same run.
- HL7 v2: ORU^R01 messages/s over MLLP with acknowledgements after commit
  (see bench/interop_hl7.py, run here too).
- MQTT: readings/s from publish to stored against the Mosquitto on
  127.0.0.1:1883, QoS 1, PUBACK after commit; baseline: a plain paho
  publisher sending the same readings at QoS 1 with nobody subscribed (what
  the broker and one client manage without medtwin), in the same run.

Each figure is the median of the runs with its baseline's ratio; the FHIR line also gives
the CPU seconds of medtwin's two processes (which one bounds the load).
Run: ``medtwin bench interop`` or ``python bench/interop.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sqlite3
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.core.clock import SystemClock
from medtwin.core.collector import tune_collector
from medtwin.data.crypto import BlindIndex, DataKeys, Keyring
from medtwin.data.store import open_store
from medtwin.data.vault import Privacy
from medtwin.devices.fhir import BundleResult, FhirService
from medtwin.devices.fhir.loader import BundleLoader
from medtwin.devices.mqtt import MqttConfig, MqttSubscriber
from medtwin.devices.mqtt.bindings import DeviceBindings
from medtwin.devices.mqtt.loadgen import measure_readings_per_s, observation_payloads, publish
from medtwin.twins import EventBus, Ingestor, TwinRuntime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def fhir_files() -> list[Path]:
    """Synthea bundles: the HIV batches (hospital, practitioner) first, then patients."""
    hiv, r4 = SHARED / "synthea-hiv", SHARED / "synthea-r4"
    batches = sorted(hiv.glob("*Information*.json"))
    patients = sorted(p for p in hiv.glob("*.json") if p not in batches)
    return [*batches, *patients, *sorted(r4.glob("*.json"))]


@dataclass(frozen=True)
class FhirRun:
    """One fresh load: rates (resources/s) and the CPU seconds of medtwin's two processes."""

    ours: float
    baseline: float
    resources: int
    committing_cpu_s: float  # this process: planning, sealing, SQLite, twins
    reader_cpu_s: float  # the reader process: parsing, R4 checks, pickling


def fhir_run(files: list[Path]) -> FhirRun:
    """A fresh load of ``files`` by medtwin and by the baseline."""
    texts = [path.read_text() for path in files]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'fhir.db'}", sqlite_synchronous="FULL")
        keyring = Keyring.from_spec("k1:" + "A" * 43 + "=")
        store.seal_payloads(keyring)
        privacy = Privacy(keyring, DataKeys(keyring), BlindIndex(b"b" * 32), b"p" * 32)
        clock = SystemClock()
        ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
        service = FhirService(store, ingestor, privacy)
        count = sum(len(json.loads(text)["entry"]) for text in texts)
        began, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
        for loaded in BundleLoader(service).load(files, source="bench"):
            assert isinstance(loaded.outcome, BundleResult), loaded.outcome
        ours = count / (time.perf_counter() - began)
        # The reader process has ended with the load (and is counted once reaped).
        committing, reader = time.process_time() - cpu, _children_cpu() - children
        store.close()
        plain = sqlite3.connect(Path(tmp) / "plain.db", isolation_level=None)
        plain.execute("PRAGMA journal_mode=WAL")
        plain.execute("PRAGMA synchronous=FULL")
        plain.execute("CREATE TABLE r (type TEXT, id TEXT, content TEXT, PRIMARY KEY (type, id))")
        began = time.perf_counter()
        for text in texts:
            document = json.loads(text)
            plain.execute("BEGIN")
            plain.executemany(
                "INSERT OR REPLACE INTO r VALUES (?, ?, ?)",
                [
                    (
                        e["resource"]["resourceType"],
                        e["resource"].get("id"),
                        json.dumps(e["resource"]),
                    )
                    for e in document["entry"]
                ],
            )
            plain.execute("COMMIT")
        baseline = count / (time.perf_counter() - began)
        plain.close()
    return FhirRun(ours, baseline, count, committing, reader)


def _children_cpu() -> float:
    """CPU seconds of this process's ended child processes."""
    times = os.times()
    return times.children_user + times.children_system


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
    tune_collector()  # as the medtwin command does
    readings = 2_000 if args.quick else 10_000

    files = fhir_files()
    if files:
        fhir = [fhir_run(files) for _ in range(args.runs)]
        ours = statistics.median(r.ours for r in fhir)
        plain = statistics.median(r.baseline for r in fhir)
        committing = statistics.median(r.committing_cpu_s for r in fhir)
        reader = statistics.median(r.reader_cpu_s for r in fhir)
        print(
            f"FHIR, {fhir[0].resources:,} resources in {len(files)} Synthea bundles, SQLite FULL\n"
            f"  medtwin load (BundleLoader): {ours:,.0f} resources/s (median of {args.runs}); "
            f"CPU {committing:.2f} s committing, {reader:.2f} s in the reader process\n"
            f"  json.loads + plain sqlite3 insert: {plain:,.0f} resources/s "
            f"(medtwin at {ours / plain:.0%} of it)"
        )
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
