"""Live glucose twins: every patient with CGM readings keeps a personalized glucose twin.

The service holds one :class:`~medtwin.models.assimilation.GlucoseTwins` row per
patient with glucose readings (LOINC 2339-0) and, on each refresh pass, brings
every twin up to the clock's now in 5-minute steps: one vectorized
``assimilate`` call per step for all twins, with that step's CGM reading (the
newest in the step, or none) and the insulin (basal rate in effect plus
boluses, U) and announced meals (g) stored as interventions. After a pass it
forecasts the twins that moved (readings 30, 60 and 120 minutes ahead with 50 %
and 90 % prediction intervals) and stores each forecast as a module result
``glucose.forecast`` whose inputs are the readings assimilated since the
twin's previous result and the interventions used, so every forecast traces
back to the messages it came from.

Forecasts and what-ifs run under what is planned from now to their horizon:
the basal rate set (a standing rate continues, a temporary one ends when its
duration does), the rest of an extended bolus, and interventions recorded with
a later time than now (a planned meal, bolus or basal rate; the ingestor's
``max_future_s`` sets how far ahead they are accepted). A result names the
planned ones it counted on as ``planned`` inputs, and they are listed in its
view (``planned``); when their time comes they are assimilated like any other.

State is rebuilt, not saved. The twins follow one canonical schedule that
depends only on the stored data and the seed:

- the steps are the absolute 5-minute grid (epoch multiples of 300 s); step
  ``t`` covers readings in ``(t - 5 min, t]`` and interventions starting in
  ``[t - 5 min, t)``;
- a twin starts on the grid point before its first reading of the look-back
  (``history_s``, a day by default) from the population prior (its own seed,
  from the patient id), and leaves the batch when it has had no reading for
  ``history_s``;
- the twins of a step are ordered by patient id and step ``t`` draws from
  ``default_rng([seed, t // 5 min])``.

So a restarted service, which starts every twin from the last day of data,
reaches the state the running one holds (while that history is within the
look-back and no reading arrived after its step was taken). A patient whose
first reading arrives after its step was already taken (a late sender) makes
the service rebuild every twin from the store, to stay on that schedule; a
late reading of a known twin is not assimilated (its step is past).

Forecasts and what-ifs support, and do not replace, clinical judgement
(``STATEMENT``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray

from medtwin.core.clock import Clock, to_iso
from medtwin.core.errors import InputError, NotFoundError
from medtwin.core.records import Intervention, InterventionKind, ObservationStatus, QualityFlag
from medtwin.data.provenance import InputRecord, ObservationKey, ProvenanceStore, ResultRecord
from medtwin.data.readings import usable_readings
from medtwin.data.store import SqlStore, schema
from medtwin.models.assimilation.glucose_filter import (
    STATEMENT,
    GlucosePrior,
    GlucoseTwins,
    Settings,
    assimilate,
    init_twins,
    population_prior,
)
from medtwin.models.assimilation.glucose_forecast import (
    HORIZONS_MIN,
    WhatIf,
    forecast,
    whatif,
)
from medtwin.models.modules import ModuleOutput, ParameterValue, Published, PublishedModule
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY, PMOL_PER_U

__all__ = [
    "BODY_WEIGHT",
    "GLUCOSE",
    "MODULE",
    "STATEMENT",
    "VERSION",
    "GlucoseTwinService",
    "Scenario",
]

GLUCOSE = "2339-0"  # Glucose [Mass/volume] in Blood, mg/dL
BODY_WEIGHT = "29463-7"  # Body weight, kg
MODULE = "glucose.forecast"
VERSION = "1"
STEP_MIN = 5
STEP_US = STEP_MIN * 60_000_000
MINUTE_US = 60_000_000
DEFAULT_WEIGHT_KG = 70.0
_BASALS_KEPT = 8
_MAX_WHATIF_MIN = 7 * 1440  # the model's longest horizon (a week)
_BASAL_LOOKBACK_US = 7 * 86_400_000_000
# Readings that are not measurements of the patient now: never assimilated.
_UNUSABLE = int(QualityFlag.ARTIFACT_SUSPECTED | QualityFlag.IMPUTED)
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value
_GLUCOSE_INPUTS = (
    InterventionKind.INSULIN_BOLUS,
    InterventionKind.INSULIN_BASAL,
    InterventionKind.MEAL,
)
_BW = [q.name for q in PHYSIOLOGY].index("BW")
_U2SS = [q.name for q in PHYSIOLOGY].index("u2ss")
# Array fields of GlucoseTwins (its documented state), stacked when twins join or leave.
_FIELDS = ("x", "z", "theta", "sensor", "base", "basal_u_per_min", "t_min")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A what-if branch as the API takes it (see :class:`WhatIf` for the units)."""

    name: str
    bolus_u: float = 0.0
    meal_g: float = 0.0
    basal_change_u_per_h: float = 0.0
    at_min: int = 0


