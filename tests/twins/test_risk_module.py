"""The served deterioration risk: the module equals RiskPredictor on the same readings,
its SHAP values add up to the log-odds, and a promotion makes every result stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.core.clock import FixedClock, SystemClock, to_us
from medtwin.data.audit import AuditLog
from medtwin.data.model_registry import ModelRegistry
from medtwin.data.store import SqlStore
from medtwin.models.learning import GbmParams, PatientSeries, generate_cohort
from medtwin.models.learning.explain import RiskPredictor
from medtwin.models.learning.features import CHANNEL_CODES, hourly_grid, serving_features
from medtwin.models.modules import ModuleGraph, ObservationInput, Ragged
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.planner import Planner
from medtwin.twins.risk import (
    MODULE_NAME,
    TOP_K,
    ServedRisk,
    load_served,
    register_trained,
    risk_modules,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNITS = {code: unit for code, unit in CHANNEL_CODES.values()}
PARAMS = GbmParams(n_estimators=40)

# Per channel: a baseline and an hourly trend (p2 deteriorates, p1 is stable).
LEVELS = {
    "HR": (80.0, 1.2),
    "O2Sat": (97.0, -0.15),
    "Temp": (37.0, 0.03),
    "SBP": (125.0, -0.8),
    "MAP": (85.0, -0.6),
    "DBP": (70.0, -0.4),
    "Resp": (16.0, 0.3),
    "GCS": (15.0, -0.05),
    "Platelets": (220.0, -3.0),
    "Creatinine": (0.9, 0.03),
    "Lactate": (12.0, 0.6),  # mg/dL, the challenge's unit; the twins keep mmol/L
    "WBC": (8.0, 0.15),
}
LABS = ("Platelets", "Creatinine", "Lactate", "WBC")


def _registry(store: SqlStore) -> ModelRegistry:
    audit = AuditLog(store, b"k" * 32, SystemClock())
    return ModelRegistry(store, audit, SystemClock())


@pytest.fixture(scope="module")
def cohort() -> tuple[PatientSeries, ...]:
    return generate_cohort(200, seed=5, setting="ward").patients


class Rig:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.clock = FixedClock(NOW)
        self.runtime = TwinRuntime(self.clock)
        self.ingestor = Ingestor(store, self.runtime, EventBus(), self.clock)
        self.graph = ModuleGraph((), codes=self.runtime.codes)
        self.planner = Planner(self.graph, self.runtime, store)
        # What was posted: channel -> patient -> (times µs, values in the channel's unit)
        self.posted: dict[str, dict[str, tuple[list[int], list[float]]]] = {}

    def post(self, patient: str, hours: int, trend: float, *, newest_min_ago: float) -> None:
        items = []
        newest = self.clock.now() - timedelta(minutes=newest_min_ago)
        for channel, (base, slope) in LEVELS.items():
            code, unit = CHANNEL_CODES[channel]
            for h in range(hours):
                if channel in LABS and h % 8:
                    continue  # labs every 8 h
                at = newest - timedelta(hours=h, minutes=7 * (h % 3))
                value = round(base + trend * slope * (hours - h), 2)
                if channel == "GCS":
                    value = float(min(15, max(3, round(value))))
                items.append(
                    {
                        "id": f"{patient}-{channel}-{h}",
                        "source": "monitor",
                        "patient": patient,
                        "code": code,
                        "value": value,
                        "unit": unit,
                        "time": at.isoformat(),
                    }
                )
                times, values = self.posted.setdefault(channel, {}).setdefault(patient, ([], []))
                times.append(to_us(at))
                values.append(value)
        results = self.ingestor.ingest(items)
        assert all(r.status == "stored" for r in results), results

    def readings(self, patients: list[str]) -> dict[str, Ragged]:
        """The posted readings as the module sees them (ascending times per twin)."""
        out = {}
        for channel, by_patient in self.posted.items():
            values: list[float] = []
            times: list[int] = []
            offsets = [0]
            for p in patients:
                t, v = by_patient.get(p, ([], []))
                order = np.argsort(t)
                times += list(np.asarray(t, dtype=np.int64)[order])
                values += list(np.asarray(v)[order])
                offsets.append(len(values))
            out[channel] = Ragged(
                np.asarray(values, dtype=np.float64),
                np.asarray(times, dtype=np.int64),
                np.asarray(offsets, dtype=np.intp),
            )
        return out


@pytest.fixture
def rig(store: SqlStore) -> Rig:
    return Rig(store)


@pytest.fixture
def served(rig: Rig, cohort: tuple[PatientSeries, ...]) -> ServedRisk:
    registry = _registry(rig.store)
    version = register_trained(registry, list(cohort), seed=1, params=PARAMS, source="test")
    registry.promote("deterioration", version.version, by_user="ada", reason="test")
    found = load_served(registry)
    assert found is not None
    rig.graph.register(found.module(codes=rig.graph.codes))
    return found


def test_the_module_reads_every_channel_the_twins_keep(served: ServedRisk, rig: Rig) -> None:
    module = rig.graph[MODULE_NAME]
    declared = {i.name: i for i in module.inputs if isinstance(i, ObservationInput)}
    assert len(declared) == len(module.inputs)
    expected = {c for c, (code, _) in CHANNEL_CODES.items() if code in rig.runtime.codes}
    assert set(declared) == expected
    assert {"Lactate", "WBC"} <= expected  # LOINC 2524-7 and 6690-2 are registered
    assert all(i.aggregate == "all" for i in declared.values())
    assert all(i.window_s >= 49 * 3600 for i in declared.values())
    assert module.version == f"1+m{served.version}"


def test_the_module_equals_the_predictor_on_the_same_readings(served: ServedRisk, rig: Rig) -> None:
    rig.post("p1", 40, 0.0, newest_min_ago=20)
    rig.post("p2", 30, 1.0, newest_min_ago=95)
    rig.runtime.add("p3")  # a twin without readings: no risk
    patients = ["p1", "p2", "p3"]
    derivation = rig.planner.request([MODULE_NAME], patients)
    out = derivation.runs[MODULE_NAME].outputs

    # The reference: features at each twin's newest reading, straight from the readings.
    readings = rig.readings(patients[:2])
    predictor = RiskPredictor(served.predictor.model)
    rows = []
    for i, (p, ago) in enumerate((("p1", 20), ("p2", 95))):
        anchor = to_us(NOW - timedelta(minutes=ago))
        one = {
            c: Ragged(
                r.of(i), r.times_us[r.offsets[i] : r.offsets[i + 1]], np.array([0, len(r.of(i))])
            )
            for c, r in readings.items()
        }
        rows.append(serving_features(one, now_us=anchor, spec=served.predictor.model.spec)[0])
        # The grid holds what was posted: the newest HR in the newest hour.
        hr = one["HR"]
        grid = hourly_grid(hr.values, hr.times_us, hr.offsets, now_us=anchor, hours=49)
        assert grid[0, -1] == rig.posted["HR"][p][1][0]
        assert out["as_of_s"][i] == anchor / 1e6
    explanation = predictor.explain(np.vstack(rows))
    np.testing.assert_allclose(out["risk"][:2], explanation.probability, rtol=1e-12)
    np.testing.assert_allclose(out["log_odds"][:2], explanation.raw, rtol=1e-12)
    np.testing.assert_allclose(out["risk"][:2], predictor.predict(np.vstack(rows)), rtol=1e-12)
    for i in range(2):
        top = explanation.top(i, TOP_K)
        for k, factor in enumerate(top, start=1):
            index = int(out[f"factor{k}_feature"][i])
            assert served.feature_names[index] == factor.feature
            np.testing.assert_allclose(out[f"factor{k}_contribution"][i], factor.contribution)
            np.testing.assert_equal(out[f"factor{k}_value"][i], factor.value)
    assert np.isfinite(out["risk"][:2]).all()
    assert np.isfinite(out["log_odds"][:2]).all()
    assert all(np.isnan(column[2]) for column in out.values())
    assert out["risk"][1] != out["risk"][0]


def test_shap_values_and_base_value_add_up_to_the_log_odds(served: ServedRisk, rig: Rig) -> None:
    rig.post("p1", 30, 1.0, newest_min_ago=5)
    rig.post("p2", 12, -0.5, newest_min_ago=30)
    out = rig.planner.request([MODULE_NAME], ["p1", "p2"]).runs[MODULE_NAME].outputs
    total = out["base_value"] + out["other_contribution"]
    total = total + sum(out[f"factor{k}_contribution"] for k in range(1, TOP_K + 1))
    np.testing.assert_allclose(total, out["log_odds"], atol=1e-6)
    # Largest first, by absolute contribution.
    sizes = np.abs(np.column_stack([out[f"factor{k}_contribution"] for k in range(1, 6)]))
    assert (np.diff(sizes, axis=1) <= 1e-12).all()
    # The named factors of the API.
    factors = served.factors({k: float(v[0]) for k, v in out.items()})
    assert len(factors) == TOP_K
    assert {f["feature"] for f in factors} <= set(served.feature_names)


def test_a_promotion_changes_the_module_version_and_makes_results_stale(
    served: ServedRisk,
    rig: Rig,
    cohort: tuple[PatientSeries, ...],
) -> None:
    rig.post("p1", 30, 1.0, newest_min_ago=5)
    first = rig.planner.request([MODULE_NAME], ["p1"])
    again = rig.planner.request([MODULE_NAME], ["p1"])
    assert not again.runs[MODULE_NAME].computed.any()  # nothing changed: cached

    registry = _registry(rig.store)
    newer = register_trained(
        registry, list(cohort), seed=2, params=GbmParams(n_estimators=25), source="test"
    )
    registry.promote("deterioration", newer.version, by_user="ada", reason="retrained")
    promoted = load_served(registry)
    assert promoted is not None
    assert promoted.version == newer.version == served.version + 1
    rig.graph.register(promoted.module(codes=rig.graph.codes), replace=True)
    assert rig.graph[MODULE_NAME].version == f"1+m{newer.version}"

    after = rig.planner.request([MODULE_NAME], ["p1"])
    run = after.runs[MODULE_NAME]
    assert run.computed.all()
    assert run.version == f"1+m{newer.version}"
    assert after.fingerprint(MODULE_NAME, "p1") != first.fingerprint(MODULE_NAME, "p1")
    assert rig.planner.provenance.result(run.fingerprints[0]).version == run.version


def test_a_module_made_straight_from_a_predictor(served: ServedRisk, rig: Rig) -> None:
    module = risk_modules(served.predictor, model_version=7, codes=rig.graph.codes)
    assert module.version == "1+m7"
    assert module.parameters["model_version"] == 7
