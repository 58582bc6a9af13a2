"""The alarm engine: rules over module outputs, with a lifecycle that every transition audits.

States and transitions (one row per alarm in ``alarms``; the audit chain holds every
transition)::

    (condition holds, no open alarm, not suppressed)
        -- raise -->        active (level 0: the first recipient of the chain)
    active -- escalate -->  active (level + 1), when the recipient's timeout passes
    active -- acknowledge (named user, reason) --> acknowledged (escalation stops)
    active | acknowledged -- resolve (named user, reason) --> resolved
    active | acknowledged -- condition cleared (past the hysteresis) --> resolved by "system"

De-duplication: at most one open (active or acknowledged) alarm per rule and
patient; while it is open the condition raises nothing new. Suppression: a
window per patient and rule in which nothing is raised; one starts at every
resolution (the rule's ``suppress_minutes``) and a clinician can set one.

Each transition is written with its audit entry in one transaction, then
announced on the event bus as ``alarm.<transition>`` (the WebSocket, webhooks
and MQTT out take it from there). Evaluation runs on the service's periodic
refresh (:meth:`AlarmEngine.evaluate`): conditions and escalation timeouts are
read against the injected clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from medtwin.core.clock import Clock, to_iso
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.audit import AuditEntry, AuditLog
from medtwin.data.store import SqlStore, schema
from medtwin.twins.alarms.rules import (
    PRIORITIES,
    BandRule,
    ForecastRule,
    RuleSet,
    ThresholdRule,
    TrendRule,
)
from medtwin.twins.events import Event, EventBus
from medtwin.twins.planner import Derivation, Planner

__all__ = ["SYSTEM", "Actor", "Alarm", "AlarmEngine", "Suppression"]

log = logging.getLogger(__name__)

MINUTE_US = 60_000_000
MAX_REASON = 500
OPEN = ("active", "acknowledged")
AnyRule = ThresholdRule | BandRule | TrendRule | ForecastRule


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a transition: a signed-in user (name and role), or the system."""

    name: str
    role: str


SYSTEM = Actor("system", "system")


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    rule: str
    patient: str
    priority: str
    title: str
    status: str  # active, acknowledged, resolved
    level: int
    recipient: str
    raised_us: int
    escalated_us: int
    value: float | None
    acknowledged_us: int | None = None
    acknowledged_by: str | None = None
    acknowledged_reason: str | None = None
    resolved_us: int | None = None
    resolved_by: str | None = None
    resolved_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def to_json(self) -> dict[str, Any]:
        def moment(us: int | None) -> str | None:
            return None if us is None else to_iso(us)

        return {
            "id": self.id,
            "rule": self.rule,
            "patient": self.patient,
            "priority": self.priority,
            "title": self.title,
            "status": self.status,
            "level": self.level,
            "recipient": self.recipient,
            "raised": to_iso(self.raised_us),
            "escalated": to_iso(self.escalated_us),
            "value": self.value,
            "acknowledged": None
            if self.acknowledged_us is None
            else {
                "at": moment(self.acknowledged_us),
                "by": self.acknowledged_by,
                "reason": self.acknowledged_reason,
            },
            "resolved": None
            if self.resolved_us is None
            else {
                "at": moment(self.resolved_us),
                "by": self.resolved_by,
                "reason": self.resolved_reason,
            },
        }


@dataclass(frozen=True, slots=True)
class Suppression:
    patient: str
    rule: str
    start_us: int
    end_us: int
    actor: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "rule": self.rule,
            "start": to_iso(self.start_us),
            "until": to_iso(self.end_us),
            "by": self.actor,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class _Verdict:
    """Per patient of one rule: condition raises, condition cleared, the value shown."""

    raises: NDArray[np.bool_]
    clears: NDArray[np.bool_]
    value: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class _Transition:
    kind: Literal["raise", "escalate", "acknowledge", "resolve"]
    alarm: Alarm
    actor: Actor
    reason: str | None = None
    suppress_minutes: float = 0.0


def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise InputError("a reason is required", "reason")
    if len(text) > MAX_REASON:
        raise InputError(f"at most {MAX_REASON} characters", "reason")
    return text


