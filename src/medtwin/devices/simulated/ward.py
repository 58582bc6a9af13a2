"""A simulated ward of patients whose bedside monitors emit vital-sign observations.

The ward produces plain dicts in the shape of one item of ``POST /api/v1/observations``::

    {"id": "sim0-ward-03-8867-4-1767261600000", "source": "ward-monitor-03",
     "patient": "ward-03", "code": "8867-4", "value": 82.0, "unit": "/min",
     "time": "2026-01-01T10:00:00.000Z"}

It does not post them; a caller with a clock calls :meth:`VirtualWard.advance` repeatedly with
the clock's now (or :meth:`VirtualWard.readings` for a window) and feeds the items to the same
ingestion path a real device would use.

Severity dynamics
-----------------
Each patient ``i`` has a latent severity ``s_i`` in ``[0, 1]`` (0 = well, 1 = peri-arrest). Per
simulation tick of ``dt`` hours (``sample_interval_s / 3600``) it follows a mean-reverting
(Ornstein-Uhlenbeck) random walk towards a patient-specific target ``m_i``::

    s_i <- clip(s_i + theta_i * (m_i(t) - s_i) * dt + sigma * sqrt(dt) * N(0, 1), 0, 1)

with reversion rate ``theta_i ~ U(0.12, 0.3)`` per hour and ``sigma = 0.04`` per sqrt(hour).
The trend is encoded in the target, i.e. the drift:

* deteriorating: ``s_i(0) ~ U(0.1, 0.35)``; after an onset ``~ U(0, 3)`` h the target jumps from
  ``s_i(0)`` to ``m_i ~ U(0.7, 1.0)``, so severity drifts up;
* recovering: ``s_i(0) ~ U(0.4, 0.7)``, target ``m_i ~ U(0.0, 0.1)`` from the start;
* stable: ``s_i(0) ~ U(0.0, 0.3)``, target ``m_i = s_i(0)`` (flat, fluctuating around it).

Vitals are ``baseline_i + gain_i * effect(s_i) + wander_i + noise``: per-patient baselines and
gains, a slow physiological wander (AR(1), time constant 20 min) and white measurement noise.
Severity raises respiration rate (+16/min at s=1), pulse (+45/min) and temperature (up to
+2.2 Cel), lowers SpO2 (-14 % * s^1.5), systolic (-40 mm[Hg] * s^1.5) and diastolic
(-22 mm[Hg] * s^1.5). Consciousness leaves "A" only at high severity (C >= 0.78, V >= 0.86,
P >= 0.92, U >= 0.97, with a small per-patient shift and assessment noise).

Oxygen: the nurse escalates inhaled oxygen (FiO2 21 -> 28 -> 35 -> 40 %) as soon as the
noise-free SpO2 on room air falls below 92 / 88 / 85 %, and steps it down only once it is 2 %
above those thresholds (so oxygen is stopped at >= 94 %). Oxygen raises SpO2 by
0.5 % per % FiO2 above 21 (capped at 100 %).

Schedule and transport effects
------------------------------
Respiration rate, SpO2 and pulse are read every tick; blood pressure (systolic + diastolic as one
cuff measurement) every 15 simulated minutes; temperature and consciousness every 60 minutes;
FiO2 every 60 minutes and whenever it changes. Periodic readings are staggered per patient by a
fixed random phase, and every reading is due at the first call (the monitor reports a full set
when it connects). Each due reading is lost with ``dropout_probability`` (a cuff measurement is
lost as a pair) and monitored numerics are replaced by an implausible-but-possible artifact with
``artifact_probability`` (SpO2 60-80 % from a loose probe, pulse 150-200 or 30-42/min, ...).

Everything is drawn from independent streams of one seeded ``numpy`` generator, so a seed gives
identical readings, and the physiology does not depend on the dropout/artifact probabilities
(with the same seed, a ward with ``dropout_probability=0`` emits a superset of the readings).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

Trend = Literal["deteriorating", "recovering", "stable"]

RESPIRATION_RATE: Final = "9279-1"
SPO2: Final = "59408-5"
SYSTOLIC_BP: Final = "8480-6"
DIASTOLIC_BP: Final = "8462-4"
HEART_RATE: Final = "8867-4"
BODY_TEMPERATURE: Final = "8310-5"
CONSCIOUSNESS: Final = "80288-4"
INHALED_OXYGEN: Final = "3150-0"

CODES: Final[tuple[str, ...]] = (
    RESPIRATION_RATE,
    SPO2,
    SYSTOLIC_BP,
    DIASTOLIC_BP,
    HEART_RATE,
    BODY_TEMPERATURE,
    CONSCIOUSNESS,
    INHALED_OXYGEN,
)
"""LOINC codes the ward emits, in emission order within a patient and tick."""

UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        RESPIRATION_RATE: "/min",
        SPO2: "%",
        SYSTOLIC_BP: "mm[Hg]",
        DIASTOLIC_BP: "mm[Hg]",
        HEART_RATE: "/min",
        BODY_TEMPERATURE: "Cel",
        CONSCIOUSNESS: "{score}",
        INHALED_OXYGEN: "%",
    }
)
"""UCUM unit per LOINC code."""

ACVPU: Final = "ACVPU"
"""Consciousness levels, least to most impaired."""

ROOM_AIR_FIO2: Final = 21.0
FIO2_LEVELS: Final[tuple[float, ...]] = (ROOM_AIR_FIO2, 28.0, 35.0, 40.0)
"""Inhaled oxygen concentration per oxygen level, %."""
OXYGEN_START_SPO2: Final[tuple[float, ...]] = (92.0, 88.0, 85.0)
"""Room-air SpO2 (%) below which oxygen level 1, 2, 3 is needed."""
OXYGEN_HYSTERESIS: Final = 2.0
"""Room-air SpO2 (%) above a threshold needed before stepping oxygen down."""

# Columns of the continuous-vital matrices (patients x 6).
_RR, _SPO2, _SBP, _DBP, _HR, _TEMP = range(6)
# Columns of the per-code matrices (patients x 8), in CODES order.
_C_ACVPU, _C_FIO2 = 6, 7

_SIGMA: Final = 0.04  # severity noise, 1/sqrt(h)
_WANDER_TAU_H: Final = 1.0 / 3.0  # physiological wander time constant, h
_WANDER_SD: Final = np.array([1.0, 0.5, 4.0, 3.0, 4.0, 0.15])
_NOISE_SD: Final = np.array([1.0, 0.7, 3.0, 2.0, 2.0, 0.05])
_LOW: Final = np.array([4.0, 50.0, 50.0, 25.0, 25.0, 33.0])
_HIGH: Final = np.array([60.0, 100.0, 250.0, 150.0, 220.0, 42.5])
_DECIMALS: Final = (0, 0, 0, 0, 0, 1)
_CONSCIOUSNESS_THRESHOLDS: Final = np.array([0.78, 0.86, 0.92, 0.97])
_OXYGEN_GAIN: Final = 0.5  # SpO2 % per FiO2 % above room air

_BP_PERIOD_MS: Final = 15 * 60 * 1000
_ROUND_PERIOD_MS: Final = 60 * 60 * 1000

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class WardConfig:
    """Parameters of a :class:`VirtualWard`."""

    patients: int = 24
    seed: int = 0
    deteriorating_fraction: float = 0.25
    """Fraction of patients whose latent severity drifts up."""
    recovering_fraction: float = 0.25
    """Fraction of patients whose latent severity drifts down."""
    dropout_probability: float = 0.02
    """Per due reading: the reading is not sent."""
    artifact_probability: float = 0.005
    """Per due monitored numeric (not consciousness / FiO2): an implausible-but-possible spike."""
    sample_interval_s: float = 60.0
    """Simulated seconds between monitor readings (one simulation tick)."""

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError("patients must be >= 1")
        fractions = (self.deteriorating_fraction, self.recovering_fraction)
        if min(fractions) < 0.0 or sum(fractions) > 1.0:
            raise ValueError("trend fractions must be >= 0 and sum to <= 1")
        for p in (self.dropout_probability, self.artifact_probability):
            if not 0.0 <= p <= 1.0:
                raise ValueError("probabilities must be in [0, 1]")
        if not self.sample_interval_s >= 0.001:
            raise ValueError("sample_interval_s must be >= 0.001 s")


@dataclass(frozen=True)
class PatientState:
    """Noise-free ground truth of one simulated patient at the last simulated tick."""

    patient: str
    trend: Trend
    severity: float
    """Latent severity, 0 (well) to 1."""
    respiration_rate: float
    """Breaths/min."""
    spo2: float
    """SpO2 on the current oxygen, %."""
    spo2_on_air: float
    """SpO2 the patient would have on room air, %; drives the oxygen decision."""
    systolic: float
    """mm[Hg]."""
    diastolic: float
    """mm[Hg]."""
    heart_rate: float
    """Beats/min."""
    temperature: float
    """Cel."""
    fio2: float
    """Inhaled oxygen concentration, % (21 = room air)."""


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware")
    return t.astimezone(UTC)


def _floor_ms(t: datetime) -> datetime:
    return t.replace(microsecond=t.microsecond - t.microsecond % 1000)


def _iso(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


class VirtualWard:
    """A ward of simulated patients; see the module docstring for the model.

    The first call of :meth:`advance` / :meth:`readings` fixes the origin (tick 0, floored to
    the millisecond); tick ``k`` is at ``origin + k * sample_interval_s``. Each call emits the
    readings of every tick in ``(last simulated tick, now]`` (``[origin, now]`` the first time).
    """

    def __init__(self, config: WardConfig = WardConfig()) -> None:
        self.config: Final = config
        n = config.patients
        width = max(2, len(str(n)))
        numbers = [f"{i:0{width}d}" for i in range(1, n + 1)]
        self.patient_ids: Final[list[str]] = [f"ward-{x}" for x in numbers]
        """Patient ids, ``ward-01`` ... (zero padded to the width of the count, at least 2)."""
        self.monitor_ids: Final[list[str]] = [f"ward-monitor-{x}" for x in numbers]
        """Monitor (``source``) id per patient, same order as :attr:`patient_ids`."""

        streams = np.random.SeedSequence(config.seed).spawn(5)
        init, self._dyn, self._noise, self._drop, self._art = (
            np.random.default_rng(s) for s in streams
        )

        n_det = round(config.deteriorating_fraction * n)
        n_rec = min(round(config.recovering_fraction * n), n - n_det)
        kind = np.zeros(n, dtype=np.int64)  # 0 stable, 1 deteriorating, 2 recovering
        order = init.permutation(n)
        kind[order[:n_det]] = 1
        kind[order[n_det : n_det + n_rec]] = 2
        names: tuple[Trend, Trend, Trend] = ("stable", "deteriorating", "recovering")
        self.trends: Final[dict[str, Trend]] = {
            p: names[k] for p, k in zip(self.patient_ids, kind.tolist(), strict=True)
        }
        """Trend of each patient's latent severity."""

        det, rec = kind == 1, kind == 2
        s0 = np.select(
            [det, rec],
            [init.uniform(0.1, 0.35, n), init.uniform(0.4, 0.7, n)],
            init.uniform(0.0, 0.3, n),
        )
        self._s0: Final[FloatArray] = s0
        self._target: Final[FloatArray] = np.select(
            [det, rec], [init.uniform(0.7, 1.0, n), init.uniform(0.0, 0.1, n)], s0
        )
        self._onset_h: Final[FloatArray] = np.where(det, init.uniform(0.0, 3.0, n), 0.0)
        self._theta: Final[FloatArray] = init.uniform(0.12, 0.3, n)

        sbp0 = np.clip(init.normal(128.0, 14.0, n), 100.0, 165.0)
        self._baseline: Final[FloatArray] = np.column_stack(
            [
                np.clip(init.normal(15.0, 1.5, n), 11.0, 20.0),
                np.clip(init.normal(97.0, 1.2, n), 94.0, 99.5),
                sbp0,
                np.clip(0.6 * sbp0 + init.normal(0.0, 5.0, n), 55.0, 100.0),
                np.clip(init.normal(76.0, 9.0, n), 55.0, 100.0),
                np.clip(init.normal(36.8, 0.25, n), 36.1, 37.4),
            ]
        )
        gain = init.uniform(0.7, 1.3, (n, 6))
        gain[:, _TEMP] = init.uniform(0.2, 1.2, n)
        self._gain: Final[FloatArray] = gain
        self._acvpu_shift: Final[FloatArray] = init.uniform(-0.03, 0.03, n)
        self._bp_phase: Final[IntArray] = init.integers(0, _BP_PERIOD_MS, n)
        self._round_phase: Final[IntArray] = init.integers(0, _ROUND_PERIOD_MS, n)

        self._severity: FloatArray = s0.copy()
        self._wander: FloatArray = self._dyn.normal(0.0, 1.0, (n, 6)) * _WANDER_SD
        self._o2_level: IntArray = np.zeros(n, dtype=np.int64)
        self._previous_o2: IntArray = self._o2_level
        self._update_oxygen()
        self._origin: datetime | None = None
        self._tick = -1  # index of the last simulated tick

    # -- public -------------------------------------------------------------------------------

    @property
    def origin(self) -> datetime | None:
        """Time of tick 0 (UTC), or None before the first call."""
        return self._origin

    @property
    def last_time(self) -> datetime | None:
        """Time of the last simulated tick (UTC), or None before the first call."""
        if self._origin is None or self._tick < 0:
            return None
        return self._origin + timedelta(milliseconds=self._elapsed_ms(self._tick))

    def advance(self, now: datetime) -> list[dict[str, object]]:
        """Simulate up to ``now`` and return the readings of the ticks in ``(last tick, now]``.

        The first call sets the origin to ``now`` and returns the readings of tick 0. ``now``
        must be timezone-aware; a ``now`` before the last tick returns ``[]``.
        """
        now = _utc(now)
        if self._origin is None:
            self._origin = _floor_ms(now)
        return self._run_until(now)

    def readings(self, start: datetime, end: datetime) -> list[dict[str, object]]:
        """All readings with times in ``(last tick, end]``, advancing the simulation.

        ``start`` sets the origin on the first call (whose window is then ``[start, end]``) and
        is ignored afterwards. Deterministic for a seed.
        """
        start, end = _utc(start), _utc(end)
        if end < start:
            raise ValueError("end must not be before start")
        if self._origin is None:
            self._origin = _floor_ms(start)
        return self._run_until(end)

    def state(self) -> list[PatientState]:
        """Noise-free ground truth per patient at the last simulated tick (or the initial state)."""
        true = self._true_vitals()
        air = self._spo2_on_air()
        fio2 = self._fio2()
        rows = zip(
            self.patient_ids,
            self._severity.tolist(),
            true.tolist(),
            air.tolist(),
            fio2.tolist(),
            strict=True,
        )
        return [
            PatientState(
                patient=p,
                trend=self.trends[p],
                severity=s,
                respiration_rate=v[_RR],
                spo2=v[_SPO2],
                spo2_on_air=a,
                systolic=v[_SBP],
                diastolic=v[_DBP],
                heart_rate=v[_HR],
                temperature=v[_TEMP],
                fio2=f,
            )
            for p, s, v, a, f in rows
        ]

    # -- simulation ---------------------------------------------------------------------------

    def _elapsed_ms(self, tick: int) -> int:
        return math.floor(tick * self.config.sample_interval_s * 1000.0 + 0.5)

    def _run_until(self, end: datetime) -> list[dict[str, object]]:
        assert self._origin is not None
        end_us = (end - self._origin) // timedelta(microseconds=1)
        out: list[dict[str, object]] = []
        while self._elapsed_ms(self._tick + 1) * 1000 <= end_us:
            self._tick += 1
            if self._tick > 0:
                self._step(
                    (self._elapsed_ms(self._tick) - self._elapsed_ms(self._tick - 1)) / 3.6e6
                )
            out.extend(self._emit())
        return out

    def _step(self, dt_h: float) -> None:
        """Advance the latent state by ``dt_h`` hours."""
        n = self.config.patients
        elapsed_h = self._elapsed_ms(self._tick) / 3.6e6
        target = np.where(elapsed_h >= self._onset_h, self._target, self._s0)
        s = self._severity + self._theta * (target - self._severity) * dt_h
        s += _SIGMA * math.sqrt(dt_h) * self._dyn.standard_normal(n)
        self._severity = np.clip(s, 0.0, 1.0)
        phi = math.exp(-dt_h / _WANDER_TAU_H)
        innovation = self._dyn.standard_normal((n, 6)) * _WANDER_SD
        self._wander = phi * self._wander + math.sqrt(1.0 - phi * phi) * innovation
        self._update_oxygen()

    def _true_vitals(self) -> FloatArray:
        """Noise-free vitals (patients x 6) on the current oxygen."""
        s = self._severity
        s15 = s**1.5
        effect = np.column_stack(
            [16.0 * s, -14.0 * s15, -40.0 * s15, -22.0 * s15, 45.0 * s, 2.2 * s]
        )
        v = self._baseline + self._gain * effect + self._wander
        boost = _OXYGEN_GAIN * (self._fio2() - ROOM_AIR_FIO2)
        v[:, _SPO2] = np.minimum(self._spo2_on_air() + boost, 100.0)
        return v

    def _spo2_on_air(self) -> FloatArray:
        s15 = self._severity**1.5
        v = self._baseline[:, _SPO2] - 14.0 * self._gain[:, _SPO2] * s15
        return np.minimum(v + self._wander[:, _SPO2], 100.0)

    def _fio2(self) -> FloatArray:
        return np.asarray(FIO2_LEVELS, dtype=np.float64)[self._o2_level]

    def _update_oxygen(self) -> None:
        """Escalate oxygen at once; step down only with a margin (hysteresis)."""
        air = self._spo2_on_air()[:, np.newaxis]
        thresholds = np.asarray(OXYGEN_START_SPO2)
        need = np.sum(air < thresholds, axis=1)
        relaxed = np.sum(air < thresholds + OXYGEN_HYSTERESIS, axis=1)
        self._previous_o2 = self._o2_level
        self._o2_level = np.clip(self._o2_level, need, relaxed).astype(np.int64)

    def _due(self) -> BoolArray:
        """Which (patient, code) readings are due at the current tick (patients x 8)."""
        n = self.config.patients
        k = self._tick
        due = np.zeros((n, len(CODES)), dtype=np.bool_)
        due[:, [_RR, _SPO2, _HR]] = True
        if k == 0:
            due[:] = True
            return due
        now, prev = self._elapsed_ms(k), self._elapsed_ms(k - 1)

        def crossed(phase: IntArray, period: int) -> BoolArray:
            return np.asarray((now + phase) // period > (prev + phase) // period)

        bp = crossed(self._bp_phase, _BP_PERIOD_MS)
        rounds = crossed(self._round_phase, _ROUND_PERIOD_MS)
        due[:, _SBP] = due[:, _DBP] = bp
        due[:, _TEMP] = due[:, _C_ACVPU] = rounds
        due[:, _C_FIO2] = rounds | (self._previous_o2 != self._o2_level)
        return due

    def _measure(self) -> FloatArray:
        """Measured values (patients x 8) at the current tick; draws every stream's share."""
        n = self.config.patients
        cfg = self.config
        white = self._noise.standard_normal((n, 6)) * _NOISE_SD
        assess = self._noise.standard_normal(n) * 0.02
        art_hit = self._art.random((n, 6)) < cfg.artifact_probability
        art_u = self._art.random((n, 6))
        art_dir = self._art.random(n)

        v = np.clip(self._true_vitals() + white, _LOW, _HIGH)
        v[:, _DBP] = np.minimum(v[:, _DBP], v[:, _SBP] - 10.0)
        high = art_dir < 0.5
        artifact = np.column_stack(
            [
                36.0 + 20.0 * art_u[:, _RR],
                60.0 + 20.0 * art_u[:, _SPO2],
                np.where(high, 190.0 + 40.0 * art_u[:, _SBP], 60.0 + 15.0 * art_u[:, _SBP]),
                np.where(high, 110.0 + 25.0 * art_u[:, _SBP], 30.0 + 12.0 * art_u[:, _SBP]),
                np.where(art_dir < 0.7, 150.0 + 50.0 * art_u[:, _HR], 30.0 + 12.0 * art_u[:, _HR]),
                34.0 + 1.2 * art_u[:, _TEMP],
            ]
        )
        art_hit[:, _DBP] = art_hit[:, _SBP]  # one cuff measurement
        v = np.where(art_hit, artifact, v)
        for col, decimals in enumerate(_DECIMALS):
            v[:, col] = np.round(v[:, col], decimals)

        level = np.searchsorted(
            _CONSCIOUSNESS_THRESHOLDS, self._severity + self._acvpu_shift + assess, side="right"
        )
        return np.column_stack([v, level.astype(np.float64), self._fio2()])

    def _emit(self) -> list[dict[str, object]]:
        assert self._origin is not None
        n = self.config.patients
        due = self._due()
        values = self._measure()
        lost = self._drop.random((n, len(CODES))) < self.config.dropout_probability
        lost[:, _DBP] = lost[:, _SBP]  # one cuff measurement
        elapsed = self._elapsed_ms(self._tick)
        time = _iso(self._origin + timedelta(milliseconds=elapsed))
        stamp = (self._origin - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
            milliseconds=1
        ) + elapsed
        seed = self.config.seed
        rows = values.tolist()
        out: list[dict[str, object]] = []
        for i, c in zip(*np.nonzero(due & ~lost), strict=True):
            i, c = int(i), int(c)
            code = CODES[c]
            patient = self.patient_ids[i]
            raw = rows[i][c]
            value: float | str = ACVPU[int(raw)] if c == _C_ACVPU else raw
            out.append(
                {
                    "id": f"sim{seed}-{patient}-{code}-{stamp}",
                    "source": self.monitor_ids[i],
                    "patient": patient,
                    "code": code,
                    "value": value,
                    "unit": UNITS[code],
                    "time": time,
                }
            )
        return out
