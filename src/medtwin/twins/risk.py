"""The learned deterioration risk as a module of the graph, served from the model registry.

``risk.deterioration`` reads every reading of the last :data:`WINDOW_H` hours of each
channel of :data:`~medtwin.models.learning.features.CHANNEL_CODES` (aggregate
``all``), builds the serving features of the whole batch of twins in one call
(:func:`~medtwin.models.learning.features.serving_features`), and scores and explains
them with :class:`~medtwin.models.learning.explain.RiskPredictor` (TreeSHAP).

*As of the newest reading.*  A module's ``compute`` is pure: it sees its inputs, not
the clock.  The features of a twin are those of the hour ending at its newest reading
of any channel (``as_of_s``), so the same readings always give the same risk, and the
planner's fingerprint (the readings in the window) says exactly when it changes.  The
window is longer than the features' look-back (:attr:`FeatureSpec.history_h`) by
:data:`MARGIN_H` hours, so a twin whose newest reading is up to that old still gets
exactly the training features.

*Outputs are numbers* (the planner stores floats): the calibrated ``risk``, the raw
``log_odds``, the SHAP ``base_value``, the five largest contributions as
``factor{k}_feature`` (index into the model's feature names: :meth:`ServedRisk.factors`
turns them back into names), ``factor{k}_value`` (the feature's value, NaN if
missing) and ``factor{k}_contribution`` (log-odds), and ``other_contribution``, the
sum of the remaining SHAP values, so that ``base_value + sum(contributions) +
other_contribution == log_odds``.  A twin without any reading in the window has no risk
(every output null).

*Versioned with the model.*  The module's version is ``"1+m<version>"`` (the
registered model's version) and its parameters hold the model's name, version and
training-data fingerprint: promoting another version changes the execution
fingerprint of every result, so each twin's risk is recomputed on its next refresh.

*Units.*  The twins keep lactate (LOINC 2524-7) in mmol/L; the challenge's features are
in mg/dL, so lactate readings are multiplied by :data:`LACTATE_MG_DL_PER_MMOL_L`.  A
channel whose code the code registry does not hold (``codes``) is not declared as an
input and counts as missing, as it did for patients whose records lacked it.  Static
columns of the feature spec (age, ...) are not known to the module and are passed as
missing: train the served model without them (``FeatureSpec(static=())``, as
``medtwin models train`` does) so that serving sees what training saw.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medtwin.core.errors import StoreError
from medtwin.data.model_registry import ModelRegistry, ModelVersion
from medtwin.models.learning.explain import RiskPredictor
from medtwin.models.learning.features import CHANNEL_CODES, FeatureSpec, serving_features
from medtwin.models.learning.physionet import PatientSeries
from medtwin.models.learning.training import GbmParams, RiskModel, train_risk_model
from medtwin.models.modules import (
    FunctionModule,
    InputValues,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    Ragged,
)

__all__ = [
    "LACTATE_MG_DL_PER_MMOL_L",
    "MARGIN_H",
    "MODEL_NAME",
    "MODULE_NAME",
    "REFRESH_S",
    "SERVABLE_SPEC",
    "STATEMENT",
    "TOP_K",
    "ServedRisk",
    "load_served",
    "register_trained",
    "risk_modules",
    "risk_outputs",
]

log = logging.getLogger(__name__)

MODULE_NAME = "risk.deterioration"
MODEL_NAME = "deterioration"
"""The registry name of the model the module serves."""
TOP_K = 5
MARGIN_H = 24
"""Hours the window adds to the features' look-back (see the module docstring)."""
REFRESH_S = 30.0
"""Least real seconds between refresh passes that recompute the risk: it reads every
reading of its window (days of monitoring per twin) and records each as an input."""
LACTATE_MG_DL_PER_MMOL_L = 9.008  # molar mass of lactate 90.08 g/mol
_SCALE = {"Lactate": LACTATE_MG_DL_PER_MMOL_L}
_HOUR_US = 3_600_000_000
STATEMENT = (
    "This risk estimate supports, and does not replace, clinical judgement: assess the patient."
)
MODULE_VERSION = "1"  # bump when the module's own arithmetic changes
SERVABLE_SPEC = FeatureSpec(static=())
"""The default features of a served model: the channels only (a twin has no static columns)."""


