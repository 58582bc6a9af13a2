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
2. **Host response** (per patient, independent of the severity and of each other;
   :class:`Traits`).  Septic patients do not all show deterioration the same way:

   - *Phenotype* (Seymour et al., JAMA 2019;321:2003, clinical sepsis phenotypes in
     their derivation shares): alpha 33 % (fewest abnormalities: every organ system
     below shows 0.6 of the severity), beta 27 % (renal dysfunction: creatinine),
     gamma 27 % (inflammation and pulmonary dysfunction: temperature, WBC,
     respiration rate, SpO2), delta 13 % (liver dysfunction and shock: bilirubin,
     pressures, lactate).  The systems a phenotype is defined by show 1.8 of the
     severity, the others 0.5 (for alpha, 0.6 everywhere); heart rate, GCS and
     platelets follow the severity itself.
   - *Hypothermic* 15 %: temperature falls with severity (-0.6 Cel per unit) instead
     of rising; hypothermia is seen in about 10-20 % of septic patients and marks
     the worse course (Kushimoto et al., Crit Care 2013;17:R271; SIRS counts both
     > 38 and < 36 Cel: Bone et al., Chest 1992;101:1644).
   - *Leukopenic* 15 %: WBC falls with severity (``x exp(-0.35 x)``) instead of
     rising; SIRS counts both > 12 and < 4 x10^3/uL (Bone et al. 1992).
   - *Beta-blocked* 20 % (chronic beta-blockade is common in ICU admissions, e.g.
     Macchia et al., Crit Care Med 2012;40:2768): resting HR 10 /min lower and the
     heart-rate response to severity 0.35 of the usual.
   - *Age*: the heart-rate and fever responses shrink linearly from age 40 to half
     at 90 (blunted febrile response: Norman, Clin Infect Dis 2000;31:148; blunted
     beta-adrenergic chronotropic response: Lakatta, Physiol Rev 1993;73:413).
3. **Latent severity** ``s(t) >= 0`` (0 = well, ~1 = unwell, 2-3 = organ
   dysfunction): ``s(0) ~ Gamma(1.5, 0.3)``, then a reflected random walk with a
   per-patient drift, ``s(t+1) = |s(t) + d + 0.07 e(t)|``, ``d ~ N(0.004, 0.012)`` /h,
   ``e(t) ~ N(0, 1)``.
4. **Onset** (sepsis / deterioration): an hourly hazard from hour 6 on,
   ``h(t) = h0 * exp(beta * s(t))`` with ``h0 = 0.0006`` /h and ``beta = 1.6``; onset
   ``T`` is the first hour an event ``~ Bernoulli(1 - exp(-h(t)))`` fires (none
   for most patients).  The hazard depends on the severity only: the host response
   changes how the deterioration shows, not how likely it is.  From ``T`` on the
   severity the body shows rises by a ramp of 1.2 over 6 h (organ dysfunction
   follows the onset).  With the defaults, 10-20 % of an ICU cohort of 24-96 h
   stays has an onset (:data:`EVENT_RATE_RANGE`).  Onsets start at hour 6 so that
   the challenge's 6-h label shift stays inside the record.
5. **Labels.**  ``SepsisLabel = 1`` from ``T - 6`` on, as in the challenge.
6. **Physiology.**  With ``x`` the shown severity, ``x_o`` = (organ gain of step 2)
   ``x`` for organ system ``o`` and per-patient baselines (normal adult ranges),
   hourly true values are: HR ``+14 x`` /min (times the age and beta-blocker
   factors), Resp ``+3.5 x_lung`` /min, O2Sat ``-1.8 x_lung`` % (at most 100),
   Temp ``+0.5 x_inflam`` Cel (times the age factor; hypothermic: ``-0.6 x``), WBC
   ``+2.5 x_inflam`` 10*3/uL (leukopenic: ``x exp(-0.35 x_inflam)``), Glasgow Coma
   Scale ``15 - 2 max(x - 1, 0)`` (rounded, 3..15; in ``extra["GCS"]``, the
   challenge has no such column), creatinine ``x (1 + 0.35 x_kidney)``, bilirubin
   ``x exp(0.3 x_liver)``, platelets ``x exp(-0.25 x)``.  *Compensation, then
   decompensation*: blood pressure is held by vasoconstriction and tachycardia until
   the circulation fails, and lactate stays near normal until oxygen delivery falls
   below the critical level, then climbs steeply (hypotension is a late sign of
   shock; critical oxygen delivery: Schumacker and Cain, Intensive Care Med
   1987;13:223).  So SBP falls by ``f = 4 x_shock + 25 max(x_shock - 1.5, 0)``
   mm[Hg], saturating towards a peri-arrest floor of 50 mm[Hg] (the fall taken is
   ``r tanh(f / r)`` with ``r`` = baseline SBP - 50), DBP by half of it, MAP = (SBP
   + 2 DBP)/3, lactate ``x exp(0.15 x_shock + 0.6 max(x_shock - 1.5, 0))``.
