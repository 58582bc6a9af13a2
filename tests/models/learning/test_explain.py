"""SHAP explanations of the risk model: additivity in log-odds, agreement with LightGBM."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pytest

from medtwin.models.learning import generate_cohort
from medtwin.models.learning.explain import RiskPredictor, tree_shap
from medtwin.models.learning.features import patient_features
from medtwin.models.learning.training import (
    GbmParams,
    RiskModel,
    fit_calibrator,
    train_gbm,
)


@pytest.fixture(scope="module")
def model() -> RiskModel:
    cohort = generate_cohort(300, seed=21)
    data = patient_features(cohort.patients)
    train = data.rows_of(np.arange(0, 200))
    cal = data.rows_of(np.arange(200, 300))
    booster = train_gbm(train, seed=21, params=GbmParams(n_estimators=60, num_threads=1))
    raw = booster.predict(cal.X, raw_score=True)
    return RiskModel(booster, fit_calibrator(raw, cal.y, "isotonic"), num_threads=1)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    cohort = generate_cohort(40, seed=99)
    x = patient_features(cohort.patients).X
    return x[np.random.default_rng(0).choice(len(x), 300, replace=False)]


def test_shap_values_plus_base_equal_the_raw_log_odds(model: RiskModel, rows: np.ndarray) -> None:
    explanation = RiskPredictor(model).explain(rows)
    raw = np.asarray(model.booster.predict(rows, raw_score=True))
    additive = explanation.base_value + explanation.contributions.sum(axis=1)
    np.testing.assert_allclose(additive, raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(explanation.raw, raw, rtol=0, atol=0)
    # Calibration is applied after, to the raw output: probability = calibrator(raw),
    # which here (isotonic) is not the logistic of the log-odds.
    np.testing.assert_array_equal(explanation.probability, model.calibrator(raw))
    assert not np.allclose(explanation.probability, 1 / (1 + np.exp(-raw)))
    assert np.all((explanation.probability >= 0) & (explanation.probability <= 1))


def test_shap_package_agrees_with_lightgbm_pred_contrib(model: RiskModel, rows: np.ndarray) -> None:
    by_shap, base_shap = tree_shap(model, rows, "shap")
    by_lgb, base_lgb = tree_shap(model, rows, "lightgbm")
    np.testing.assert_allclose(by_shap, by_lgb, rtol=0, atol=1e-10)
    assert base_shap == pytest.approx(base_lgb, abs=1e-10)
    # Missing features (NaN) are explained too: LightGBM routes them down the trees.
    assert np.isnan(rows).any()


def test_top_factors_are_the_largest_contributions_with_their_values(
    model: RiskModel, rows: np.ndarray
) -> None:
    explanation = RiskPredictor(model, backend="lightgbm").explain(rows[:20])
    names = model.feature_names
    top_all = explanation.top_indices(5)
    for i in range(20):
        factors = explanation.top(i, 5)
        assert len(factors) == 5
        magnitudes = [abs(f.contribution) for f in factors]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[-1] >= np.sort(np.abs(explanation.contributions[i]))[-5]
        for f in factors:
            j = names.index(f.feature)
            assert f.contribution == explanation.contributions[i, j]
            assert f.value == rows[i, j] or (math.isnan(f.value) and math.isnan(rows[i, j]))
        assert {names[j] for j in top_all[i]} == {f.feature for f in factors}
    result = explanation.result(0, 3)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert len(result["factors"]) == 3
    assert result["risk"] == explanation.probability[0]


def test_compute_takes_a_feature_mapping_like_a_module(model: RiskModel, rows: np.ndarray) -> None:
    predictor = RiskPredictor(model)
    mapping = {name: rows[:, j] for j, name in enumerate(model.feature_names)}
    out = predictor.compute(mapping)
    np.testing.assert_array_equal(out["risk"], predictor.predict(rows))
    np.testing.assert_array_equal(out["log_odds"], model.raw(rows))
    del mapping["HR_last"]
    with pytest.raises(KeyError, match="HR_last"):
        predictor.compute(mapping)
    with pytest.raises(ValueError, match="shape"):
        tree_shap(model, rows[:, :5])


def test_a_registered_artifact_predicts_the_same(model: RiskModel, rows: np.ndarray) -> None:
    blob, params = model.to_artifact()
    assert blob.decode().startswith("tree")  # LightGBM's model_to_string()
    back = RiskModel.from_artifact(blob, json.loads(json.dumps(params)), num_threads=1)
    np.testing.assert_array_equal(back.predict_proba(rows), model.predict_proba(rows))
    assert back.feature_names == model.feature_names


def _conditional(node: dict[str, Any], x: np.ndarray, known: frozenset[int]) -> float:
    """E[tree(x) | x_S] as TreeSHAP defines it: unknown splits average by training cover."""
    if "leaf_value" in node:
        return float(node["leaf_value"])
    left, right = node["left_child"], node["right_child"]
    if node["split_feature"] in known:
        go_left = x[node["split_feature"]] <= node["threshold"]
        return _conditional(left if go_left else right, x, known)

    def cover(n: dict[str, Any]) -> float:
        return float(n["internal_count"] if "internal_count" in n else n["leaf_count"])

    cl, cr = cover(left), cover(right)
    return (cl * _conditional(left, x, known) + cr * _conditional(right, x, known)) / (cl + cr)


def test_tree_shap_matches_brute_force_shapley_values() -> None:
    """An independent check: exact Shapley values over all feature subsets of a small model."""
    import itertools

    import lightgbm as lgb
    import shap  # type: ignore[import-untyped]

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(0, 0.5, 2000) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=8)
    trees = [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    m = x.shape[1]

    def value(row: np.ndarray, known: frozenset[int]) -> float:
        return sum(_conditional(t, row, known) for t in trees)

    rows = x[:10]
    brute = np.zeros((len(rows), m))
    for r, row in enumerate(rows):
        for i in range(m):
            others = [j for j in range(m) if j != i]
            for size in range(m):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                for subset in itertools.combinations(others, size):
                    s = frozenset(subset)
                    brute[r, i] += weight * (value(row, s | {i}) - value(row, s))
    base = value(rows[0], frozenset())
    contrib = np.asarray(booster.predict(rows, pred_contrib=True))
    np.testing.assert_allclose(contrib[:, :-1], brute, atol=1e-9)
    assert contrib[0, -1] == pytest.approx(base, abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's notes on LightGBM's output format
        by_shap = shap.TreeExplainer(booster).shap_values(rows)
    np.testing.assert_allclose(np.asarray(by_shap), brute, atol=1e-9)
