"""A simulated ICU or ward cohort with documented deterioration, for tests and the demo.

The records have the layout of the PhysioNet 2019 challenge files
(:class:`~medtwin.models.learning.physionet.PatientSeries`: hours x 40 features,
NaN when not measured, ``SepsisLabel``), so the training and scoring code that
reads the challenge data reads this cohort unchanged.  The process is written in
terms of a latent severity, never in terms of any model's features, so a model
trained on it has to find the signal as it would in real data.

Generative process (all draws from one ``numpy.random.Generator`` seeded by ``seed``;
hours are rows, ``t = 0 .. L-1``):

1. **Stay.**  Length ``L ~ U{min_hours .. max_hours}`` h.  Age ``~ U(18, 95)`` years
   (written 100 from 90 on, as the challenge does), gender ``~ Bernoulli(0.5)``, ICU
   unit MICU/SICU ``~ Bernoulli(0.5)`` (ward: both NaN), hours from hospital to
   ICU admission ``HospAdmTime = -Exponential(12 h)``, ``ICULOS = t + 1``.
2. **Latent severity** ``s(t) >= 0`` (0 = well, ~1 = unwell, 2-3 = organ
   dysfunction): ``s(0) ~ Gamma(1.5, 0.3)``, then a reflected random walk with a
   per-patient drift, ``s(t+1) = |s(t) + d + 0.07 e(t)|``, ``d ~ N(0.004, 0.012)`` /h,
   ``e(t) ~ N(0, 1)``.
3. **Onset** (sepsis / deterioration): an hourly hazard from hour 6 on,
   ``h(t) = h0 * exp(beta * s(t))`` with ``h0 = 0.0006`` /h and ``beta = 1.6``; onset
   ``T`` is the first hour an event ``~ Bernoulli(1 - exp(-h(t)))`` fires (none
   for most patients).  From ``T`` on the severity the body shows rises by a ramp
   of 1.2 over 6 h (organ dysfunction follows the onset).  With the defaults,
   10-20 % of an ICU cohort of 24-96 h stays has an onset (:data:`EVENT_RATE_RANGE`).
   Onsets start at hour 6 so that the challenge's 6-h label shift stays inside the
   record.
4. **Labels.**  ``SepsisLabel = 1`` from ``T - 6`` on, as in the challenge.
5. **Physiology.**  With ``x`` the shown severity and per-patient baselines
   (normal adult ranges), hourly true values are: HR ``+14 x`` /min, Resp
   ``+3.5 x`` /min, SBP ``-12 x`` mm[Hg], DBP ``-6 x`` mm[Hg] (MAP = (SBP + 2 DBP)/3),
   Temp ``+0.5 x`` Cel, O2Sat ``-1.8 x`` % (at most 100), Glasgow Coma Scale
   ``15 - 2 max(x - 1, 0)`` (rounded, 3..15; in ``extra["GCS"]``, the challenge has
   no such column), lactate ``x exp(0.35 x)``, creatinine ``x (1 + 0.35 x)``,
   bilirubin ``x exp(0.3 x)``, platelets ``x exp(-0.25 x)``, WBC ``+2.5 x`` 10*3/uL.
6. **Measurement.**  Additive noise on vitals (HR 4, Resp 1.5, SBP 6, DBP 4 mm[Hg],
   Temp 0.15 Cel, O2Sat 1 %, GCS 0.3 before rounding) and 5-8 % multiplicative
   noise on labs, in the challenge's units (lactate mg/dL).  Sampling: in the ICU
   HR, pressures, Resp and O2Sat are recorded in 92 % of hours, Temp and GCS in
   25 %; on the ward all vitals in 25 % (4-hourly observations).  Labs
   (chemistry: creatinine and bilirubin together; blood count: platelets and WBC
   together; lactate) are drawn on admission (80 %) and then with hourly
   probability ``1/24 + 0.03 x`` (lactate ``1/24 + 0.05 x``, at most 0.5): sicker
   patients are sampled more, as in practice.  Everything else is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from medtwin.models.learning.physionet import FEATURES, PatientSeries

__all__ = ["EVENT_RATE_RANGE", "GeneratedCohort", "generate_cohort"]

EVENT_RATE_RANGE = (0.10, 0.20)
"""Share of patients with an onset, ICU setting with default stays (checked by the tests)."""

ONSET_FROM_H = 6  # first hour an onset may happen (keeps the 6-h label shift in the record)
LABEL_LEAD_H = 6  # SepsisLabel is 1 from this many hours before the onset
_H0 = 0.0006  # /h baseline onset hazard
_BETA = 1.6  # log hazard ratio per unit severity
_RAMP = 1.2  # severity added after the onset, reached over _RAMP_H hours
_RAMP_H = 6.0
_LACTATE_MG_DL_PER_MMOL_L = 9.008  # lactic acid 90.08 g/mol

_COLUMN = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True, eq=False)
class GeneratedCohort:
    """Simulated records with the truth that produced them.

    ``patients``: one :class:`PatientSeries` per patient (challenge layout).
    ``severity``: the shown latent severity per patient, (hours,) each.
    ``onset_hour``: (n,) int, the onset row, -1 for patients without one.
    """

    patients: tuple[PatientSeries, ...]
    severity: tuple[NDArray[np.float64], ...]
    onset_hour: NDArray[np.int64]
    seed: int
    setting: str

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def event_rate(self) -> float:
        """Share of patients with an onset during the stay."""
        return float(np.mean(self.onset_hour >= 0)) if len(self) else 0.0


def generate_cohort(
    n_patients: int,
    *,
    seed: int,
    setting: Literal["icu", "ward"] = "icu",
    min_hours: int = 24,
    max_hours: int = 96,
) -> GeneratedCohort:
    """Simulate ``n_patients`` stays (see the module docstring for the process).

    Same ``seed`` and arguments, same cohort.  ValueError for ``n_patients < 0``,
    an unknown setting, or stays shorter than 8 h or with ``max_hours < min_hours``.
    """
    if n_patients < 0:
        raise ValueError("n_patients must be >= 0")
    if setting not in ("icu", "ward"):
        raise ValueError(f"setting must be 'icu' or 'ward', got {setting!r}")
    if min_hours < ONSET_FROM_H + 2 or max_hours < min_hours:
        raise ValueError(f"need {ONSET_FROM_H + 2} <= min_hours <= max_hours")
    rng = np.random.default_rng(seed)
    n, hours = n_patients, max_hours
    length = rng.integers(min_hours, max_hours + 1, size=n)
    t = np.arange(hours)

    # 2. Latent severity: reflected random walk with a per-patient drift (hourly).
    drift = rng.normal(0.004, 0.012, size=n)
    steps = rng.normal(0.0, 0.07, size=(n, hours))
    severity = np.empty((n, hours))
    severity[:, 0] = rng.gamma(1.5, 0.3, size=n)
    for h in range(1, hours):
        severity[:, h] = np.abs(severity[:, h - 1] + drift + steps[:, h])

    # 3. Onset: first hour an event of hazard h0 * exp(beta * s) fires, from hour 6 on.
    hazard = _H0 * np.exp(_BETA * severity)
    fires = (rng.random((n, hours)) < -np.expm1(-hazard)) & (t >= ONSET_FROM_H)
    fires &= t < length[:, None]
    onset = np.where(fires.any(axis=1), fires.argmax(axis=1), -1)
    since = t[None, :] - onset[:, None]
    post = np.where((onset[:, None] >= 0) & (since >= 0), _RAMP * np.minimum(1, since / _RAMP_H), 0)
    shown = severity + post

    values = _physiology(rng, shown)
    gcs = values.pop("GCS")
    observed = _sampling(rng, shown, setting)
    table = np.full((n, hours, len(FEATURES)), np.nan)
    for name, series in values.items():
        table[:, :, _COLUMN[name]] = np.where(observed[name], series, np.nan)
    gcs = np.where(observed["GCS"], gcs, np.nan)

    # 1. Demographics and administrative columns (constant over the stay).
    age = np.floor(rng.uniform(18, 95, size=n))
    age = np.where(age >= 90, 100.0, age)
    gender = (rng.random(n) < 0.5).astype(np.float64)
    micu = (rng.random(n) < 0.5).astype(np.float64)
    admit = -np.round(rng.exponential(12.0, size=n), 2)
    constants = {
        "Age": age,
        "Gender": gender,
        "Unit1": micu if setting == "icu" else np.full(n, np.nan),
        "Unit2": 1.0 - micu if setting == "icu" else np.full(n, np.nan),
        "HospAdmTime": admit,
    }
    for name, column in constants.items():
        table[:, :, _COLUMN[name]] = column[:, None]
    table[:, :, _COLUMN["ICULOS"]] = t + 1.0

    # 4. Labels, shifted 6 h early as in the challenge.
    labels = ((onset[:, None] >= 0) & (since >= -LABEL_LEAD_H)).astype(np.int8)

    patients = []
    for i in range(n):
        rows = slice(0, int(length[i]))
        vals, lab, g = table[i, rows].copy(), labels[i, rows].copy(), gcs[i, rows].copy()
        for arr in (vals, lab, g):
            arr.setflags(write=False)
        patients.append(PatientSeries(f"sim{seed}-{i:05d}", vals, lab, {"GCS": g}))
    shown_rows = tuple(shown[i, : int(length[i])].copy() for i in range(n))
    return GeneratedCohort(tuple(patients), shown_rows, onset.astype(np.int64), seed, setting)


def _physiology(rng: np.random.Generator, x: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """True values plus measurement noise for every simulated column, in challenge units."""
    n, hours = x.shape

    def base(mean: float, sd: float) -> NDArray[np.float64]:
        out: NDArray[np.float64] = rng.normal(mean, sd, size=(n, 1))
        return out

    def noise(sd: float) -> NDArray[np.float64]:
        out: NDArray[np.float64] = rng.normal(0.0, sd, size=(n, hours))
        return out

    def lognormal(mean: float, sd: float) -> NDArray[np.float64]:
        out: NDArray[np.float64] = rng.lognormal(np.log(mean), sd, size=(n, 1))
        return out

    def lab_noise(sd: float) -> NDArray[np.float64]:
        out: NDArray[np.float64] = rng.lognormal(0.0, sd, size=(n, hours))
        return out

    sbp0 = base(125, 14)
    sbp = sbp0 - 12 * x + noise(6)
    dbp = 0.62 * sbp0 - 6 * x + noise(4)
    sickest = np.maximum(x - 1.0, 0.0)
    return {
        "HR": base(78, 10) + 14 * x + noise(4),
        "Resp": np.maximum(base(16, 2) + 3.5 * x + noise(1.5), 4.0),
        "SBP": sbp,
        "DBP": dbp,
        "MAP": (sbp + 2 * dbp) / 3,
        "Temp": base(36.9, 0.3) + 0.5 * x + noise(0.15),
        "O2Sat": np.minimum(base(97.5, 1.0) - 1.8 * x + noise(1.0), 100.0),
        "GCS": np.clip(np.round(15 - 2 * sickest + noise(0.3)), 3, 15),
        "Lactate": lognormal(1.0, 0.2)
        * _LACTATE_MG_DL_PER_MMOL_L
        * np.exp(0.35 * x)
        * lab_noise(0.08),
        "Creatinine": lognormal(0.9, 0.2) * (1 + 0.35 * x) * lab_noise(0.05),
        "Bilirubin_total": lognormal(0.6, 0.3) * np.exp(0.3 * x) * lab_noise(0.08),
        "Platelets": lognormal(250, 0.25) * np.exp(-0.25 * x) * lab_noise(0.05),
        "WBC": np.maximum(base(8, 2) + 2.5 * x + noise(0.8), 0.5),
    }


def _sampling(
    rng: np.random.Generator, x: NDArray[np.float64], setting: str
) -> dict[str, NDArray[np.bool_]]:
    """Which hours record each column (True = measured)."""
    n, hours = x.shape
    vital = 0.92 if setting == "icu" else 0.25
    slow = 0.25

    def every(p: float | NDArray[np.float64]) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = rng.random((n, hours)) < p
        return out

    def lab(rate: float) -> NDArray[np.bool_]:
        drawn = every(np.minimum(1 / 24 + rate * x, 0.5))
        drawn[:, 0] = rng.random(n) < 0.8  # admission bloods
        return drawn

    pressure = every(vital)  # one cuff or line reading gives all three pressures
    chemistry, blood_count = lab(0.03), lab(0.03)  # analytes of one panel come together
    return {
        "HR": every(vital),
        "Resp": every(vital),
        "SBP": pressure,
        "DBP": pressure,
        "MAP": pressure,
        "O2Sat": every(vital),
        "Temp": every(slow if setting == "icu" else vital),
        "GCS": every(slow),
        "Lactate": lab(0.05),
        "Creatinine": chemistry,
        "Bilirubin_total": chemistry,
        "Platelets": blood_count,
        "WBC": blood_count,
    }