7. **Measurement.**  Additive noise on vitals (HR 4, Resp 1.5, SBP 6, DBP 4 mm[Hg],
   the DBP read at least 5 below the SBP; Temp 0.15 Cel, O2Sat 1 %, GCS 0.3 before
   rounding) and 5-8 % multiplicative noise on labs, in the challenge's units
   (lactate mg/dL).  Sampling: in the ICU HR, pressures, Resp and O2Sat are
   recorded in 92 % of hours, Temp and GCS in 25 %; on the ward all vitals in 25 %
   (4-hourly observations).  Labs (chemistry: creatinine and bilirubin together;
   blood count: platelets and WBC together; lactate) are drawn on admission (80 %)
   and then with hourly probability ``1/24 + 0.03 x`` (lactate ``1/24 + 0.05 x``,
   at most 0.5): sicker patients are sampled more, as in practice.  Everything else
   is NaN.

Why the host response: with every vital a straight line in one severity, a logistic
regression on the same features is close to the best possible model.  The
documented heterogeneity above makes the link from a vital to the risk non-monotone
(temperature, WBC) or patient-dependent (heart rate, which organ fails), as in real
cohorts.  The shares and organ gains are modelling choices, set from the sources'
qualitative descriptions and not fitted to any data or model.  It lowers every
model's AUROC, but it gives the trees no lead over the logistic baseline on the same
features that holds on other seeds or with more data.  Test AUROC, LightGBM 4.7,
patient-level splits, means of 5 seeds (trees / logistic / NEWS2):

==========  ======  ======  ========  ======
patients    seeds   trees   logistic  NEWS2
==========  ======  ======  ========  ======
1,000       0-4     0.9048  0.8861    0.8729
1,000       5-9     0.9135  0.9091    0.9036
1,000       10-14   0.8924  0.9019    0.8729
3,000       0-4     0.9035  0.9061    0.8715
==========  ======  ======  ========  ======

With three times the patients the lead is gone: at 1,000 patients it is the noise of
200 test patients per seed.  Measured, the limit is the cohort, not the trees (all but
the first item before the pressure floor of step 6, which moved the 1,000-patient
means above by less than 0.005):

- the true shown severity itself, as a score, reaches 0.9285 (test patients of seeds
  0-4): the onset is a random event, so little room is left above a linear model;
- given each patient's traits (phenotype, hypothermic, leukopenic, beta-blocked) as
  extra features, the trees do no better (seeds 0-9: 0.9097 with, 0.9106 without);
- with 3,000 patients (seeds 5-6) the lead stays within 0.002 with hypothermic and
  leukopenic shares of 40 % instead of 15 %, with organ gains of 2.5 and 0.2
  instead of 1.8 and 0.5, and with the age blunting at 0.9 instead of 0.5;
- a steeper hazard (log hazard ratio 2.5) lifts the true severity's AUROC to 0.97,
  and the logistic baseline rises with it (lead -0.0003, seeds 5-10).

Every vital here still moves one way with the one severity for most patients, so a
weighted sum of the vitals ranks hours nearly as well as any model can.

Left out on purpose: an age term in the hazard (older patients deteriorate
more at the same severity: Martin et al., Crit Care Med 2006;34:15); it would make
age a direct predictor of the label, and the hazard here depends on the severity only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from medtwin.models.learning.physionet import FEATURES, PatientSeries

__all__ = ["EVENT_RATE_RANGE", "GeneratedCohort", "Traits", "generate_cohort"]

