"""Decision support: risk predictions with SHAP explanations for a ward of 1,000 twins.

Figures (medians of the runs), all on the same feature rows of the ward's newest hour:

(a) bare model call: the booster's raw output and the calibration, no explanation
    (the baseline, measured in the same run);
(b) predictions with explanations: probability, log-odds, TreeSHAP values of every
    feature (``shap.TreeExplainer``) and the top-5 factors with their values, for
    every twin; throughput in twins per second, and (b) / (a);
(c) as (b) with LightGBM's own ``pred_contrib`` TreeSHAP (no ``shap`` package);
(d) features: the newest hour's features of every twin from its hourly history
    (``latest_features``), for scale.

The model: LightGBM trees (the default ``GbmParams``) trained once on a generated
ICU cohort (not measured).  One thread, as served.

Run: ``medtwin bench decision`` or ``python bench/decision.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from medtwin.models.learning import generate_cohort
from medtwin.models.learning.explain import RiskPredictor
from medtwin.models.learning.features import DEFAULT_SPEC, latest_features, patient_features
from medtwin.models.learning.training import RiskModel, fit_calibrator, train_gbm


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


if __name__ == "__main__":
    main()
