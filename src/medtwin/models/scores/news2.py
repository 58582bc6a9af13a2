"""National Early Warning Score 2 (NEWS2), vectorized over patients.

Implements the chart of the Royal College of Physicians, *National Early Warning
Score (NEWS) 2: Standardising the assessment of acute-illness severity in the NHS*,
updated report of a working party, London: RCP, 2017.

Inputs (one float64 array of shape ``(n,)`` per parameter, NaN = missing):

=================  =========  ======================================================
argument           LOINC      unit / encoding
=================  =========  ======================================================
respiration_rate   9279-1     breaths /min
spo2               59408-5    % (peripheral oxygen saturation)
fio2               3150-0     % inhaled O2 concentration; > 21 = on oxygen, <= 21 = air
systolic_bp        8480-6     mm[Hg]
pulse              8867-4     beats /min
consciousness      80288-4    index into ``ACVPU`` (0 = Alert ... 4 = Unresponsive)
temperature        8310-5     Cel
spo2_scale         --         1 (default chart) or 2 (hypercapnic respiratory failure)
=================  =========  ======================================================

Rounding: before scoring, every value is rounded half away from zero to a whole
number (``fio2`` included, so 21.4 % is air and 21.5 % is oxygen), temperature to
0.1 Cel.  Values are first snapped to 9 decimals of the scaled unit so that binary
float error cannot flip a half (``38.05 * 10 == 380.49999999999994`` rounds to 38.1).

Missing data: a parameter whose input is NaN (or +/-inf) is *missing*: its sub-score
is -1, it is listed in ``missing`` and the aggregate score is null (-1); nothing is
assumed (a NaN ``fio2`` is not taken to mean air).  ``partial_score`` sums the
sub-scores that are present.

SpO2 Scale 2, undeterminable case: on Scale 2 an SpO2 >= 93 % scores 0 on air but
1-3 on oxygen.  If the air/oxygen status is unknown, the SpO2 sub-score is
undeterminable (-1).  SpO2 is then *not* listed in ``missing`` (the reading exists),
``air_or_oxygen`` is, and the aggregate score is null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "ACVPU",
    "BANDS",
    "INPUT_CODES",
    "PARAMETERS",
    "News2Batch",
    "aggregate",
    "air_or_oxygen_subscore",
    "consciousness_subscore",
    "news2",
    "pulse_subscore",
    "respiration_rate_subscore",
    "spo2_subscore",
    "systolic_bp_subscore",
    "temperature_subscore",
]

PARAMETERS: tuple[str, ...] = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)
"""NEWS2 parameters; column order of ``News2Batch.subscores``."""

INPUT_CODES: dict[str, str] = {
    "9279-1": "respiration_rate",
    "59408-5": "spo2",
    "3150-0": "air_or_oxygen",
    "8480-6": "systolic_bp",
    "8867-4": "pulse",
    "80288-4": "consciousness",
    "8310-5": "temperature",
}
"""LOINC code of each NEWS2 input -> the parameter its array feeds."""

ACVPU: tuple[str, ...] = ("A", "C", "V", "P", "U")
"""Alert, new Confusion, Voice, Pain, Unresponsive; consciousness is an index into this."""

BANDS: tuple[str, ...] = ("low", "low-medium", "medium", "high")
"""Clinical risk bands; ``News2Batch.band`` indexes into this."""

_MISSING = -1
_OXYGEN_THRESHOLD = 21.0  # fio2 % above which the patient is on supplemental oxygen

# Each chart row as (lower edges of the bands after the first, points per band).
# Edges apply to the rounded value (temperature in tenths of a degree).
_RESPIRATION = ((9, 12, 21, 25), (3, 1, 0, 2, 3))
_SPO2_SCALE1 = ((92, 94, 96), (3, 2, 1, 0))
_SPO2_SCALE2_EDGES = (84, 86, 88, 93, 95, 97)
_SPO2_SCALE2_AIR = (3, 2, 1, 0, 0, 0, 0)
_SPO2_SCALE2_OXYGEN = (3, 2, 1, 0, 1, 2, 3)
_SPO2_SCALE2_HIGH = 93  # from here on, the Scale 2 score depends on air/oxygen
_SYSTOLIC = ((91, 101, 111, 220), (3, 2, 1, 0, 3))
_PULSE = ((41, 51, 91, 111, 131), (3, 1, 0, 1, 2, 3))
_TEMPERATURE_TENTHS = ((351, 361, 381, 391), (3, 1, 0, 1, 2))
_CONSCIOUSNESS = (0, 3, 3, 3, 3)


@dataclass(frozen=True, eq=False)
class News2Batch:
    """NEWS2 results for ``n`` patients (arrays are read-only).

    ``subscores``: (n, 7) int16, -1 where missing/undeterminable, columns = ``PARAMETERS``.
    ``score``: (n,) int16 aggregate, -1 (null) where any sub-score is -1.
    ``partial_score``: (n,) int16 sum of the sub-scores that are present.
    ``band``: (n,) int8 index into ``BANDS``, -1 where the score is null.
    ``missing``: (n, 7) bool, True where the parameter's input was absent; when not
    given it is taken as ``subscores == -1``.
    ``ignored``: (n, 7) bool, True where the newest reading of the parameter was a
    suspected artifact and was not scored (set by the twin runtime; None: not known).
    """

    subscores: NDArray[np.int16]
    score: NDArray[np.int16]
    partial_score: NDArray[np.int16]
    band: NDArray[np.int8]
    missing: NDArray[np.bool_] | None = None
    ignored: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        """Number of patients."""
        return int(self.score.shape[0])

    def result(self, i: int) -> dict[str, object]:
        """JSON-ready result for patient ``i``.

        Shape: ``{"score": int|None, "partial_score": int, "band": str|None,
        "subscores": {param: int|None for every param}, "missing": [param, ...]}``,
        ``missing`` in ``PARAMETERS`` order; with ``ignored`` known, also
        ``"ignored": [param, ...]``.
        """
        subs = [int(s) for s in self.subscores[i]]
        absent = self.missing[i] if self.missing is not None else self.subscores[i] == _MISSING
        score = int(self.score[i])
        band = int(self.band[i])
        return {
            "score": None if score == _MISSING else score,
            "partial_score": int(self.partial_score[i]),
            "band": None if band == _MISSING else BANDS[band],
            "subscores": {
                p: (None if s == _MISSING else s) for p, s in zip(PARAMETERS, subs, strict=True)
            },
            "missing": [p for p, a in zip(PARAMETERS, absent, strict=True) if a],
            **(
                {}
                if self.ignored is None
                else {"ignored": [p for p, a in zip(PARAMETERS, self.ignored[i], strict=True) if a]}
            ),
        }


def _round_half_away(x: NDArray[np.float64], decimals: int = 0) -> NDArray[np.float64]:
    """Round half away from zero; returns whole numbers in units of ``10**-decimals``."""
    scaled = np.round(x * 10.0**decimals, 9)  # absorb float error: 38.05*10 -> 380.5
    out: NDArray[np.float64] = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return out


def _chart(
    values: NDArray[np.float64], edges: tuple[int, ...], points: tuple[int, ...]
) -> NDArray[np.int16]:
    """Points of the band each (rounded) value falls in; NaN lands in the last band."""
    idx = np.digitize(values, np.asarray(edges, dtype=np.float64))
    out: NDArray[np.int16] = np.asarray(points, dtype=np.int16)[idx]
    return out


def _as_input(name: str, x: npt.ArrayLike, n: int | None) -> NDArray[np.float64]:
    """Validate one input as a 1-D float64 array of length ``n`` (if given)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    return arr


