"""Sequential (Sepsis-related) Organ Failure Assessment (SOFA), vectorized over patients.

Implements the table of Vincent JL et al., *The SOFA (Sepsis-related Organ Failure
Assessment) score to describe organ dysfunction/failure*, Intensive Care Med
1996;22:707-710, as reprinted in Table 1 of Singer M et al., *The Third International
Consensus Definitions for Sepsis and Septic Shock (Sepsis-3)*, JAMA
2016;315(8):801-810.

==============  =====================================================  ======================
component       points 1 / 2 / 3 / 4                                   inputs (unit)
==============  =====================================================  ======================
respiration     PaO2/FiO2 < 400 / < 300 / < 200 with respiratory       ``pao2`` (mm[Hg]),
                support / < 100 with respiratory support               ``fio2`` (%),
                                                                       ``respiratory_support``
coagulation     platelets < 150 / < 100 / < 50 / < 20                  ``platelets`` (10*3/uL)
liver           bilirubin 1.2-1.9 / 2.0-5.9 / 6.0-11.9 / >= 12.0       ``bilirubin`` (mg/dL)
cardiovascular  MAP < 70 / dopamine <= 5 or dobutamine (any dose) /    ``mean_arterial_pressure``
                dopamine > 5 or epinephrine <= 0.1 or norepinephrine   (mm[Hg]); drug rates in
                <= 0.1 / dopamine > 15 or epinephrine > 0.1 or         ug/kg/min
                norepinephrine > 0.1
cns             Glasgow Coma Scale 13-14 / 10-12 / 6-9 / < 6           ``gcs`` (3..15)
renal           creatinine 1.2-1.9 / 2.0-3.4 / 3.5-4.9 or urine        ``creatinine`` (mg/dL),
                < 500 mL/d / >= 5.0 or urine < 200 mL/d                ``urine_output`` (mL/d)
==============  =====================================================  ======================

Boundaries.  The published ranges are written at the precision labs report
(bilirubin 1.2-1.9, 2.0-5.9, ...); values between two ranges go to the lower
band, i.e. each cut point is "below x scores less": bilirubin 1.95 scores 1 and
12.0 scores 4 (the table's "> 12.0" is read as ">= 12.0", as Vincent's "12.0" row
and common calculators do), creatinine 5.0 scores 4.  Vasopressor cut points follow
Vincent 1996 ("dopamine <= 5", "dopamine > 5", "> 15"; Singer's reprint writes
"< 5" and "5.1-15", which leaves 5.0-5.1 unassigned): dopamine 5.0 scores 2,
15.0 scores 3.  A drug rate of 0 means the drug is not running.  Values are
snapped to 9 decimals before comparison so unit-conversion error cannot cross a
cut point; PaO2/FiO2 is computed as ``pao2 * 100 / fio2`` so that round inputs
give round ratios.

Respiratory support: 1 = mechanically ventilated or on non-invasive support
(CPAP/BiPAP), 0 = none; without it a ratio below 200 scores 2.

Missing data, per component:

* *missing*: none of its inputs is known (for respiration: the ratio is unknown);
  its points are -1 and its bit is set in ``missing_mask`` (bit i = ``COMPONENTS[i]``).
* *lower bound*: some alternative input is unknown and could still raise the
  points (a ratio < 200 with unknown support; MAP known but vasopressor rates not;
  creatinine known but 24-h urine output not, ...).  The points are the worst of
  the known inputs and the component's bit is set in ``lower_bound_mask``.

``score`` is the sum over the components present (-1 when none is); it is the
full SOFA score only where ``complete`` (nothing missing, no lower bound).

Invalid values raise ``ValueError`` (a GCS that is not a whole number in 3..15,
``fio2`` outside 21..100 %, support other than 0/1, a negative concentration or
rate); the twin's modules turn such values into missing ones instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "COMPONENTS",
    "INPUT_CODES",
    "SofaBatch",
    "aggregate",
    "cardiovascular_points",
    "cns_points",
    "coagulation_points",
    "liver_points",
    "pf_ratio",
    "renal_points",
    "respiration_points",
    "sofa",
]

COMPONENTS: tuple[str, ...] = (
    "respiration",
    "coagulation",
    "liver",
    "cardiovascular",
    "cns",
    "renal",
)
"""SOFA organ systems; column order of ``SofaBatch.points`` and bit order of the masks."""

INPUT_CODES: dict[str, str] = {
    "2703-7": "pao2",
    "3150-0": "fio2",
    "777-3": "platelets",
    "1975-2": "bilirubin",
    "8478-0": "mean_arterial_pressure",
    "9269-2": "gcs",
    "2160-0": "creatinine",
    "9192-6": "urine_output",
}
"""LOINC code of each SOFA input -> the argument its array feeds.