def _compare(matrix: NDArray[np.float64], op: str, value: float, hysteresis: float) -> _Verdict:
    """Raise when any column meets ``op value``; clear when every column is known and
    past the clear level (``value -/+ hysteresis``)."""
    known = ~np.isnan(matrix).any(axis=1)
    if op in (">=", ">"):
        combined = np.fmax.reduce(matrix, axis=1)  # NaN only where every column is
        raises = combined >= value if op == ">=" else combined > value
        level = value - hysteresis
        clears = known & (combined < level if op == ">=" else combined <= level)
    else:
        combined = np.fmin.reduce(matrix, axis=1)
        raises = combined <= value if op == "<=" else combined < value
        level = value + hysteresis
        clears = known & (combined > level if op == "<=" else combined >= level)
    return _Verdict(raises, clears, combined)


class AlarmEngine:
    """Evaluates ``rules`` over the twins of ``planner`` and keeps the alarms' lifecycle."""

    def __init__(
        self,
        rules: RuleSet,
        store: SqlStore,
        planner: Planner,
        bus: EventBus,
        audit: AuditLog,
        clock: Clock,
        *,
        max_suppress_minutes: float = 240.0,
    ) -> None:
        self.rules = rules
        self.store = store
        self.planner = planner
        self.bus = bus
        self.audit = audit
        self.clock = clock
        self.max_suppress_minutes = max_suppress_minutes
        # Trend rules: per (patient, module:output), the values seen, oldest first, each
        # kept while it is within (or the last before) the longest window asking for it.
        self._history: dict[tuple[str, str], deque[tuple[int, float]]] = {}
        self._lock = threading.Lock()

    # -- evaluation -----------------------------------------------------------

    def evaluate(self, patients: Sequence[str] | None = None) -> list[Event]:
        """Raise, clear and escalate for ``patients`` (default: every twin) at the clock's
        now; returns (and publishes) the events of the transitions made."""
        with self._lock:
            now = self.clock.now_us()
            transitions: list[_Transition] = []
            if patients is None:
                patients = list(self.planner.runtime.patient_ids)
            else:
                patients = [p for p in patients if p in self.planner.runtime]
            open_alarms = self._open()
            if patients and len(self.rules):
                derivation = self.planner.request(self.rules.modules(), patients)
                suppressed = self._suppressed(now)
                index = {patient: i for i, patient in enumerate(derivation.patients)}
                for rule in self.rules:
                    verdict = self._verdict(rule, derivation, now)
                    # Python work only where something happens: open alarms and raises.
                    for (rule_id, patient), alarm in list(open_alarms.items()):
                        i = index.get(patient)
                        if rule_id != rule.id or i is None or not verdict.clears[i]:
                            continue
                        del open_alarms[(rule_id, patient)]
                        transitions.append(
                            _Transition(
                                "resolve",
                                replace(
                                    alarm,
                                    status="resolved",
                                    resolved_us=now,
                                    resolved_by=SYSTEM.name,
                                    resolved_reason="condition cleared",
                                ),
                                SYSTEM,
                                "condition cleared",
                                self.rules.suppress_minutes(rule),
                            )
                        )
                    for i in np.flatnonzero(verdict.raises).tolist():
                        key = (rule.id, derivation.patients[i])
                        if key in open_alarms or key in suppressed:
                            continue  # de-duplicated, or suppressed
                        alarm = self._new(rule, key[1], now, float(verdict.value[i]))
                        open_alarms[key] = alarm
                        transitions.append(_Transition("raise", alarm, SYSTEM))
            raised = {t.alarm.id for t in transitions}
            for alarm in open_alarms.values():
                if alarm.status == "active" and alarm.id not in raised:
                    escalated = self._escalated(alarm, now)
                    if escalated is not None:
                        transitions.append(_Transition("escalate", escalated, SYSTEM))
            return self._apply(transitions, now)

    def _verdict(
        self,
        rule: AnyRule,
        derivation: Derivation,
        now: int,
    ) -> _Verdict:
        def column(module: str, output: str) -> NDArray[np.float64]:
            return np.asarray(derivation.runs[module].outputs[output], dtype=np.float64)

        if isinstance(rule, ThresholdRule | ForecastRule):
            matrix = np.column_stack([column(s.module, s.output) for s in rule.sources()])
            return _compare(matrix, rule.op, rule.value, rule.hysteresis)
        if isinstance(rule, BandRule):
            value = column(rule.source.module, rule.source.output)
            raises = np.isin(value, np.array(sorted(rule.codes())))
            return _Verdict(raises, ~np.isnan(value) & ~raises, value)
        return self._trend(
            rule, derivation.patients, column(rule.source.module, rule.source.output), now
        )

    def _trend(
        self, rule: TrendRule, patients: list[str], values: NDArray[np.float64], now: int
    ) -> _Verdict:
        """Change of the value now from the lowest (rise) or highest (fall) in the window."""
        start = now - round(rule.window_minutes * MINUTE_US)
        change = np.full(len(patients), np.nan)
        for i, patient in enumerate(patients):
            value = float(values[i])
            history = self._history.setdefault((patient, str(rule.source)), deque())
            if not np.isnan(value) and (not history or history[-1][1] != value):
                history.append((now, value))
            # The newest value from before the window is the value at its start: keep it.
            while len(history) > 1 and history[1][0] <= start:
                history.popleft()
            if np.isnan(value) or not history:
                continue
            seen = [v for _, v in history]
            change[i] = value - (min(seen) if rule.change > 0 else max(seen))
        if rule.change > 0:
            raises = change >= rule.change
            clears = change < rule.change - rule.hysteresis
        else:
            raises = change <= rule.change
            clears = change > rule.change + rule.hysteresis
        return _Verdict(raises, clears, change)

    def _new(self, rule: AnyRule, patient: str, now: int, value: float) -> Alarm:
        chain = self.rules.escalation(rule)
        return Alarm(
            id=uuid.uuid4().hex,
            rule=rule.id,
            patient=patient,
            priority=rule.priority,
            title=rule.title,
            status="active",
            level=0,
            recipient=chain[0].to,
            raised_us=now,
            escalated_us=now,
            value=None if np.isnan(value) else value,
        )

    def _escalated(self, alarm: Alarm, now: int) -> Alarm | None:
        """The alarm at its next recipient, if its current one's timeout has passed."""
        rule = self.rules.get(alarm.rule)
        if rule is None:  # the rule was removed from the configuration: it stays where it is
            return None
        chain = self.rules.escalation(rule)
        if alarm.level + 1 >= len(chain):
            return None
        timeout = chain[min(alarm.level, len(chain) - 1)].timeout_minutes
        if timeout is None or now - alarm.escalated_us < round(timeout * MINUTE_US):
            return None
        level = alarm.level + 1
        return replace(alarm, level=level, recipient=chain[level].to, escalated_us=now)

    # -- user actions ---------------------------------------------------------

    def acknowledge(self, alarm_id: str, actor: Actor, reason: str) -> Alarm:
        """A named user takes the alarm: escalation stops. ConflictError unless active."""
        reason = _reason(reason)
        with self._lock:
            alarm = self.get(alarm_id)
            if alarm.status != "active":
                raise ConflictError(f"alarm {alarm_id} is {alarm.status}, not active")
            now = self.clock.now_us()
            done = replace(
                alarm,
                status="acknowledged",
                acknowledged_us=now,
                acknowledged_by=actor.name,
                acknowledged_reason=reason,
            )
            self._apply([_Transition("acknowledge", done, actor, reason)], now)
            return done

    def resolve(self, alarm_id: str, actor: Actor, reason: str) -> Alarm:
        """A named user closes the alarm; the rule's suppression window starts."""
        reason = _reason(reason)
        with self._lock:
            alarm = self.get(alarm_id)
            if not alarm.is_open:
                raise ConflictError(f"alarm {alarm_id} is already resolved")
            now = self.clock.now_us()
            done = replace(
                alarm,
                status="resolved",
                resolved_us=now,
                resolved_by=actor.name,
                resolved_reason=reason,
            )
            rule = self.rules.get(alarm.rule)
            minutes = 0.0 if rule is None else self.rules.suppress_minutes(rule)
            self._apply([_Transition("resolve", done, actor, reason, minutes)], now)
            return done

    def suppress(
        self, patient: str, rule_id: str, minutes: float, actor: Actor, reason: str
    ) -> Suppression:
        """No alarm of ``rule_id`` is raised for ``patient`` for ``minutes``; an open one
        stays open (it is acknowledged or resolved on its own)."""
        reason = _reason(reason)
        if self.rules.get(rule_id) is None:
            raise InputError(f"no alarm rule {rule_id!r}", "rule")
        if not 0 < minutes <= self.max_suppress_minutes:
            raise InputError(
                f"must be more than 0 and at most {self.max_suppress_minutes:g}", "minutes"
            )
        pseudonym = self._pseudonym(patient)
        with self._lock:
            now = self.clock.now_us()
            suppression = Suppression(
                patient, rule_id, now, now + round(minutes * MINUTE_US), actor.name, reason
            )
            with self.store.transaction() as conn:
                self._insert_suppression(conn, suppression)
                self.audit.append_in(
                    conn,
                    [
                        AuditEntry(
                            actor=actor.name,
                            role=actor.role,
                            action="alarm-suppress",
                            outcome="success",
                            patient=pseudonym,
                            detail={"rule": rule_id, "minutes": minutes, "reason": reason},
                        )
                    ],
                )
            event = {"type": "alarm.suppressed", **suppression.to_json()}
            self.bus.publish([event])
            return suppression

    # -- reading --------------------------------------------------------------

    def get(self, alarm_id: str) -> Alarm:
        table = schema.alarms
        with self.store.reading() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == alarm_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no alarm {alarm_id!r}")
        return _alarm(row)

    def alarms(
        self,
        *,
        patients: Collection[str] | None = None,
        priority: str | None = None,
        open_only: bool = True,
        limit: int = 1000,
    ) -> list[Alarm]:
        """Alarms, highest priority then oldest first; ``patients`` None means all."""
        table = schema.alarms
        query = sa.select(table)
        if open_only:
            query = query.where(table.c.status.in_(OPEN))
        if priority is not None:
            query = query.where(table.c.priority == priority)
        if patients is not None:
            if not patients:
                return []
            query = query.where(table.c.patient_id.in_(sorted(patients)))
        # Ranked in SQL, so that a limit cuts the least urgent alarms, not the newest.
        rank = sa.case({p: -i for i, p in enumerate(PRIORITIES)}, value=table.c.priority, else_=1)
        query = query.order_by(rank, table.c.raised_us, table.c.id).limit(limit)
        with self.store.reading() as conn:
            return [_alarm(r) for r in conn.execute(query).mappings()]

    def suppressions(self, patient: str | None = None) -> list[Suppression]:
        """Suppression windows not yet over."""
        table = schema.alarm_suppressions
        query = sa.select(table).where(table.c.end_us > self.clock.now_us())
        if patient is not None:
            query = query.where(table.c.patient_id == patient)
        with self.store.reading() as conn:
            rows = conn.execute(query.order_by(table.c.start_us)).mappings().all()
        return [
            Suppression(
                r["patient_id"], r["rule"], r["start_us"], r["end_us"], r["actor"], r["reason"]
            )
            for r in rows
        ]

    def _open(self) -> dict[tuple[str, str], Alarm]:
        table = schema.alarms
        with self.store.reading() as conn:
            rows = conn.execute(sa.select(table).where(table.c.status.in_(OPEN))).mappings()
            return {(r["rule"], r["patient_id"]): _alarm(r) for r in rows}

    def _suppressed(self, now: int) -> set[tuple[str, str]]:
        table = schema.alarm_suppressions
        with self.store.reading() as conn:
            rows = conn.execute(
                sa.select(table.c.rule, table.c.patient_id).where(
                    table.c.start_us <= now, table.c.end_us > now
                )
            )
            return {(r.rule, r.patient_id) for r in rows}

    def _pseudonym(self, patient: str) -> str | None:
        # The audit trail names patients by pseudonym, so an erasure leaves it intact.
        known = self.store.patient(patient)
        return None if known is None else known.pseudonym

    # -- writing --------------------------------------------------------------

    def _apply(self, transitions: list[_Transition], now: int) -> list[Event]:
        """Write the transitions with their audit entries in one transaction, then publish."""
        if not transitions:
            return []
        pseudonyms = {p: self._pseudonym(p) for p in {t.alarm.patient for t in transitions}}
        table = schema.alarms
        entries: list[AuditEntry] = []
        events: list[Event] = []
        suppressions: list[Suppression] = []
        with self.store.transaction() as conn:
            for t in transitions:
                alarm = t.alarm
                row = _row(alarm)
                if t.kind == "raise":
                    conn.execute(sa.insert(table).values(**row))
                else:
                    conn.execute(sa.update(table).where(table.c.id == alarm.id).values(**row))
                if t.kind == "resolve" and t.suppress_minutes > 0:
                    suppression = Suppression(
                        alarm.patient,
                        alarm.rule,
                        now,
                        now + round(t.suppress_minutes * MINUTE_US),
                        t.actor.name,
                        f"after alarm {alarm.id} was resolved",
                    )
                    self._insert_suppression(conn, suppression)
                    suppressions.append(suppression)
                detail: dict[str, Any] = {
                    "alarm": alarm.id,
                    "rule": alarm.rule,
                    "priority": alarm.priority,
                    "level": alarm.level,
                    "recipient": alarm.recipient,
                }
                if t.reason is not None:
                    detail["reason"] = t.reason
                entries.append(
                    AuditEntry(
                        actor=t.actor.name,
                        role=t.actor.role,
                        action=f"alarm-{t.kind}",
                        outcome="success",
                        patient=pseudonyms[alarm.patient],
                        # A high-priority alarm's transitions stand out in the audit trail.
                        priority="high" if alarm.priority == "high" else "normal",
                        detail=detail,
                    )
                )
                events.append(
                    {
                        "type": f"alarm.{_PAST[t.kind]}",
                        "patient": alarm.patient,
                        "time": to_iso(now),
                        "alarm": alarm.to_json(),
                    }
                )
            self.audit.append_in(conn, entries)
        events.extend({"type": "alarm.suppressed", **s.to_json()} for s in suppressions)
        self.bus.publish(events)
        return events

    def _insert_suppression(self, conn: Any, suppression: Suppression) -> None:
        conn.execute(
            sa.insert(schema.alarm_suppressions).values(
                patient_id=suppression.patient,
                rule=suppression.rule,
                start_us=suppression.start_us,
                end_us=suppression.end_us,
                actor=suppression.actor,
                reason=suppression.reason,
            )
        )


