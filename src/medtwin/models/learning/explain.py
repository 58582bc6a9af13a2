"""Per-prediction explanations of a risk model: SHAP values (TreeSHAP).

For each prediction, the SHAP value of a feature is its additive contribution to the
model's *raw* output, in log-odds: ``base_value + sum(contributions) == raw`` (the
booster's ``raw_score``; Lundberg et al., *Consistent individualized feature
attribution for tree ensembles*, 2018, and *From local explanations to global
understanding with explainable AI for trees*, Nat Mach Intell 2020).  The
calibrated probability the twin shows is a monotone map of that raw output, applied
after: contributions explain the ranking, the calibrator turns it into a probability.

Two backends compute the same exact TreeSHAP values:

* ``"shap"`` (default): the ``shap`` package's ``TreeExplainer`` (for LightGBM it runs
  the booster's own TreeSHAP; imported on first use, since importing ``shap`` takes
  seconds);
* ``"lightgbm"``: LightGBM's ``predict(..., pred_contrib=True)`` directly.

:class:`RiskPredictor` puts a model and its explainer behind one vectorized call
over a ward of twins: probability, log-odds, base value, per-feature contributions
and the top contributing factors with the feature's value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

from medtwin.models.learning.training import RiskModel
from medtwin.models.modules import ModuleOutput

__all__ = [
    "OUTPUTS",
    "Explanation",
    "Factor",
    "RiskPredictor",
    "tree_shap",
]

Backend = Literal["shap", "lightgbm"]

OUTPUTS: tuple[ModuleOutput, ...] = (
    ModuleOutput("risk", "1", None, "calibrated probability of deterioration (0..1)"),
    ModuleOutput("log_odds", "1", None, "raw model output before calibration (log-odds)"),
)
"""What :meth:`RiskPredictor.compute` returns, declared as module outputs."""


@dataclass(frozen=True)
class Factor:
    """One contributing feature: its name, its value (unit of the feature; NaN =
    missing) and its SHAP contribution (log-odds; > 0 raises the risk)."""

    feature: str
    value: float
    contribution: float


@dataclass(frozen=True, eq=False)
class Explanation:
    """Predictions and SHAP values of ``n`` rows.

    ``raw``: (n,) log-odds; ``probability``: (n,) calibrated; ``base_value``: the
    expected raw output over the training data (log-odds); ``contributions``: (n, F)
    SHAP values in ``feature_names`` order; ``X``: (n, F) the feature values.
    """

    raw: NDArray[np.float64]
    probability: NDArray[np.float64]
    base_value: float
    contributions: NDArray[np.float64]
    X: NDArray[np.float64]
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def top(self, i: int, k: int = 5) -> tuple[Factor, ...]:
        """The ``k`` features of largest absolute contribution to row ``i``, largest first."""
        row = self.contributions[i]
        order = np.argsort(-np.abs(row), kind="stable")[:k]
        return tuple(
            Factor(self.feature_names[j], float(self.X[i, j]), float(row[j])) for j in order
        )

    def top_indices(self, k: int = 5) -> NDArray[np.intp]:
        """(n, k) feature indices of the top-``k`` factors of every row (vectorized)."""
        k = min(k, self.contributions.shape[1])
        mag = np.abs(self.contributions)
        part = np.argpartition(-mag, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(mag, part, axis=1), axis=1, kind="stable")
        out: NDArray[np.intp] = np.take_along_axis(part, order, axis=1)
        return out

    def result(self, i: int, k: int = 5) -> dict[str, Any]:
        """JSON-ready explanation of row ``i`` (NaN values as None)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "risk": float(self.probability[i]),
            "log_odds": float(self.raw[i]),
            "base_value": self.base_value,
            "factors": [
                {"feature": f.feature, "value": num(f.value), "contribution": f.contribution}
                for f in self.top(i, k)
            ],
        }


