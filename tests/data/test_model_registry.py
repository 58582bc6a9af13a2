"""The model registry on real SQLite and PostgreSQL stores: versions, promotion, drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from medtwin.core.clock import FixedClock
from medtwin.core.errors import NotFoundError
from medtwin.data.audit import AuditLog
from medtwin.data.model_registry import (
    PSI_SIGNIFICANT,
    ModelRegistry,
    ModelVersion,
    data_fingerprint,
    drift_reference,
    population_stability,
)
from medtwin.data.store import SqlStore, schema

KEY = b"test-audit-key-0123456789abcdef!"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
FEATURES = ("hr_last", "lactate_last", "age")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def audit(store: SqlStore, clock: FixedClock) -> AuditLog:
    return AuditLog(store, KEY, clock)


@pytest.fixture
def registry(store: SqlStore, audit: AuditLog, clock: FixedClock) -> ModelRegistry:
    return ModelRegistry(store, audit, clock)


def training(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(80, 12, n), rng.lognormal(2.2, 0.3, n), rng.uniform(18, 95, n)])
    x[rng.random(n) < 0.3, 1] = np.nan  # lactate often not measured
    y = (rng.random(n) < 0.1).astype(np.int8)
    return x, y


def register(
    registry: ModelRegistry, name: str = "sepsis", seed: int = 0, **kw: object
) -> ModelVersion:
    x, y = training(seed=seed)
    return registry.register(
        name,
        f"tree model {seed}".encode(),
        x_train=x,
        y_train=y,
        features=FEATURES,
        metrics={"auroc": 0.91, "auprc": 0.4, "utility": float("nan")},
        params={"calibrator": {"method": "platt", "params": [1.0, 0.0]}},
        **kw,  # type: ignore[arg-type]
    )


def test_migrated_tables_match_the_schema(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert [d for d in diffs if "model_" in str(d)] == []


def test_versions_increase_per_name_and_keep_what_was_registered(
    registry: ModelRegistry, clock: FixedClock
) -> None:
    first = register(registry)
    clock.advance(3600)
    second = register(registry, seed=1)
    other = register(registry, "aki")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert registry.names() == ["aki", "sepsis"]
    listed = registry.versions("sepsis")
    assert [v.version for v in listed] == [1, 2]
    assert all(v.model is None for v in listed)
    got = registry.get("sepsis", 2)
    assert got.model == b"tree model 1"
    assert got.features == FEATURES
    assert got.metrics == {"auroc": 0.91, "auprc": 0.4, "utility": None}
    assert got.params["calibrator"]["method"] == "platt"
    assert got.fingerprint == data_fingerprint(*training(seed=1))
    assert got.fingerprint != first.fingerprint
    assert got.created_by == "system"
    assert got.created_us == first.created_us + 3_600_000_000
    with pytest.raises(NotFoundError):
        registry.get("sepsis", 3)


def test_fingerprint_depends_on_data_and_labels_only() -> None:
    x, y = training()
    assert data_fingerprint(x, y) == data_fingerprint(x.copy(), y.astype(np.int64))
    flipped = y.copy()
    flipped[0] ^= 1
    assert data_fingerprint(x, flipped) != data_fingerprint(x, y)
    z = x.copy()
    z[5, 0] += 1e-9
    assert data_fingerprint(z, y) != data_fingerprint(x, y)
    # A NaN is a NaN, whatever its bit pattern.
    w = x.copy()
    w[np.isnan(w)] = -np.nan
    assert data_fingerprint(w, y) == data_fingerprint(x, y)


def test_serving_is_the_newest_promotion_and_promotions_are_audited(
    registry: ModelRegistry, audit: AuditLog
) -> None:
    register(registry)
    register(registry, seed=1)
    assert registry.serving("sepsis") is None  # registering never serves
    registry.promote("sepsis", 2, by_user="dr.admin", reason="better AUROC on the audit cohort")
    serving = registry.serving("sepsis")
    assert serving is not None
    assert serving.version == 2
    assert serving.model == b"tree model 1"
    registry.promote("sepsis", 1, by_user="dr.admin", reason="roll back: alert fatigue")
    assert registry.serving("sepsis").version == 1  # type: ignore[union-attr]
    assert [(p.version, p.by_user) for p in registry.promotions("sepsis")] == [
        (2, "dr.admin"),
        (1, "dr.admin"),
    ]
    records = [r for r in audit.records() if r.entry.action == "model-promote"]
    assert [r.entry.detail["version"] for r in records] == [2, 1]
    assert records[0].entry.detail["previous"] is None
    assert records[1].entry.detail["previous"] == 2
    assert records[1].entry.detail["reason"] == "roll back: alert fatigue"
    assert records[1].entry.actor == "dr.admin"
    assert records[1].entry.priority == "high"
    assert [r.entry.action for r in audit.records()].count("model-register") == 2
    assert audit.verify().ok


def test_promotion_must_name_an_existing_version_a_user_and_a_reason(
    registry: ModelRegistry, audit: AuditLog
) -> None:
    register(registry)
    before = len(audit.records())
    with pytest.raises(NotFoundError):
        registry.promote("sepsis", 7, by_user="dr.admin", reason="typo")
    with pytest.raises(ValueError, match="reason"):
        registry.promote("sepsis", 1, by_user="dr.admin", reason="  ")
    with pytest.raises(ValueError, match="user"):
        registry.promote("sepsis", 1, by_user="", reason="x")
    assert len(audit.records()) == before  # nothing half-done
    assert registry.serving("sepsis") is None


def test_psi_is_small_for_the_same_population_and_large_for_a_shift(
    registry: ModelRegistry,
) -> None:
    register(registry)
    same, _ = training(n=1000, seed=5)
    report = registry.drift("sepsis", 1, same)
    assert report.max_psi < 0.1
    assert not report.significant
    shifted = same.copy()
    shifted[:, 0] += 15  # tachycardic ward
    shifted[:, 1] = np.nan  # lactate no longer sent
    report = registry.drift("sepsis", 1, shifted)
    assert report.significant
    assert report.threshold == PSI_SIGNIFICANT
    assert set(report.drifted) == {"hr_last", "lactate_last"}
    assert report.psi["age"] < 0.1
    summary = report.result()
    assert json.loads(json.dumps(summary))["drifted"][0]["feature"] in {"hr_last", "lactate_last"}
    with pytest.raises(ValueError, match="shape"):
        registry.drift("sepsis", 1, same[:, :2])


def test_served_features_are_counted_per_day_and_survive_a_new_registry(
    registry: ModelRegistry, store: SqlStore, audit: AuditLog, clock: FixedClock
) -> None:
    """Counts in the store give the same PSI as the rows themselves, by UTC day."""
    register(registry)
    assert registry.served_drift("sepsis", 1).rows == 0
    old, _ = training(n=600, seed=6)
    old[:, 0] += 25  # a week ago the ward was tachycardic
    registry.record_served("sepsis", 1, old)
    clock.advance(8 * 86_400)
    first, _ = training(n=700, seed=7)
    registry.record_served("sepsis", 1, first[:400])
    registry.record_served("sepsis", 1, first[400:])  # the same day: counts add up
    registry.record_served("sepsis", 1, np.empty((0, 3)))
    # A service restarted: a new registry on the same store sees what was counted.
    again = ModelRegistry(store, audit, clock)
    week = again.served_drift("sepsis", 1, days=7)
    direct = again.drift("sepsis", 1, first)
    assert week.rows == 700
    assert week.psi == pytest.approx(direct.psi, rel=1e-12)
    assert not week.significant
    both = again.served_drift("sepsis", 1, days=9)
    assert both.rows == 1300
    assert both.psi == pytest.approx(again.drift("sepsis", 1, np.vstack([old, first])).psi)
    assert both.psi["hr_last"] > week.psi["hr_last"]
    assert again.served_drift("sepsis", 1, days=1).rows == 700
    with pytest.raises(NotFoundError):
        again.record_served("sepsis", 5, first)


def test_psi_matches_the_formula() -> None:
    e, a = np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.25, 0.25])
    expected = 0.25 * np.log(2) + 0 + (-0.25) * np.log(0.5)
    assert population_stability(e, a) == pytest.approx(expected)
    ref = drift_reference(np.array([[1.0], [2.0], [3.0], [np.nan]]), ["x"], bins=2)
    (x,) = ref["features"]
    assert x["name"] == "x"
    assert x["missing"] == 0.25
    assert sum(x["shares"]) + 0.25 == pytest.approx(1.0)


def test_a_trained_risk_model_round_trips_through_the_registry(
    registry: ModelRegistry,
) -> None:
    from medtwin.models.learning import generate_cohort
    from medtwin.models.learning.features import latest_features, patient_features
    from medtwin.models.learning.training import GbmParams, RiskModel, fit_calibrator, train_gbm

    data = patient_features(generate_cohort(120, seed=8).patients)
    booster = train_gbm(data, seed=8, params=GbmParams(n_estimators=15))
    model = RiskModel(booster, fit_calibrator(booster.predict(data.X, raw_score=True), data.y))
    blob, params = model.to_artifact()
    registered = registry.register(
        "sepsis",
        blob,
        x_train=data.X,
        y_train=data.y,
        features=model.feature_names,
        metrics={"auroc": 0.9},
        params=params,
        by_user="trainer",
    )
    registry.promote("sepsis", registered.version, by_user="dr.admin", reason="first model")
    serving = registry.serving("sepsis")
    assert serving is not None
    assert serving.model is not None
    served = RiskModel.from_artifact(serving.model, serving.params)
    ward = generate_cohort(30, seed=9, min_hours=60, max_hours=60).patients
    spec = served.spec
    series = np.stack(
        [np.column_stack([p.column(c)[-spec.history_h :] for c in spec.channels]) for p in ward]
    )
    static = np.array([[p.column(c)[-1] for c in spec.static] for p in ward])
    rows = latest_features(series, static, spec)
    np.testing.assert_array_equal(served.predict_proba(rows), model.predict_proba(rows))
    report = registry.drift("sepsis", serving.version, rows)
    assert set(report.psi) == set(model.feature_names)