def risk_outputs(k: int = TOP_K) -> tuple[ModuleOutput, ...]:
    """The declared outputs of the module with the top-``k`` factors."""
    factors: list[ModuleOutput] = []
    for i in range(1, k + 1):
        factors += [
            ModuleOutput(f"factor{i}_feature", "1", None, f"feature index of factor {i}"),
            ModuleOutput(f"factor{i}_value", "1", None, f"value of factor {i} (feature unit)"),
            ModuleOutput(f"factor{i}_contribution", "1", None, f"SHAP value of factor {i}"),
        ]
    return (
        ModuleOutput("risk", "1", None, "calibrated probability of deterioration (0..1)"),
        ModuleOutput("log_odds", "1", None, "raw model output before calibration (log-odds)"),
        ModuleOutput("base_value", "1", None, "expected raw output over training (log-odds)"),
        ModuleOutput("other_contribution", "1", None, "sum of the other SHAP values"),
        ModuleOutput("as_of_s", "s", None, "time of the newest reading (s since epoch)"),
        *factors,
    )


@dataclass
class ServedRisk:
    """The model a service serves: predictor, registry version, and where the features it
    scores are counted for drift monitoring (``registry``; None: not monitored)."""

    predictor: RiskPredictor
    name: str
    version: int
    fingerprint: str
    threshold: float | None = None  # the alarm threshold chosen at training (metrics)
    registry: ModelRegistry | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.predictor.feature_names

    def remember(self, rows: NDArray[np.float64]) -> None:
        """Count the feature rows just scored into the registry's serving bins."""
        if self.registry is None or not len(rows):
            return
        try:
            self.registry.record_served(self.name, self.version, rows)
        except StoreError:
            # Monitoring must not stop the scoring: the risk is still computed and stored.
            log.warning("served features of %s v%d not counted", self.name, self.version)

    def factors(self, outputs: Mapping[str, float | None], k: int = TOP_K) -> list[dict[str, Any]]:
        """The top factors of one result's outputs, with feature names (nulls left out)."""
        names = self.feature_names
        found: list[dict[str, Any]] = []
        for i in range(1, k + 1):
            index = outputs.get(f"factor{i}_feature")
            contribution = outputs.get(f"factor{i}_contribution")
            if index is None or contribution is None or not 0 <= int(index) < len(names):
                continue
            found.append(
                {
                    "feature": names[int(index)],
                    "value": outputs.get(f"factor{i}_value"),
                    "contribution": contribution,
                }
            )
        return found

    def module(self, *, codes: Collection[str] | None = None, k: int = TOP_K) -> FunctionModule:
        """The ``risk.deterioration`` module of this model (see :func:`risk_modules`)."""
        return risk_modules(
            self.predictor,
            model_version=self.version,
            model_name=self.name,
            fingerprint=self.fingerprint,
            codes=codes,
            k=k,
            monitor=self,
        )


def _anchor(readings: Mapping[str, Ragged], n: int) -> NDArray[np.int64]:
    """Per twin the time of its newest reading of any channel (µs), -1 if none."""
    newest = np.full(n, -1, dtype=np.int64)
    for r in readings.values():
        counts = np.diff(r.offsets)
        has = counts > 0
        if not has.any():
            continue
        last = r.times_us[r.offsets[1:][has] - 1]  # ascending within a twin
        newest[has] = np.maximum(newest[has], last)
    return newest


def _shifted(r: Ragged, anchor: NDArray[np.int64], scale: float) -> Ragged:
    """The readings with times relative to their twin's anchor (now = 0), scaled."""
    twin = np.repeat(np.arange(len(r)), np.diff(r.offsets))
    values = r.values * scale if scale != 1.0 else r.values
    return Ragged(values, r.times_us - anchor[twin], r.offsets)


