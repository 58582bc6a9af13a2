"""The planner: fingerprints, what goes stale, the store-backed cache, provenance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.errors import NotFoundError
from medtwin.data.store import Origin, SqlStore
from medtwin.models.modules import (
    AttributeInput,
    FunctionModule,
    InputValues,
    ModuleGraph,
    ModuleGraphError,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    Published,
    PublishedModule,
    Ragged,
    ResultInput,
)
from medtwin.models.scores import BANDS, PARAMETERS
from medtwin.models.scores.news2_modules import news2_modules, subscore_module
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.planner import Planner
from tests.conftest import StoreFactory
from tests.twins.vitals import ACVPU_CODE, FIO2, HR, RR, SBP, SPO2, TEMP, UNITS

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SUBSCORES = [subscore_module(p) for p in PARAMETERS]
ALL_MODULES = [*SUBSCORES, "news2"]
NORMAL = {RR: 16, SPO2: 97, FIO2: 21, SBP: 125, HR: 72, ACVPU_CODE: "A", TEMP: 37.0}


@dataclass
class Rig:
    store: SqlStore
    clock: FixedClock
    runtime: TwinRuntime
    ingestor: Ingestor
    planner: Planner
    posted: int = 0

    def post(
        self,
        patient: str,
        values: Mapping[str, Any],
        *,
        minutes_ago: float = 5,
        **extra: Any,
    ) -> list[tuple[str, str, int]]:
        """Ingest one reading per code; the stored observations' keys."""
        at = (self.clock.now() - timedelta(minutes=minutes_ago)).isoformat()
        items = []
        for code, value in values.items():
            self.posted += 1
            items.append(
                {
                    "id": extra.get("id", f"m{self.posted}"),
                    "source": "monitor",
                    "patient": patient,
                    "code": code,
                    "value": value,
                    "unit": UNITS[code],
                    "time": at,
                    **{k: v for k, v in extra.items() if k != "id"},
                }
            )
        origins = [
            Origin("api", f"req-{self.posted}", f"observations[{i}]") for i in range(len(items))
        ]
        results = self.ingestor.ingest(items, origins=origins)
        assert all(r.status == "stored" for r in results), results
        return [("monitor", item["id"], int(item.get("version", 1))) for item in items]

    def calls(self) -> Counter[str]:
        return Counter(self.planner.stats.calls)


@pytest.fixture
def rig(stores: StoreFactory, backend: str) -> Rig:
    store = stores.new(backend)
    clock = FixedClock(NOW)
    runtime = TwinRuntime(clock)
    ingestor = Ingestor(store, runtime, EventBus(), clock)
    graph = ModuleGraph(news2_modules(), codes=runtime.codes)
    return Rig(store, clock, runtime, ingestor, Planner(graph, runtime, store))


def _computed_since(rig: Rig, before: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in (rig.calls() - before).items() if v}