_PAST = {
    "raise": "raised",
    "escalate": "escalated",
    "acknowledge": "acknowledged",
    "resolve": "resolved",
}


def _row(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id,
        "rule": alarm.rule,
        "patient_id": alarm.patient,
        "priority": alarm.priority,
        "title": alarm.title,
        "status": alarm.status,
        "level": alarm.level,
        "recipient": alarm.recipient,
        "raised_us": alarm.raised_us,
        "escalated_us": alarm.escalated_us,
        "value": alarm.value,
        "acknowledged_us": alarm.acknowledged_us,
        "acknowledged_by": alarm.acknowledged_by,
        "acknowledged_reason": alarm.acknowledged_reason,
        "resolved_us": alarm.resolved_us,
        "resolved_by": alarm.resolved_by,
        "resolved_reason": alarm.resolved_reason,
    }


def _alarm(row: Any) -> Alarm:
    return Alarm(
        id=row["id"],
        rule=row["rule"],
        patient=row["patient_id"],
        priority=row["priority"],
        title=row["title"],
        status=row["status"],
        level=int(row["level"]),
        recipient=row["recipient"],
        raised_us=int(row["raised_us"]),
        escalated_us=int(row["escalated_us"]),
        value=None if row["value"] is None else float(row["value"]),
        acknowledged_us=row["acknowledged_us"],
        acknowledged_by=row["acknowledged_by"],
        acknowledged_reason=row["acknowledged_reason"],
        resolved_us=row["resolved_us"],
        resolved_by=row["resolved_by"],
        resolved_reason=row["resolved_reason"],
    )