def risk_modules(
    predictor: RiskPredictor,
    *,
    model_version: int,
    model_name: str = MODEL_NAME,
    fingerprint: str = "",
    codes: Collection[str] | None = None,
    k: int = TOP_K,
    monitor: ServedRisk | None = None,
) -> FunctionModule:
    """The ``risk.deterioration`` module serving ``predictor`` (registry version
    ``model_version`` of ``model_name``).

    ``codes``: the codes the twins keep (the graph's); channels with another code are
    not read (missing).  ``monitor``: where to keep the served feature rows for drift.
    """
    model: RiskModel = predictor.model
    spec = model.spec
    window_s = float((spec.history_h + MARGIN_H) * 3600)
    channels = [
        c
        for c in spec.channels
        if c in CHANNEL_CODES and (codes is None or CHANNEL_CODES[c][0] in codes)
    ]
    inputs = tuple(ObservationInput(c, CHANNEL_CODES[c][0], window_s, "all") for c in channels)
    outputs = risk_outputs(k)
    names = [o.name for o in outputs]

    def compute(values: InputValues, parameters: Mapping[str, ParameterValue]) -> OutputValues:
        readings: dict[str, Ragged] = {c: values[c] for c in channels}
        n = len(next(iter(readings.values()))) if readings else 0
        out = {name: np.full(n, np.nan) for name in names}
        anchor = _anchor(readings, n)
        seen = np.flatnonzero(anchor >= 0)
        if not len(seen):
            return out
        shifted = {c: _shifted(r, anchor, _SCALE.get(c, 1.0)) for c, r in readings.items()}
        rows = serving_features(shifted, now_us=0, spec=spec)[seen]
        if monitor is not None:
            monitor.remember(rows)
        explanation = predictor.explain(rows)
        contributions = explanation.contributions
        top = explanation.top_indices(k)
        picked = np.take_along_axis(contributions, top, axis=1)
        out["risk"][seen] = explanation.probability
        out["log_odds"][seen] = explanation.raw
        out["base_value"][seen] = explanation.base_value
        out["other_contribution"][seen] = contributions.sum(axis=1) - picked.sum(axis=1)
        out["as_of_s"][seen] = anchor[seen] / 1e6
        for i in range(top.shape[1]):
            out[f"factor{i + 1}_feature"][seen] = top[:, i]
            out[f"factor{i + 1}_value"][seen] = np.take_along_axis(rows, top[:, i : i + 1], 1)[:, 0]
            out[f"factor{i + 1}_contribution"][seen] = picked[:, i]
        return out

    return FunctionModule(
        MODULE_NAME,
        f"{MODULE_VERSION}+m{model_version}",
        inputs,
        outputs,
        compute,
        {
            "model": model_name,
            "model_version": model_version,
            "model_fingerprint": fingerprint,
            "top_k": k,
        },
        description=(
            f"learned deterioration risk ({model_name} v{model_version}) with its top "
            f"{k} SHAP factors, as of the newest reading"
        ),
        refresh_s=REFRESH_S,
    )


def load_served(
    registry: ModelRegistry, name: str = MODEL_NAME, *, version: int | None = None
) -> ServedRisk | None:
    """The promoted version of ``name`` (or ``version``) as a :class:`ServedRisk`;
    None when none is promoted."""
    found: ModelVersion | None = (
        registry.serving(name) if version is None else registry.get(name, version)
    )
    if found is None or found.model is None:
        return None
    model = RiskModel.from_artifact(found.model, found.params)
    threshold = found.metrics.get("threshold")
    return ServedRisk(
        RiskPredictor(model),
        found.name,
        found.version,
        found.fingerprint,
        None if threshold is None else float(threshold),
        registry,
    )


def register_trained(
    registry: ModelRegistry,
    patients: list[PatientSeries] | tuple[PatientSeries, ...],
    *,
    name: str = MODEL_NAME,
    seed: int = 0,
    spec: FeatureSpec = SERVABLE_SPEC,
    params: GbmParams = GbmParams(),
    by_user: str = "system",
    role: str = "system",
    source: str = "",
) -> ModelVersion:
    """Train a risk model on ``patients`` and register it (not promoted) with its metrics.

    The training rows give the registry's fingerprint and drift reference; the
    metrics are the test patients' (``auroc``, ``auprc``, ``brier``, ``utility``, ...)
    with the logistic baseline's and NEWS2's AUROC beside them.
    """
    result = train_risk_model(patients, seed=seed, spec=spec, params=params)
    blob, artifact = result.model.to_artifact()
    metrics = dict(result.evaluation.metrics())
    metrics["baseline_auroc"] = result.baseline_evaluation.auroc
    metrics["news2_auroc"] = result.news2_evaluation.auroc
    return registry.register(
        name,
        blob,
        x_train=result.train.X,
        y_train=result.train.y,
        features=result.model.feature_names,
        metrics=metrics,
        params={**artifact, "seed": seed, "source": source, "n_patients": len(patients)},
        by_user=by_user,
        role=role,
    )