def tree_shap(
    model: RiskModel, rows: npt.ArrayLike, backend: Backend = "shap"
) -> tuple[NDArray[np.float64], float]:
    """Exact TreeSHAP values (n, F) and the base value, both in log-odds."""
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(model.feature_names):
        raise ValueError(f"rows must have shape (n, {len(model.feature_names)}), got {x.shape}")
    if backend == "lightgbm":
        contrib = np.asarray(
            model.booster.predict(x, pred_contrib=True, num_threads=model.num_threads),
            dtype=np.float64,
        )
        base = float(contrib[0, -1]) if len(contrib) else _base_value(model)
        return np.ascontiguousarray(contrib[:, :-1]), base
    if backend == "shap":
        explainer = _shap_explainer(model)
        with warnings.catch_warnings():
            # shap warns that LightGBM binary output "changed to a list"; it is one array.
            warnings.simplefilter("ignore", UserWarning)
            values = explainer.shap_values(x)
        if isinstance(values, list):  # older shap: one array per class
            values = values[-1]
        expected = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
        return np.asarray(values, dtype=np.float64), float(expected[-1])
    raise ValueError(f"unknown SHAP backend {backend!r}")


def _base_value(model: RiskModel) -> float:
    """The booster's expected raw output (the last column of a pred_contrib row)."""
    probe = np.full((1, len(model.feature_names)), np.nan)
    return float(np.asarray(model.booster.predict(probe, pred_contrib=True))[0, -1])


_EXPLAINERS: dict[int, Any] = {}


def _shap_explainer(model: RiskModel) -> Any:
    """One ``shap.TreeExplainer`` per booster (building it parses every tree)."""
    key = id(model.booster)
    cached = _EXPLAINERS.get(key)
    if cached is not None and cached[0] is model.booster:
        return cached[1]
    with warnings.catch_warnings():
        # shap's plotting colours trip matplotlib's deprecation warnings on import.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap  # type: ignore[import-untyped]  # heavy: import on first use

    explainer = shap.TreeExplainer(model.booster)
    _EXPLAINERS[key] = (model.booster, explainer)
    return explainer


class RiskPredictor:
    """A risk model with explanations, vectorized over twins.

    ``predict(rows)`` scores a batch of feature rows (``model.feature_names`` order);
    ``explain(rows)`` adds the SHAP values; ``compute(features)`` takes a mapping of
    feature name to (n,) array (NaN missing), as a module's ``compute`` does, and
    returns the :data:`OUTPUTS`.
    """

    def __init__(self, model: RiskModel, *, backend: Backend = "shap") -> None:
        self.model = model
        self.backend: Backend = backend

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.model.feature_names

    def matrix(self, features: Mapping[str, npt.ArrayLike]) -> NDArray[np.float64]:
        """(n, F) from a feature-name -> (n,) mapping; KeyError names a missing feature."""
        missing = [f for f in self.feature_names if f not in features]
        if missing:
            raise KeyError(f"missing features: {', '.join(missing[:5])}")
        return np.column_stack(
            [np.asarray(features[f], dtype=np.float64) for f in self.feature_names]
        )

    def predict(self, rows: npt.ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities of the rows (no explanation)."""
        return self.model.predict_proba(rows)

    def explain(self, rows: npt.ArrayLike) -> Explanation:
        """Predictions and SHAP values of the rows."""
        x = np.asarray(rows, dtype=np.float64)
        contributions, base = tree_shap(self.model, x, self.backend)
        raw = self.model.raw(x)
        return Explanation(
            raw=raw,
            probability=self.model.calibrator(raw),
            base_value=base,
            contributions=contributions,
            X=x,
            feature_names=self.feature_names,
        )

    def compute(self, features: Mapping[str, npt.ArrayLike]) -> dict[str, NDArray[np.float64]]:
        """Module-style outputs ``risk`` and ``log_odds``, (n,) each, from a feature mapping."""
        raw = self.model.raw(self.matrix(features))
        return {"risk": self.model.calibrator(raw), "log_odds": raw}
