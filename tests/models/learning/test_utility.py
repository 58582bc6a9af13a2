"""The PhysioNet/CinC 2019 utility against the challenge's own example and a port of its loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.models.learning.utility import (
    best_predictions,
    cohort_utility,
    prediction_utility,
    sepsis_onset,
)


def reference_utility(labels: list[int], predictions: list[int]) -> float:
    """The per-hour loop of evaluate_sepsis_score.py (physionetchallenges/evaluation-2019)."""
    dt_early, dt_optimal, dt_late = -12, -6, 3.0
    max_u_tp, min_u_fn, u_fp, u_tn = 1, -2, -0.05, 0
    if np.any(labels):
        is_septic = True
        t_sepsis: float = int(np.argmax(labels)) - dt_optimal
    else:
        is_septic = False
        t_sepsis = float("inf")
    n = len(labels)
    m_1 = float(max_u_tp) / float(dt_optimal - dt_early)
    b_1 = -m_1 * dt_early
    m_2 = float(-max_u_tp) / float(dt_late - dt_optimal)
    b_2 = -m_2 * dt_late
    m_3 = float(min_u_fn) / float(dt_late - dt_optimal)
    b_3 = -m_3 * dt_optimal
    u = np.zeros(n)
    for t in range(n):
        if t <= t_sepsis + dt_late:
            if is_septic and predictions[t]:
                if t <= t_sepsis + dt_optimal:
                    u[t] = max(m_1 * (t - t_sepsis) + b_1, u_fp)
                elif t <= t_sepsis + dt_late:
                    u[t] = m_2 * (t - t_sepsis) + b_2
            elif not is_septic and predictions[t]:
                u[t] = u_fp
            elif is_septic and not predictions[t]:
                if t <= t_sepsis + dt_optimal:
                    u[t] = 0
                elif t <= t_sepsis + dt_late:
                    u[t] = m_3 * (t - t_sepsis) + b_3
            elif not is_septic and not predictions[t]:
                u[t] = u_tn
    return float(np.sum(u))


def test_the_challenge_example_exactly() -> None:
    assert prediction_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]) == 3.388888888888889


def test_hand_checked_cohort() -> None:
    """Patient A: labels [0,0,0,0,1,1] (onset t=4+6=10); patient B never septic, 3 hours.

    Slopes: m1 = 1/6, b1 = 2; m2 = -1/9, b2 = 1/3; m3 = -2/9, b3 = -4/3.
    A observed, predictions [0,0,1,1,1,1]: t=2..4 ramp 2/3, 5/6, 1; t=5 falls to 8/9;
      sum 61/18 = 3.3889.
    A best: 1 from max(0, 10-12)=0 to min(10+3+1, 6)=6, i.e. every hour:
      1/3 + 1/2 + 2/3 + 5/6 + 1 + 8/9 = 76/18 = 38/9.
    A inaction: 0 up to t=4 (t <= onset-6), t=5: m3*(-5) + b3 = 10/9 - 12/9 = -2/9.
    A worst (1 - best = all 0): -2/9.
    B observed [0,1,0]: one false alarm, -0.05; best = inaction = 0; worst [1,1,1]: -0.15.
    Cohort: observed 61/18 - 1/20, best 38/9, inaction -2/9, worst -2/9 - 0.15.
    Normalized: (61/18 - 1/20 + 2/9) / (38/9 + 2/9) = (641/180) / (40/9) = 641/800 = 0.80125.
    """
    result = cohort_utility([[0, 0, 0, 0, 1, 1], [0, 0, 0]], [[0, 0, 1, 1, 1, 1], [0, 1, 0]])
    assert result.per_patient == (3.388888888888889, -0.05)
    assert result.observed == pytest.approx(61 / 18 - 1 / 20, abs=1e-12)
    assert result.best == pytest.approx(38 / 9, abs=1e-12)
    assert result.inaction == pytest.approx(-2 / 9, abs=1e-12)
    assert result.worst == pytest.approx(-2 / 9 - 0.15, abs=1e-12)
    assert result.normalized == pytest.approx(641 / 800, abs=1e-12)


def test_perfect_and_silent_predictions_normalize_to_one_and_zero() -> None:
    labels = [[0] * 20 + [1] * 10, [0] * 15, [0] * 8 + [1] * 3]
    best = [best_predictions(lab) for lab in labels]
    assert cohort_utility(labels, best).normalized == pytest.approx(1.0)
    silent = [np.zeros(len(lab), dtype=int) for lab in labels]
    assert cohort_utility(labels, silent).normalized == 0.0


def test_all_negative_patient() -> None:
    assert sepsis_onset([0, 0, 0, 0]) is None
    assert prediction_utility([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert prediction_utility([0, 0, 0, 0], [1, 1, 0, 1]) == pytest.approx(-0.15)
    assert best_predictions([0, 0, 0]).tolist() == [0, 0, 0]
    result = cohort_utility([[0, 0, 0]], [[1, 0, 0]])
    assert result.observed == -0.05
    assert math.isnan(result.normalized)  # best == inaction: undefined, not a crash


def test_onset_is_first_label_plus_six_hours() -> None:
    assert sepsis_onset([0, 0, 1, 1]) == 8
    assert sepsis_onset([1, 1]) == 6
    # Alarms long after onset + 3 h count nothing; a missed onset costs up to -2 per hour.
    late = [0] * 6 + [1] * 20  # onset at 12, hours up to 15 count
    assert prediction_utility(late, [0] * 16 + [1] * 10) == prediction_utility(late, [0] * 26)
    assert prediction_utility(late, [0] * 26) == pytest.approx(
        sum(-2 / 9 * (t - 12) - 4 / 3 for t in range(7, 16))
    )


def test_length_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="predictions has 5 hours but labels has 6"):
        prediction_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="patient 1: predictions has 2 hours"):
        cohort_utility([[0, 1], [0, 0, 0]], [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="2 prediction arrays for 1 patients"):
        cohort_utility([[0, 1]], [[0, 1], [0, 0]])


@pytest.mark.parametrize(
    ("labels", "predictions", "match"),
    [
        ([0, 2], [0, 1], "labels must be 0 or 1"),
        ([0, 1], [0, 0.5], "predictions must be 0 or 1"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_non_binary_input_is_refused(
    labels: list[float], predictions: list[float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        prediction_utility(labels, predictions)


def test_times_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="dt_early"):
        prediction_utility([0, 1], [0, 1], dt_early=-6, dt_optimal=-6)
    with pytest.raises(ValueError, match="dt_optimal"):
        prediction_utility([0, 1], [0, 1], dt_optimal=3, dt_late=3)


@st.composite
def patient(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """A challenge-shaped record: 0s, then (maybe) 1s to the end, and any predictions."""
    n = draw(st.integers(1, 60))
    first = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    labels = [0] * n if first is None else [0] * first + [1] * (n - first)
    predictions = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return labels, predictions


@settings(max_examples=150, deadline=None)
@given(patient())
def test_agrees_to_the_bit_with_the_reference_loop(record: tuple[list[int], list[int]]) -> None:
    labels, predictions = record
    assert prediction_utility(labels, predictions) == reference_utility(labels, predictions)


@settings(max_examples=60, deadline=None)
@given(st.lists(patient(), min_size=1, max_size=8))
def test_best_predictions_are_best(records: list[tuple[list[int], list[int]]]) -> None:
    labels = [lab for lab, _ in records]
    result = cohort_utility(labels, [pred for _, pred in records])
    assert result.observed <= result.best + 1e-12
    if not math.isnan(result.normalized):
        assert result.normalized <= 1.0 + 1e-12