@dataclass(frozen=True, slots=True)
class _Published:
    """A twin as of its last forecast: its API view, a copy of its filter row, its basal
    rate (U/h), the grid time it had reached, and what its what-ifs plan from: the basal
    rates set (and its nominal rate, U/h) and the insulin still to come (U per absolute
    minute) of boluses already given."""

    view: dict[str, Any]
    twin: GlucoseTwins
    basal_u_per_h: float
    at_us: int
    outputs: dict[str, float | None]
    basals: tuple[Intervention, ...] = ()
    nominal_basal_u_per_h: float = 0.0
    pending_insulin: Mapping[int, float] = field(default_factory=dict)


@dataclass
class _Reading:
    key: ObservationKey
    at_us: int
    value: float


@dataclass
class _Twin:
    """What the service holds per twin besides its filter row."""

    patient: str
    seed: int
    start_us: int
    body_weight_kg: float
    weight_key: ObservationKey | None
    nominal_basal_u_per_h: float
    last_reading_us: int
    basals: list[Intervention] = field(default_factory=list)  # the latest basal rates set
    # Absolute minute (µs // 60 s) -> extra insulin U / carbohydrate g still to come.
    insulin: dict[int, float] = field(default_factory=dict)
    carbs: dict[int, float] = field(default_factory=dict)
    # Since the twin's last stored result: readings assimilated, interventions used.
    readings: list[_Reading] = field(default_factory=list)
    used: dict[tuple[str, str], Intervention] = field(default_factory=dict)
    previous: str | None = None  # fingerprint of its last result
    latest: dict[str, Any] | None = None  # the last forecast, as the API shows it
    # Interventions recorded for after the twin's position (planned), as of the last pass.
    planned: list[Intervention] = field(default_factory=list)

    def basal_u_per_h(self, minute_us: int) -> float:
        item = self.basal_in_effect(minute_us)
        return self.nominal_basal_u_per_h if item is None else item.amount

    def basal_in_effect(self, minute_us: int) -> Intervention | None:
        return _basal_in_effect(self.basals, minute_us)

    def add_basal(self, item: Intervention) -> None:
        if any((b.source, b.source_id) == (item.source, item.source_id) for b in self.basals):
            return
        self.basals.append(item)
        self.basals.sort(key=lambda i: (i.start_us, i.source, i.source_id))
        # Older rates matter only until a standing one replaces them: keep a few.
        del self.basals[:-_BASALS_KEPT]


def _basal_in_effect(basals: Sequence[Intervention], minute_us: int) -> Intervention | None:
    """The newest basal rate (of ``basals``, in start order) started by ``minute_us``; a
    temporary one (with a duration) only while it lasts, after which the rate it
    interrupted holds again."""
    for item in reversed(basals):
        if item.start_us > minute_us:
            continue
        if not item.duration_s or minute_us < item.start_us + item.duration_s * 1e6:
            return item
    return None


