"""Simulated patients with type 1 diabetes: CGM readings, insulin and meals.

Each patient is one of the UVA/Padova virtual subjects
(``models.physiology.uva_padova``) on open-loop basal-bolus therapy: a steady
basal rate (their steady-state rate), three meals a day with a bolus of
carbohydrate / CR (rounded to the pump's 0.5 U), and an afternoon snack taken
without a bolus (as patients do), under a noisy Dexcom CGM
(``physiology.sensor``). The days are simulated ahead in one batch when the
simulator starts (``days``, repeated after that); ``advance`` hands out what a
CGM and a pump would have sent up to ``now``, as the item dicts of
``POST /api/v1/observations`` and ``POST /api/v1/interventions``.

Times are on the CGM's 5-minute grid from the first call (floored to the grid),
so readings fall on the glucose twins' steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from medtwin.core.clock import to_iso, to_us
from medtwin.models.physiology.scenario import parse_scenario, run_scenario
from medtwin.models.physiology.uva_padova.patients import virtual_patient

__all__ = ["GLUCOSE_CODE", "DiabetesConfig", "DiabetesWard"]

GLUCOSE_CODE = "2339-0"  # Glucose [Mass/volume] in Blood
BODY_WEIGHT_CODE = "29463-7"
SAMPLE_MIN = 5
_DAY_MIN = 1440
# (minute of the day, carbohydrate g, bolused): breakfast, lunch, snack, dinner.
MEALS: tuple[tuple[int, float, bool], ...] = (
    (7 * 60, 45.0, True),
    (12 * 60 + 30, 70.0, True),
    (16 * 60, 20.0, False),
    (19 * 60, 80.0, True),
)


@dataclass(frozen=True, slots=True)
class DiabetesConfig:
    """Which virtual subjects (and the ids they get), days simulated ahead, noise seed."""

    subjects: tuple[str, ...] = ("adult#001", "adolescent#003", "child#002")
    ids: tuple[str, ...] = ("t1d-01", "t1d-02", "t1d-03")
    days: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.subjects) != len(self.ids) or not self.subjects:
            raise ValueError("give one id per subject")
        if self.days < 1:
            raise ValueError("days must be at least 1")


class DiabetesWard:
    """CGM readings, insulin and meals of a few simulated patients, as item dicts."""

    def __init__(self, config: DiabetesConfig | None = None) -> None:
        self.config = config or DiabetesConfig()
        self.patient_ids = list(self.config.ids)
        self._origin: datetime | None = None
        self._cgm: np.ndarray | None = None  # (patients, minutes) mg/dL, NaN between samples
        self._minute = -1  # last minute handed out (from the origin)
        self._events: list[tuple[int, int, str, float]] = []  # minute, patient, kind, amount
        self._at: dict[int, list[tuple[int, int, str, float]]] = {}  # the events by minute
        self._weights: list[float] = []

    # -- the simulation ---------------------------------------------------------

    def _simulate(self, origin: datetime) -> None:
        """Run the days ahead: meals by the clock of the day of ``origin``."""
        config = self.config
        minutes = config.days * _DAY_MIN
        first = origin.hour * 60 + origin.minute
        events: list[dict[str, float | int]] = []
        boluses: list[tuple[int, int, float]] = []
        meals: list[tuple[int, float]] = []
        for day in range(config.days + 1):
            for at_day, grams, bolused in MEALS:
                at = day * _DAY_MIN + at_day - first
                if 0 <= at < minutes:
                    meals.append((at, grams))
                    events.append({"at_min": at, "meal_g": grams})
                    if bolused:
                        boluses.append((at, 0, grams))
        scenario = parse_scenario(
            {
                "model": "uva-padova",
                "patients": list(config.subjects),
                "duration_min": minutes,
                "events": events,
                "controller": "none",
                "sensor": {"preset": "Dexcom", "sample_min": SAMPLE_MIN},
                "seed": config.seed,
            }
        )
        # Per-patient boluses (carbohydrate / CR differs): added to the insulin input.
        subjects = [virtual_patient(s) for s in config.subjects]
        values = scenario.inputs.values
        basal = np.array([p.basal_u_per_min for p in subjects])
        values[:, :, 1] = basal[:, None]
        self._events = []
        for i in range(len(subjects)):
            self._events.append((0, i, "insulin-basal", round(float(basal[i]) * 60.0, 3)))
        for at, _, grams in boluses:
            for i, subject in enumerate(subjects):
                units = math.floor(grams / subject.cr_g_per_u * 2.0 + 0.5) / 2.0
                if units > 0:
                    values[i, at, 1] += units
                    self._events.append((at, i, "insulin-bolus", units))
        for at, grams in meals:
            for i in range(len(subjects)):
                self._events.append((at, i, "meal", grams))
        self._events.sort()
        self._at = {}
        for event in self._events:
            self._at.setdefault(event[0], []).append(event)
        solution = run_scenario(scenario).solution
        column = scenario.outputs.index("cgm_mg_dl")
        self._cgm = np.asarray(solution.y[:, :, column], dtype=np.float64)
        self._weights = [float(s.parameter("BW")) for s in subjects]

    # -- handing out ------------------------------------------------------------

    def advance(self, now: datetime) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """Observation and intervention items with times in (last call, now].

        The first call sets the origin (``now`` floored to the 5-minute grid) and
        also returns each patient's body weight and the items of minute 0.
        """
        now = now.astimezone(UTC)
        observations: list[dict[str, object]] = []
        if self._origin is None:
            origin = datetime.fromtimestamp(
                to_us(now) // (SAMPLE_MIN * 60_000_000) * SAMPLE_MIN * 60, UTC
            )
            self._origin = origin
            self._simulate(origin)
            stamp = to_us(origin) // 60_000_000
            for i, patient in enumerate(self.patient_ids):
                observations.append(
                    {
                        "id": f"t1d{self.config.seed}-{patient}-weight-{stamp}",
                        "source": f"scale-{patient}",
                        "patient": patient,
                        "code": BODY_WEIGHT_CODE,
                        "value": round(self._weights[i], 1),
                        "unit": "kg",
                        "time": to_iso(to_us(origin)),
                    }
                )
        assert self._cgm is not None
        # Ids carry the epoch minute: a restarted simulator never reuses one for other values.
        base = to_us(self._origin) // 60_000_000
        last = (to_us(now) - to_us(self._origin)) // 60_000_000
        interventions: list[dict[str, object]] = []
        span = self._cgm.shape[1]
        for minute in range(self._minute + 1, last + 1):
            cycle, at = divmod(minute, span)
            moment = to_iso(to_us(self._origin + timedelta(minutes=minute)))
            if at % SAMPLE_MIN == 0:
                for i, patient in enumerate(self.patient_ids):
                    value = self._cgm[i, at]
                    if np.isfinite(value):
                        observations.append(
                            {
                                "id": f"t1d{self.config.seed}-{patient}-cgm-{base + minute}",
                                "source": f"cgm-{patient}",
                                "patient": patient,
                                "code": GLUCOSE_CODE,
                                "value": round(float(value), 1),
                                "unit": "mg/dL",
                                "time": moment,
                            }
                        )
            interventions.extend(self._items(base + minute, moment, self._at.get(at, ()), cycle))
        self._minute = max(self._minute, last)
        return observations, interventions

    def _items(
        self,
        minute: int,
        moment: str,
        events: Sequence[tuple[int, int, str, float]],
        cycle: int,
    ) -> list[dict[str, object]]:
        units = {"insulin-basal": "[IU]/h", "insulin-bolus": "[IU]", "meal": "g"}
        out: list[dict[str, object]] = []
        for _, i, kind, amount in events:
            if kind == "insulin-basal" and cycle > 0:
                continue  # the basal rate stands; it is set once
            patient = self.patient_ids[i]
            out.append(
                {
                    "id": f"t1d{self.config.seed}-{patient}-{kind}-{minute}",
                    "source": f"pump-{patient}" if kind != "meal" else f"app-{patient}",
                    "patient": patient,
                    "kind": kind,
                    "amount": float(amount),
                    "unit": units[kind],
                    "time": moment,
                }
            )
        return out