Respiratory support and vasopressor rates have no LOINC observation code; see
:mod:`medtwin.models.scores.sepsis_modules` for the local codes they are read from.
"""

_MISSING = -1
_SNAP = 9  # decimals: absorbs binary float error of unit conversions
_FIO2_RANGE = (21.0, 100.0)  # % inhaled O2; below air is not an inhaled fraction

# (cut points, points per band) for "value below cut[i]" charts, bands from the lowest value.
_PF_EDGES = (100.0, 200.0, 300.0, 400.0)  # mm[Hg]; points 4, 3, 2, 1, 0 (with support)
_PLATELETS = ((20.0, 50.0, 100.0, 150.0), (4, 3, 2, 1, 0))  # 10*3/uL
_BILIRUBIN = ((1.2, 2.0, 6.0, 12.0), (0, 1, 2, 3, 4))  # mg/dL
_CREATININE = ((1.2, 2.0, 3.5, 5.0), (0, 1, 2, 3, 4))  # mg/dL
_URINE = ((200.0, 500.0), (4, 3, 0))  # mL/d
_GCS = ((6.0, 10.0, 13.0, 15.0), (4, 3, 2, 1, 0))
_MAP_CUT = 70.0  # mm[Hg]; below scores 1
_DOPAMINE_CUTS = (5.0, 15.0)  # ug/kg/min; (0, 5] -> 2, (5, 15] -> 3, > 15 -> 4
_CATECHOLAMINE_CUT = 0.1  # ug/kg/min epinephrine / norepinephrine; (0, 0.1] -> 3, above -> 4
# Most an unknown part of a component could add (what makes a known value a lower bound).
_MAX_MAP, _MAX_DOPAMINE, _MAX_DOBUTAMINE, _MAX_CATECHOLAMINE = 1, 4, 2, 4
_MAX_CREATININE, _MAX_URINE = 4, 4


@dataclass(frozen=True, eq=False)
class SofaBatch:
    """SOFA results for ``n`` patients (arrays are read-only).

    ``points``: (n, 6) int8 per component, -1 where missing (columns = ``COMPONENTS``).
    ``lower_bound``: (n, 6) bool, True where the points are a lower bound.
    ``score``: (n,) int16 sum over the components present, -1 when none is.
    ``missing``: (n, 6) bool, True where the component could not be assessed.
    ``missing_count``: (n,) int8 number of missing components.
    ``missing_mask`` / ``lower_bound_mask``: (n,) int16 bitmasks (bit i = ``COMPONENTS[i]``).
    ``complete``: (n,) bool, every component present and none a lower bound.
    """

    points: NDArray[np.int8]
    lower_bound: NDArray[np.bool_]
    score: NDArray[np.int16]
    missing: NDArray[np.bool_]
    missing_count: NDArray[np.int8]
    missing_mask: NDArray[np.int16]
    lower_bound_mask: NDArray[np.int16]
    complete: NDArray[np.bool_]

    def __len__(self) -> int:
        """Number of patients."""
        return int(self.score.shape[0])

    def result(self, i: int) -> dict[str, object]:
        """JSON-ready result for patient ``i``.

        ``{"score": int|None, "complete": bool, "components": {name: int|None},
        "missing": [name, ...], "lower_bound": [name, ...]}``.
        """
        score = int(self.score[i])
        return {
            "score": None if score == _MISSING else score,
            "complete": bool(self.complete[i]),
            "components": {
                c: (None if p == _MISSING else int(p))
                for c, p in zip(COMPONENTS, self.points[i], strict=True)
            },
            "missing": [c for c, m in zip(COMPONENTS, self.missing[i], strict=True) if m],
            "lower_bound": [c for c, b in zip(COMPONENTS, self.lower_bound[i], strict=True) if b],
        }


Points = tuple[NDArray[np.int8], NDArray[np.bool_]]  # (points with -1 missing, lower bound)


def _as_input(
    name: str, x: npt.ArrayLike | None, n: int | None, *, nonnegative: bool = True
) -> NDArray[np.float64]:
    """Validate one input as a 1-D float64 array of length ``n``; None -> all NaN."""
    if x is None:
        if n is None:
            raise ValueError(f"{name} is required")
        return np.full(n, np.nan)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    if nonnegative and (arr < 0).any():
        raise ValueError(f"{name} must not be negative, got {arr[arr < 0][0]!r}")
    return arr


def _snap(x: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.round(x, _SNAP)
    return out


def _chart(
    x: NDArray[np.float64], edges: tuple[float, ...], points: tuple[int, ...]
) -> NDArray[np.int8]:
    """Points of the band each value falls in (band i: edges[i-1] <= x < edges[i]); -1 if NaN."""
    idx = np.digitize(_snap(np.where(np.isfinite(x), x, 0.0)), np.asarray(edges))
    out: NDArray[np.int8] = np.asarray(points, dtype=np.int8)[idx]
    out[~np.isfinite(x)] = _MISSING
    return out


def _worst(parts: list[tuple[NDArray[np.int8], int]]) -> Points:
    """Worst known part of a max-of-parts component, and whether an unknown part could exceed it.

    ``parts``: (points with -1 unknown, the most that part can score).
    """
    pts = np.stack([p for p, _ in parts], axis=1)
    best = pts.max(axis=1).astype(np.int8)  # -1 only when every part is unknown
    caps = np.asarray([cap for _, cap in parts], dtype=np.int8)
    lower = ((pts == _MISSING) & (caps > best[:, None])).any(axis=1) & (best != _MISSING)
    return best, lower


def pf_ratio(pao2: npt.ArrayLike, fio2: npt.ArrayLike) -> NDArray[np.float64]:
    """PaO2/FiO2 ratio (mm[Hg]) from PaO2 (mm[Hg]) and the inhaled O2 fraction (%).

    NaN where either is missing; ValueError for ``fio2`` outside 21..100 %.
    """
    p = _as_input("pao2", pao2, None)
    f = _as_input("fio2", fio2, int(p.shape[0]))
    bad = np.isfinite(f) & ((f < _FIO2_RANGE[0]) | (f > _FIO2_RANGE[1]))
    if bad.any():
        raise ValueError(f"fio2 must be in 21..100 % (a fraction?), got {f[bad][0]!r}")
    with np.errstate(invalid="ignore"):
        out: NDArray[np.float64] = p * 100.0 / f
    return out


def respiration_points(
    pao2: npt.ArrayLike, fio2: npt.ArrayLike, respiratory_support: npt.ArrayLike | None = None
) -> Points:
    """Respiration points from PaO2 (mm[Hg]), FiO2 (%) and support (0/1, NaN unknown).

    Below a ratio of 200 the points are 3 or 4 only with respiratory support, 2
    without; with support unknown they are 2 and marked as a lower bound.
    """
    ratio = pf_ratio(pao2, fio2)
    n = int(ratio.shape[0])
    support = _as_input("respiratory_support", respiratory_support, n)
    known = np.isfinite(support)
    if not np.isin(support[known], (0.0, 1.0)).all():
        raise ValueError("respiratory_support must be 0, 1 or NaN")
    full = _chart(ratio, _PF_EDGES, (4, 3, 2, 1, 0))
    ventilated = known & (support == 1.0)
    points = np.where(ventilated, full, np.minimum(full, 2)).astype(np.int8)
    points[~np.isfinite(ratio)] = _MISSING
    lower = (full > 2) & ~known
    return points, lower


def coagulation_points(platelets: npt.ArrayLike) -> NDArray[np.int8]:
    """Coagulation points from the platelet count (10*3/uL), -1 where missing."""
    return _chart(_as_input("platelets", platelets, None), *_PLATELETS)


def liver_points(bilirubin: npt.ArrayLike) -> NDArray[np.int8]:
    """Liver points from total bilirubin (mg/dL), -1 where missing."""
    return _chart(_as_input("bilirubin", bilirubin, None), *_BILIRUBIN)


def cns_points(gcs: npt.ArrayLike) -> NDArray[np.int8]:
    """Central nervous system points from the Glasgow Coma Scale (3..15), -1 where missing."""
    g = _as_input("gcs", gcs, None)
    present = np.isfinite(g)
    bad = present & ~np.isin(g, np.arange(3, 16, dtype=np.float64))
    if bad.any():
        raise ValueError(f"gcs must be a whole number in 3..15 or NaN, got {g[bad][0]!r}")
    return _chart(g, *_GCS)


def cardiovascular_points(
    mean_arterial_pressure: npt.ArrayLike,
    dopamine: npt.ArrayLike | None = None,
    dobutamine: npt.ArrayLike | None = None,
    epinephrine: npt.ArrayLike | None = None,
    norepinephrine: npt.ArrayLike | None = None,
) -> Points:
    """Cardiovascular points from MAP (mm[Hg]) and vasopressor rates (ug/kg/min, NaN unknown).

    The worst of the known parts; a lower bound where an unknown part could score more.
    """
    m = _as_input("mean_arterial_pressure", mean_arterial_pressure, None)
    n = int(m.shape[0])
    dop = _snap(_as_input("dopamine", dopamine, n))
    dob = _snap(_as_input("dobutamine", dobutamine, n))
    epi = _snap(_as_input("epinephrine", epinephrine, n))
    nor = _snap(_as_input("norepinephrine", norepinephrine, n))

    def known(points: NDArray[np.int64], x: NDArray[np.float64]) -> NDArray[np.int8]:
        out: NDArray[np.int8] = np.where(np.isfinite(x), points, _MISSING).astype(np.int8)
        return out

    low, high = _DOPAMINE_CUTS
    return _worst(
        [
            (known(np.where(_snap(m) < _MAP_CUT, 1, 0), m), _MAX_MAP),
            (known(np.select([dop > high, dop > low, dop > 0], [4, 3, 2], 0), dop), _MAX_DOPAMINE),
            (known(np.where(dob > 0, 2, 0), dob), _MAX_DOBUTAMINE),
            *(
                (
                    known(np.select([x > _CATECHOLAMINE_CUT, x > 0], [4, 3], 0), x),
                    _MAX_CATECHOLAMINE,
                )
                for x in (epi, nor)
            ),
        ]
    )


def renal_points(creatinine: npt.ArrayLike, urine_output: npt.ArrayLike | None = None) -> Points:
    """Renal points from creatinine (mg/dL) and 24-h urine output (mL/d, NaN unknown).

    The worse of the two; a lower bound where the unknown one could score more.
    """
    c = _as_input("creatinine", creatinine, None)
    u = _as_input("urine_output", urine_output, int(c.shape[0]))
    return _worst([(_chart(c, *_CREATININE), _MAX_CREATININE), (_chart(u, *_URINE), _MAX_URINE)])


def aggregate(points: npt.ArrayLike, lower_bound: npt.ArrayLike) -> SofaBatch:
    """SOFA from component points of shape (n, 6) (-1 missing) and lower-bound flags."""
    pts = np.asarray(points, dtype=np.int8)
    lower = np.asarray(lower_bound, dtype=np.bool_)
    if pts.ndim != 2 or pts.shape[1] != len(COMPONENTS) or lower.shape != pts.shape:
        raise ValueError(
            f"points and lower_bound must have shape (n, {len(COMPONENTS)}), "
            f"got {pts.shape} and {lower.shape}"
        )
    if not ((pts >= _MISSING) & (pts <= 4)).all():
        raise ValueError("SOFA component points must be 0..4 or -1 (missing)")
    missing = pts == _MISSING
    lower = lower & ~missing
    count = missing.sum(axis=1).astype(np.int8)
    total = np.where(missing, 0, pts).sum(axis=1)
    score = np.where(count == len(COMPONENTS), _MISSING, total).astype(np.int16)
    bits = np.int16(1) << np.arange(len(COMPONENTS), dtype=np.int16)
    arrays = (
        pts.copy(),
        lower,
        score,
        missing,
        count,
        (missing * bits).sum(axis=1).astype(np.int16),
        (lower * bits).sum(axis=1).astype(np.int16),
        (count == 0) & ~lower.any(axis=1),
    )
    for arr in arrays:
        arr.setflags(write=False)
    return SofaBatch(*arrays)


def sofa(
    *,
    pao2: npt.ArrayLike,
    fio2: npt.ArrayLike,
    platelets: npt.ArrayLike,
    bilirubin: npt.ArrayLike,
    mean_arterial_pressure: npt.ArrayLike,
    gcs: npt.ArrayLike,
    creatinine: npt.ArrayLike,
    respiratory_support: npt.ArrayLike | None = None,
    dopamine: npt.ArrayLike | None = None,
    dobutamine: npt.ArrayLike | None = None,
    epinephrine: npt.ArrayLike | None = None,
    norepinephrine: npt.ArrayLike | None = None,
    urine_output: npt.ArrayLike | None = None,
) -> SofaBatch:
    """Score SOFA for a batch of patients (see the module docstring for units and rules).

    All inputs are 1-D arrays of equal length ``n``, NaN meaning unknown; an
    optional input left out is unknown for every patient.  Raises ``ValueError``
    on a shape mismatch or an invalid value.
    """
    p = _as_input("pao2", pao2, None)
    n = int(p.shape[0])
    resp, resp_lower = respiration_points(
        p, _as_input("fio2", fio2, n), _as_input("respiratory_support", respiratory_support, n)
    )
    cv, cv_lower = cardiovascular_points(
        _as_input("mean_arterial_pressure", mean_arterial_pressure, n),
        dopamine=_as_input("dopamine", dopamine, n),
        dobutamine=_as_input("dobutamine", dobutamine, n),
        epinephrine=_as_input("epinephrine", epinephrine, n),
        norepinephrine=_as_input("norepinephrine", norepinephrine, n),
    )
    renal, renal_lower = renal_points(
        _as_input("creatinine", creatinine, n), _as_input("urine_output", urine_output, n)
    )
    no = np.zeros(n, dtype=np.bool_)
    points = np.stack(
        [
            resp,
            coagulation_points(_as_input("platelets", platelets, n)),
            liver_points(_as_input("bilirubin", bilirubin, n)),
            cv,
            cns_points(_as_input("gcs", gcs, n)),
            renal,
        ],
        axis=1,
    )
    lower = np.stack([resp_lower, no, no, cv_lower, no, renal_lower], axis=1)
    return aggregate(points, lower)
