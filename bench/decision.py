"""Decision support: risk predictions with SHAP explanations for a ward of 1,000 twins.

Figures (medians of the runs), all on the same feature rows of the ward's newest hour:

(a) bare model call: the booster's raw output and the calibration, no explanation
    (the baseline, measured in the same run);
(b) predictions with explanations: probability, log-odds, TreeSHAP values of every
    feature (``shap.TreeExplainer``) and the top-5 factors with their values, for
    every twin; throughput in twins per second, and (b) / (a);
(c) as (b) with LightGBM's own ``pred_contrib`` TreeSHAP (no ``shap`` package);
(d) features: the newest hour's features of every twin from its hourly history
    (``latest_features``), for scale;
(e) alarm latency, observation to event: a ward of the same size on a SQLite store
    (synchronous FULL), NEWS2 modules and the shipped alarm rules; one twin's vital
    signs turn critical: the time from handing the readings to the ingestor (stored,
    twin updated) through the alarm engine's evaluation of that twin (planner request,
    rules) to the ``alarm.raised`` event it publishes, and its ratio to (a).

The model: LightGBM trees (the default ``GbmParams``) trained once on a generated
ICU cohort (not measured).  One thread, as served.

Run: ``medtwin bench decision`` or ``python bench/decision.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from medtwin.core.clock import FixedClock
from medtwin.data.audit import AuditLog
from medtwin.data.store import open_store
from medtwin.models.learning import generate_cohort
from medtwin.models.learning.explain import RiskPredictor
from medtwin.models.learning.features import DEFAULT_SPEC, latest_features, patient_features
from medtwin.models.learning.training import RiskModel, fit_calibrator, train_gbm
from medtwin.models.modules import ModuleGraph
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.alarms import AlarmEngine, load_rules
from medtwin.twins.planner import Planner

# (code, unit, normal value, critical value): NEWS2 0 before, high after.
VITALS = (
    ("9279-1", "/min", 16, 28),  # respiration rate
    ("59408-5", "%", 97, 90),  # SpO2
    ("3150-0", "%", 21, 21),  # inspired oxygen
    ("8480-6", "mm[Hg]", 125, 88),  # systolic pressure
    ("8867-4", "/min", 72, 135),  # heart rate
    ("80288-4", "", "A", "A"),  # consciousness (ACVPU)
    ("8310-5", "Cel", 37.0, 39.4),  # temperature
)


def trained_model(patients: int) -> RiskModel:
    cohort = generate_cohort(patients, seed=7)
    data = patient_features(cohort.patients)
    cut = int(patients * 0.8)
    train, cal = data.rows_of(np.arange(cut)), data.rows_of(np.arange(cut, patients))
    booster = train_gbm(train, seed=7)
    raw = booster.predict(cal.X, raw_score=True, num_threads=1)
    return RiskModel(booster, fit_calibrator(raw, cal.y))


def ward(twins: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly histories (twins, history_h, channels) ending now, and the static columns."""
    spec = DEFAULT_SPEC
    cohort = generate_cohort(twins, seed=8, min_hours=spec.history_h, max_hours=96)
    series = np.empty((twins, spec.history_h, len(spec.channels)))
    static = np.empty((twins, len(spec.static)))
    for i, p in enumerate(cohort.patients):
        series[i] = np.column_stack([p.column(c)[-spec.history_h :] for c in spec.channels])
        static[i] = [p.column(c)[-1] for c in spec.static]
    return series, static


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alarm_latencies(twins: int, runs: int, directory: Path) -> list[float]:
    """Seconds from one twin's critical readings to its ``alarm.raised`` event, per run."""
    logging.getLogger("medtwin.twins.alarms").setLevel(logging.ERROR)  # rules left out
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FixedClock(now)
    store = open_store(f"sqlite:///{directory / 'alarms.db'}")
    runtime = TwinRuntime(clock)
    bus = EventBus()
    ingestor = Ingestor(store, runtime, bus, clock, conditioner=None)
    graph = ModuleGraph(news2_modules(), codes=runtime.codes)
    planner = Planner(graph, runtime, store, clock=clock)
    rules = load_rules().bind({m.name: [o.name for o in m.outputs] for m in graph})
    engine = AlarmEngine(rules, store, planner, bus, AuditLog(store, b"k" * 32, clock), clock)

    def readings(patient: str, critical: bool, at: datetime) -> list[dict[str, object]]:
        return [
            {"id": f"{patient}-{code}-{at.timestamp():.0f}", "source": "monitor",
             "patient": patient, "code": code, "value": high if critical else normal,
             "unit": unit, "time": at.isoformat()}
            for code, unit, normal, high in VITALS
        ]  # fmt: skip

    patients = [f"bed-{i:05d}" for i in range(twins)]
    ward = [r for p in patients for r in readings(p, False, now - timedelta(minutes=10))]
    ingestor.ingest(ward)
    engine.evaluate()  # nothing to raise: every twin scores 0
    seen: list[float] = []
    for i in range(runs):
        clock.advance(60)
        patient = patients[i]
        started = time.perf_counter()
        ingestor.ingest(readings(patient, True, clock.now()))
        events = engine.evaluate([patient])
        seen.append(time.perf_counter() - started)
        raised = [e for e in events if e["type"] == "alarm.raised"]
        assert raised, f"no alarm for {patient}: {events}"
    store.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 twins, a smaller model")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    twins = 200 if args.quick else 1000
    model = trained_model(300 if args.quick else 1000)
    series, static = ward(twins)
    rows = latest_features(series, static)
    with_shap = RiskPredictor(model, backend="shap")
    with_lgb = RiskPredictor(model, backend="lightgbm")

    def explained(predictor: RiskPredictor) -> Callable[[], object]:
        def run() -> object:
            explanation = predictor.explain(rows)
            return explanation.top_indices(5)

        return run

    explained(with_shap)()  # import shap and build the explainer once, not measured
    bare = timed(lambda: model.predict_proba(rows), args.runs)
    shap_s = timed(explained(with_shap), args.runs)
    lgb_s = timed(explained(with_lgb), args.runs)
    feats = timed(lambda: latest_features(series, static), args.runs)
    trees = model.booster.num_trees()
    print(
        f"risk decisions, {twins} twins, {len(DEFAULT_SPEC.names)} features, {trees} trees, "
        f"median of {args.runs} runs"
    )
    print(
        f"(a) bare model call (raw + calibration):  {bare * 1e3:8.2f} ms  "
        f"{twins / bare:10,.0f} twins/s"
    )
    print(
        f"(b) with SHAP (shap.TreeExplainer):       {shap_s * 1e3:8.2f} ms  "
        f"{twins / shap_s:10,.0f} twins/s   (b)/(a) = {shap_s / bare:.1f}x"
    )
    print(
        f"(c) with SHAP (LightGBM pred_contrib):    {lgb_s * 1e3:8.2f} ms  "
        f"{twins / lgb_s:10,.0f} twins/s   (c)/(a) = {lgb_s / bare:.1f}x"
    )
    print(f"(d) features of the newest hour:          {feats * 1e3:8.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        alarm = statistics.median(alarm_latencies(twins, args.runs, Path(tmp)))
    print(
        f"(e) alarm, observation to event:          {alarm * 1e3:8.2f} ms  "
        f"(ward of {twins} twins)  (e)/(a) = {alarm / bare:.1f}x"
    )


if __name__ == "__main__":
    main()
