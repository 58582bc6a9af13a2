"""qSOFA (Seymour et al., JAMA 2016) against an independent scalar reference, and as modules."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from medtwin.data.codes import DEFAULT_REGISTRY, VITAL_SIGNS
from medtwin.models.modules import Module, ModuleGraph, ObservationInput, ResultInput
from medtwin.models.scores.qsofa import (
    CRITERIA,
    QsofaBatch,
    aggregate,
    mentation_criterion,
    qsofa,
    respiration_rate_criterion,
    systolic_bp_criterion,
)
from medtwin.models.scores.sepsis_modules import QSOFA, QSOFA_CODES, qsofa_modules

NAN = math.nan


def one(**kw: float) -> dict[str, object]:
    """Score one patient; defaults are a patient meeting no criterion."""
    args = {"respiration_rate": 16.0, "systolic_bp": 120.0, "gcs": 15.0, "consciousness": NAN}
    args.update(kw)
    return qsofa(**{k: np.array([v]) for k, v in args.items()}).result(0)


# ------------------------------------------------------------------ independent reference


def ref_qsofa(rr: float, sbp: float, gcs: float, avpu: float) -> tuple[int | None, ...]:
    """Plain-Python qSOFA criteria straight from Seymour 2016; None = missing."""
    rr_pt = None if math.isnan(rr) else (1 if rr >= 22 else 0)
    sbp_pt = None if math.isnan(sbp) else (1 if sbp <= 100 else 0)
    sources = [
        s
        for s in (
            (gcs < 15) if not math.isnan(gcs) else None,
            (avpu > 0) if not math.isnan(avpu) else None,
        )
        if s is not None
    ]
    ment = None if not sources else (1 if any(sources) else 0)
    return rr_pt, sbp_pt, ment


# ------------------------------------------------------------------ cut points


@pytest.mark.parametrize(
    ("rr", "point"),
    [(21.0, 0), (21.9, 0), (21.999999, 0), (22.0, 1), (22.1, 1), (23.0, 1), (0.0, 0), (60.0, 1)],
)
def test_respiratory_rate_cut_point_is_22_inclusive(rr: float, point: int) -> None:
    assert respiration_rate_criterion([rr])[0] == point


@pytest.mark.parametrize(
    ("sbp", "point"),
    [(99.0, 1), (99.9, 1), (100.0, 1), (100.1, 0), (100.000001, 0), (101.0, 0), (60.0, 1)],
)
def test_systolic_cut_point_is_100_inclusive(sbp: float, point: int) -> None:
    assert systolic_bp_criterion([sbp])[0] == point


def test_float_error_of_a_unit_conversion_does_not_cross_a_cut_point() -> None:
    assert systolic_bp_criterion([100.0 + 1e-12])[0] == 1
    assert respiration_rate_criterion([22.0 - 1e-12])[0] == 1


@pytest.mark.parametrize(("gcs", "point"), [(15, 0), (14, 1), (13, 1), (9, 1), (3, 1)])
def test_gcs_below_15_is_altered_mentation(gcs: int, point: int) -> None:
    assert mentation_criterion(gcs=[gcs])[0] == point


@pytest.mark.parametrize(("avpu", "point"), [(0, 0), (1, 1), (2, 1), (3, 1), (4, 1)])
def test_acvpu_other_than_alert_is_altered_mentation(avpu: int, point: int) -> None:
    assert mentation_criterion(consciousness=[avpu])[0] == point


@pytest.mark.parametrize(
    ("gcs", "avpu", "point"),
    [
        (15, 0, 0),
        (15, 1, 1),  # new confusion outweighs a full GCS
        (14, 0, 1),
        (NAN, 0, 0),
        (15, NAN, 0),
        (NAN, 2, 1),
        (NAN, NAN, -1),
    ],
)
def test_mentation_combines_gcs_and_acvpu(gcs: float, avpu: float, point: int) -> None:
    assert mentation_criterion([gcs], [avpu])[0] == point


def test_total_and_positive_screen() -> None:
    assert one() == {
        "score": 0,
        "positive": False,
        "criteria": {"respiration_rate": 0, "systolic_bp": 0, "mentation": 0},
        "missing": [],
    }
    assert one(respiration_rate=22, systolic_bp=100)["score"] == 2
    assert one(respiration_rate=22, systolic_bp=100)["positive"] is True
    assert one(respiration_rate=22, systolic_bp=100, gcs=14)["score"] == 3
    assert one(respiration_rate=22)["positive"] is False


# ------------------------------------------------------------------ missing data


@pytest.mark.parametrize(
    ("kw", "score", "mask", "count", "positive"),
    [
        ({"respiration_rate": NAN}, 0, 0b001, 1, 0),  # 0 + 1 missing < 2: negative
        ({"respiration_rate": NAN, "systolic_bp": 90}, 1, 0b001, 1, -1),  # could reach 2
        ({"respiration_rate": NAN, "systolic_bp": 90, "gcs": 12}, 2, 0b001, 1, 1),
        ({"systolic_bp": NAN, "gcs": NAN}, 0, 0b110, 2, -1),
        ({"respiration_rate": NAN, "systolic_bp": NAN, "gcs": NAN}, -1, 0b111, 3, -1),
    ],
)
def test_missing_criteria_are_listed_and_the_total_is_over_the_rest(
    kw: dict[str, float], score: int, mask: int, count: int, positive: int
) -> None:
    args = {"respiration_rate": 16.0, "systolic_bp": 120.0, "gcs": 15.0, **kw}
    batch = qsofa(**{k: np.array([v]) for k, v in args.items()})
    assert int(batch.score[0]) == score
    assert int(batch.missing_mask[0]) == mask
    assert int(batch.missing_count[0]) == count
    assert int(batch.positive[0]) == positive
    assert [c for c, m in zip(CRITERIA, batch.missing[0], strict=True) if m] == [
        c for i, c in enumerate(CRITERIA) if mask >> i & 1
    ]


def test_result_of_an_unscorable_patient_is_null() -> None:
    res = one(respiration_rate=NAN, systolic_bp=NAN, gcs=NAN)
    assert res["score"] is None
    assert res["positive"] is None
    assert res["missing"] == list(CRITERIA)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("gcs", [2.0, 16.0, 14.5, -1.0])
def test_invalid_gcs_is_refused(gcs: float) -> None:
    with pytest.raises(ValueError, match="gcs"):
        mentation_criterion(gcs=[gcs])


@pytest.mark.parametrize("avpu", [5.0, 0.5, -1.0])
def test_invalid_acvpu_is_refused(avpu: float) -> None:
    with pytest.raises(ValueError, match="consciousness"):
        mentation_criterion(consciousness=[avpu])


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="length"):
        qsofa(respiration_rate=[1.0, 2.0], systolic_bp=[1.0], gcs=[15.0, 15.0])
    with pytest.raises(ValueError, match="1-D"):
        qsofa(respiration_rate=[[1.0]], systolic_bp=[1.0], gcs=[15.0])
    with pytest.raises(ValueError, match="mentation"):
        qsofa(respiration_rate=[1.0], systolic_bp=[1.0])
    with pytest.raises(ValueError, match="shape"):
        aggregate(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="0, 1 or -1"):
        aggregate(np.full((1, 3), 2))


def test_results_are_read_only() -> None:
    batch = qsofa(respiration_rate=[20.0], systolic_bp=[120.0], gcs=[15.0])
    assert isinstance(batch, QsofaBatch)
    assert len(batch) == 1
    with pytest.raises(ValueError, match="read-only"):
        batch.score[0] = 3


# ------------------------------------------------------------------ vectorized vs scalar

vital = st.one_of(st.just(NAN), st.floats(0, 250, allow_nan=False))
gcs_values = st.one_of(st.just(NAN), st.integers(3, 15).map(float))
avpu_values = st.one_of(st.just(NAN), st.integers(0, 4).map(float))
patient = st.tuples(vital, vital, gcs_values, avpu_values)


@settings(max_examples=60, deadline=None)
@given(st.lists(patient, min_size=1, max_size=40))
def test_vectorized_agrees_with_a_scalar_loop(
    rows: list[tuple[float, float, float, float]],
) -> None:
    rr, sbp, gcs, avpu = (np.array(col) for col in zip(*rows, strict=True))
    batch = qsofa(respiration_rate=rr, systolic_bp=sbp, gcs=gcs, consciousness=avpu)
    for i, row in enumerate(rows):
        ref = ref_qsofa(*row)
        assert [None if p < 0 else int(p) for p in batch.points[i]] == list(ref)
        known = [p for p in ref if p is not None]
        assert int(batch.score[i]) == (sum(known) if known else -1)
        assert int(batch.missing_count[i]) == ref.count(None)


@settings(max_examples=60, deadline=None)
@given(patient)
def test_score_is_within_bounds(row: tuple[float, float, float, float]) -> None:
    rr, sbp, gcs, avpu = row
    batch = qsofa(respiration_rate=[rr], systolic_bp=[sbp], gcs=[gcs], consciousness=[avpu])
    score = int(batch.score[0])
    assert score == -1 or 0 <= score <= 3 - int(batch.missing_count[0])


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 100),
    st.floats(0, 30),
    st.floats(40, 250),
    st.floats(0, 100),
    st.integers(3, 15),
    st.integers(0, 12),
)
def test_score_is_monotone_in_each_worsening_parameter(
    rr: float, d_rr: float, sbp: float, d_sbp: float, gcs: int, d_gcs: int
) -> None:
    def score(r: float, s: float, g: int) -> int:
        return int(qsofa(respiration_rate=[r], systolic_bp=[s], gcs=[float(g)]).score[0])

    base = score(rr, sbp, gcs)
    assert score(rr + d_rr, sbp, gcs) >= base  # faster breathing
    assert score(rr, sbp - d_sbp, gcs) >= base  # lower pressure
    assert score(rr, sbp, max(3, gcs - d_gcs)) >= base  # lower GCS


# ------------------------------------------------------------------ modules


def run(
    modules: tuple[Module, ...], target: str, codes: Mapping[str, NDArray[np.float64]], n: int
) -> dict[str, Mapping[str, NDArray[np.float64]]]:
    """Compute ``target`` the way the planner does, with observation inputs given per code."""
    registry = {
        code
        for m in modules
        for i in m.inputs
        if isinstance(i, ObservationInput)
        for code in [i.code]
    }
    graph = ModuleGraph(modules, codes=registry)
    results: dict[str, Mapping[str, NDArray[np.float64]]] = {}
    for module in graph.plan([target]):
        inputs = {}
        for item in module.inputs:
            if isinstance(item, ObservationInput):
                inputs[item.name] = codes.get(item.code, np.full(n, np.nan))
            elif isinstance(item, ResultInput):
                inputs[item.name] = results[item.module][item.output]
        results[module.name] = module.compute(inputs)
    return results


def test_modules_agree_with_the_function() -> None:
    rr = np.array([16.0, 22.0, 30.0, NAN, NAN])
    sbp = np.array([120.0, 100.0, 90.0, 95.0, NAN])
    gcs = np.array([15.0, 15.0, 12.0, NAN, NAN])
    avpu = np.array([0.0, 1.0, NAN, 0.0, NAN])
    out = run(
        qsofa_modules(),
        QSOFA,
        {"9279-1": rr, "8480-6": sbp, "9269-2": gcs, "80288-4": avpu},
        5,
    )[QSOFA]
    batch = qsofa(respiration_rate=rr, systolic_bp=sbp, gcs=gcs, consciousness=avpu)
    np.testing.assert_array_equal(out["score"], np.where(batch.score < 0, NAN, batch.score))
    np.testing.assert_array_equal(out["missing_mask"], batch.missing_mask)
    np.testing.assert_array_equal(out["missing_count"], batch.missing_count)
    np.testing.assert_array_equal(
        out["positive"], np.where(batch.positive < 0, NAN, batch.positive)
    )
    assert out["score"].tolist()[:3] == [0.0, 3.0, 3.0]


def test_module_takes_an_invalid_reading_as_missing() -> None:
    out = run(qsofa_modules(), QSOFA, {"9279-1": np.array([30.0]), "9269-2": np.array([16.0])}, 1)
    assert math.isnan(out["qsofa.mentation"]["points"][0])
    assert out[QSOFA]["missing_mask"][0] == 0b110


def test_modules_register_with_the_default_registry() -> None:
    codes = [spec.code for spec in DEFAULT_REGISTRY]
    modules = qsofa_modules(codes=codes)
    graph = ModuleGraph(modules, codes=codes)
    mentation = graph["qsofa.mentation"]
    read = {i.code for i in mentation.inputs if isinstance(i, ObservationInput)}
    assert read == {QSOFA_CODES["consciousness"], QSOFA_CODES["gcs"]}
    # Without GCS registered, mentation reads ACVPU alone.
    vitals = [spec.code for spec in VITAL_SIGNS]
    alone = ModuleGraph(qsofa_modules(codes=vitals), codes=vitals)["qsofa.mentation"]
    assert {i.code for i in alone.inputs if isinstance(i, ObservationInput)} == {
        QSOFA_CODES["consciousness"]
    }
    assert [m.name for m in graph.plan([QSOFA])][-1] == QSOFA
    with pytest.raises(ValueError, match="needs one of the codes"):
        qsofa_modules(codes=["9279-1"])


def test_module_outputs_declare_units() -> None:
    for module in qsofa_modules():
        for output in module.outputs:
            assert output.unit in {"{score}", "1"}
        assert module.version