def _plan(
    basals: Sequence[Intervention],
    nominal_u_per_h: float,
    pending_insulin: Mapping[int, float],
    planned: Sequence[Intervention],
    start_us: int,
    minutes: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], list[Intervention]]:
    """The inputs a twin at ``start_us`` (a grid point) expects over the next ``minutes``.

    Per minute from ``start_us``: the basal rate in effect (U/h) from the rates set and
    the planned ones (a standing rate continues, a temporary one ends), extra insulin (U)
    of boluses still being delivered (``pending_insulin``, U per absolute minute) and of
    planned boluses (an extended one spread over its duration), and planned meals (g),
    as the step-by-step assimilation takes them (``_schedule``). Also the planned
    interventions that fall within the horizon, in start order, for provenance.
    """
    first = start_us // MINUTE_US
    end_us = start_us + minutes * MINUTE_US
    within = sorted(
        (i for i in planned if start_us <= i.start_us < end_us and i.kind in _GLUCOSE_INPUTS),
        key=lambda i: (i.start_us, i.source, i.source_id),
    )
    rates = sorted(
        [*basals, *(i for i in within if i.kind is InterventionKind.INSULIN_BASAL)],
        key=lambda i: (i.start_us, i.source, i.source_id),
    )
    # The rate in effect changes only at the minute a rate starts or a temporary one
    # ends: evaluate it there and hold it in between.
    changes = {0}
    for item in rates:
        for at_us in (
            item.start_us,
            item.start_us + item.duration_s * 1e6 if item.duration_s else None,
        ):
            if at_us is not None and start_us < at_us < end_us:
                changes.add(int(-(-(at_us - start_us) // MINUTE_US)))
    basal = np.empty(minutes)
    edges = sorted(c for c in changes if c < minutes)
    for a, b in zip(edges, [*edges[1:], minutes], strict=True):
        held = _basal_in_effect(rates, start_us + a * MINUTE_US)
        basal[a:b] = nominal_u_per_h if held is None else held.amount
    insulin = np.zeros(minutes)
    carbs = np.zeros(minutes)
    for minute, units in pending_insulin.items():
        if 0 <= minute - first < minutes:
            insulin[minute - first] += units
    for item in within:
        at = item.start_us // MINUTE_US - first
        if item.kind is InterventionKind.INSULIN_BOLUS:
            spread = max(1, round(item.duration_s / 60.0))
            insulin[at : at + spread] += item.amount / spread
        elif item.kind is InterventionKind.MEAL:
            carbs[at] += item.amount
    return basal, insulin, carbs, within


def _seed_of(seed: int, patient: str) -> int:
    """A patient's own seed: stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\x1f{patient}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _floor(us: int) -> int:
    return us // STEP_US * STEP_US


def _stack(parts: Sequence[GlucoseTwins], prior: GlucosePrior, settings: Settings) -> GlucoseTwins:
    return GlucoseTwins(
        **{n: np.concatenate([getattr(p, n) for p in parts]) for n in _FIELDS},
        prior=prior,
        settings=settings,
    )


class GlucoseTwinService:
    """Personalized glucose twins of every patient with CGM readings, kept live.

    ``refresh`` (called each refresh pass) brings them up to the clock's now and
    returns the ``derived.updated`` events of the forecasts it stored. Thread-safe:
    one pass at a time; reads (``view``, ``whatif``) copy what they need under the lock.
    """

    def __init__(
        self,
        store: SqlStore,
        clock: Clock,
        *,
        history_s: float = 86_400.0,
        lag_s: float = 30.0,
        seed: int = 0,
        settings: Settings | None = None,
        horizons_min: Sequence[int] = HORIZONS_MIN,
    ) -> None:
        self.store = store
        self.clock = clock
        self.provenance = ProvenanceStore(store)
        self.history_us = round(history_s * 1_000_000)
        # A step is taken only once its end is this far in the past: readings
        # time-stamped at the step's end have time to be stored first.
        self.lag_us = round(lag_s * 1_000_000)
        self.seed = seed
        self.settings = settings or Settings()
        self.horizons_min = tuple(int(h) for h in horizons_min)
        self.prior = population_prior()
        self._twins: GlucoseTwins | None = None
        self._rows: list[_Twin] = []  # in patient-id order, as the filter rows
        self._position: int | None = None  # grid time every twin has reached (µs)
        self._checked_us = 0  # clock time of the last pass that looked for new twins
        self._lock = threading.RLock()  # one pass at a time
        # What readers see: each twin as of its last forecast. Replaced whole after each
        # pass, so reads never wait for a pass (the first one may compile and rebuild).
        self._published: dict[str, _Published] = {}
        self._parameters = {
            "horizons_min": list(self.horizons_min),
            "members": self.settings.members,
            "seed": seed,
            "step_min": STEP_MIN,
            "history_s": history_s,
            "personal": list(self.prior.parameters),
        }

    # -- reading --------------------------------------------------------------

    def __contains__(self, patient: object) -> bool:
        """Whether the patient has a glucose twin with a forecast."""
        return patient in self._published

    @property
    def patients(self) -> list[str]:
        with self._lock:
            return [t.patient for t in self._rows]

    @property
    def position_us(self) -> int | None:
        """Grid time (µs) every twin has been brought up to; None before the first pass."""
        return self._position

    def state(self) -> dict[str, Any]:
        """The filter arrays of every twin (``GlucoseTwins.to_dict``) and their patients."""
        with self._lock:
            out: dict[str, Any] = {} if self._twins is None else self._twins.to_dict()
            out["patients"] = [t.patient for t in self._rows]
            return out

    @property
    def output_names(self) -> list[str]:
        """The outputs of a ``glucose.forecast`` result, as alarm rules name them."""
        bands = ("median", "lower50", "upper50", "lower90", "upper90")
        forecast = [f"{band}_{h}" for h in self.horizons_min for band in bands]
        personal = [
            f"{p}{suffix}" for p in self.prior.parameters for suffix in ("", "_lower90", "_upper90")
        ]
        return [*forecast, *personal, "glucose_now", "basal_u_per_h", "body_weight_kg"]

    def latest(self, patients: Sequence[str], names: Sequence[str]) -> Published:
        """Per patient the latest forecast's fingerprint ("" without a glucose twin) and
        its outputs ``names`` (NaN where none): what the planner reads of the module."""
        published = self._published
        fingerprints: list[str] = []
        out = {name: np.full(len(patients), np.nan) for name in names}
        for i, patient in enumerate(patients):
            found = published.get(patient)
            fingerprints.append("" if found is None else str(found.view["id"]))
            if found is None:
                continue
            for name in names:
                value = found.outputs.get(name)
                if value is not None:
                    out[name][i] = value
        return fingerprints, out

    def module(self) -> PublishedModule:
        """``glucose.forecast`` as a module of the graph: its outputs, read by the planner
        (alarm rules, the derived-value API, other modules) from what this service last
        published."""
        parameters: dict[str, ParameterValue] = {
            "horizons_min": ",".join(str(h) for h in self.horizons_min),
            "members": self.settings.members,
            "seed": self.seed,
            "step_min": STEP_MIN,
            "personal": ",".join(self.prior.parameters),
        }
        return PublishedModule(
            MODULE,
            VERSION,
            tuple(ModuleOutput(name, _unit(name)) for name in self.output_names),
            self.latest,
            parameters,
            description="personalized glucose forecast (ensemble filter over UVA/Padova), "
            "published by the glucose twins each refresh pass",
        )

    def view(self, patient: str) -> dict[str, Any]:
        """The patient's latest forecast, parameters and statement; NotFoundError without a twin."""
        return dict(self._snapshot(patient).view)

    def _snapshot(self, patient: str) -> _Published:
        found = self._published.get(patient)
        if found is None:
            raise NotFoundError(f"no glucose twin for patient {patient!r}")
        return found

    def whatif(
        self,
        patient: str,
        scenarios: Sequence[Scenario],
        *,
        horizon_min: int = 240,
        every_min: int = 5,
    ) -> dict[str, Any]:
        """Branch the patient's twin now: a "no change" branch and one per scenario.

        InputError (with the scenario's field) for a scenario the model refuses.
        """
        branches: list[WhatIf] = [WhatIf("no change")]
        for j, sc in enumerate(scenarios):
            try:
                branches.append(
                    WhatIf(
                        sc.name,
                        bolus_u=float(sc.bolus_u),
                        meal_g=float(sc.meal_g),
                        basal_change_u_per_h=float(sc.basal_change_u_per_h),
                        at_min=int(sc.at_min),
                    )
                )
            except InputError as exc:
                where = exc.location.split(".", 1)[-1] if exc.location else ""
                raise InputError(exc.reason, f"scenarios[{j}].{where}".rstrip(".")) from exc
        snapshot = self._snapshot(patient)
        one, basal, now_us = snapshot.twin, snapshot.basal_u_per_h, snapshot.at_us
        if (
            isinstance(horizon_min, bool)
            or not isinstance(horizon_min, int)
            or not 1 <= horizon_min <= _MAX_WHATIF_MIN
        ):
            raise InputError(
                f"horizon_min must be whole minutes in 1..{_MAX_WHATIF_MIN}", "horizon_min"
            )
        # The branches start from the planned inputs as stored now, through their horizon
        # (the forecast's, through its own): every branch gets the planned meals, boluses
        # and basal rates, and its scenario on top.
        ahead = self.store.interventions_of(
            patient, since_us=now_us, until_us=now_us + horizon_min * MINUTE_US
        )
        rates, extra, meals, planned = _plan(
            snapshot.basals,
            snapshot.nominal_basal_u_per_h,
            snapshot.pending_insulin,
            ahead,
            now_us,
            horizon_min,
        )
        try:
            result = whatif(
                one,
                branches,
                horizon_min=horizon_min,
                every_min=every_min,
                basal_u_per_h=rates[None],
                insulin_u=extra[None],
                carbs_g=meals[None],
                seed=self.seed,
            )
        except InputError as exc:
            raise InputError(exc.reason, exc.location or "scenarios") from exc
        times = result.t_min.tolist()
        return {
            "patient": patient,
            "time": to_iso(now_us),
            "horizon_min": horizon_min,
            "unit": "mg/dL",
            "basal_u_per_h": basal,
            "planned": [_planned_view(i) for i in planned],
            "branches": [
                {
                    "name": name,
                    "scenario": None
                    if b == 0
                    else {
                        "bolus_u": branches[b].bolus_u,
                        "meal_g": branches[b].meal_g,
                        "basal_change_u_per_h": branches[b].basal_change_u_per_h,
                        "at_min": branches[b].at_min,
                    },
                    "t_min": times,
                    "time": [to_iso(now_us + round(t * MINUTE_US)) for t in times],
                    "median": result.median[0, b].tolist(),
                    "lower50": result.lower50[0, b].tolist(),
                    "upper50": result.upper50[0, b].tolist(),
                    "lower90": result.lower90[0, b].tolist(),
                    "upper90": result.upper90[0, b].tolist(),
                }
                for b, name in enumerate(result.scenarios)
            ],
            "statement": result.statement,
        }

    def recent_readings(
        self, patient: str, *, window_s: float = 6 * 3600.0
    ) -> list[dict[str, Any]]:
        """The usable CGM readings of the last ``window_s`` up to the clock's now, for charts."""
        now = self.clock.now_us()
        found = self._readings([patient], now - round(window_s * 1_000_000), now)
        return [{"time": to_iso(r.at_us), "value": r.value} for r in found.get(patient, [])]

    # -- the refresh pass -----------------------------------------------------

    def refresh(self) -> list[dict[str, Any]]:
        """Bring every twin up to now; store the forecasts of the twins that moved.

        Returns their ``derived.updated`` events.
        """
        with self._lock:
            now = self.clock.now_us()
            target = _floor(now - self.lag_us)
            if self._position is not None and target <= self._position:
                return []
            joiners = self._joiners(target)
            self._checked_us = now
            if joiners is None:  # a patient older than the schedule: start over from the store
                self._reset()
                joiners = self._joiners(target)
                assert joiners is not None
            if self._position is None:
                if not joiners:
                    return []
                self._position = min(t0 for t0, _ in joiners.values())
            moved = self._advance(target, joiners)
            return self._publish(moved, now)

    def _reset(self) -> None:
        self._twins = None
        self._rows = []
        self._position = None

    def _joiners(self, target: int) -> dict[str, tuple[int, _Reading]] | None:
        """Patients with readings who have no twin yet: their start and first reading.

        None when one of them should have started before the twins' position (its
        first reading came in late): the caller rebuilds.
        """
        known = {t.patient for t in self._rows}
        window = _floor(target - self.history_us)
        table = schema.observations
        fresh = sa.select(table.c.patient_id).where(
            table.c.code == GLUCOSE, table.c.effective_us > window, table.c.effective_us <= target
        )
        if self._position is not None:
            # Only what was stored since the last pass can make a new twin.
            fresh = fresh.where(table.c.received_us >= self._checked_us)
        with self.store.reading() as conn:
            candidates = sorted({r.patient_id for r in conn.execute(fresh.distinct())} - known)
        if not candidates:
            return {}
        readings = self._readings(candidates, window, target)
        out: dict[str, tuple[int, _Reading]] = {}
        for patient in candidates:
            found = readings.get(patient)
            if not found:
                continue
            first = found[0]
            start = _floor(first.at_us - 1)  # the grid point before the first reading
            if self._position is not None and start < self._position:
                return None
            out[patient] = (start, first)
        return out

    def _readings(
        self, patients: Sequence[str], after_us: int, until_us: int
    ) -> dict[str, list[_Reading]]:
        """Usable glucose readings in (after, until] per patient, oldest first, mg/dL
        (the registry's canonical unit): suspected artifacts and imputed values left out."""
        found = usable_readings(
            self.store, list(patients), GLUCOSE, after_us, until_us, exclude_flags=_UNUSABLE
        )
        out: dict[str, list[_Reading]] = {}
        for patient, readings in zip(patients, found, strict=True):
            usable = [_Reading(key, at, value) for key, at, value in readings if np.isfinite(value)]
            if usable:
                out[patient] = usable
        return out

    def _weight(self, patient: str, until_us: int) -> tuple[float, ObservationKey | None]:
        """The newest body weight (kg) at or before ``until``, else the default."""
        table = schema.observations
        query = (
            sa.select(
                table.c.source, table.c.source_id, table.c.version, table.c.value_num, table.c.unit
            )
            .where(
                table.c.patient_id == patient,
                table.c.code == BODY_WEIGHT,
                table.c.effective_us <= until_us,
                table.c.status != _ENTERED_IN_ERROR,
                table.c.value_num.is_not(None),
            )
            .order_by(table.c.effective_us.desc(), table.c.version.desc())
            .limit(1)
        )
        with self.store.reading() as conn:
            row = conn.execute(query).first()
        if row is None:
            return DEFAULT_WEIGHT_KG, None
        kg = float(row.value_num) * {"g": 0.001, "[lb_av]": 0.45359237}.get(row.unit, 1.0)
        if not 1.0 <= kg <= 400.0:
            return DEFAULT_WEIGHT_KG, None
        return kg, (row.source, row.source_id, row.version)

    def _new_twin(self, patient: str, start: int, first: _Reading) -> tuple[_Twin, GlucoseTwins]:
        weight, weight_key = self._weight(patient, start + STEP_US)
        # The basal rate in effect at the start: the newest basal set by the end of the
        # first step (a pump states its rate as the CGM starts; it restates it far more
        # often than weekly). It is the twin's nominal rate, which sets its resting state.
        before = [
            i
            for i in self.store.interventions_of(
                patient, since_us=start - _BASAL_LOOKBACK_US, until_us=start + STEP_US
            )
            if i.kind is InterventionKind.INSULIN_BASAL
        ]
        standing = [i for i in before if not i.duration_s]
        prior_basal = float(self.prior.typical[_U2SS] * weight / PMOL_PER_U * 60.0)
        nominal = standing[-1].amount if standing and standing[-1].amount > 0 else prior_basal
        twin = _Twin(
            patient,
            _seed_of(self.seed, patient),
            start,
            weight,
            weight_key,
            nominal,
            first.at_us,
            basals=before[-_BASALS_KEPT:],
        )
        row = init_twins(
            self.prior,
            body_weight_kg=weight,
            basal_u_per_h=nominal,
            glucose_mg_dl=first.value,
            settings=self.settings,
            rng=np.random.default_rng([self.seed, twin.seed % 2**63]),
        )
        return twin, row

    def _advance(self, target: int, joiners: Mapping[str, tuple[int, _Reading]]) -> list[_Twin]:
        """Step every twin from the position to ``target``; the twins that moved."""
        assert self._position is not None
        position = self._position
        patients = sorted({t.patient for t in self._rows} | set(joiners))
        readings = self._readings(patients, position, target)
        by_step: dict[str, dict[int, _Reading]] = {}
        for patient, found in readings.items():
            steps = by_step.setdefault(patient, {})
            for held in found:  # the newest reading of a step is the one assimilated
                steps[-(-held.at_us // STEP_US) * STEP_US] = held
        # Through the forecast horizon: those after the target are planned (a meal, a
        # bolus or a basal rate recorded ahead of time), for the forecasts.
        plan_until = target + max(self.horizons_min) * MINUTE_US
        interventions = {
            p: [
                i
                for i in self.store.interventions_of(p, since_us=position, until_us=plan_until)
                if i.kind in _GLUCOSE_INPUTS
            ]
            for p in patients
        }
        moved: dict[str, _Twin] = {}
        waiting = dict(joiners)
        for t in range(position + STEP_US, target + 1, STEP_US):
            step_start = t - STEP_US
            self._join(step_start, waiting)
            self._leave(step_start)
            if not self._rows:
                continue
            n = len(self._rows)
            cgm = np.full(n, np.nan)
            insulin = np.zeros((n, STEP_MIN))
            carbs = np.zeros((n, STEP_MIN))
            for k, twin in enumerate(self._rows):
                reading = by_step.get(twin.patient, {}).get(t)
                if reading is not None:
                    cgm[k] = reading.value
                    twin.readings.append(reading)
                    twin.last_reading_us = reading.at_us
                self._schedule(twin, interventions.get(twin.patient, ()), step_start)
                for m in range(STEP_MIN):
                    minute_us = step_start + m * MINUTE_US
                    minute = minute_us // MINUTE_US
                    basal = twin.basal_in_effect(minute_us)
                    if basal is not None:
                        twin.used.setdefault((basal.source, basal.source_id), basal)
                    insulin[k, m] = twin.basal_u_per_h(minute_us) / 60.0 + twin.insulin.pop(
                        minute, 0.0
                    )
                    carbs[k, m] = twin.carbs.pop(minute, 0.0)
                moved[twin.patient] = twin
            assert self._twins is not None
            assimilate(
                self._twins,
                cgm,
                insulin_u=insulin,
                carbs_g=carbs,
                rng=np.random.default_rng([self.seed, t // STEP_US]),
            )
        self._position = target
        for twin in self._rows:
            twin.planned = [i for i in interventions.get(twin.patient, ()) if i.start_us >= target]
        return [t for t in self._rows if t.patient in moved]

    def _schedule(self, twin: _Twin, items: Iterable[Intervention], step_start: int) -> None:
        """Take in the interventions starting in this step: basal changes, boluses, meals."""
        for item in items:
            if not step_start <= item.start_us < step_start + STEP_US:
                continue
            twin.used[(item.source, item.source_id)] = item
            minute = item.start_us // MINUTE_US
            if item.kind is InterventionKind.INSULIN_BASAL:
                twin.add_basal(item)
            elif item.kind is InterventionKind.INSULIN_BOLUS:
                # An extended bolus is spread over its duration, minute by minute.
                minutes = max(1, round(item.duration_s / 60.0))
                for m in range(minutes):
                    twin.insulin[minute + m] = (
                        twin.insulin.get(minute + m, 0.0) + item.amount / minutes
                    )
            else:
                twin.carbs[minute] = twin.carbs.get(minute, 0.0) + item.amount

    def _join(self, step_start: int, waiting: dict[str, tuple[int, _Reading]]) -> None:
        """Start the twins whose start is this grid point, keeping rows in patient order."""
        due = sorted(p for p, (t0, _) in waiting.items() if t0 == step_start)
        if not due:
            return
        new: list[tuple[_Twin, GlucoseTwins]] = []
        for patient in due:
            _, first = waiting.pop(patient)
            new.append(self._new_twin(patient, step_start, first))
        held: list[tuple[_Twin, GlucoseTwins]] = []
        if self._twins is not None:
            held = [(twin, self._twins.select(k)) for k, twin in enumerate(self._rows)]
        merged = sorted(held + new, key=lambda pair: pair[0].patient)
        self._rows = [twin for twin, _ in merged]
        self._twins = _stack([row for _, row in merged], self.prior, self.settings)

    def _leave(self, step_start: int) -> None:
        """Drop the twins without a reading for the whole look-back."""
        keep = [
            k for k, t in enumerate(self._rows) if step_start - t.last_reading_us < self.history_us
        ]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[k] for k in keep]
        staying = {t.patient for t in self._rows}
        self._published = {p: v for p, v in self._published.items() if p in staying}
        if not keep or self._twins is None:
            self._twins = None
        else:
            self._twins = self._twins.select(keep)

    # -- results --------------------------------------------------------------

    def _publish(self, moved: Sequence[_Twin], now: int) -> list[dict[str, Any]]:
        """Forecast the twins that moved, store the results with their inputs, and return
        their events."""
        if not moved or self._twins is None or self._position is None:
            return []
        rows = [self._rows.index(t) for t in moved]
        twins = self._twins.select(rows)
        position = self._position
        basal = np.array([t.basal_u_per_h(position) for t in moved])
        # What each twin expects from now to the horizon: the basal rates set or planned,
        # the rest of an extended bolus, planned boluses and meals.
        minutes = max(self.horizons_min)
        rates, extra, meals = (np.zeros((len(moved), minutes)) for _ in range(3))
        planned: list[list[Intervention]] = []
        for j, twin in enumerate(moved):
            rates[j], extra[j], meals[j], named = _plan(
                twin.basals,
                twin.nominal_basal_u_per_h,
                twin.insulin,
                twin.planned,
                position,
                minutes,
            )
            planned.append(named)
        result = forecast(
            twins,
            horizons_min=self.horizons_min,
            basal_u_per_h=rates,
            insulin_u=extra,
            carbs_g=meals,
            seed=self.seed,
        )
        samples = {p: twins.parameter_samples(p) for p in twins.parameters}
        glucose_now = np.median(twins.glucose_mg_dl(), axis=1)
        parameters_text = json.dumps(self._parameters, sort_keys=True, separators=(",", ":"))
        records: list[tuple[ResultRecord, list[InputRecord]]] = []
        events: list[dict[str, Any]] = []
        latest: dict[str, dict[str, float | None]] = {}
        for j, twin in enumerate(moved):
            outputs: dict[str, float | None] = {}
            latest[twin.patient] = outputs
            for h, horizon in enumerate(result.horizons_min):
                for band in ("median", "lower50", "upper50", "lower90", "upper90"):
                    outputs[f"{band}_{horizon}"] = float(getattr(result, band)[j, h])
            for name, values in samples.items():
                lo, mid, hi = np.quantile(values[j], [0.05, 0.5, 0.95])
                outputs[name] = float(mid)
                outputs[f"{name}_lower90"] = float(lo)
                outputs[f"{name}_upper90"] = float(hi)
            outputs["glucose_now"] = float(glucose_now[j])
            outputs["basal_u_per_h"] = float(basal[j])
            outputs["body_weight_kg"] = twin.body_weight_kg
            inputs = [InputRecord("glucose", "observation", r.key) for r in twin.readings] + [
                InputRecord("intervention", "attribute", value=i.describe())
                for i in sorted(
                    twin.used.values(), key=lambda i: (i.start_us, i.source, i.source_id)
                )
            ]
            # Planned interventions the forecast counts on (recorded for later than now).
            inputs += [InputRecord("planned", "attribute", value=i.describe()) for i in planned[j]]
            if twin.previous is None and twin.weight_key is not None:
                inputs.append(InputRecord("body_weight", "observation", twin.weight_key))
            if twin.previous is not None:
                # The state carries every earlier reading: name the result it continues
                # (as a value, so a provenance tree does not unroll the whole chain).
                inputs.append(InputRecord("previous", "attribute", value=twin.previous))
            identity = "\x1e".join(
                [MODULE, VERSION, parameters_text, twin.patient, str(position)]
                + [f"{i.input}\x1f{i.key}\x1f{i.value}" for i in inputs]
            )
            fingerprint = hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()
            params = {
                **self._parameters,
                "statement": STATEMENT,
                "as_of": to_iso(position),
                "last_reading": to_iso(twin.last_reading_us),
            }
            record = ResultRecord(fingerprint, MODULE, VERSION, twin.patient, now, outputs, params)
            records.append((record, inputs))
            twin.previous = fingerprint
            twin.readings = []
            twin.used = {}
            twin.latest = self._latest(record, result.horizons_min, planned[j])
            events.append(
                {
                    "type": "derived.updated",
                    "patient": twin.patient,
                    "module": MODULE,
                    "version": VERSION,
                    "id": fingerprint,
                    "outputs": {
                        name: {"value": value, "unit": _unit(name)}
                        for name, value in outputs.items()
                    },
                    "glucose": twin.latest,
                }
            )
        self.provenance.save(records)
        published = {
            p: v for p, v in self._published.items() if p in {t.patient for t in self._rows}
        }
        for j, twin in enumerate(moved):
            assert twin.latest is not None
            published[twin.patient] = _Published(
                twin.latest,
                twins.select(j),
                float(basal[j]),
                position,
                latest[twin.patient],
                tuple(twin.basals),
                twin.nominal_basal_u_per_h,
                dict(twin.insulin),
            )
        self._published = published
        return events

    def _latest(
        self, record: ResultRecord, horizons: Sequence[int], planned: Sequence[Intervention]
    ) -> dict[str, Any]:
        out = record.outputs
        as_of = self._position or record.computed_us
        return {
            "patient": record.patient,
            "id": record.fingerprint,
            "module": MODULE,
            "version": VERSION,
            "time": to_iso(as_of),
            "computed": to_iso(record.computed_us),
            "last_reading": record.parameters["last_reading"],
            "unit": "mg/dL",
            "glucose_now": out["glucose_now"],
            "basal_u_per_h": out["basal_u_per_h"],
            "forecast": [
                {
                    "horizon_min": h,
                    "time": to_iso(as_of + h * MINUTE_US),
                    **{
                        band: out[f"{band}_{h}"]
                        for band in ("median", "lower50", "upper50", "lower90", "upper90")
                    },
                }
                for h in horizons
            ],
            "parameters": [
                {
                    "name": name,
                    "unit": _PARAMETER_UNITS.get(name, ""),
                    "description": _PARAMETER_TEXT.get(name, name),
                    "value": out[name],
                    "lower90": out[f"{name}_lower90"],
                    "upper90": out[f"{name}_upper90"],
                }
                for name in self.prior.parameters
            ],
            "planned": [_planned_view(i) for i in planned],
            "provenance": f"/api/v1/derived/{record.fingerprint}/provenance",
            "statement": STATEMENT,
        }


def _planned_view(item: Intervention) -> dict[str, Any]:
    """A planned intervention as the API shows it."""
    return {
        "kind": item.kind.value,
        "amount": item.amount,
        "unit": item.unit,
        "time": to_iso(item.start_us),
        "duration_s": item.duration_s,
        "source": item.source,
        "id": item.source_id,
    }


_PARAMETER_UNITS = {q.name: q.unit for q in PHYSIOLOGY}
_PARAMETER_TEXT = {
    "Vmx": "insulin sensitivity (insulin-dependent glucose utilization)",
    "kmax": "maximum gastric emptying rate (meal absorption speed)",
    "Gb": "fasting glucose under the nominal basal rate",
}


def _unit(output: str) -> str:
    name = output.rsplit("_", 1)[0] if output.endswith(("_lower90", "_upper90")) else output
    if name in _PARAMETER_UNITS:
        return _PARAMETER_UNITS[name]
    if output == "basal_u_per_h":
        return "[IU]/h"
    if output == "body_weight_kg":
        return "kg"
    return "mg/dL"