def _spo2_scale(spo2_scale: npt.ArrayLike, n: int) -> NDArray[np.bool_]:
    """Validate the SpO2 scale; True where Scale 2 applies."""
    scale = np.asarray(spo2_scale)
    if scale.ndim == 0:
        scale = np.full(n, scale)
    if scale.shape != (n,):
        raise ValueError(f"spo2_scale must be a scalar or shape ({n},), got {scale.shape}")
    if not np.isin(scale, (1, 2)).all():
        raise ValueError("spo2_scale values must be 1 or 2")
    out: NDArray[np.bool_] = scale == 2
    return out


def _charted(
    name: str, x: npt.ArrayLike, edges: tuple[int, ...], points: tuple[int, ...], decimals: int = 0
) -> NDArray[np.int16]:
    arr = _as_input(name, x, None)
    out = _chart(_round_half_away(arr, decimals), edges, points)
    out[~np.isfinite(arr)] = _MISSING
    return out


def respiration_rate_subscore(respiration_rate: npt.ArrayLike) -> NDArray[np.int16]:
    """Respiration rate (breaths /min) sub-score, -1 where missing."""
    return _charted("respiration_rate", respiration_rate, *_RESPIRATION)


def systolic_bp_subscore(systolic_bp: npt.ArrayLike) -> NDArray[np.int16]:
    """Systolic blood pressure (mm[Hg]) sub-score, -1 where missing."""
    return _charted("systolic_bp", systolic_bp, *_SYSTOLIC)