def test_the_same_request_twice_computes_once(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    first = rig.planner.request(["news2"], ["p1"])
    assert rig.calls() == Counter({name: 1 for name in ALL_MODULES})
    assert first.value("news2", "score", "p1") == 0
    before = rig.calls()
    second = rig.planner.request(["news2"], ["p1"])
    assert rig.calls() == before  # no compute call at all
    assert not any(run.computed.any() for run in second.runs.values())
    assert second.fingerprint("news2", "p1") == first.fingerprint("news2", "p1")
    assert second.value("news2", "score", "p1") == 0
    assert rig.planner.stats.memo_hits == 1  # the twin had not changed: no input was read


def test_a_new_observation_makes_exactly_its_dependents_stale(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.post("p2", NORMAL)
    rig.planner.request(["news2"])
    before = rig.calls()
    rig.post("p1", {HR: 135}, minutes_ago=1)
    after = rig.planner.request(["news2"], ["p1", "p2"])
    assert _computed_since(rig, before) == {"news2.pulse": 1, "news2": 1}
    assert after.runs["news2.pulse"].computed.tolist() == [True, False]
    assert rig.planner.stats.memo_hits == 1  # p2 unchanged
    assert after.runs["news2"].computed.tolist() == [True, False]
    for name in SUBSCORES:
        if name != "news2.pulse":
            assert not after.runs[name].computed.any()
    assert after.value("news2.pulse", "points", "p1") == 3
    assert after.value("news2", "score", "p1") == 3
    assert after.value("news2", "band", "p1") == BANDS.index("low-medium")


def test_inspired_oxygen_feeds_two_subscores(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.planner.request(["news2"], ["p1"])
    before = rig.calls()
    derived = rig.planner.request(["news2"], ["p1"])
    rig.post("p1", {FIO2: 40}, minutes_ago=1)
    derived = rig.planner.request(["news2"], ["p1"])
    assert _computed_since(rig, before) == {
        "news2.spo2": 1,
        "news2.air_or_oxygen": 1,
        "news2": 1,
    }
    assert derived.value("news2.air_or_oxygen", "points", "p1") == 2
    assert derived.value("news2", "score", "p1") == 2


def test_a_version_bump_makes_the_module_and_everything_downstream_stale(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.post("p2", NORMAL)
    first = rig.planner.request(["news2"])
    before = rig.calls()
    bumped = next(m for m in news2_modules() if m.name == "news2.pulse")
    assert isinstance(bumped, FunctionModule)
    rig.planner.graph.register(
        FunctionModule(
            bumped.name, "2", bumped.inputs, bumped.outputs, bumped.function, bumped.parameters
        ),
        replace=True,
    )
    second = rig.planner.request(["news2"])
    assert _computed_since(rig, before) == {"news2.pulse": 1, "news2": 1}
    assert rig.planner.stats.computed["news2.pulse"] == 4  # two twins, twice
    assert second.runs["news2.pulse"].computed.all()
    assert second.fingerprint("news2", "p1") != first.fingerprint("news2", "p1")
    assert second.fingerprint("news2.pulse", "p1") != first.fingerprint("news2.pulse", "p1")
    assert second.fingerprint("news2.spo2", "p1") == first.fingerprint("news2.spo2", "p1")


def test_a_value_ageing_out_of_its_window_makes_its_result_stale(rig: Rig) -> None:
    rig.post("p1", {k: v for k, v in NORMAL.items() if k != HR})
    rig.post("p1", {HR: 72}, minutes_ago=50)
    first = rig.planner.request(["news2"], ["p1"])
    assert first.value("news2", "score", "p1") == 0
    before = rig.calls()
    rig.clock.advance(15 * 60)  # the pulse is now 65 min old, the rest 20 min
    aged = rig.planner.request(["news2"], ["p1"])
    assert _computed_since(rig, before) == {"news2.pulse": 1, "news2": 1}
    assert aged.value("news2.pulse", "points", "p1") is None
    assert aged.value("news2", "score", "p1") is None
    assert aged.value("news2", "partial_score", "p1") == 0


def test_a_corrected_observation_makes_its_result_stale(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.post("p1", {HR: 72}, minutes_ago=2, id="hr-1")
    first = rig.planner.request(["news2"], ["p1"])
    before = rig.calls()
    keys = rig.post("p1", {HR: 128}, minutes_ago=2, id="hr-1", version=2, status="corrected")
    corrected = rig.planner.request(["news2"], ["p1"])
    assert _computed_since(rig, before) == {"news2.pulse": 1, "news2": 1}
    assert corrected.value("news2.pulse", "points", "p1") == 2
    assert corrected.fingerprint("news2", "p1") != first.fingerprint("news2", "p1")
    tree = rig.planner.provenance.tree(corrected.fingerprint("news2.pulse", "p1"))
    assert [(i["source"], i["source_id"], i["version"]) for i in tree["inputs"]] == keys


def test_the_cache_outlives_the_planner(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.post("p2", {**NORMAL, RR: 26})
    first = rig.planner.request(["news2"])
    again = Planner(rig.planner.graph, rig.runtime, rig.store)  # a restarted service
    second = again.request(["news2"])
    assert again.stats.calls == Counter()
    assert again.stats.store_hits == len(ALL_MODULES) * 2
    for patient in ("p1", "p2"):
        assert second.value("news2", "score", patient) == first.value("news2", "score", patient)
    assert second.value("news2", "score", "p2") == 3


def test_news2_modules_score_as_the_twin_runtime_does(rig: Rig) -> None:
    rng = np.random.default_rng(7)
    patients = [f"w{i}" for i in range(40)]
    for i, patient in enumerate(patients):
        values: dict[str, Any] = {
            RR: int(rng.integers(5, 30)),
            SPO2: int(rng.integers(80, 100)),
            FIO2: float(rng.choice([21, 24, 28, 40])),
            SBP: int(rng.integers(80, 230)),
            HR: int(rng.integers(35, 140)),
            ACVPU_CODE: str(rng.choice(list("ACVPU"))),
            TEMP: round(float(rng.uniform(34.5, 39.5)), 1),
        }
        missing = [code for code in values if rng.random() < 0.1]
        rig.post(patient, {k: v for k, v in values.items() if k not in missing})
        if i % 4 == 0:
            rig.runtime.set_spo2_scale(patient, 2)
    derived = rig.planner.request(["news2"], patients)
    for patient, twin in zip(patients, (rig.runtime.view(p) for p in patients), strict=True):
        expected = twin["news2"]
        assert derived.value("news2", "score", patient) == expected["score"], patient
        assert derived.value("news2", "partial_score", patient) == expected["partial_score"]
        band = derived.value("news2", "band", patient)
        assert (None if band is None else BANDS[int(band)]) == expected["band"]
        for parameter in PARAMETERS:
            assert (
                derived.value(subscore_module(parameter), "points", patient)
                == expected["subscores"][parameter]
            ), (patient, parameter)


def _pulse_summary(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    every = inputs["every"]
    assert isinstance(every, Ragged)
    spread = np.array(
        [np.ptp(every.of(i)) if len(every.of(i)) else np.nan for i in range(len(every))]
    )
    return {"mean": inputs["mean"], "count": inputs["count"], "spread": spread}


def test_window_aggregations_read_every_value_in_the_window(rig: Rig) -> None:
    summary = FunctionModule(
        "pulse.summary",
        "1",
        (
            ObservationInput("mean", HR, 1800, "mean"),
            ObservationInput("count", HR, 1800, "count"),
            ObservationInput("every", HR, 1800, "all"),
        ),
        (ModuleOutput("mean", "/min"), ModuleOutput("count", "1"), ModuleOutput("spread", "/min")),
        _pulse_summary,
    )
    rig.planner.graph.register(summary)
    rig.post("p1", {HR: 60}, minutes_ago=40)  # outside the 30 min window
    rig.post("p1", {HR: 70}, minutes_ago=20)
    rig.post("p1", {HR: 90}, minutes_ago=10)
    rig.post("p1", {HR: 80}, minutes_ago=5, id="wrong")
    rig.post("p1", {HR: 80}, minutes_ago=5, id="wrong", version=2, status="entered-in-error")
    rig.post("p2", {RR: 12})
    derived = rig.planner.request(["pulse.summary"], ["p1", "p2"])
    assert derived.value("pulse.summary", "mean", "p1") == 80
    assert derived.value("pulse.summary", "count", "p1") == 2
    assert derived.value("pulse.summary", "spread", "p1") == 20
    assert derived.value("pulse.summary", "mean", "p2") is None
    assert derived.value("pulse.summary", "count", "p2") == 0
    tree = rig.planner.provenance.tree(derived.fingerprint("pulse.summary", "p1"))
    assert sorted(i["value"] for i in tree["inputs"] if i["input"] == "every") == [70, 90]
    before = rig.calls()
    rig.planner.request(["pulse.summary"], ["p1", "p2"])
    assert rig.calls() == before
    rig.post("p1", {HR: 100}, minutes_ago=1)
    derived = rig.planner.request(["pulse.summary"], ["p1", "p2"])
    assert derived.runs["pulse.summary"].computed.tolist() == [True, False]
    assert derived.value("pulse.summary", "mean", "p1") == pytest.approx(260 / 3)


def test_provenance_reaches_every_posted_observation_and_its_message(rig: Rig) -> None:
    keys = rig.post("p1", NORMAL)
    derived = rig.planner.request(["news2"], ["p1"])
    tree = rig.planner.provenance.tree(derived.fingerprint("news2", "p1"))
    assert tree["module"] == "news2"
    assert tree["outputs"]["score"] == 0
    assert [child["module"] for child in tree["inputs"]] == SUBSCORES
    observations = [
        leaf
        for child in tree["inputs"]
        for leaf in child["inputs"]
        if leaf["type"] == "observation"
    ]
    assert {(o["source"], o["source_id"], o["version"]) for o in observations} == set(keys)
    for leaf in observations:
        assert not leaf.get("missing")
        assert leaf["origin"]["channel"] == "api"
        assert leaf["origin"]["message"].startswith("req-")
        assert leaf["origin"]["entry"].startswith("observations[")
    attributes = [
        leaf for child in tree["inputs"] for leaf in child["inputs"] if leaf["type"] == "attribute"
    ]
    assert attributes == [{"input": "scale", "type": "attribute", "value": "1"}]
    shallow = rig.planner.provenance.tree(derived.fingerprint("news2", "p1"), depth=1)
    assert all(child["truncated"] for child in shallow["inputs"])
    assert "inputs" not in shallow["inputs"][0]
    with pytest.raises(NotFoundError):
        rig.planner.provenance.tree("0" * 32)


def test_unknown_patients_and_modules_are_refused(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    with pytest.raises(NotFoundError, match="no twin for patient 'nobody'"):
        rig.planner.request(["news2"], ["nobody"])
    with pytest.raises(ModuleGraphError, match="no module named 'sofa'"):
        rig.planner.request(["sofa"], ["p1"])


def _wrong_shape(_inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    return {"out": np.zeros(3)}


def test_a_module_answering_the_wrong_shape_is_named(rig: Rig) -> None:
    rig.planner.graph.register(
        FunctionModule(
            "bad", "1", (ObservationInput("v", HR),), (ModuleOutput("out", "1"),), _wrong_shape
        )
    )
    rig.post("p1", NORMAL)
    with pytest.raises(
        ValueError, match=r"module 'bad' output 'out' has shape \(3,\), expected \(1,\)"
    ):
        rig.planner.request(["bad"], ["p1"])


def test_derive_brings_every_twin_up_to_date_and_announces_new_values(rig: Rig) -> None:
    rig.post("p1", NORMAL)
    rig.post("p2", NORMAL)
    events = rig.planner.derive()
    assert sorted(e["patient"] for e in events) == ["p1", "p2"]
    assert {e["module"] for e in events} == {"news2"}  # only what nothing else reads
    assert events[0]["outputs"]["score"] == {"value": 0, "unit": "{score}"}
    assert rig.planner.derive() == []
    rig.post("p2", {RR: 27}, minutes_ago=1)
    (event,) = rig.planner.derive()
    assert event["patient"] == "p2"
    assert event["outputs"]["score"]["value"] == 3
    assert rig.planner.provenance.latest("p2", "news2") == rig.planner.provenance.result(
        event["id"]
    )


def _hr_max(refresh_s: float, version: str = "1") -> FunctionModule:
    """A costly module: every HR reading of a day (aggregate ``all``), at its own pace."""

    def compute(values: InputValues, _: Mapping[str, ParameterValue]) -> OutputValues:
        hr: Ragged = values["hr"]
        return {
            "max": np.array([r.max() if len(r) else np.nan for r in map(hr.of, range(len(hr)))])
        }

    return FunctionModule(
        "hr.max",
        version,
        (ObservationInput("hr", HR, 86_400.0, "all"),),
        (ModuleOutput("max", "/min"),),
        compute,
        refresh_s=refresh_s,
    )


def test_a_module_with_a_refresh_interval_is_recomputed_at_most_that_often(rig: Rig) -> None:
    seconds = [100.0]
    rig.planner.timer = lambda: seconds[0]
    rig.planner.graph.register(_hr_max(60.0))
    rig.post("p1", NORMAL)
    assert {e["module"] for e in rig.planner.derive()} == {"news2", "hr.max"}
    rig.post("p1", {HR: 140}, minutes_ago=1)
    seconds[0] += 59.0
    (news2,) = rig.planner.derive()  # hr.max is not due: only the NEWS2 is renewed
    assert news2["module"] == "news2"
    # A request asks for it now, whatever its pace.
    assert rig.planner.request(["hr.max"], ["p1"]).value("hr.max", "max", "p1") == 140
    rig.post("p1", {HR: 150}, minutes_ago=0.5)
    seconds[0] += 1.0
    (due,) = [e for e in rig.planner.derive() if e["module"] == "hr.max"]
    assert due["outputs"]["max"]["value"] == 150
    rig.post("p1", {HR: 120}, minutes_ago=0.2)
    seconds[0] += 30.0
    assert {e["module"] for e in rig.planner.derive()} == {"news2"}
    # A new version (a registration) is due at once.
    rig.planner.graph.register(_hr_max(60.0, version="2"), replace=True)
    (renewed,) = [e for e in rig.planner.derive() if e["module"] == "hr.max"]
    assert renewed["outputs"]["max"]["value"] == 150
    with pytest.raises(ModuleGraphError, match="refresh interval"):
        rig.planner.graph.register(_hr_max(-1.0), replace=True)


def test_a_published_module_is_read_not_computed_and_feeds_its_readers(rig: Rig) -> None:
    """A stateful service's latest results: the planner reads them, other modules take
    them as inputs, and a new result reaches its readers at once (no stale memo)."""
    stored: dict[str, tuple[str, float]] = {}
    asked: list[list[str]] = []

    def latest(patients: Sequence[str], names: Sequence[str]) -> Published:
        asked.append(list(patients))
        held = [stored.get(p) for p in patients]
        values = [np.nan if h is None else h[1] for h in held]
        return ["" if h is None else h[0] for h in held], {n: np.array(values) for n in names}

    forecast = PublishedModule("glucose.like", "3", (ModuleOutput("median_30", "mg/dL"),), latest)
    low = FunctionModule(
        "low.ahead",
        "1",
        (ResultInput("g", "glucose.like", "median_30"),),
        (ModuleOutput("low", "1"),),
        lambda v, _: {"low": np.where(np.isnan(v["g"]), np.nan, (v["g"] < 70).astype(float))},
    )
    rig.planner.graph.register(forecast, low)
    rig.post("p1", NORMAL)
    rig.post("p2", NORMAL)
    stored["p1"] = ("f-1", 120.0)
    first = rig.planner.request(["low.ahead"], ["p1", "p2"])
    run = first.runs["glucose.like"]
    assert run.fingerprints == ["f-1", ""]
    assert not run.computed.any()
    assert first.value("glucose.like", "median_30", "p1") == 120.0
    assert first.value("glucose.like", "median_30", "p2") is None
    assert first.value("low.ahead", "low", "p1") == 0.0
    assert first.value("low.ahead", "low", "p2") is None
    # The service publishes a new forecast; nothing about the twin changed.
    stored["p1"] = ("f-2", 60.0)
    second = rig.planner.request(["low.ahead"], ["p1"])
    assert second.value("low.ahead", "low", "p1") == 1.0
    reads = rig.planner.provenance.inputs_of([second.fingerprint("low.ahead", "p1")])
    assert [i.upstream for i in next(iter(reads.values()))] == ["f-2"]
    # Asked beside modules that do not read it (as the alarm rules ask): those stay
    # memoized, and its newest result is looked up each time.
    rig.planner.request(["news2", "glucose.like"], ["p1", "p2"])
    hits = rig.planner.stats.memo_hits
    stored["p2"] = ("f-9", 90.0)
    beside = rig.planner.request(["news2", "glucose.like"], ["p1", "p2"])
    assert rig.planner.stats.memo_hits == hits + 2
    assert beside.runs["glucose.like"].fingerprints == ["f-2", "f-9"]
    assert beside.value("news2", "score", "p1") == 0
    # Refresh passes leave it to its service; its readers are brought up to date.
    assert "glucose.like" not in {e["module"] for e in rig.planner.derive()}
    with pytest.raises(TypeError, match="published by its service"):
        forecast.compute({})
    with pytest.raises(ModuleGraphError, match="declares no inputs"):
        rig.planner.graph.register(
            PublishedModule(
                "bad",
                "1",
                (ModuleOutput("x", "1"),),
                latest,
                inputs=(AttributeInput("s", "spo2_scale"),),
            )
        )
