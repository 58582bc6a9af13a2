"""Module graph: NEWS2 as eight modules over a ward of 1,000 twins, with provenance.

Figures (medians of the runs):

(a) recompute: one new pulse reading for one twin, then the planner's request for
    that twin's NEWS2 (the pulse sub-score and the aggregate recompute, both
    results and their inputs are stored in one transaction, SQLite synchronous FULL);
(b) cached: the same request again, nothing changed (fingerprints only);
    target: (a) / (b) >= 10;
(c) full ward: every module's version bumped, then one request for all 1,000
    twins (8,000 results and their provenance rows stored);
    baseline: the bare vectorized ``news2()`` call on the same values plus a plain
    sqlite3 insert of the same result and input rows into a file with the same
    tables and index (synchronous FULL, one transaction; the file is kept from run
    to run, so its tables grow as the store's do), measured in the same run;
    target: (c) <= 2 x baseline.

Run: ``medtwin bench modules`` or ``python bench/modules.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.core.clock import SystemClock
from medtwin.data.store import Origin, SqlStore, open_store
from medtwin.models.modules import FunctionModule, ModuleGraph
from medtwin.models.scores import news2
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.planner import Planner

CODES = {
    "9279-1": ("/min", 10, 28),
    "59408-5": ("%", 88, 100),
    "3150-0": ("%", 21, 40),
    "8480-6": ("mm[Hg]", 85, 200),
    "8867-4": ("/min", 40, 140),
    "8310-5": ("Cel", 35.0, 39.5),
}


def ward(store: SqlStore, twins: int, rng: np.random.Generator) -> tuple[Ingestor, Planner]:
    clock = SystemClock()
    runtime = TwinRuntime(clock)
    ingestor = Ingestor(store, runtime, EventBus(), clock)
    at = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    items: list[dict[str, Any]] = []
    for i in range(twins):
        for code, (unit, low, high) in CODES.items():
            value = round(float(rng.uniform(low, high)), 1)
            items.append(_item(f"p{i}", code, value, unit, at, f"{i}.{code}"))
        items.append(_item(f"p{i}", "80288-4", "A", "", at, f"{i}.avpu"))
    for start in range(0, len(items), 1400):
        batch = items[start : start + 1400]
        origins = [Origin("bench", f"batch-{start}", f"[{k}]") for k in range(len(batch))]
        ingestor.ingest(batch, origins=origins)
    graph = ModuleGraph(news2_modules(), codes=runtime.codes)
    return ingestor, Planner(graph, runtime, store)


def _item(patient: str, code: str, value: object, unit: str, at: str, key: str) -> dict[str, Any]:
    return {
        "id": key,
        "source": "bench",
        "patient": patient,
        "code": code,
        "value": value,
        "unit": unit,
        "time": at,
    }


def one_twin(ingestor: Ingestor, planner: Planner, repeats: int, run: int) -> tuple[float, float]:
    """(median s of a recompute after a new reading, median s of a cached request)."""
    recompute, cached = [], []
    now = datetime.now(UTC).isoformat()
    for k in range(repeats):
        patient = f"p{k}"
        reading = _item(patient, "8867-4", 60 + k % 50, "/min", now, f"new.{run}.{k}")
        assert ingestor.ingest([reading])[0].status == "stored"
        started = time.perf_counter()
        derived = planner.request(["news2"], [patient])
        recompute.append(time.perf_counter() - started)
        assert derived.runs["news2"].computed[0]
        started = time.perf_counter()
        derived = planner.request(["news2"], [patient])
        cached.append(time.perf_counter() - started)
        assert not derived.runs["news2"].computed[0]
    return statistics.median(recompute), statistics.median(cached)


def bump(planner: Planner, version: str) -> None:
    replaced = []
    for module in planner.graph:
        assert isinstance(module, FunctionModule)
        replaced.append(
            FunctionModule(
                module.name,
                version,
                module.inputs,
                module.outputs,
                module.function,
                module.parameters,
            )
        )
    planner.graph.register(*replaced, replace=True)


def full_ward(planner: Planner, store: SqlStore, version: str, tmp: Path) -> tuple[float, float]:
    """(s for the planner's full-ward recompute, s for bare news2() + plain insert)."""
    bump(planner, version)
    started = time.perf_counter()
    derived = planner.request(["news2"])
    planner_s = time.perf_counter() - started
    assert all(run.computed.all() for run in derived.runs.values())
    fingerprints = [fp for run in derived.runs.values() for fp in run.fingerprints]

    # The same rows, read back, for the plain insert.
    with store.reading() as conn:
        results = conn.exec_driver_sql(
            "SELECT * FROM module_results WHERE version = ?", (version,)
        ).all()
        inputs = conn.exec_driver_sql(
            "SELECT i.* FROM module_inputs i JOIN module_results r "
            "ON r.fingerprint = i.fingerprint WHERE r.version = ?",
            (version,),
        ).all()
    assert len(results) == len(fingerprints)

    runtime = planner.runtime
    rows = runtime.rows_of(derived.patients)
    now = runtime.clock.now_us()
    window = runtime.window_us
    values = {code: runtime.latest_values(rows, code, window, now)[0] for code in runtime.codes}
    # One file for every run: its tables grow as the store's do, run after run.
    plain = sqlite3.connect(tmp / "plain.db", isolation_level=None)
    plain.execute("PRAGMA journal_mode=WAL")
    plain.execute("PRAGMA synchronous=FULL")
    plain.execute(
        "CREATE TABLE IF NOT EXISTS module_results (fingerprint TEXT PRIMARY KEY, "
        "module TEXT, version TEXT, patient_id TEXT, computed_us INTEGER, outputs TEXT, "
        "parameters TEXT)"
    )
    plain.execute(
        "CREATE TABLE IF NOT EXISTS module_inputs (fingerprint TEXT, position INTEGER, "
        "input TEXT, kind TEXT, source TEXT, source_id TEXT, version INTEGER, upstream TEXT, "
        "value TEXT, "
        "PRIMARY KEY (fingerprint, position))"
    )
    plain.execute(  # the store's index, so both inserts maintain the same structures
        "CREATE INDEX IF NOT EXISTS ix_module_results_patient "
        "ON module_results (patient_id, module, computed_us)"
    )
    started = time.perf_counter()
    news2(
        respiration_rate=values["9279-1"],
        spo2=values["59408-5"],
        fio2=values["3150-0"],
        systolic_bp=values["8480-6"],
        pulse=values["8867-4"],
        consciousness=values["80288-4"],
        temperature=values["8310-5"],
        spo2_scale=runtime.attribute(rows, "spo2_scale").astype(int),
    )
    plain.execute("BEGIN")
    plain.executemany("INSERT INTO module_results VALUES (?, ?, ?, ?, ?, ?, ?)", results)
    plain.executemany("INSERT INTO module_inputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", inputs)
    plain.execute("COMMIT")
    baseline_s = time.perf_counter() - started
    plain.close()
    return planner_s, baseline_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 twins, fewer repeats")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    twins = 200 if args.quick else 1000
    repeats = 10 if args.quick else 40
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        store = open_store(f"sqlite:///{tmp / 'ward.db'}", sqlite_synchronous="FULL")
        ingestor, planner = ward(store, twins, rng)
        planner.request(["news2"])  # first fill, not measured
        recompute, cached, wards, baselines = [], [], [], []
        for run in range(args.runs):
            a, b = one_twin(ingestor, planner, repeats, run)
            recompute.append(a)
            cached.append(b)
            c, base = full_ward(planner, store, f"run{run}", tmp)
            wards.append(c)
            baselines.append(base)
        store.close()
    a, b = statistics.median(recompute), statistics.median(cached)
    c, base = statistics.median(wards), statistics.median(baselines)
    print(f"module graph, NEWS2 as 8 modules, {twins} twins, median of {args.runs} runs")
    print(f"(a) recompute one twin after a new reading: {a * 1e3:8.3f} ms")
    print(f"(b) cached request for one twin:            {b * 1e3:8.3f} ms   (a)/(b) = {a / b:.1f}x")
    print(f"(c) full-ward recompute with provenance:    {c * 1e3:8.1f} ms")
    print(f"    bare news2() + plain insert (baseline):  {base * 1e3:8.1f} ms")
    print(f"    (c) / baseline = {c / base:.2f}x")


if __name__ == "__main__":
    main()