def pulse_subscore(pulse: npt.ArrayLike) -> NDArray[np.int16]:
    """Pulse (beats /min) sub-score, -1 where missing."""
    return _charted("pulse", pulse, *_PULSE)


def temperature_subscore(temperature: npt.ArrayLike) -> NDArray[np.int16]:
    """Temperature (Cel) sub-score, -1 where missing."""
    return _charted("temperature", temperature, *_TEMPERATURE_TENTHS, decimals=1)


def consciousness_subscore(consciousness: npt.ArrayLike) -> NDArray[np.int16]:
    """Consciousness (index into ``ACVPU``) sub-score, -1 where missing.

    ValueError for a value that is not a whole number in 0..4.
    """
    avpu = _as_input("consciousness", consciousness, None)
    present = np.isfinite(avpu)
    if not (~present | np.isin(avpu, np.arange(len(ACVPU), dtype=np.float64))).all():
        raise ValueError("consciousness must be an index into ACVPU (0..4) or NaN")
    out = np.asarray(_CONSCIOUSNESS, dtype=np.int16)[np.where(present, avpu, 0.0).astype(np.intp)]
    out[~present] = _MISSING
    return out


def _on_oxygen(fio2: NDArray[np.float64]) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = np.isfinite(fio2) & (_round_half_away(fio2) > _OXYGEN_THRESHOLD)
    return out


def air_or_oxygen_subscore(fio2: npt.ArrayLike) -> NDArray[np.int16]:
    """Supplemental oxygen sub-score from the inhaled O2 fraction (%), -1 where missing."""
    fio = _as_input("fio2", fio2, None)
    out = np.where(_on_oxygen(fio), 2, 0).astype(np.int16)
    out[~np.isfinite(fio)] = _MISSING
    return out


def spo2_subscore(
    spo2: npt.ArrayLike, fio2: npt.ArrayLike, spo2_scale: npt.ArrayLike
) -> NDArray[np.int16]:
    """SpO2 (%) sub-score on the patient's scale, -1 where missing or undeterminable.

    ``fio2`` (%) matters on Scale 2 only: at SpO2 >= 93 % the points depend on air
    or oxygen, and are undeterminable (-1) when the inhaled fraction is unknown.
    """
    sat = _as_input("spo2", spo2, None)
    n = int(sat.shape[0])
    fio = _as_input("fio2", fio2, n)
    scale2 = _spo2_scale(spo2_scale, n)
    sat_r = _round_half_away(sat)
    on_oxygen = _on_oxygen(fio)
    on_air = np.isfinite(fio) & ~on_oxygen
    s2_air = _chart(sat_r, _SPO2_SCALE2_EDGES, _SPO2_SCALE2_AIR)
    s2_oxygen = _chart(sat_r, _SPO2_SCALE2_EDGES, _SPO2_SCALE2_OXYGEN)
    s2_unknown = np.where(sat_r >= _SPO2_SCALE2_HIGH, np.int16(_MISSING), s2_air)
    spo2_s2 = np.select([on_oxygen, on_air], [s2_oxygen, s2_air], default=s2_unknown)
    out = np.where(scale2, spo2_s2, _chart(sat_r, *_SPO2_SCALE1)).astype(np.int16)
    out[~np.isfinite(sat)] = _MISSING
    return out


