"""Ingestion throughput: the whole path against a plain sqlite3 insert.

200,000 observations for 1,000 patients, in batches of 1,000, go through
validation, the SQLite store (one transaction per batch, idempotency,
quarantine), the twin runtime and NEWS2. The baseline inserts the same rows
into the same schema (same indexes, same journal and durability settings)
with ``sqlite3.executemany``, one transaction per batch, in the same run.

medtwin runs twice: through ``Ingestor.ingest_stream`` with a writer process (the
store's inserts in a second process, overlapping validation and the twins here:
the headline figure), and through ``Ingestor.ingest`` one batch at a time.

Run: ``medtwin bench ingest`` or ``python bench/ingest.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from medtwin.core.clock import FixedClock, to_us
from medtwin.data.store import open_store
from medtwin.data.store.schema import OBSERVATION_COLUMNS
from medtwin.data.store.sqlite import TUNING
from medtwin.data.store.writer import WriterProcess
from medtwin.data.validation import parse_time_us
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.ingest import IngestResult

START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
VITALS = (
    ("9279-1", "/min", 18.0),
    ("59408-5", "%", 93.0),
    ("3150-0", "%", 21.0),
    ("8480-6", "mm[Hg]", 120.0),
    ("8462-4", "mm[Hg]", 80.0),
    ("8867-4", "/min", 80.0),
    ("8310-5", "Cel", 37.0),
    ("80288-4", "{score}", "A"),
)


def workload(patients: int, per_patient: int) -> list[dict[str, Any]]:
    """Items in arrival order: every patient's monitor reports once per step (s apart)."""
    items: list[dict[str, Any]] = []
    for step in range(per_patient):
        code, unit, base = VITALS[step % len(VITALS)]
        moment = (START + timedelta(seconds=step * 10)).isoformat().replace("+00:00", "Z")
        for p in range(patients):
            value: float | str = base if isinstance(base, str) else base + (p + step) % 7
            items.append(
                {
                    "id": f"m{step}-{p}",
                    "source": f"monitor-{p % 50}",
                    "patient": f"p{p:04d}",
                    "code": code,
                    "value": value,
                    "unit": unit,
                    "time": moment,
                }
            )
    return items


def run_medtwin(
    items: list[dict[str, Any]],
    batch: int,
    folder: Path,
    synchronous: str = "FULL",
    *,
    stream: bool = True,
) -> float:
    """Seconds for the whole path.

    ``stream``: ``Ingestor.ingest_stream`` with a writer process, which stores batch N
    while this process validates batch N+1 and updates the twins of batch N-1; else
    ``Ingestor.ingest``, one batch at a time. The writer is started, and has opened
    the store, before the clock starts (as the store is opened before it).
    """
    last = max(parse_time_us(i["time"]) for i in items)
    clock = FixedClock(START)
    clock.set(datetime.fromtimestamp(last / 1e6, tz=UTC))
    url = f"sqlite:///{folder / ('medtwin.db' if stream else 'medtwin-batch.db')}"
    store = open_store(url, sqlite_synchronous=synchronous)
    runtime = TwinRuntime(clock)
    ingestor = Ingestor(store, runtime, EventBus(), clock)
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    with contextlib.ExitStack() as stack:
        writer = None
        if stream:
            writer = stack.enter_context(
                WriterProcess(url, sqlite_synchronous=synchronous, migrate=False)
            )
        started = time.perf_counter()
        if writer is None:
            answers: Iterable[list[IngestResult]] = (
                ingestor.ingest(b, channel="bench") for b in batches
            )
        else:
            answers = ingestor.ingest_stream(batches, channel="bench", writer=writer)
        for results in answers:
            bad = [r for r in results if r.status != "stored"]
            assert not bad, bad[0]
        elapsed = time.perf_counter() - started
    assert store.count("observations") == len(items)
    store.close()
    return elapsed


def run_baseline(
    items: list[dict[str, Any]], batch: int, folder: Path, synchronous: str = "FULL"
) -> float:
    """Seconds for plain executemany of the same rows into the same schema."""
    path = folder / "plain.db"
    open_store(f"sqlite:///{path}").close()  # same schema and indexes, made by the migrations
    received = to_us(START)
    rows = [
        (
            i["source"],
            i["id"],
            i["patient"],
            "http://loinc.org",
            i["code"],
            None if isinstance(i["value"], str) else float(i["value"]),
            i["value"] if isinstance(i["value"], str) else None,
            i["unit"],
            parse_time_us(i["time"]),
            "final",
            1,
            0,
            received,
        )
        for i in items
    ]
    sql = (
        f"INSERT INTO observations ({', '.join(OBSERVATION_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(OBSERVATION_COLUMNS))})"
    )
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    for pragma in TUNING:  # the same WAL checkpointing as the store, for a like-for-like rate
        conn.execute(pragma)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 observations, 3 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="SQLite durability for both sides: FULL (the store's default) survives power loss",
    )
    args = parser.parse_args()
    patients, per_patient, runs = (1000, 20, 3) if args.quick else (1000, 200, 5)
    runs = args.runs or runs
    batch = 1000
    items = workload(patients, per_patient)
    # The 200,000 input dicts live for the whole run, as a sender's buffer would, not in
    # medtwin; keep the collector from rescanning them in every full collection.
    gc.collect()
    gc.freeze()
    n = len(items)
    medtwin_rates: list[float] = []
    batch_rates: list[float] = []
    plain_rates: list[float] = []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            plain_rates.append(n / run_baseline(items, batch, folder, args.synchronous))
            medtwin_rates.append(n / run_medtwin(items, batch, folder, args.synchronous))
            batch_rates.append(
                n / run_medtwin(items, batch, folder, args.synchronous, stream=False)
            )
        print(
            f"run {run + 1}/{runs}: medtwin {medtwin_rates[-1]:,.0f} obs/s, "
            f"one batch at a time {batch_rates[-1]:,.0f} obs/s, "
            f"plain executemany {plain_rates[-1]:,.0f} obs/s",
            flush=True,
        )
    medtwin_rate = statistics.median(medtwin_rates)
    batch_rate = statistics.median(batch_rates)
    plain_rate = statistics.median(plain_rates)
    print(
        f"ingest: {n:,} observations, {patients:,} patients, batches of {batch:,}, {runs} runs, "
        f"SQLite synchronous={args.synchronous}\n"
        f"  medtwin (validate, store, twins, NEWS2): {medtwin_rate:,.0f} obs/s (median)\n"
        f"  medtwin, one batch at a time:            {batch_rate:,.0f} obs/s (median)\n"
        f"  plain sqlite3.executemany, same schema:  {plain_rate:,.0f} obs/s (median)\n"
        f"  ratio: {medtwin_rate / plain_rate:.1%} of the plain insert rate"
    )


if __name__ == "__main__":
    main()