EVENT_RATE_RANGE = (0.10, 0.20)
"""Share of patients with an onset, ICU setting with default stays (checked by the tests)."""

ONSET_FROM_H = 6  # first hour an onset may happen (keeps the 6-h label shift in the record)
LABEL_LEAD_H = 6  # SepsisLabel is 1 from this many hours before the onset
_H0 = 0.0006  # /h baseline onset hazard
_LOG_HAZARD_RATIO = 1.6  # log hazard ratio per unit severity
_RAMP = 1.2  # severity added after the onset, reached over _RAMP_H hours
_RAMP_H = 6.0
_LACTATE_MG_DL_PER_MMOL_L = 9.008  # lactic acid 90.08 g/mol

ALPHA, BETA, GAMMA, DELTA = 0, 1, 2, 3
"""Sepsis phenotypes (Seymour et al. 2019), the values of :attr:`Traits.phenotype`."""
PHENOTYPE_SHARES = (0.33, 0.27, 0.27, 0.13)  # alpha, beta, gamma, delta (derivation cohort)
HYPOTHERMIC_SHARE = 0.15
LEUKOPENIC_SHARE = 0.15
BETA_BLOCKED_SHARE = 0.20
_ALPHA_GAIN = 0.6  # organ gains of phenotype alpha (fewest abnormalities)
_EMPHASIZED_GAIN = 1.8  # organ systems a phenotype is defined by
_OTHER_GAIN = 0.5  # the other organ systems
_AGE_BLUNTING = 0.5  # heart-rate and fever response lost from age 40 to 90
_DECOMPENSATION = 1.5  # organ severity past which pressure falls and lactate climbs
_SBP_FLOOR = 50.0  # mm[Hg], true systolic pressure the fall approaches (peri-arrest)


@dataclass(frozen=True, eq=False)
class Traits:
    """Per-patient host response (step 2 of the process), (n,) arrays each."""

    phenotype: NDArray[np.int64]
    hypothermic: NDArray[np.bool_]
    leukopenic: NDArray[np.bool_]
    beta_blocked: NDArray[np.bool_]
    age: NDArray[np.float64]


_COLUMN = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True, eq=False)
class GeneratedCohort:
    """Simulated records with the truth that produced them.

    ``patients``: one :class:`PatientSeries` per patient (challenge layout).
    ``severity``: the shown latent severity per patient, (hours,) each.
    ``onset_hour``: (n,) int, the onset row, -1 for patients without one.
    ``traits``: each patient's host response (phenotype, hypothermic, leukopenic,
    beta-blocked, age).
    """

    patients: tuple[PatientSeries, ...]
    severity: tuple[NDArray[np.float64], ...]
    onset_hour: NDArray[np.int64]
    seed: int
    setting: str
    traits: Traits | None = None

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
    uniform = rng.random((n, hours))
    # 1. Age (years, before the challenge's 90 -> 100) and 2. host-response traits.
    age = np.floor(rng.uniform(18, 95, size=n))
    traits = _traits(rng, age)
    hazard = _H0 * np.exp(_LOG_HAZARD_RATIO * severity)
    fires = (uniform < -np.expm1(-hazard)) & (t >= ONSET_FROM_H)
    fires &= t < length[:, None]
    onset = np.where(fires.any(axis=1), fires.argmax(axis=1), -1)
    since = t[None, :] - onset[:, None]
    post = np.where((onset[:, None] >= 0) & (since >= 0), _RAMP * np.minimum(1, since / _RAMP_H), 0)
    shown = severity + post

    values = _physiology(rng, shown, traits)
    gcs = values.pop("GCS")
    observed = _sampling(rng, shown, setting)
    table = np.full((n, hours, len(FEATURES)), np.nan)
    for name, series in values.items():
        table[:, :, _COLUMN[name]] = np.where(observed[name], series, np.nan)
    gcs = np.where(observed["GCS"], gcs, np.nan)

    # 1. Demographics and administrative columns (constant over the stay).
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
    return GeneratedCohort(
        tuple(patients), shown_rows, onset.astype(np.int64), seed, setting, traits
    )


