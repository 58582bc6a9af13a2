"""Training and evaluation of learned risk models, with patient-level splits.

The pipeline, from hourly records (:class:`~medtwin.models.learning.physionet.PatientSeries`:
the PhysioNet 2019 files or the generated cohort) to a calibrated, evaluated model:

1. :func:`patient_split`: patients (never hours) go to *train*, *calibration* and
   *test*, stratified by whether the patient ever has a positive label, so no
   patient's hours are on both sides of any split.
2. :func:`~medtwin.models.learning.features.patient_features` on every hour.
3. :func:`train_gbm`: LightGBM gradient-boosted trees (binary log-loss; fixed seeds,
   ``deterministic``, row-wise histograms, few threads: same data and seed, same
   model).  :func:`train_logistic`: the baseline, an L2 logistic regression on the
   same features (median imputation with missing-value indicators, standardized).
4. :func:`fit_calibrator`: Platt scaling (default; strictly increasing, so ranking
   metrics are those of the raw model) or isotonic regression, fitted on the
   calibration patients' raw log-odds.
5. :func:`evaluate`: AUROC, AUPRC, Brier score, calibration curve and the
   PhysioNet/CinC 2019 normalized utility at a threshold chosen on the calibration
   patients (:func:`best_threshold`), on the test patients.  :func:`news2_scores`
   gives the NEWS2 comparison on the same hours.

:func:`train_risk_model` runs it all and returns a :class:`TrainingResult`.  A
:class:`RiskModel` is the booster, its calibrator and its feature spec; it turns
into text and JSON for the model registry (:meth:`RiskModel.to_artifact`) and back.
Metrics are per hour, over all test hours, as the challenge's ``evaluate`` does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray
from sklearn.impute import SimpleImputer  # type: ignore[import-untyped]
from sklearn.isotonic import IsotonicRegression  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.metrics import (  # type: ignore[import-untyped]
    average_precision_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

from medtwin.models.learning.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    PatientFeatures,
    patient_features,
)
from medtwin.models.learning.physionet import PatientSeries
from medtwin.models.learning.utility import cohort_utility, prediction_utility
from medtwin.models.scores.news2 import news2

__all__ = [
    "CalibrationBin",
    "Calibrator",
    "Evaluation",
    "GbmParams",
    "LogisticBaseline",
    "PatientSplit",
    "RiskModel",
    "TrainingResult",
    "best_threshold",
    "calibration_curve",
    "evaluate",
    "fit_calibrator",
    "news2_scores",
    "patient_split",
    "train_gbm",
    "train_logistic",
    "train_risk_model",
]

CalibrationMethod = Literal["platt", "isotonic"]


# -- splits -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PatientSplit:
    """Patient indices (into the training sequence) of each part; disjoint, sorted."""

    train: NDArray[np.intp]
    calibration: NDArray[np.intp]
    test: NDArray[np.intp]


def patient_split(
    events: npt.ArrayLike,
    *,
    seed: int,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> PatientSplit:
    """Split patients into train / calibration / test, stratified by ``events``.

    ``events``: (n_patients,) bool, whether each patient ever has a positive label.
    ``fractions``: shares of train, calibration and test (summing to 1).  Each
    stratum is shuffled with ``numpy.random.default_rng(seed)`` and cut in these
    shares, so every part gets about the cohort's event rate.
    """
    ev = np.asarray(events, dtype=bool)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError("fractions must be three non-negative shares summing to 1")
    rng = np.random.default_rng(seed)
    parts: list[list[NDArray[np.intp]]] = [[], [], []]
    for stratum in (np.flatnonzero(~ev), np.flatnonzero(ev)):
        order = rng.permutation(stratum)
        cut1 = round(fractions[0] * len(order))
        cut2 = round((fractions[0] + fractions[1]) * len(order))
        for k, piece in enumerate((order[:cut1], order[cut1:cut2], order[cut2:])):
            parts[k].append(piece)
    train, cal, test = (np.sort(np.concatenate(p)).astype(np.intp) for p in parts)
    return PatientSplit(train, cal, test)


# -- models -------------------------------------------------------------------------


@dataclass(frozen=True)
class GbmParams:
    """LightGBM settings (see LightGBM's parameter docs).

    ``num_threads`` is 1 by default: on a shared machine LightGBM's OpenMP threads
    spin while they wait, and two threads next to other work ran up to 8x slower
    than one (measured on the 2-core CI machine).
    """

    n_estimators: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 300  # hours of one stay are alike: large leaves generalize
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.5
    lambda_l2: float = 1.0
    max_bin: int = 63
    num_threads: int = 1

    def lightgbm(self, seed: int) -> dict[str, Any]:
        """The ``lgb.train`` parameter dict, with every seed fixed and determinism on."""
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "num_threads": self.num_threads,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,  # with deterministic: same histograms on every run
            "verbosity": -1,
        }


def train_gbm(data: PatientFeatures, *, seed: int, params: GbmParams = GbmParams()) -> lgb.Booster:
    """Gradient-boosted trees on ``data`` (NaN = missing, routed by the trees)."""
    dataset = lgb.Dataset(data.X, label=data.y, feature_name=list(data.names), free_raw_data=True)
    return lgb.train(params.lightgbm(seed), dataset, num_boost_round=params.n_estimators)


@dataclass(frozen=True, eq=False)
class LogisticBaseline:
    """The logistic-regression baseline: impute (median + indicators), standardize, fit."""

    pipeline: Any

    def raw(self, rows: npt.ArrayLike) -> NDArray[np.float64]:
        """Log-odds of each row."""
        out: NDArray[np.float64] = self.pipeline.decision_function(np.asarray(rows, np.float64))
        return out


def train_logistic(data: PatientFeatures, *, seed: int, c: float = 1.0) -> LogisticBaseline:
    """Fit the logistic baseline (L2, inverse strength ``c``) on the same features."""
    pipeline = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        # tol 1e-3: half the iterations of 1e-4, the same test AUROC (measured).
        LogisticRegression(C=c, max_iter=300, tol=1e-3, random_state=seed),
    )
    pipeline.fit(data.X, data.y)
    return LogisticBaseline(pipeline)


@dataclass(frozen=True)
class Calibrator:
    """Monotone map from raw log-odds to probability.

    ``platt``: ``p = 1 / (1 + exp(-(a * raw + b)))`` with ``params = (a, b)``.
    ``isotonic``: piecewise-linear through ``(x, y)`` knots, clipped at the ends.
    """

    method: CalibrationMethod
    params: tuple[float, ...] = ()
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __call__(self, raw: npt.ArrayLike) -> NDArray[np.float64]:
        r = np.asarray(raw, dtype=np.float64)
        if self.method == "platt":
            a, b = self.params
            out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(a * r + b)))
            return out
        interp: NDArray[np.float64] = np.interp(r, self.x, self.y)
        return interp

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibrator:
        method = data["method"]
        if method not in ("platt", "isotonic"):
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(
            method,
            tuple(float(v) for v in data.get("params", ())),
            tuple(float(v) for v in data.get("x", ())),
            tuple(float(v) for v in data.get("y", ())),
        )


def fit_calibrator(
    raw: npt.ArrayLike, labels: npt.ArrayLike, method: CalibrationMethod = "platt"
) -> Calibrator:
    """Fit a calibration map on held-out raw log-odds and their 0/1 labels."""
    r = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels)
    if method == "platt":
        fit = LogisticRegression(C=1e6, max_iter=1000).fit(r[:, None], y)
        return Calibrator("platt", (float(fit.coef_[0, 0]), float(fit.intercept_[0])))
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(r, y)
        xs = tuple(float(v) for v in iso.X_thresholds_)
        ys = tuple(float(v) for v in iso.y_thresholds_)
        return Calibrator("isotonic", x=xs, y=ys)
    raise ValueError(f"unknown calibration method {method!r}")


@dataclass(frozen=True, eq=False)
class RiskModel:
    """A trained risk model: booster (raw log-odds), calibrator (probability), features."""

    booster: lgb.Booster
    calibrator: Calibrator
    spec: FeatureSpec = DEFAULT_SPEC
    num_threads: int = 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.spec.names

    def raw(self, rows: npt.ArrayLike) -> NDArray[np.float64]:
        """Raw model output of each row, log-odds (before calibration)."""
        out = self.booster.predict(
            np.asarray(rows, dtype=np.float64), raw_score=True, num_threads=self.num_threads
        )
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, rows: npt.ArrayLike) -> NDArray[np.float64]:
        """Calibrated probability of each row (0..1)."""
        return self.calibrator(self.raw(rows))

    def to_artifact(self) -> tuple[bytes, dict[str, Any]]:
        """(LightGBM ``model_to_string()`` as UTF-8, JSON parameters) for the registry."""
        params = {
            "calibrator": self.calibrator.to_json(),
            "spec": json.loads(self.spec.to_json()),
        }
        return self.booster.model_to_string().encode("utf-8"), params

    @classmethod
    def from_artifact(
        cls, model: bytes, params: Mapping[str, Any], *, num_threads: int = 1
    ) -> RiskModel:
        booster = lgb.Booster(model_str=model.decode("utf-8"))
        spec = FeatureSpec.from_json(params["spec"])
        if tuple(booster.feature_name()) != spec.names:
            raise ValueError("the booster's features differ from the stored feature spec")
        return cls(booster, Calibrator.from_json(params["calibrator"]), spec, num_threads)


# -- evaluation ---------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of the calibration curve: predicted range, mean prediction, observed rate."""

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class Evaluation:
    """Hour-level metrics on a set of patients.

    ``utility``: the challenge's normalized utility of ``probability >= threshold``
    (1 perfect, 0 never alarming; NaN with no septic patient).  ``calibration``:
    bins of width 0.1 that hold any hour.
    """

    auroc: float
    auprc: float
    brier: float
    utility: float
    threshold: float
    calibration: tuple[CalibrationBin, ...]
    n_patients: int
    n_hours: int
    prevalence: float

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, JSON-ready (for the registry)."""
        return {
            "auroc": self.auroc,
            "auprc": self.auprc,
            "brier": self.brier,
            "utility": self.utility,
            "threshold": self.threshold,
            "n_patients": float(self.n_patients),
            "n_hours": float(self.n_hours),
            "prevalence": self.prevalence,
        }


def calibration_curve(
    probability: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 10
) -> tuple[CalibrationBin, ...]:
    """Reliability bins of equal width on 0..1 (empty bins left out)."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for k in range(bins):
        inside = which == k
        if inside.any():
            out.append(
                CalibrationBin(
                    float(edges[k]),
                    float(edges[k + 1]),
                    int(inside.sum()),
                    float(p[inside].mean()),
                    float(y[inside].mean()),
                )
            )
    return tuple(out)


def _per_patient(data: PatientFeatures, values: NDArray[Any]) -> list[NDArray[Any]]:
    """Split row values into one array per patient (rows are grouped by patient)."""
    cuts = np.flatnonzero(np.diff(data.patient)) + 1
    return np.split(values, cuts)


def _utility(data: PatientFeatures, probability: NDArray[np.float64], threshold: float) -> float:
    labels = _per_patient(data, data.y)
    alarms = _per_patient(data, (probability >= threshold).astype(np.int8))
    return cohort_utility(labels, alarms).normalized


def best_threshold(data: PatientFeatures, probability: npt.ArrayLike, *, grid: int = 13) -> float:
    """The alarm threshold of highest normalized utility, over quantiles of ``probability``.

    Fitted on the calibration patients, then applied unchanged to the test patients.
    """
    p = np.asarray(probability, dtype=np.float64)
    if not len(p):
        return 0.5
    candidates: NDArray[np.float64] = np.unique(np.quantile(p, np.linspace(0.50, 0.98, grid)))
    labels = _per_patient(data, data.y)
    # The normalization (best and inaction sums) does not depend on the predictions:
    # compute it once, then only the observed utility per candidate.
    none = cohort_utility(labels, [np.zeros_like(lab) for lab in labels])
    span = none.best - none.inaction
    if not span or not len(candidates):
        return 0.5
    scores = []
    for c in candidates:
        alarms = _per_patient(data, (p >= c).astype(np.int8))
        observed = sum(prediction_utility(lab, a) for lab, a in zip(labels, alarms, strict=True))
        scores.append((observed - none.inaction) / span)
    return float(candidates[int(np.argmax(scores))])


def evaluate(
    data: PatientFeatures, probability: npt.ArrayLike, *, threshold: float = 0.5
) -> Evaluation:
    """Metrics of hourly ``probability`` (or any score, for ranking metrics) on ``data``.

    AUROC and AUPRC are NaN when the hours hold one class only.  Brier score and the
    calibration curve assume ``probability`` is a probability in 0..1.
    """
    p = np.asarray(probability, dtype=np.float64)
    y = data.y.astype(np.int64)
    both = 0 < y.sum() < len(y)
    auroc = float(roc_auc_score(y, p)) if both else math.nan
    auprc = float(average_precision_score(y, p)) if both else math.nan
    return Evaluation(
        auroc=auroc,
        auprc=auprc,
        brier=float(np.mean((p - y) ** 2)) if len(y) else math.nan,
        utility=_utility(data, p, threshold) if len(y) else math.nan,
        threshold=float(threshold),
        calibration=calibration_curve(p, y),
        n_patients=int(np.unique(data.patient).size),
        n_hours=len(y),
        prevalence=float(y.mean()) if len(y) else math.nan,
    )


def news2_scores(patients: Sequence[PatientSeries]) -> NDArray[np.float64]:
    """Hourly NEWS2 of each patient's record, all hours concatenated (patient order).

    Each vital is its newest value so far (carried forward, as on an observation
    chart); respiration rate (Resp), SpO2 (O2Sat), systolic pressure (SBP), pulse
    (HR), temperature (Temp); on air (FiO2 21 %, the challenge's FiO2 column is
    sparse); Scale 1; consciousness alert unless the Glasgow Coma Scale
    (``extra["GCS"]``) is below 15, then not alert (3 points).  Hours where a vital
    was never measured score the parameters present (NEWS2's partial score).
    """
    if not patients:
        return np.empty(0)
    columns = ("Resp", "O2Sat", "SBP", "HR", "Temp")

    def carried(x: NDArray[np.float64]) -> NDArray[np.float64]:
        idx = np.where(np.isfinite(x), np.arange(len(x)), -1)
        idx = np.maximum.accumulate(idx)
        return np.where(idx >= 0, x[np.maximum(idx, 0)], np.nan)

    series = {c: np.concatenate([carried(p.column(c)) for p in patients]) for c in columns}
    gcs_parts = []
    for p in patients:
        g = p.extra.get("GCS")
        gcs_parts.append(
            carried(np.asarray(g, np.float64)) if g is not None else np.full(len(p), np.nan)
        )
    gcs = np.concatenate(gcs_parts)
    consciousness = np.where(np.isfinite(gcs) & (gcs < 15), 2.0, 0.0)  # "V" if not alert
    batch = news2(
        respiration_rate=series["Resp"],
        spo2=series["O2Sat"],
        fio2=np.full(len(gcs), 21.0),
        systolic_bp=series["SBP"],
        pulse=series["HR"],
        consciousness=consciousness,
        temperature=series["Temp"],
        spo2_scale=1,
    )
    return batch.partial_score.astype(np.float64)


# -- the whole pipeline -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """A trained model with its baseline and their test metrics.

    The three evaluations are on the same test hours, each calibrated and given its
    alarm threshold on the calibration patients (NEWS2: its hourly points, Platt-scaled).
    ``train`` holds the training rows (for the registry's fingerprint and drift
    reference), ``test`` the test rows.
    """

    model: RiskModel
    baseline: LogisticBaseline
    split: PatientSplit
    evaluation: Evaluation
    baseline_evaluation: Evaluation
    news2_evaluation: Evaluation
    train: PatientFeatures
    test: PatientFeatures
    seed: int


def train_risk_model(
    patients: Sequence[PatientSeries],
    *,
    seed: int,
    spec: FeatureSpec = DEFAULT_SPEC,
    params: GbmParams = GbmParams(),
    calibration: CalibrationMethod = "platt",
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> TrainingResult:
    """Split by patient, train the trees and the baseline, calibrate, evaluate on test."""
    features = patient_features(patients, spec)
    events = np.array([bool(np.any(p.labels)) for p in patients])
    split = patient_split(events, seed=seed, fractions=fractions)
    train = features.rows_of(split.train)
    cal = features.rows_of(split.calibration)
    test = features.rows_of(split.test)

    booster = train_gbm(train, seed=seed, params=params)
    calibrator = fit_calibrator(
        booster.predict(cal.X, raw_score=True, num_threads=params.num_threads),
        cal.y,
        calibration,
    )
    model = RiskModel(booster, calibrator, spec, params.num_threads)
    baseline = train_logistic(train, seed=seed)
    base_cal = fit_calibrator(baseline.raw(cal.X), cal.y, calibration)

    def assess(prob_cal: NDArray[np.float64], prob_test: NDArray[np.float64]) -> Evaluation:
        return evaluate(test, prob_test, threshold=best_threshold(cal, prob_cal))

    evaluation = assess(model.predict_proba(cal.X), model.predict_proba(test.X))
    baseline_evaluation = assess(base_cal(baseline.raw(cal.X)), base_cal(baseline.raw(test.X)))
    # NEWS2 is a points score: Platt-scaled on the same calibration patients (a monotone
    # map: its ranking metrics are NEWS2's own) so that its Brier score, calibration
    # curve and utility threshold compare with the models' on the same footing.
    scores = news2_scores(patients)
    cal_scores = scores[np.isin(features.patient, split.calibration)]
    test_scores = scores[np.isin(features.patient, split.test)]
    news2_cal = fit_calibrator(cal_scores, cal.y, "platt")
    news2_evaluation = assess(news2_cal(cal_scores), news2_cal(test_scores))
    return TrainingResult(
        model,
        baseline,
        split,
        evaluation,
        baseline_evaluation,
        news2_evaluation,
        train,
        test,
        seed,
    )
