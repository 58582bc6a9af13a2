"""quick SOFA (qSOFA), vectorized over patients.

Implements the bedside criteria of Seymour CW et al., *Assessment of clinical
criteria for sepsis*, JAMA 2016;315(8):762-774, adopted by Sepsis-3 (Singer M et
al., JAMA 2016;315(8):801-810): one point each for

* respiratory rate >= 22 /min,
* systolic blood pressure <= 100 mm[Hg],
* altered mentation (Glasgow Coma Scale < 15).

Inputs (float64 arrays of shape ``(n,)``, NaN = missing):

================  =========  ====================================================
argument          LOINC      unit / encoding
================  =========  ====================================================
respiration_rate  9279-1     /min
systolic_bp       8480-6     mm[Hg]
gcs               9269-2     Glasgow Coma Scale total, whole number 3..15
consciousness     80288-4    index into NEWS2 ``ACVPU`` (0 = Alert ... 4 = Unresponsive)
================  =========  ====================================================

Mentation may come from the GCS, from ACVPU (any level other than Alert is altered
mentation, as in NEWS2), or both; it is altered when any known source says so,
normal when a known source says normal and none says altered, missing otherwise.

Boundaries are compared on the value as given (no rounding) after snapping to 9
decimals, so unit conversion error cannot move a value across a cut point
(a systolic pressure of 100.0000000001 mm[Hg] from kPa is 100).

Missing data: a criterion whose inputs are all NaN is *missing*: its point is -1
and its bit is set in ``missing_mask`` (bit 0 respiration rate, bit 1 systolic
pressure, bit 2 mentation).  ``score`` sums the criteria that are present (-1 when
none is).  ``positive`` (qSOFA >= 2) is decided where the missing criteria could
not change it and -1 (undetermined) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "CRITERIA",
    "INPUT_CODES",
    "QsofaBatch",
    "aggregate",
    "mentation_criterion",
    "qsofa",
    "respiration_rate_criterion",
    "systolic_bp_criterion",
]

CRITERIA: tuple[str, ...] = ("respiration_rate", "systolic_bp", "mentation")
"""qSOFA criteria; column order of ``QsofaBatch.points`` and bit order of the mask."""

INPUT_CODES: dict[str, str] = {
    "9279-1": "respiration_rate",
    "8480-6": "systolic_bp",
    "9269-2": "gcs",
    "80288-4": "consciousness",
}
"""LOINC code of each qSOFA input -> the argument its array feeds."""

RESPIRATION_RATE_CUT = 22.0  # /min; >= scores (Seymour 2016)
SYSTOLIC_BP_CUT = 100.0  # mm[Hg]; <= scores
GCS_NORMAL = 15  # GCS below this is altered mentation
POSITIVE_AT = 2  # qSOFA >= 2 is a positive screen

_MISSING = -1
_SNAP = 9  # decimals: absorbs binary float error of unit conversions


@dataclass(frozen=True, eq=False)
class QsofaBatch:
    """qSOFA results for ``n`` patients (arrays are read-only).

    ``points``: (n, 3) int8, 0/1 per criterion, -1 where missing (columns = ``CRITERIA``).
    ``score``: (n,) int16 sum of the criteria present, -1 when none is.
    ``missing``: (n, 3) bool, True where the criterion could not be assessed.
    ``missing_count``: (n,) int8 number of missing criteria.
    ``missing_mask``: (n,) int16 bitmask of the missing criteria (bit i = ``CRITERIA[i]``).
    ``positive``: (n,) int8 1 if qSOFA >= 2, 0 if it cannot reach 2 even with every
    missing criterion met, -1 when undetermined.
    """

    points: NDArray[np.int8]
    score: NDArray[np.int16]
    missing: NDArray[np.bool_]
    missing_count: NDArray[np.int8]
    missing_mask: NDArray[np.int16]
    positive: NDArray[np.int8]

    def __len__(self) -> int:
        """Number of patients."""
        return int(self.score.shape[0])

    def result(self, i: int) -> dict[str, object]:
        """JSON-ready result for patient ``i``.

        ``{"score": int|None, "positive": bool|None, "criteria": {name: 0|1|None},
        "missing": [name, ...]}``.
        """
        score = int(self.score[i])
        positive = int(self.positive[i])
        return {
            "score": None if score == _MISSING else score,
            "positive": None if positive == _MISSING else bool(positive),
            "criteria": {
                c: (None if p == _MISSING else int(p))
                for c, p in zip(CRITERIA, self.points[i], strict=True)
            },
            "missing": [c for c, m in zip(CRITERIA, self.missing[i], strict=True) if m],
        }


def _as_input(name: str, x: npt.ArrayLike, n: int | None) -> NDArray[np.float64]:
    """Validate one input as a 1-D float64 array of length ``n`` (if given)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    return arr


def _criterion(met: NDArray[np.bool_], present: NDArray[np.bool_]) -> NDArray[np.int8]:
    out: NDArray[np.int8] = np.where(present, met, _MISSING).astype(np.int8)
    return out


