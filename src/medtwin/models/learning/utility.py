"""The PhysioNet/Computing in Cardiology Challenge 2019 utility score for sepsis prediction.

A reimplementation of ``compute_prediction_utility`` and the cohort
normalization of the challenge's ``evaluate_sepsis_score.py``
(https://github.com/physionetchallenges/evaluation-2019), following it exactly:
same parameters, same per-hour utilities in the same order, same sum.  Reference:
Reyna MA et al., *Early prediction of sepsis from clinical data: the
PhysioNet/Computing in Cardiology Challenge 2019*, Crit Care Med 2020;48(2):210-217.

Each hour ``t`` (0-based row of a patient's record) with a binary prediction earns:

* septic patient, onset ``t_sepsis``, only hours ``t <= t_sepsis + dt_late`` count:
  a positive prediction earns ``max(u_fp, ramp up to max_u_tp)`` from
  ``t_sepsis + dt_early`` to ``t_sepsis + dt_optimal`` (hours), then falls linearly to
  0 at ``t_sepsis + dt_late``; a negative prediction costs nothing up to
  ``t_sepsis + dt_optimal``, then falls linearly to ``min_u_fn`` at ``t_sepsis + dt_late``;
* non-septic patient, every hour: ``u_fp`` for a positive, ``u_tn`` for a negative.

The challenge labels are shifted 6 h early (``SepsisLabel`` is 1 from
``t_sepsis - 6``), so the onset is the first 1 of the labels plus 6 hours; the
reference code writes this as ``argmax(labels) - dt_optimal`` and so does this one.

The cohort score is normalized: ``(observed - inaction) / (best - inaction)``,
summing over patients, where *inaction* predicts 0 everywhere and *best* predicts
1 exactly from ``t_sepsis + dt_early`` to ``t_sepsis + dt_late`` for septic
patients: 1 is perfect, 0 is no better than never alarming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "DT_EARLY",
    "DT_LATE",
    "DT_OPTIMAL",
    "MAX_U_TP",
    "MIN_U_FN",
    "U_FP",
    "U_TN",
    "CohortUtility",
    "best_predictions",
    "cohort_utility",
    "prediction_utility",
    "sepsis_onset",
]

DT_EARLY = -12  # h before onset from which an alarm starts to earn utility
DT_OPTIMAL = -6  # h before onset at which an alarm earns the most
DT_LATE = 3  # h after onset after which nothing counts
MAX_U_TP = 1.0  # utility of an alarm at the optimal time
MIN_U_FN = -2.0  # utility of a missed sepsis at dt_late
U_FP = -0.05  # utility of a false alarm, per hour
U_TN = 0.0  # utility of a correct silence, per hour


def _binary(name: str, x: npt.ArrayLike) -> NDArray[np.int8]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be 0 or 1 in every hour")
    return arr.astype(np.int8)


def _check_times(dt_early: int, dt_optimal: int, dt_late: int) -> None:
    if dt_early >= dt_optimal:
        raise ValueError("dt_early (h) must be before dt_optimal")
    if dt_optimal >= dt_late:
        raise ValueError("dt_optimal (h) must be before dt_late")


def sepsis_onset(labels: npt.ArrayLike, dt_optimal: int = DT_OPTIMAL) -> int | None:
    """Onset hour (row) of a patient's sepsis from challenge labels, None if never septic.

    The first 1 of the labels minus ``dt_optimal`` (i.e. plus 6 h): may lie past
    the last row.
    """
    lab = _binary("labels", labels)
    if not lab.any():
        return None
    return int(np.argmax(lab)) - dt_optimal


def prediction_utility(
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    *,
    dt_early: int = DT_EARLY,
    dt_optimal: int = DT_OPTIMAL,
    dt_late: int = DT_LATE,
    max_u_tp: float = MAX_U_TP,
    min_u_fn: float = MIN_U_FN,
    u_fp: float = U_FP,
    u_tn: float = U_TN,
) -> float:
    """Total utility of one patient's hourly binary predictions (challenge 2019).

    ``labels`` and ``predictions``: 1-D arrays of 0/1, one per hour, of equal length.
    ValueError on a length mismatch, a value other than 0/1, or times out of order.
    """
    lab = _binary("labels", labels)
    pred = _binary("predictions", predictions)
    if pred.shape[0] != lab.shape[0]:
        raise ValueError(
            f"predictions has {pred.shape[0]} hours but labels has {lab.shape[0]}: "
            "one prediction is needed per labelled hour"
        )
    _check_times(dt_early, dt_optimal, dt_late)
    n = lab.shape[0]
    onset = sepsis_onset(lab, dt_optimal)

    # Slopes and intercepts of u = m * (t - t_sepsis) + b, as in the reference.
    m_1 = float(max_u_tp) / float(dt_optimal - dt_early)
    b_1 = -m_1 * dt_early
    m_2 = float(-max_u_tp) / float(dt_late - dt_optimal)
    b_2 = -m_2 * dt_late
    m_3 = float(min_u_fn) / float(dt_late - dt_optimal)
    b_3 = -m_3 * dt_optimal

    positive = pred == 1
    u = np.zeros(n)
    if onset is None:
        u[:] = np.where(positive, u_fp, u_tn)
        return float(np.sum(u))
    rel = np.arange(n, dtype=np.int64) - onset  # hours relative to onset
    counted = rel <= dt_late
    early = rel <= dt_optimal
    tp = np.where(early, np.maximum(m_1 * rel + b_1, u_fp), m_2 * rel + b_2)
    fn = np.where(early, 0.0, m_3 * rel + b_3)
    u[counted] = np.where(positive, tp, fn)[counted]
    # Summed like the reference (np.sum over the per-hour array) so results agree to the bit.
    return float(np.sum(u))


def best_predictions(
    labels: npt.ArrayLike,
    *,
    dt_early: int = DT_EARLY,
    dt_optimal: int = DT_OPTIMAL,
    dt_late: int = DT_LATE,
) -> NDArray[np.int8]:
    """The predictions of highest utility: 1 from ``t_sepsis + dt_early`` to ``+ dt_late``."""
    lab = _binary("labels", labels)
    best = np.zeros(lab.shape[0], dtype=np.int8)
    onset = sepsis_onset(lab, dt_optimal)
    if onset is not None:
        best[max(0, onset + dt_early) : min(onset + dt_late + 1, lab.shape[0])] = 1
    return best


@dataclass(frozen=True)
class CohortUtility:
    """Summed utilities of a cohort and the challenge's normalized score.

    ``observed``, ``best``, ``worst`` (``1 - best``), ``inaction`` (all 0): sums over
    patients; ``normalized``: ``(observed - inaction) / (best - inaction)``, NaN when
    undefined (no patient is septic within its record, so best == inaction).
    ``per_patient``: the observed utility of each patient, in input order.
    """

    observed: float
    best: float
    worst: float
    inaction: float
    normalized: float
    per_patient: tuple[float, ...]


def cohort_utility(
    labels: Sequence[npt.ArrayLike],
    predictions: Sequence[npt.ArrayLike],
    *,
    dt_early: int = DT_EARLY,
    dt_optimal: int = DT_OPTIMAL,
    dt_late: int = DT_LATE,
    max_u_tp: float = MAX_U_TP,
    min_u_fn: float = MIN_U_FN,
    u_fp: float = U_FP,
    u_tn: float = U_TN,
) -> CohortUtility:
    """Normalized utility of a cohort: one label and one prediction array per patient.

    ValueError when the numbers of patients differ, or (naming the patient) on
    any error of :func:`prediction_utility`.
    """
    if len(labels) != len(predictions):
        raise ValueError(
            f"{len(predictions)} prediction arrays for {len(labels)} patients: need one each"
        )
    observed, best, worst, inaction = (np.zeros(len(labels)) for _ in range(4))

    def utility(lab: NDArray[np.int8], pred: npt.ArrayLike) -> float:
        return prediction_utility(
            lab,
            pred,
            dt_early=dt_early,
            dt_optimal=dt_optimal,
            dt_late=dt_late,
            max_u_tp=max_u_tp,
            min_u_fn=min_u_fn,
            u_fp=u_fp,
            u_tn=u_tn,
        )

    for k, (lab, pred) in enumerate(zip(labels, predictions, strict=True)):
        try:
            lab_arr = _binary("labels", lab)
            top = best_predictions(
                lab_arr, dt_early=dt_early, dt_optimal=dt_optimal, dt_late=dt_late
            )
            observed[k] = utility(lab_arr, pred)
        except ValueError as exc:
            raise ValueError(f"patient {k}: {exc}") from exc
        best[k] = utility(lab_arr, top)
        worst[k] = utility(lab_arr, 1 - top)
        inaction[k] = utility(lab_arr, np.zeros_like(top))
    total_observed, total_best, total_worst, total_inaction = (
        float(np.sum(a)) for a in (observed, best, worst, inaction)
    )
    span = total_best - total_inaction
    normalized = (total_observed - total_inaction) / span if span != 0 else float("nan")
    return CohortUtility(
        total_observed,
        total_best,
        total_worst,
        total_inaction,
        normalized,
        tuple(float(u) for u in observed),
    )
