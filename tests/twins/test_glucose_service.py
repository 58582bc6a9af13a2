"""The live glucose twins: caught up step by step from stored CGM, insulin and meals,
forecasts stored as module results with their provenance, and rebuilt on restart.

Runs on both store backends; the data come from the UVA/Padova simulator of the demo
through the real ingestion path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.records import Intervention, InterventionKind
from medtwin.data.audit import AuditLog
from medtwin.data.provenance import ProvenanceStore, observation_id
from medtwin.data.store import Origin, SqlStore
from medtwin.devices.simulated.diabetes import DiabetesConfig, DiabetesWard
from medtwin.models.modules import ModuleGraph
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.alarms import AlarmEngine, parse_rules
from medtwin.twins.glucose import MODULE, STATEMENT, GlucoseTwinService, _plan
from medtwin.twins.planner import Planner
from tests.conftest import StoreFactory

START = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
BANDS = ("lower90", "lower50", "median", "upper50", "upper90")


@pytest.fixture
def glucose_store(stores: StoreFactory, backend: str) -> SqlStore:
    """A fresh store of each backend (the root ``store`` fixture, which this package's
    conftest shadows with SQLite only)."""
    return stores.new(backend)


@dataclass
class Rig:
    store: SqlStore
    clock: FixedClock
    ingestor: Ingestor
    ward: DiabetesWard
    service: GlucoseTwinService
    cgm_keys: set[str]

    def feed(self, minutes: int, *, every_min: int = 15, passes: bool = True) -> None:
        """Advance the clock, ingest what the simulated CGMs and pumps sent, and run a
        refresh pass every ``every_min`` minutes."""
        for _ in range(0, minutes, every_min):
            self.clock.advance(every_min * 60)
            self.ingest()
            if passes:
                self.service.refresh()

    def ingest(self) -> None:
        observations, interventions = self.ward.advance(self.clock.now())
        if observations:
            message = f"cgm-{self.clock.now():%H%M}"
            origins: list[Origin | None] = [
                Origin("simulator", message, f"[{i}]") for i in range(len(observations))
            ]
            self.ingestor.ingest(
                observations, channel="simulator", care_team="ward", origins=origins
            )
            self.cgm_keys |= {
                observation_id((str(o["source"]), str(o["id"]), 1))
                for o in observations
                if o["code"] == "2339-0"
            }
        if interventions:
            results = self.ingestor.ingest_interventions(
                interventions, channel="simulator", care_team="ward"
            )
            assert all(r.status == "stored" for r in results), results


def _rig(store: SqlStore, patients: int = 2) -> Rig:
    clock = FixedClock(START)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    config = DiabetesConfig(
        subjects=("adult#001", "child#002")[:patients], ids=("t1d-a", "t1d-b")[:patients], days=1
    )
    rig = Rig(store, clock, ingestor, DiabetesWard(config), None, set())  # type: ignore[arg-type]
    rig.ingest()
    rig.service = GlucoseTwinService(store, clock, lag_s=0)
    return rig


@pytest.fixture
def rig(glucose_store: SqlStore) -> Rig:
    return _rig(glucose_store)


def test_forecasts_are_module_results_with_ordered_bands_and_their_readings(rig: Rig) -> None:
    rig.feed(4 * 60)  # breakfast with its bolus at 07:00, 2 h in
    provenance = ProvenanceStore(rig.store)
    assert rig.service.patients == ["t1d-a", "t1d-b"]
    assert rig.service.position_us == int((START + timedelta(hours=4)).timestamp() * 1e6)
    listed: set[str] = set()
    for patient in ("t1d-a", "t1d-b"):
        latest = provenance.latest(patient, MODULE)
        assert latest is not None
        assert latest.parameters["statement"] == STATEMENT
        for horizon in (30, 60, 120):
            values = [float(latest.outputs[f"{band}_{horizon}"] or "nan") for band in BANDS]
            assert all(20 < v < 600 for v in values), values
            assert values == sorted(values), (horizon, values)
        for name in ("Vmx", "kmax"):
            low, mid, high = (latest.outputs[f"{name}{s}"] for s in ("_lower90", "", "_upper90"))
            assert low is not None
            assert mid is not None
            assert high is not None
            assert 0 < low <= mid <= high
        view = rig.service.view(patient)
        assert view["id"] == latest.fingerprint
        assert [f["horizon_min"] for f in view["forecast"]] == [30, 60, 120]
        assert view["statement"] == STATEMENT
        # Every stored forecast names the readings assimilated since the one before.
        results = provenance.history(patient, MODULE, start_us=0, end_us=2**62)
        assert len(results) == 16  # one per pass: 4 h of 15-minute passes
        inputs = provenance.inputs_of([r.fingerprint for r in results])
        seen: list[str] = []
        for record in results:
            keys = [
                observation_id(i.key)
                for i in inputs[record.fingerprint]
                if i.input == "glucose" and i.key is not None
            ]
            assert keys, "each 15-minute pass assimilates three readings"
            seen += keys
        assert len(seen) == len(set(seen)), "a reading is listed by one result only"
        listed |= set(seen)
        kinds = {
            i.value.split(" ", 1)[0]
            for r in results
            for i in inputs[r.fingerprint]
            if i.input == "intervention" and i.value
        }
        assert kinds == {"insulin-basal", "insulin-bolus", "meal"}
    # Exactly the readings fed (the last step's reading is on the grid: assimilated too).
    assert listed == rig.cgm_keys


def test_the_provenance_tree_reaches_the_cgm_messages(rig: Rig) -> None:
    rig.feed(60)
    provenance = ProvenanceStore(rig.store)
    latest = provenance.latest("t1d-a", MODULE)
    assert latest is not None
    tree = provenance.tree(latest.fingerprint)
    glucose = [n for n in tree["inputs"] if n["input"] == "glucose"]
    assert glucose
    assert all(n["code"] == "2339-0" and not n.get("missing") for n in glucose)
    assert all(n["origin"]["message"].startswith("cgm-") for n in glucose)


def test_a_pass_with_nothing_new_stores_nothing(rig: Rig) -> None:
    rig.feed(30)
    assert rig.service.refresh() == []  # the clock has not moved
    rig.clock.advance(60)  # inside the same 5-minute step
    assert rig.service.refresh() == []


def test_events_announce_each_forecast(rig: Rig) -> None:
    rig.feed(15, passes=False)
    events = rig.service.refresh()
    assert sorted(e["patient"] for e in events) == ["t1d-a", "t1d-b"]
    event = events[0]
    assert event["type"] == "derived.updated"
    assert event["module"] == MODULE
    assert event["outputs"]["median_60"]["unit"] == "mg/dL"
    assert event["glucose"]["statement"] == STATEMENT


def test_a_restart_rebuilds_the_same_state(rig: Rig) -> None:
    rig.feed(3 * 60)
    live = rig.service.state()
    again = GlucoseTwinService(rig.store, rig.clock, lag_s=0)
    again.refresh()
    rebuilt = again.state()
    assert rebuilt["patients"] == live["patients"]
    for name in ("x", "z", "theta", "sensor", "base", "basal_u_per_min", "t_min"):
        np.testing.assert_allclose(rebuilt[name], live[name], rtol=1e-9, atol=1e-9, err_msg=name)
    a, b = rig.service.view("t1d-b"), again.view("t1d-b")
    assert a["forecast"] == b["forecast"]
    assert a["parameters"] == b["parameters"]


def test_passes_of_any_length_reach_the_same_state(glucose_store: SqlStore) -> None:
    rig = _rig(glucose_store, patients=1)
    rig.feed(2 * 60, every_min=5)
    one_pass = GlucoseTwinService(rig.store, rig.clock, lag_s=0)
    one_pass.refresh()
    np.testing.assert_allclose(one_pass.state()["x"], rig.service.state()["x"], rtol=1e-9)


def test_a_late_patient_rebuilds_every_twin(glucose_store: SqlStore) -> None:
    """Readings of a new patient that arrive after their steps were taken: the twins
    restart from the store, so they stay what a fresh service would build."""
    clock = FixedClock(START)
    ingestor = Ingestor(glucose_store, TwinRuntime(clock), EventBus(), clock)
    ward = DiabetesWard(DiabetesConfig(subjects=("adult#001", "child#002"), ids=("a", "b")))
    service = GlucoseTwinService(glucose_store, clock, lag_s=0)
    first, _ = ward.advance(clock.now())
    clock.advance(3600)
    more, _ = ward.advance(clock.now())
    ingestor.ingest([o for o in first + more if o["patient"] == "a"], channel="simulator")
    service.refresh()
    assert service.patients == ["a"]
    ingestor.ingest([o for o in first + more if o["patient"] == "b"], channel="simulator")
    clock.advance(300)
    service.refresh()
    assert service.patients == ["a", "b"]
    fresh = GlucoseTwinService(glucose_store, clock, lag_s=0)
    fresh.refresh()
    np.testing.assert_allclose(fresh.state()["x"], service.state()["x"], rtol=1e-9)


def test_the_forecast_follows_a_meal(rig: Rig) -> None:
    """Before breakfast the twins expect little change; once the meal is announced,
    the forecast rises (the bolus only partly covers it at first)."""
    rig.feed(105)  # 06:45
    before = rig.service.view("t1d-a")["forecast"][1]["median"]
    now_before = rig.service.view("t1d-a")["glucose_now"]
    assert abs(before - now_before) < 40
    rig.feed(30)  # 07:15: breakfast at 07:00
    after = rig.service.view("t1d-a")
    assert after["forecast"][1]["median"] > after["glucose_now"] - 5


def test_a_basal_rate_change_mid_step_counts_from_its_minute(glucose_store: SqlStore) -> None:
    """Two patients with the same readings and basal 1 U/h; one's rate goes to 4 U/h at
    minute 32 (inside a step): its forecast falls, and its result names that change."""
    clock = FixedClock(START)
    ingestor = Ingestor(glucose_store, TwinRuntime(clock), EventBus(), clock)
    iso = [(START + timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in range(0, 91)]
    clock.advance(90 * 60)
    readings = [
        {
            "id": f"{p}-{m}",
            "source": f"cgm-{p}",
            "patient": p,
            "code": "2339-0",
            "value": 140.0,
            "unit": "mg/dL",
            "time": iso[m],
        }
        for p in ("hi", "lo")
        for m in range(0, 91, 5)
    ]
    basal = [
        {"id": f"{p}-b0", "source": "pump", "patient": p, "kind": "insulin-basal",
         "amount": 1.0, "unit": "[IU]/h", "time": iso[0]}
        for p in ("hi", "lo")
    ] + [
        {"id": "hi-b1", "source": "pump", "patient": "hi", "kind": "insulin-basal",
         "amount": 4.0, "unit": "[IU]/h", "time": iso[32]}
    ]  # fmt: skip
    ingestor.ingest(readings, channel="test")
    assert all(r.status == "stored" for r in ingestor.ingest_interventions(basal, channel="t"))
    service = GlucoseTwinService(glucose_store, clock, lag_s=0)
    service.refresh()
    hi, lo = service.view("hi"), service.view("lo")
    assert hi["basal_u_per_h"] == 4.0
    assert lo["basal_u_per_h"] == 1.0
    assert hi["forecast"][2]["median"] < lo["forecast"][2]["median"] - 20
    provenance = ProvenanceStore(glucose_store)
    inputs = provenance.inputs_of([hi["id"]])[hi["id"]]
    used = sorted(i.value or "" for i in inputs if i.input == "intervention")
    assert len(used) == 2
    assert "(pump|hi-b1)" in used[1]
    assert "insulin-basal 4 [IU]/h" in used[1]


def test_latest_outputs_serve_alarm_rules_over_the_forecast(rig: Rig) -> None:
    rig.feed(2 * 60)
    provenance = ProvenanceStore(rig.store)
    latest = provenance.latest("t1d-a", MODULE)
    assert latest is not None
    assert set(latest.outputs) == set(rig.service.output_names)
    fingerprints, got = rig.service.latest(["t1d-a", "nobody"], ["median_30", "Vmx"])
    assert fingerprints == [latest.fingerprint, ""]
    assert got["median_30"][0] == latest.outputs["median_30"]
    assert got["Vmx"][0] == latest.outputs["Vmx"]
    assert np.isnan(got["median_30"][1])  # no glucose twin: no value, never an alarm
    # The planner reads them as a published module, and the alarm engine through it: a
    # threshold above every forecast raises for each glucose twin, and for nobody else.
    audit = AuditLog(rig.store, b"k" * 32, rig.clock)
    runtime = rig.ingestor.runtime
    graph = ModuleGraph((*news2_modules(), rig.service.module()), codes=runtime.codes)
    planner = Planner(graph, runtime, rig.store)
    run = planner.request([MODULE], ["t1d-a"]).runs[MODULE]
    assert run.fingerprints == [latest.fingerprint]
    assert run.outputs["median_30"][0] == latest.outputs["median_30"]
    assert {o.name for o in graph[MODULE].outputs} == set(rig.service.output_names)
    rules = parse_rules(
        {
            "rule": [
                {
                    "id": "low",
                    "title": "low glucose ahead",
                    "priority": "high",
                    "kind": "forecast",
                    "module": MODULE,
                    "points": [{"minutes": 30, "output": "median_30"}],
                    "op": "<",
                    "value": 1000,
                    "within_minutes": 30,
                }
            ]
        }
    ).bind({m.name: [o.name for o in m.outputs] for m in graph})
    engine = AlarmEngine(rules, rig.store, planner, EventBus(), audit, rig.clock)
    raised = engine.evaluate()
    assert sorted(e["alarm"]["patient"] for e in raised) == ["t1d-a", "t1d-b"]
    assert {e["alarm"]["value"] for e in raised} >= {latest.outputs["median_30"]}


def _planned_rig(
    stores: StoreFactory, backend: str, planned: list[dict[str, object]]
) -> tuple[GlucoseTwinService, SqlStore, FixedClock, Ingestor]:
    """One patient with CGM at 140 mg/dL every 5 min for 90 min and basal 1 U/h, plus the
    ``planned`` interventions recorded ahead of the clock; the twin caught up to now.

    Each call has its own store but the same patient and seed, so the twins are the same
    and their forecasts differ only by what was planned."""
    store = stores.new(backend)
    clock = FixedClock(START + timedelta(minutes=90))
    # Planned interventions up to a day ahead are accepted (Ingestor.max_planned_s).
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    readings = [
        {"id": f"g-{m}", "source": "cgm", "patient": "p", "code": "2339-0", "value": 140.0,
         "unit": "mg/dL", "time": _iso(m)}
        for m in range(0, 91, 5)
    ]  # fmt: skip
    basal = {"id": "b0", "source": "pump", "patient": "p", "kind": "insulin-basal",
             "amount": 1.0, "unit": "[IU]/h", "time": _iso(0)}  # fmt: skip
    ingestor.ingest(readings, channel="test")
    results = ingestor.ingest_interventions([basal, *planned], channel="test")
    assert all(r.status == "stored" for r in results), results
    service = GlucoseTwinService(store, clock, lag_s=0)
    service.refresh()
    return service, store, clock, ingestor


def _iso(minute: int) -> str:
    return (START + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


def _item(item_id: str, kind: str, amount: float, unit: str, minute: int) -> dict[str, object]:
    return {"id": item_id, "source": "pump", "patient": "p", "kind": kind,
            "amount": amount, "unit": unit, "time": _iso(minute)}  # fmt: skip


def test_planned_meals_boluses_and_basal_rates_enter_the_forecast(
    stores: StoreFactory, backend: str
) -> None:
    """Interventions recorded for later than now (the clock is at minute 90): a meal or a
    bolus in 20 min, a basal rate from minute 100 on (it continues). The forecast counts
    on them, its result names them, and the what-if branches start from them."""
    none, _, _, _ = _planned_rig(stores, backend, [])
    meal, meal_store, clock, ingestor = _planned_rig(
        stores, backend, [_item("m1", "meal", 60.0, "g", 110)]
    )
    bolus, _, _, _ = _planned_rig(stores, backend, [_item("u1", "insulin-bolus", 4.0, "[IU]", 110)])
    basal, _, _, _ = _planned_rig(
        stores, backend, [_item("b1", "insulin-basal", 3.0, "[IU]/h", 100)]
    )

    def median(service: GlucoseTwinService, horizon: int) -> float:
        found = [f for f in service.view("p")["forecast"] if f["horizon_min"] == horizon]
        return float(found[0]["median"])

    assert none.view("p")["time"] == _iso(90)
    # The same twin: without the plan the forecasts would be equal.
    assert none.view("p")["glucose_now"] == meal.view("p")["glucose_now"]
    assert median(meal, 60) > median(none, 60) + 20
    assert median(bolus, 60) < median(none, 60) - 5
    assert median(basal, 120) < median(none, 120)
    assert none.view("p")["planned"] == []
    assert [p["kind"] for p in meal.view("p")["planned"]] == ["meal"]
    # The stored result names what it planned with, apart from what was assimilated.
    provenance = ProvenanceStore(meal_store)
    latest = provenance.latest("p", MODULE)
    assert latest is not None
    inputs = provenance.inputs_of([latest.fingerprint])[latest.fingerprint]
    planned = [i.value for i in inputs if i.input == "planned"]
    assert planned == [f"meal 60 g at {_iso(110)} (pump|m1)"]
    assert not any("m1" in (i.value or "") for i in inputs if i.input == "intervention")
    # The what-if branch without a scenario is the forecast, planned meal included.
    branches = meal.whatif("p", [], horizon_min=120, every_min=30)
    assert [p["id"] for p in branches["planned"]] == ["m1"]
    kept = branches["branches"][0]
    assert kept["median"][kept["t_min"].index(60)] == pytest.approx(median(meal, 60), abs=1e-9)
    # Once its time has come the meal is assimilated like any intervention, not planned.
    clock.advance(30 * 60)
    ingestor.ingest(
        [{"id": f"g-{m}", "source": "cgm", "patient": "p", "code": "2339-0", "value": 150.0,
          "unit": "mg/dL", "time": _iso(m)} for m in range(95, 121, 5)],
        channel="test",
    )  # fmt: skip
    meal.refresh()
    assert meal.view("p")["planned"] == []
    latest = provenance.latest("p", MODULE)
    assert latest is not None
    inputs = provenance.inputs_of([latest.fingerprint])[latest.fingerprint]
    assert [i.value for i in inputs if i.input == "planned"] == []
    assert any("(pump|m1)" in (i.value or "") for i in inputs if i.input == "intervention")


def test_the_plan_holds_standing_rates_ends_temporary_ones_and_spreads_boluses() -> None:
    """What a twin expects minute by minute from a grid point: the rate in effect (a
    standing rate continues, a temporary one ends and the one it interrupted holds
    again), the rest of an extended bolus, planned boluses and meals."""
    t0 = int(START.timestamp() * 1e6)
    minute = 60_000_000

    def item(
        kind: InterventionKind, amount: float, at_min: float, duration_s: float = 0.0
    ) -> Intervention:
        unit = {"insulin-basal": "[IU]/h", "insulin-bolus": "[IU]", "meal": "g"}[kind.value]
        at = t0 + round(at_min * minute)
        return Intervention(
            "pump", f"{kind.value}-{at_min}", "p", kind, amount, unit, at, duration_s
        )

    basal, bolus, meal = (
        InterventionKind.INSULIN_BASAL,
        InterventionKind.INSULIN_BOLUS,
        InterventionKind.MEAL,
    )
    set_before = [item(basal, 1.0, -60)]
    planned = [
        item(basal, 0.0, 10.5, duration_s=30 * 60),  # a 30-min suspension from 10:30
        item(basal, 2.0, 80),  # a new standing rate
        item(bolus, 3.0, 5, duration_s=10 * 60),  # extended over 10 min
        item(meal, 40.0, 20),
        item(meal, 50.0, 130),  # beyond the horizon
    ]
    rates, extra, carbs, named = _plan(set_before, 0.8, {t0 // minute + 1: 0.25}, planned, t0, 120)
    assert rates.shape == extra.shape == carbs.shape == (120,)
    np.testing.assert_array_equal(rates[:11], 1.0)  # the suspension counts from minute 11
    np.testing.assert_array_equal(rates[11:41], 0.0)  # until 40:30, then 1 U/h again
    np.testing.assert_array_equal(rates[41:80], 1.0)
    np.testing.assert_array_equal(rates[80:], 2.0)
    assert extra[1] == 0.25  # the rest of a bolus being delivered
    np.testing.assert_allclose(extra[5:15], 0.3)
    assert extra.sum() == pytest.approx(3.25)
    assert carbs[20] == 40.0
    assert carbs.sum() == 40.0
    assert [i.amount for i in named] == [3.0, 0.0, 40.0, 2.0]
    # Without any rate set, the nominal one.
    rates, _, _, _ = _plan([], 0.8, {}, [], t0, 30)
    np.testing.assert_array_equal(rates, 0.8)