def _traits(rng: np.random.Generator, age: NDArray[np.float64]) -> Traits:
    """Each patient's host response (step 2), drawn independently of the severity."""
    u = rng.random((len(age), 4))
    phenotype = np.searchsorted(np.cumsum(PHENOTYPE_SHARES), u[:, 3], side="right")
    return Traits(
        phenotype=np.minimum(phenotype, DELTA).astype(np.int64),
        hypothermic=u[:, 0] < HYPOTHERMIC_SHARE,
        leukopenic=u[:, 1] < LEUKOPENIC_SHARE,
        beta_blocked=u[:, 2] < BETA_BLOCKED_SHARE,
        age=age,
    )


def _physiology(
    rng: np.random.Generator, x: NDArray[np.float64], traits: Traits
) -> dict[str, NDArray[np.float64]]:
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

    def col(a: NDArray[Any]) -> NDArray[Any]:
        return a[:, None]

    phenotype = col(traits.phenotype)

    def organ(*emphasized: int) -> NDArray[np.float64]:
        """Per-patient gain of an organ system under the patient's phenotype (step 2)."""
        out: NDArray[np.float64] = np.where(
            phenotype == ALPHA,
            _ALPHA_GAIN,
            np.where(np.isin(phenotype, emphasized), _EMPHASIZED_GAIN, _OTHER_GAIN),
        )
        return out

    x_shock = organ(DELTA) * x  # pressures and lactate
    x_lung = organ(GAMMA) * x  # respiration rate and SpO2
    x_kidney = organ(BETA) * x  # creatinine
    x_liver = organ(DELTA) * x  # bilirubin
    x_inflam = organ(GAMMA) * x  # temperature and WBC
    blunt = 1.0 - _AGE_BLUNTING * np.clip((col(traits.age) - 40.0) / 50.0, 0.0, 1.0)

    sbp0 = base(125, 14)
    fall = 4.0 * x_shock + 25.0 * np.maximum(x_shock - _DECOMPENSATION, 0.0)
    # The fall saturates towards the peri-arrest floor, so that pressures stay positive
    # and the diastolic stays below the systolic however severe the shock.
    room = np.maximum(sbp0 - _SBP_FLOOR, 1.0)
    fall = room * np.tanh(fall / room)
    sbp = sbp0 - fall + noise(6)
    dbp = np.minimum(0.62 * sbp0 - fall / 2 + noise(4), sbp - 5.0)  # a reading has SBP > DBP
    sickest = np.maximum(x - 1.0, 0.0)
    beta_blocked = col(traits.beta_blocked)
    hr_base = base(78, 10) - np.where(beta_blocked, 10.0, 0.0)
    hr_gain = 14.0 * blunt * np.where(beta_blocked, 0.35, 1.0)
    temp_gain = np.where(col(traits.hypothermic), -0.6, 0.5 * blunt * organ(GAMMA))
    wbc0 = base(8, 2)
    wbc = np.where(col(traits.leukopenic), wbc0 * np.exp(-0.35 * x_inflam), wbc0 + 2.5 * x_inflam)
    lactate = np.exp(0.15 * x_shock + 0.6 * np.maximum(x_shock - _DECOMPENSATION, 0.0))
    return {
        "HR": hr_base + hr_gain * x + noise(4),
        "Resp": np.maximum(base(16, 2) + 3.5 * x_lung + noise(1.5), 4.0),
        "SBP": sbp,
        "DBP": dbp,
        "MAP": (sbp + 2 * dbp) / 3,
        "Temp": base(36.9, 0.3) + temp_gain * x + noise(0.15),
        "O2Sat": np.minimum(base(97.5, 1.0) - 1.8 * x_lung + noise(1.0), 100.0),
        "GCS": np.clip(np.round(15 - 2 * sickest + noise(0.3)), 3, 15),
        "Lactate": lognormal(1.0, 0.2) * _LACTATE_MG_DL_PER_MMOL_L * lactate * lab_noise(0.08),
        "Creatinine": lognormal(0.9, 0.2) * (1 + 0.35 * x_kidney) * lab_noise(0.05),
        "Bilirubin_total": lognormal(0.6, 0.3) * np.exp(0.3 * x_liver) * lab_noise(0.08),
        "Platelets": lognormal(250, 0.25) * np.exp(-0.25 * x) * lab_noise(0.05),
        "WBC": np.maximum(wbc + noise(0.8), 0.5),
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