def aggregate(
    subscores: npt.ArrayLike,
) -> tuple[NDArray[np.int16], NDArray[np.int16], NDArray[np.int8]]:
    """(score, partial score, band) from sub-scores of shape (n, 7), -1 meaning missing.

    The score is null (-1) unless every sub-score is known; the band follows the
    RCP chart: high at 7+, medium at 5-6, low-medium for a single 3, else low.
    """
    subs = np.asarray(subscores, dtype=np.int16)
    if subs.ndim != 2 or subs.shape[1] != len(PARAMETERS):
        raise ValueError(f"subscores must have shape (n, {len(PARAMETERS)}), got {subs.shape}")
    known = subs != _MISSING
    partial = np.where(known, subs, 0).sum(axis=1).astype(np.int16)
    complete = known.all(axis=1)
    score = np.where(complete, partial, _MISSING).astype(np.int16)
    any_three = (subs == 3).any(axis=1)
    band = np.select(
        [~complete, score >= 7, score >= 5, any_three],
        [_MISSING, 3, 2, 1],
        default=0,
    ).astype(np.int8)
    return score, partial, band


def news2(
    *,
    respiration_rate: npt.ArrayLike,
    spo2: npt.ArrayLike,
    fio2: npt.ArrayLike,
    systolic_bp: npt.ArrayLike,
    pulse: npt.ArrayLike,
    consciousness: npt.ArrayLike,
    temperature: npt.ArrayLike,
    spo2_scale: npt.ArrayLike,
) -> News2Batch:
    """Score NEWS2 for a batch of patients (see the module docstring for units and rules).

    All inputs are 1-D arrays of equal length ``n``, float64 with NaN meaning missing;
    ``spo2_scale`` is an int array of 1 or 2 of length ``n``, or a scalar for all.
    Raises ``ValueError`` on shape mismatch, a scale other than 1/2, or a
    consciousness code that is not a whole number in ``0..4``.
    """
    rr = _as_input("respiration_rate", respiration_rate, None)
    n = int(rr.shape[0])
    inputs = (
        rr,
        _as_input("spo2", spo2, n),
        _as_input("fio2", fio2, n),
        _as_input("systolic_bp", systolic_bp, n),
        _as_input("pulse", pulse, n),
        _as_input("consciousness", consciousness, n),
        _as_input("temperature", temperature, n),
    )
    _spo2_scale(spo2_scale, n)
    rr, sat, fio, sbp, hr, avpu, temp = inputs
    subscores = np.stack(
        [
            respiration_rate_subscore(rr),
            spo2_subscore(sat, fio, spo2_scale),
            air_or_oxygen_subscore(fio),
            systolic_bp_subscore(sbp),
            pulse_subscore(hr),
            consciousness_subscore(avpu),
            temperature_subscore(temp),
        ],
        axis=1,
    ).astype(np.int16)
    score, partial, band = aggregate(subscores)
    missing = np.stack([~np.isfinite(a) for a in inputs], axis=1)  # PARAMETERS order
    for arr in (subscores, score, partial, band, missing):
        arr.setflags(write=False)
    return News2Batch(
        subscores=subscores, score=score, partial_score=partial, band=band, missing=missing
    )
