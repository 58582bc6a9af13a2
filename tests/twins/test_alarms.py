"""The alarm engine: lifecycle (raise, de-duplicate, hysteresis, escalate, acknowledge,
resolve, suppress), every transition audited; rule kinds; configuration errors.

Runs on both store backends, with the real planner over real modules and a clock
that tests move (no sleeping).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.audit import AuditLog, AuditRecord
from medtwin.data.store import SqlStore
from medtwin.models.modules import (
    FunctionModule,
    InputValues,
    Module,
    ModuleGraph,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    ResultInput,
)
from medtwin.models.scores import BANDS
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.alarms import (
    SYSTEM,
    Actor,
    AlarmConfigError,
    AlarmEngine,
    RuleSet,
    load_rules,
    parse_rules,
)
from medtwin.twins.events import Event
from medtwin.twins.planner import Planner
from tests.conftest import StoreFactory
from tests.twins.vitals import ACVPU_CODE, FIO2, GLUCOSE, HR, RR, SBP, SPO2, TEMP, UNITS

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY_S = 86_400.0
ALICE = Actor("alice", "clinician")
NORMAL = {RR: 16, SPO2: 97, FIO2: 21, SBP: 125, HR: 72, ACVPU_CODE: "A", TEMP: 37.0}


def _identity(inputs: InputValues, _p: Mapping[str, ParameterValue]) -> OutputValues:
    return {"value": np.asarray(inputs["glucose"], dtype=np.float64)}


def _forecast(inputs: InputValues, _p: Mapping[str, ParameterValue]) -> OutputValues:
    # A stand-in forecast: falls 20 mg/dL per 30 minutes from the value now.
    now = np.asarray(inputs["now"], dtype=np.float64)
    return {"p50_30min": now - 20, "p50_60min": now - 40}


PROBES: tuple[Module, ...] = (
    FunctionModule(
        "probe",
        "1",
        (ObservationInput("glucose", GLUCOSE, DAY_S),),
        (ModuleOutput("value", "mg/dL"),),
        _identity,
    ),
    FunctionModule(
        "probe.forecast",
        "1",
        (ResultInput("now", "probe", "value"),),
        (ModuleOutput("p50_30min", "mg/dL"), ModuleOutput("p50_60min", "mg/dL")),
        _forecast,
    ),
)

LIFECYCLE = {
    "defaults": {"suppress_minutes": 15},
    "rule": [
        {
            "id": "glucose-low",
            "title": "Glucose 70 mg/dL or less",
            "priority": "high",
            "kind": "threshold",
            "source": "probe:value",
            "op": "<=",
            "value": 70,
            "hysteresis": 10,
            "escalation": [
                {"to": "care-team", "timeout_minutes": 5},
                {"to": "role:admin", "timeout_minutes": 10},
                {"to": "user:chief"},
            ],
        }
    ],
}


@dataclass
class Rig:
    store: SqlStore
    clock: FixedClock
    runtime: TwinRuntime
    ingestor: Ingestor
    planner: Planner
    bus: EventBus
    audit: AuditLog
    engine: AlarmEngine
    events: list[Event] = field(default_factory=list)
    posted: int = 0

    def post(self, patient: str, values: Mapping[str, Any], *, minutes_ago: float = 1) -> None:
        at = (self.clock.now() - timedelta(minutes=minutes_ago)).isoformat()
        items = []
        for code, value in values.items():
            self.posted += 1
            items.append(
                {
                    "id": f"m{self.posted}",
                    "source": "monitor",
                    "patient": patient,
                    "code": code,
                    "value": value,
                    "unit": UNITS[code],
                    "time": at,
                }
            )
        results = self.ingestor.ingest(items)
        assert all(r.status == "stored" for r in results), results

    def alarm_events(self) -> list[str]:
        return [str(e["type"]) for e in self.events if str(e["type"]).startswith("alarm.")]

    def audited(self) -> list[AuditRecord]:
        return [r for r in self.audit.records() if r.entry.action.startswith("alarm-")]

    def pseudonym(self, patient: str) -> str:
        known = self.store.patient(patient)
        assert known is not None
        return known.pseudonym


def make_rig(
    store: SqlStore, rules: RuleSet | Mapping[str, Any], modules: tuple[Module, ...] = PROBES
) -> Rig:
    clock = FixedClock(NOW)
    runtime = TwinRuntime(clock)
    bus = EventBus()
    ingestor = Ingestor(store, runtime, bus, clock, conditioner=None)
    graph = ModuleGraph(modules, codes=runtime.codes)
    planner = Planner(graph, runtime, store, clock=clock)
    audit = AuditLog(store, b"k" * 32, clock)
    ruleset = rules if isinstance(rules, RuleSet) else parse_rules(rules)
    bound = ruleset.bind({m.name: [o.name for o in m.outputs] for m in graph})
    engine = AlarmEngine(bound, store, planner, bus, audit, clock, max_suppress_minutes=120)
    rig = Rig(store, clock, runtime, ingestor, planner, bus, audit, engine)
    bus.listen(rig.events.extend)
    return rig


@pytest.fixture
def alarm_store(stores: StoreFactory, backend: str) -> SqlStore:
    """A migrated store of each backend (the twin tests' own ``store`` is SQLite only)."""
    return stores.new(backend)


# -- lifecycle -----------------------------------------------------------------


def test_alarm_lifecycle_every_transition_audited(alarm_store: SqlStore) -> None:
    rig = make_rig(alarm_store, LIFECYCLE)
    engine, clock = rig.engine, rig.clock
    rig.post("p1", {GLUCOSE: 100})
    rig.post("p2", {GLUCOSE: 110})
    assert engine.evaluate() == []

    # Raise: the condition holds for p1 only.
    rig.post("p1", {GLUCOSE: 65})
    raised = engine.evaluate()
    assert [e["type"] for e in raised] == ["alarm.raised"]
    (alarm,) = engine.alarms()
    assert (alarm.patient, alarm.rule, alarm.priority, alarm.status) == (
        "p1",
        "glucose-low",
        "high",
        "active",
    )
    assert (alarm.level, alarm.recipient, alarm.value) == (0, "care-team", 65.0)
    assert raised[0]["alarm"]["id"] == alarm.id
    assert raised[0]["patient"] == "p1"

    # De-duplication: the condition still holds, lower still: no second alarm.
    rig.post("p1", {GLUCOSE: 58})
    assert engine.evaluate() == []
    assert [a.id for a in engine.alarms()] == [alarm.id]

    # Hysteresis: above the raise level but not past 70 + 10, the alarm stays.
    rig.post("p1", {GLUCOSE: 78})
    assert engine.evaluate() == []
    assert engine.get(alarm.id).status == "active"

    # Escalation after the first recipient's 5 minutes, not before.
    clock.advance(4 * 60)
    assert engine.evaluate() == []
    clock.advance(60)
    escalated = engine.evaluate()
    assert [e["type"] for e in escalated] == ["alarm.escalated"]
    assert escalated[0]["alarm"]["recipient"] == "role:admin"
    assert (engine.get(alarm.id).level, engine.get(alarm.id).recipient) == (1, "role:admin")
    clock.advance(9 * 60)
    assert engine.evaluate() == []  # the admin's 10 minutes run from their call

    # Acknowledge by a named user with a reason: escalation stops.
    with pytest.raises(InputError, match="reason"):
        engine.acknowledge(alarm.id, ALICE, "   ")
    taken = engine.acknowledge(alarm.id, ALICE, "at the bedside, glucose gel given")
    assert (taken.status, taken.acknowledged_by) == ("acknowledged", "alice")
    assert taken.acknowledged_reason == "at the bedside, glucose gel given"
    clock.advance(60 * 60)
    assert engine.evaluate() == []
    assert engine.get(alarm.id).level == 1
    with pytest.raises(ConflictError):
        engine.acknowledge(alarm.id, ALICE, "again")

    # Resolve by a named user: the rule's 15-minute suppression window starts.
    done = engine.resolve(alarm.id, ALICE, "recovered, recheck in 1 h")
    assert (done.status, done.resolved_by) == ("resolved", "alice")
    assert engine.alarms() == []
    with pytest.raises(ConflictError):
        engine.resolve(alarm.id, ALICE, "twice")
    rig.post("p1", {GLUCOSE: 62})
    assert engine.evaluate() == []  # suppressed
    (window,) = engine.suppressions("p1")
    assert (window.rule, window.actor, window.end_us - window.start_us) == (
        "glucose-low",
        "alice",
        15 * 60_000_000,
    )
    clock.advance(15 * 60)
    again = engine.evaluate()
    assert [e["type"] for e in again] == ["alarm.raised"]
    second = again[0]["alarm"]["id"]
    assert second != alarm.id

    # The condition clears past the hysteresis: resolved by "system", with who in the record.
    rig.post("p1", {GLUCOSE: 81})
    cleared = engine.evaluate()
    assert [e["type"] for e in cleared] == ["alarm.resolved", "alarm.suppressed"]
    assert cleared[0]["alarm"]["resolved"]["by"] == "system"
    assert engine.get(second).resolved_reason == "condition cleared"

    # Every transition is in the audit chain, by whom, for the patient's pseudonym.
    records = rig.audited()
    assert [(r.entry.action, r.entry.actor, r.entry.role) for r in records] == [
        ("alarm-raise", "system", "system"),
        ("alarm-escalate", "system", "system"),
        ("alarm-acknowledge", "alice", "clinician"),
        ("alarm-resolve", "alice", "clinician"),
        ("alarm-raise", "system", "system"),
        ("alarm-resolve", "system", "system"),
    ]
    assert {r.entry.patient for r in records} == {rig.pseudonym("p1")}
    assert records[2].entry.detail["reason"] == "at the bedside, glucose gel given"
    assert records[1].entry.detail["recipient"] == "role:admin"
    assert [r.entry.detail["alarm"] for r in records] == [alarm.id] * 4 + [second] * 2
    assert all(r.entry.priority == "high" for r in records)  # a high-priority alarm
    assert rig.audit.verify().ok
    # Events went out for each transition, the bus's listeners included.
    assert rig.alarm_events() == [
        "alarm.raised",
        "alarm.escalated",
        "alarm.acknowledged",
        "alarm.resolved",
        "alarm.suppressed",
        "alarm.raised",
        "alarm.resolved",
        "alarm.suppressed",
    ]
    history = engine.alarms(open_only=False)
    assert {a.id: a.status for a in history} == {alarm.id: "resolved", second: "resolved"}


def test_escalation_walks_the_chain_and_stays_with_the_last(alarm_store: SqlStore) -> None:
    rig = make_rig(alarm_store, LIFECYCLE)
    rig.post("p1", {GLUCOSE: 50})
    rig.engine.evaluate()
    recipients = []
    for minutes in (5, 10, 60, 600):
        rig.clock.advance(minutes * 60)
        for event in rig.engine.evaluate():
            recipients.append(event["alarm"]["recipient"])
    assert recipients == ["role:admin", "user:chief"]
    (alarm,) = rig.engine.alarms()
    assert (alarm.level, alarm.status) == (2, "active")


def test_missing_data_neither_raises_nor_clears(alarm_store: SqlStore) -> None:
    rig = make_rig(alarm_store, LIFECYCLE)
    rig.post("p1", {GLUCOSE: 50})
    rig.engine.evaluate()
    rig.clock.advance(DAY_S + 60)  # the value ages out of the module's window: null
    rig.engine.evaluate()
    (alarm,) = rig.engine.alarms(open_only=False)
    assert alarm.status == "active"  # no data is no evidence of recovery
    rig.post("p3", {HR: 80})  # a twin without glucose: nothing raised for it
    rig.engine.evaluate()
    assert [a.patient for a in rig.engine.alarms()] == ["p1"]


def test_clinician_suppression_window(alarm_store: SqlStore) -> None:
    rig = make_rig(alarm_store, LIFECYCLE)
    rig.post("p1", {GLUCOSE: 100})
    with pytest.raises(InputError, match="no alarm rule"):
        rig.engine.suppress("p1", "nope", 10, ALICE, "x")
    with pytest.raises(InputError) as too_long:
        rig.engine.suppress("p1", "glucose-low", 121, ALICE, "x")
    assert too_long.value.location == "minutes"
    with pytest.raises(InputError):
        rig.engine.suppress("p1", "glucose-low", 30, ALICE, "")
    window = rig.engine.suppress("p1", "glucose-low", 30, ALICE, "palliative, family informed")
    assert rig.alarm_events() == ["alarm.suppressed"]
    assert rig.events[-1]["until"] == "2026-03-01T12:30:00Z"
    rig.post("p1", {GLUCOSE: 55})
    rig.post("p2", {GLUCOSE: 55})
    raised = rig.engine.evaluate()
    assert [e["patient"] for e in raised] == ["p2"]  # only the patient not suppressed
    rig.clock.advance(30 * 60)
    after = rig.engine.evaluate()  # p1 is raised now; p2's alarm escalates meanwhile
    assert [(e["type"], e["patient"]) for e in after] == [
        ("alarm.raised", "p1"),
        ("alarm.escalated", "p2"),
    ]
    records = rig.audited()
    assert records[0].entry.action == "alarm-suppress"
    assert (records[0].entry.actor, records[0].entry.patient) == ("alice", rig.pseudonym("p1"))
    assert records[0].entry.detail == {
        "rule": "glucose-low",
        "minutes": 30,
        "reason": "palliative, family informed",
    }
    assert window.end_us - window.start_us == 30 * 60_000_000


def test_unknown_alarm(alarm_store: SqlStore) -> None:
    rig = make_rig(alarm_store, LIFECYCLE)
    with pytest.raises(NotFoundError):
        rig.engine.acknowledge("nope", ALICE, "x")
    with pytest.raises(NotFoundError):
        rig.engine.get("nope")


# -- rule kinds ------------------------------------------------------------------


def _rule(**fields: Any) -> dict[str, Any]:
    return {"rule": [{"id": "r", "title": "t", "priority": "medium", **fields}]}


def test_trend_rule_over_a_window(store: SqlStore) -> None:
    rig = make_rig(
        store,
        _rule(
            kind="trend",
            source="probe:value",
            change=-20,
            window_minutes=60,
            hysteresis=5,
        ),
    )
    rig.post("p1", {GLUCOSE: 150})
    assert rig.engine.evaluate() == []
    rig.clock.advance(10 * 60)
    rig.post("p1", {GLUCOSE: 140})
    assert rig.engine.evaluate() == []  # a fall of 10
    rig.clock.advance(10 * 60)
    rig.post("p1", {GLUCOSE: 128})
    (event,) = rig.engine.evaluate()  # a fall of 22 within the hour
    assert event["type"] == "alarm.raised"
    assert event["alarm"]["value"] == -22
    # At 65 min the window starts at 5 min, when 150 still held: still a fall of 22.
    rig.clock.advance(45 * 60)
    assert rig.engine.evaluate() == []
    # At 71 min it starts after 140 replaced 150: a fall of 12, past -20 + 5: cleared.
    rig.clock.advance(6 * 60)
    (event,) = rig.engine.evaluate()
    assert event["alarm"]["resolved"]["by"] == "system"


def test_forecast_rule_reads_the_points_within_its_horizon(store: SqlStore) -> None:
    rig = make_rig(
        store,
        _rule(
            kind="forecast",
            module="probe.forecast",
            points=[
                {"minutes": 30, "output": "p50_30min"},
                {"minutes": 60, "output": "p50_60min"},
            ],
            op="<",
            value=70,
            within_minutes=30,
            hysteresis=5,
        ),
    )
    rig.post("p1", {GLUCOSE: 100})  # 80 in 30 min, 60 in 60 min: beyond the horizon
    assert rig.engine.evaluate() == []
    rig.post("p1", {GLUCOSE: 85})  # 65 predicted in 30 minutes
    (event,) = rig.engine.evaluate()
    assert (event["type"], event["alarm"]["value"]) == ("alarm.raised", 65)
    rig.post("p1", {GLUCOSE: 93})  # 73: below 70 + 5, still on
    assert rig.engine.evaluate() == []
    rig.post("p1", {GLUCOSE: 96})  # 76: cleared
    assert [e["type"] for e in rig.engine.evaluate()] == ["alarm.resolved"]


def test_default_rules_over_news2(store: SqlStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medtwin.twins.alarms.rules"):
        rig = make_rig(store, load_rules(), news2_modules())
    # qSOFA is not in this graph: its rule is left out, with a warning that names it.
    assert "qsofa-positive" in caplog.text
    assert dict(rig.engine.rules.disabled)["qsofa-positive"] == "unknown module 'qsofa'"
    assert [r.id for r in rig.engine.rules] == ["news2-high", "news2-medium", "news2-single-3"]
    rig.post("calm", NORMAL)
    rig.post("single", {**NORMAL, RR: 26})  # RR 3 points, total 3: low-medium band
    rig.post("medium", {**NORMAL, RR: 22, HR: 115, TEMP: 38.5})  # 2 + 2 + 1 = 5
    rig.post("high", {**NORMAL, RR: 26, SPO2: 91, HR: 115})  # 3 + 3 + 2 = 8
    rig.engine.evaluate()
    found = {(a.patient, a.rule, a.priority) for a in rig.engine.alarms()}
    assert found == {
        ("single", "news2-single-3", "medium"),
        ("medium", "news2-medium", "medium"),
        ("high", "news2-high", "high"),
        ("high", "news2-single-3", "medium"),
    }
    # Highest priority first.
    assert rig.engine.alarms()[0].rule == "news2-high"
    assert rig.engine.alarms(priority="high")[0].patient == "high"
    assert BANDS.index("medium") == 2  # what the band rule's "medium" resolves to


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"op": "=="}, "rule 'r' (rule[0]), field 'op'"),
        ({"value": None}, "rule 'r' (rule[0]), field 'value'"),
        ({"priority": "urgent"}, "rule 'r' (rule[0]), field 'priority'"),
        ({"hysteresis": -1}, "rule 'r' (rule[0]), field 'hysteresis'"),
        ({"source": "news2"}, "field 'source'"),
        ({"colour": "red"}, "rule 'r' (rule[0]), field 'colour'"),
        ({"id": "Has Space"}, "field 'id'"),
        (
            {"escalation": [{"to": "role:nurse"}]},
            "rule 'r' (rule[0]), field 'escalation.0.to': Value error, unknown role 'nurse'",
        ),
        (
            {"escalation": [{"to": "care-team"}, {"to": "role:admin"}]},
            "needs timeout_minutes: another follows it",
        ),
        ({"escalation": [{"to": "pager:42"}]}, "is not 'care-team', 'role:<role>'"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(change: dict[str, Any], message: str) -> None:
    rule = {
        "id": "r",
        "title": "t",
        "priority": "high",
        "kind": "threshold",
        "source": "news2:score",
        "op": ">=",
        "value": 7,
        **change,
    }
    with pytest.raises(AlarmConfigError) as error:
        parse_rules({"rule": [rule]})
    assert message in str(error.value)


def test_more_configuration_errors(tmp_path: Path) -> None:
    base = {"id": "r", "title": "t", "priority": "low"}
    with pytest.raises(
        AlarmConfigError, match="rule 'r' \\(rule\\[1\\]\\), field 'id': defined twice"
    ):
        parse_rules(
            {
                "rule": [
                    {**base, "kind": "band", "source": "news2:band", "equals": ["high"]},
                    {**base, "kind": "band", "source": "news2:band", "equals": ["high"]},
                ]
            }
        )
    with pytest.raises(AlarmConfigError, match="'severe' is not a band of news2:band"):
        parse_rules(
            {"rule": [{**base, "kind": "band", "source": "news2:band", "equals": ["severe"]}]}
        )
    with pytest.raises(AlarmConfigError, match="field 'kind'"):
        parse_rules({"rule": [{**base, "kind": "magic"}]})
    with pytest.raises(AlarmConfigError, match="within_minutes: no point is within 10"):
        parse_rules(
            {
                "rule": [
                    {
                        **base,
                        "kind": "forecast",
                        "module": "m",
                        "points": [{"minutes": 30, "output": "o"}],
                        "op": "<",
                        "value": 70,
                        "within_minutes": 10,
                    }
                ]
            }
        )
    with pytest.raises(AlarmConfigError, match="field 'change'"):
        parse_rules(
            {"rule": [{**base, "kind": "trend", "source": "a:b", "change": 0, "window_minutes": 5}]}
        )
    with pytest.raises(AlarmConfigError, match=r"field 'defaults\.suppress_minutes'"):
        parse_rules({"defaults": {"suppress_minutes": -1}})

    # Binding to the modules that run: unknown output always, unknown module per policy.
    rules = parse_rules(
        {"rule": [{**base, "kind": "threshold", "source": "news2:scor", "op": ">=", "value": 1}]}
    )
    with pytest.raises(AlarmConfigError, match="rule 'r': module 'news2' has no output 'scor'"):
        rules.bind({"news2": ["score", "band"]})
    with pytest.raises(AlarmConfigError, match="rule 'r': unknown module 'news2'"):
        rules.bind({}, unknown="error")
    assert len(rules.bind({}, unknown="warn")) == 0

    # Files: TOML or JSON; unreadable and malformed ones say so.
    with pytest.raises(AlarmConfigError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]\n")
    with pytest.raises(AlarmConfigError, match="not valid toml"):
        load_rules(bad)
    good = tmp_path / "rules.json"
    good.write_text(
        '{"rule": [{"id": "x", "title": "t", "priority": "low", "kind": "threshold",'
        ' "source": "news2:score", "op": ">=", "value": 3}]}'
    )
    assert [r.id for r in load_rules(good)] == ["x"]
    (tmp_path / "rules.toml").write_text(
        '[[rule]]\nid = "x"\ntitle = "t"\npriority = "low"\nkind = "band"\n'
        'source = "news2:band"\nequals = ["high", 2]\n'
    )
    (band,) = load_rules(tmp_path / "rules.toml")
    assert band.codes() == frozenset({3.0, 2.0})


def test_shipped_rules_load_and_bind_to_the_service_graph() -> None:
    rules = load_rules()
    assert {r.id for r in rules} == {
        "news2-high",
        "news2-medium",
        "news2-single-3",
        "qsofa-positive",
        "glucose-forecast-low",
    }
    assert dict(rules.disabled) == {}
    graph = {m.name: [o.name for o in m.outputs] for m in news2_modules()}
    assert len(rules.bind(graph)) == 3
    # With the glucose twins' forecast outputs known, the glucose rule binds too.
    forecast = {"glucose.forecast": ["median_30", "median_60"]}
    assert [r.id for r in rules.bind({**graph, **forecast})] == [
        "news2-high", "news2-medium", "news2-single-3", "glucose-forecast-low",
    ]  # fmt: skip
    assert SYSTEM.name == "system"