def respiration_rate_criterion(respiration_rate: npt.ArrayLike) -> NDArray[np.int8]:
    """1 where the respiratory rate (/min) is >= 22, 0 below, -1 where missing."""
    rr = _as_input("respiration_rate", respiration_rate, None)
    return _criterion(np.round(rr, _SNAP) >= RESPIRATION_RATE_CUT, np.isfinite(rr))


def systolic_bp_criterion(systolic_bp: npt.ArrayLike) -> NDArray[np.int8]:
    """1 where the systolic pressure (mm[Hg]) is <= 100, 0 above, -1 where missing."""
    sbp = _as_input("systolic_bp", systolic_bp, None)
    return _criterion(np.round(sbp, _SNAP) <= SYSTOLIC_BP_CUT, np.isfinite(sbp))


def _whole_in(name: str, x: NDArray[np.float64], low: int, high: int) -> NDArray[np.bool_]:
    """Presence mask of a coded input; ValueError for a value not a whole number in range."""
    present = np.isfinite(x)
    valid = ~present | (np.isin(x, np.arange(low, high + 1, dtype=np.float64)))
    if not valid.all():
        bad = x[~valid][0]
        raise ValueError(f"{name} must be a whole number in {low}..{high} or NaN, got {bad!r}")
    out: NDArray[np.bool_] = present
    return out


def mentation_criterion(
    gcs: npt.ArrayLike | None = None, consciousness: npt.ArrayLike | None = None
) -> NDArray[np.int8]:
    """1 where mentation is altered (GCS < 15 or ACVPU not Alert), 0 if normal, -1 if unknown.

    At least one source must be given; ValueError for a GCS that is not a whole
    number in 3..15 or an ACVPU index that is not a whole number in 0..4.
    """
    if gcs is None and consciousness is None:
        raise ValueError("mentation needs gcs, consciousness or both")
    sources: list[tuple[NDArray[np.bool_], NDArray[np.bool_]]] = []  # (present, altered)
    n: int | None = None
    if gcs is not None:
        g = _as_input("gcs", gcs, n)
        n = int(g.shape[0])
        present = _whole_in("gcs", g, 3, GCS_NORMAL)
        sources.append((present, present & (np.where(present, g, GCS_NORMAL) < GCS_NORMAL)))
    if consciousness is not None:
        c = _as_input("consciousness", consciousness, n)
        present = _whole_in("consciousness", c, 0, 4)
        sources.append((present, present & (np.where(present, c, 0.0) > 0)))
    altered = np.logical_or.reduce([a for _, a in sources])
    normal = np.logical_or.reduce([p & ~a for p, a in sources])
    out: NDArray[np.int8] = np.select([altered, normal], [1, 0], default=_MISSING).astype(np.int8)
    return out


def aggregate(points: npt.ArrayLike) -> QsofaBatch:
    """qSOFA from criterion points of shape (n, 3), -1 meaning missing."""
    pts = np.asarray(points, dtype=np.int8)
    if pts.ndim != 2 or pts.shape[1] != len(CRITERIA):
        raise ValueError(f"points must have shape (n, {len(CRITERIA)}), got {pts.shape}")
    if not np.isin(pts, (_MISSING, 0, 1)).all():
        raise ValueError("qSOFA criterion points must be 0, 1 or -1 (missing)")
    missing = pts == _MISSING
    count = missing.sum(axis=1).astype(np.int8)
    known = np.where(missing, 0, pts).sum(axis=1).astype(np.int16)
    score = np.where(count == len(CRITERIA), _MISSING, known).astype(np.int16)
    mask = (missing.astype(np.int16) << np.arange(len(CRITERIA), dtype=np.int16)).sum(axis=1)
    positive = np.select(
        [known >= POSITIVE_AT, known + count < POSITIVE_AT], [1, 0], default=_MISSING
    ).astype(np.int8)
    arrays = (pts.copy(), score, missing, count, mask.astype(np.int16), positive)
    for arr in arrays:
        arr.setflags(write=False)
    return QsofaBatch(*arrays)


def qsofa(
    *,
    respiration_rate: npt.ArrayLike,
    systolic_bp: npt.ArrayLike,
    gcs: npt.ArrayLike | None = None,
    consciousness: npt.ArrayLike | None = None,
) -> QsofaBatch:
    """Score qSOFA for a batch of patients (see the module docstring for units and rules).

    All inputs are 1-D arrays of equal length ``n`` (NaN = missing); give ``gcs``,
    ``consciousness`` (ACVPU index) or both for mentation.  Raises ``ValueError``
    on a shape mismatch or an invalid GCS/ACVPU value.
    """
    rr = _as_input("respiration_rate", respiration_rate, None)
    n = int(rr.shape[0])
    sbp = _as_input("systolic_bp", systolic_bp, n)
    g = None if gcs is None else _as_input("gcs", gcs, n)
    c = None if consciousness is None else _as_input("consciousness", consciousness, n)
    points = np.stack(
        [
            respiration_rate_criterion(rr),
            systolic_bp_criterion(sbp),
            mentation_criterion(g, c),
        ],
        axis=1,
    )
    return aggregate(points)
