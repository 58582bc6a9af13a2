"""SOFA (Vincent 1996; Sepsis-3 table, Singer 2016) against an independent scalar reference."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from medtwin.data.codes import DEFAULT_REGISTRY, VITAL_SIGNS
from medtwin.models.modules import Module, ModuleGraph, ObservationInput, ResultInput
from medtwin.models.scores.sepsis_modules import LOCAL_CODES, SOFA, SOFA_CODES, sofa_modules
from medtwin.models.scores.sofa import (
    COMPONENTS,
    SofaBatch,
    aggregate,
    cardiovascular_points,
    cns_points,
    coagulation_points,
    liver_points,
    pf_ratio,
    renal_points,
    respiration_points,
    sofa,
)

NAN = math.nan

# A patient who scores 0 everywhere, every input known (support and drugs: none).
NORMAL: dict[str, float] = {
    "pao2": 95.0,
    "fio2": 21.0,
    "respiratory_support": 0.0,
    "platelets": 250.0,
    "bilirubin": 0.6,
    "mean_arterial_pressure": 85.0,
    "dopamine": 0.0,
    "dobutamine": 0.0,
    "epinephrine": 0.0,
    "norepinephrine": 0.0,
    "gcs": 15.0,
    "creatinine": 0.9,
    "urine_output": 1500.0,
}


def batch(rows: list[dict[str, float]]) -> SofaBatch:
    return sofa(**{k: np.array([r[k] for r in rows]) for k in NORMAL})


def one(**kw: float) -> dict[str, Any]:
    return batch([{**NORMAL, **kw}]).result(0)


# ------------------------------------------------------------------ independent reference
# Values are compared after snapping to 9 decimals, as the module docstring documents.


def snap(x: float) -> float:
    return x if math.isnan(x) else round(x, 9)


def ref_respiration(pao2: float, fio2: float, support: float) -> tuple[int | None, bool]:
    if math.isnan(pao2) or math.isnan(fio2):
        return None, False
    ratio = snap(pao2 * 100 / fio2)
    if ratio >= 400:
        return 0, False
    if ratio >= 300:
        return 1, False
    if ratio >= 200:
        return 2, False
    if math.isnan(support):
        return 2, True
    if support == 0:
        return 2, False
    return (3 if ratio >= 100 else 4), False


def ref_coagulation(plt: float) -> int | None:
    plt = snap(plt)
    if math.isnan(plt):
        return None
    return 4 if plt < 20 else 3 if plt < 50 else 2 if plt < 100 else 1 if plt < 150 else 0


def ref_liver(bili: float) -> int | None:
    bili = snap(bili)
    if math.isnan(bili):
        return None
    return 0 if bili < 1.2 else 1 if bili < 2.0 else 2 if bili < 6.0 else 3 if bili < 12 else 4


def ref_cardiovascular(
    map_: float, dop: float, dob: float, epi: float, nor: float
) -> tuple[int | None, bool]:
    map_, dop, dob, epi, nor = (snap(x) for x in (map_, dop, dob, epi, nor))
    parts: list[tuple[int | None, int]] = [
        (None if math.isnan(map_) else int(map_ < 70), 1),
        (None if math.isnan(dop) else 4 if dop > 15 else 3 if dop > 5 else 2 if dop > 0 else 0, 4),
        (None if math.isnan(dob) else 2 if dob > 0 else 0, 2),
        (None if math.isnan(epi) else 4 if epi > 0.1 else 3 if epi > 0 else 0, 4),
        (None if math.isnan(nor) else 4 if nor > 0.1 else 3 if nor > 0 else 0, 4),
    ]
    known = [p for p, _ in parts if p is not None]
    if not known:
        return None, False
    worst = max(known)
    return worst, any(p is None and cap > worst for p, cap in parts)


def ref_cns(gcs: float) -> int | None:
    if math.isnan(gcs):
        return None
    return 0 if gcs == 15 else 1 if gcs >= 13 else 2 if gcs >= 10 else 3 if gcs >= 6 else 4


def ref_renal(creat: float, urine: float) -> tuple[int | None, bool]:
    creat, urine = snap(creat), snap(urine)
    c = None
    if not math.isnan(creat):
        c = 0 if creat < 1.2 else 1 if creat < 2 else 2 if creat < 3.5 else 3 if creat < 5 else 4
    u = None if math.isnan(urine) else 4 if urine < 200 else 3 if urine < 500 else 0
    known = [p for p in (c, u) if p is not None]
    if not known:
        return None, False
    worst = max(known)
    return worst, (c is None or u is None) and worst < 4


# ------------------------------------------------------------------ cut points, both sides


@pytest.mark.parametrize(
    ("pao2", "fio2", "support", "points", "lower"),
    [
        (400.0, 100.0, 1.0, 0, False),
        (399.9, 100.0, 1.0, 1, False),
        (300.0, 100.0, 1.0, 1, False),
        (299.9, 100.0, 1.0, 2, False),
        (120.0, 40.0, 1.0, 1, False),  # exactly 300 from a 40 % FiO2
        (200.0, 100.0, 1.0, 2, False),
        (199.9, 100.0, 1.0, 3, False),
        (199.9, 100.0, 0.0, 2, False),  # no support: at most 2
        (199.9, 100.0, NAN, 2, True),  # support unknown: 2 is a lower bound
        (100.0, 100.0, 1.0, 3, False),
        (99.9, 100.0, 1.0, 4, False),
        (99.9, 100.0, 0.0, 2, False),
        (55.0, 60.0, 1.0, 4, False),
        (84.0, 21.0, 0.0, 0, False),  # 400 on air
        (83.9, 21.0, NAN, 1, False),  # support irrelevant above 200
        (NAN, 21.0, 1.0, -1, False),
        (90.0, NAN, 1.0, -1, False),
    ],
)
def test_respiration_cut_points(
    pao2: float, fio2: float, support: float, points: int, lower: bool
) -> None:
    got, got_lower = respiration_points([pao2], [fio2], [support])
    assert (int(got[0]), bool(got_lower[0])) == (points, lower)


@pytest.mark.parametrize(
    ("platelets", "points"),
    [(150, 0), (149.9, 1), (100, 1), (99.9, 2), (50, 2), (49.9, 3), (20, 3), (19.9, 4), (0, 4)],
)
def test_coagulation_cut_points(platelets: float, points: int) -> None:
    assert coagulation_points([platelets])[0] == points


@pytest.mark.parametrize(
    ("bilirubin", "points"),
    [
        (1.19, 0),
        (1.2, 1),
        (1.9, 1),
        (1.95, 1),
        (2.0, 2),
        (5.9, 2),
        (6.0, 3),
        (11.9, 3),
        (12.0, 4),
        (20.0, 4),
    ],
)
def test_liver_cut_points(bilirubin: float, points: int) -> None:
    assert liver_points([bilirubin])[0] == points


@pytest.mark.parametrize(
    ("kw", "points"),
    [
        ({"mean_arterial_pressure": 70.0}, 0),
        ({"mean_arterial_pressure": 69.9}, 1),
        ({"dopamine": 0.01}, 2),
        ({"dopamine": 5.0}, 2),  # Vincent: dopamine <= 5 scores 2
        ({"dopamine": 5.01}, 3),
        ({"dopamine": 15.0}, 3),
        ({"dopamine": 15.01}, 4),
        ({"dobutamine": 0.5}, 2),
        ({"dobutamine": 20.0}, 2),  # any dose
        ({"epinephrine": 0.1}, 3),
        ({"epinephrine": 0.11}, 4),
        ({"norepinephrine": 0.01}, 3),
        ({"norepinephrine": 0.1}, 3),
        ({"norepinephrine": 0.100001}, 4),
        ({"mean_arterial_pressure": 60.0, "dobutamine": 5.0, "norepinephrine": 0.05}, 3),
    ],
)
def test_cardiovascular_cut_points(kw: dict[str, float], points: int) -> None:
    args = {k: NORMAL[k] for k in ("dopamine", "dobutamine", "epinephrine", "norepinephrine")}
    args["mean_arterial_pressure"] = NORMAL["mean_arterial_pressure"]
    args.update(kw)
    got, lower = cardiovascular_points(**{k: [v] for k, v in args.items()})
    assert (int(got[0]), bool(lower[0])) == (points, False)


@pytest.mark.parametrize(
    ("gcs", "points"),
    [(15, 0), (14, 1), (13, 1), (12, 2), (10, 2), (9, 3), (6, 3), (5, 4), (3, 4)],
)
def test_cns_cut_points(gcs: int, points: int) -> None:
    assert cns_points([float(gcs)])[0] == points


@pytest.mark.parametrize(
    ("creatinine", "urine", "points"),
    [
        (1.19, 1500, 0),
        (1.2, 1500, 1),
        (1.9, 1500, 1),
        (2.0, 1500, 2),
        (3.4, 1500, 2),
        (3.5, 1500, 3),
        (4.9, 1500, 3),
        (5.0, 1500, 4),
        (0.9, 500, 0),
        (0.9, 499, 3),
        (0.9, 200, 3),
        (0.9, 199, 4),
        (2.5, 450, 3),  # the worse of creatinine and urine output
        (5.5, 450, 4),
    ],
)
def test_renal_cut_points(creatinine: float, urine: float, points: int) -> None:
    got, lower = renal_points([creatinine], [urine])
    assert (int(got[0]), bool(lower[0])) == (points, False)


def test_unit_conversion_error_does_not_cross_a_cut_point() -> None:
    # 34.2 umol/L of bilirubin is 2.0 mg/dL; float division may land a hair below.
    assert liver_points([2.0 - 1e-12])[0] == 2
    assert coagulation_points([150.0 - 1e-12])[0] == 0
    assert renal_points([5.0 - 1e-12], [NAN])[0][0] == 4
    assert pf_ratio([120.0], [40.0])[0] == 300.0


def test_all_worst_and_all_normal() -> None:
    assert one()["score"] == 0
    assert one()["complete"] is True
    worst = one(
        pao2=50,
        fio2=100,
        respiratory_support=1,
        platelets=10,
        bilirubin=15,
        norepinephrine=0.3,
        gcs=3,
        creatinine=6,
        urine_output=100,
    )
    assert worst["score"] == 24
    assert set(worst["components"].values()) == {4}


# ------------------------------------------------------------------ missing data


def test_missing_components_are_flagged_and_the_total_is_over_the_rest() -> None:
    res = batch([{**NORMAL, "platelets": 40.0, "gcs": NAN, "bilirubin": NAN}])
    assert int(res.score[0]) == 3
    assert res.missing[0].tolist() == [False, False, True, False, True, False]
    assert int(res.missing_count[0]) == 2
    assert int(res.missing_mask[0]) == (1 << 2) | (1 << 4)
    assert not res.complete[0]
    assert res.result(0)["missing"] == ["liver", "cns"]


def test_optional_inputs_left_out_make_lower_bounds() -> None:
    res = sofa(
        pao2=[80.0],
        fio2=[50.0],  # ratio 160: 3 or 4 with support, unknown here
        platelets=[200.0],
        bilirubin=[0.5],
        mean_arterial_pressure=[75.0],
        gcs=[15.0],
        creatinine=[1.0],
    )
    r = res.result(0)
    assert r["components"] == {
        "respiration": 2,
        "coagulation": 0,
        "liver": 0,
        "cardiovascular": 0,
        "cns": 0,
        "renal": 0,
    }
    assert r["lower_bound"] == ["respiration", "cardiovascular", "renal"]
    assert int(res.lower_bound_mask[0]) == 0b101001
    assert r["complete"] is False


def test_known_worst_is_not_a_lower_bound() -> None:
    cv, lower = cardiovascular_points([NAN], norepinephrine=[0.3])
    assert (int(cv[0]), bool(lower[0])) == (4, False)
    renal, lower = renal_points([6.0], [NAN])
    assert (int(renal[0]), bool(lower[0])) == (4, False)
    renal, lower = renal_points([NAN], [150.0])
    assert (int(renal[0]), bool(lower[0])) == (4, False)


def test_nothing_known_scores_null() -> None:
    nan_row = dict.fromkeys(NORMAL, NAN)
    res = batch([nan_row])
    assert int(res.score[0]) == -1
    assert res.result(0)["score"] is None
    assert int(res.missing_mask[0]) == 0b111111
    assert int(res.lower_bound_mask[0]) == 0


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fio2": 0.4}, "fio2"),  # a fraction where % is expected
        ({"fio2": 101.0}, "fio2"),
        ({"gcs": 2.0}, "gcs"),
        ({"gcs": 14.5}, "gcs"),
        ({"platelets": -1.0}, "platelets"),
        ({"norepinephrine": -0.1}, "norepinephrine"),
        ({"respiratory_support": 2.0}, "respiratory_support"),
    ],
)
def test_invalid_values_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        one(**kw)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="length"):
        sofa(**{**{k: np.array([v]) for k, v in NORMAL.items()}, "gcs": np.array([15.0, 15.0])})
    with pytest.raises(ValueError, match="shape"):
        aggregate(np.zeros((1, 5)), np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        aggregate(np.full((1, 6), 5), np.zeros((1, 6)))


# ------------------------------------------------------------------ vectorized vs scalar


def _opt(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.one_of(st.just(NAN), strategy)


row_strategy = st.fixed_dictionaries(
    {
        "pao2": _opt(st.floats(20, 600)),
        "fio2": _opt(st.floats(21, 100)),
        "respiratory_support": _opt(st.sampled_from([0.0, 1.0])),
        "platelets": _opt(st.floats(0, 600)),
        "bilirubin": _opt(st.floats(0, 30)),
        "mean_arterial_pressure": _opt(st.floats(20, 150)),
        "dopamine": _opt(st.sampled_from([0.0, 2.0, 5.0, 10.0, 15.0, 20.0])),
        "dobutamine": _opt(st.sampled_from([0.0, 5.0])),
        "epinephrine": _opt(st.sampled_from([0.0, 0.05, 0.1, 0.3])),
        "norepinephrine": _opt(st.floats(0, 1)),
        "gcs": _opt(st.integers(3, 15).map(float)),
        "creatinine": _opt(st.floats(0.1, 12)),
        "urine_output": _opt(st.floats(0, 4000)),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(row_strategy, min_size=1, max_size=30))
def test_vectorized_agrees_with_a_scalar_loop(rows: list[dict[str, float]]) -> None:
    res = batch(rows)
    for i, r in enumerate(rows):
        expected = [
            ref_respiration(r["pao2"], r["fio2"], r["respiratory_support"]),
            (ref_coagulation(r["platelets"]), False),
            (ref_liver(r["bilirubin"]), False),
            ref_cardiovascular(
                r["mean_arterial_pressure"],
                r["dopamine"],
                r["dobutamine"],
                r["epinephrine"],
                r["norepinephrine"],
            ),
            (ref_cns(r["gcs"]), False),
            ref_renal(r["creatinine"], r["urine_output"]),
        ]
        got = [
            (None if p < 0 else int(p), bool(b))
            for p, b in zip(res.points[i], res.lower_bound[i], strict=True)
        ]
        assert got == expected, r
        known = [p for p, _ in expected if p is not None]
        assert int(res.score[i]) == (sum(known) if known else -1)


@settings(max_examples=60, deadline=None)
@given(row_strategy)
def test_score_is_within_bounds(row: dict[str, float]) -> None:
    res = batch([row])
    score = int(res.score[0])
    assert score == -1 or 0 <= score <= 4 * (6 - int(res.missing_count[0]))
    assert ((res.points[0] >= -1) & (res.points[0] <= 4)).all()


# (input, strategy of a worsening step, direction: +1 worse when larger, -1 worse when smaller)
WORSENING = {
    "pao2": -1,
    "fio2": +1,
    "platelets": -1,
    "bilirubin": +1,
    "mean_arterial_pressure": -1,
    "dopamine": +1,
    "dobutamine": +1,
    "epinephrine": +1,
    "norepinephrine": +1,
    "gcs": -1,
    "creatinine": +1,
    "urine_output": -1,
}
LIMITS = {"fio2": (21.0, 100.0), "gcs": (3.0, 15.0)}


@settings(max_examples=80, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "pao2": st.floats(20, 600),
            "fio2": st.floats(21, 100),
            "respiratory_support": st.sampled_from([0.0, 1.0]),
            "platelets": st.floats(0, 600),
            "bilirubin": st.floats(0, 30),
            "mean_arterial_pressure": st.floats(20, 150),
            "dopamine": st.floats(0, 25),
            "dobutamine": st.floats(0, 10),
            "epinephrine": st.floats(0, 0.5),
            "norepinephrine": st.floats(0, 0.5),
            "gcs": st.integers(3, 15).map(float),
            "creatinine": st.floats(0.1, 12),
            "urine_output": st.floats(0, 4000),
        }
    ),
    st.sampled_from(sorted(WORSENING)),
    st.floats(0, 500),
)
def test_score_is_monotone_in_each_worsening_parameter(
    row: dict[str, float], name: str, step: float
) -> None:
    worse = dict(row)
    worse[name] = row[name] + WORSENING[name] * step
    low, high = LIMITS.get(name, (0.0, math.inf))
    worse[name] = min(max(worse[name], low), high)
    if name == "gcs":
        worse[name] = float(round(worse[name]))
    assert int(batch([worse]).score[0]) >= int(batch([row]).score[0])


# ------------------------------------------------------------------ modules


def run(
    modules: tuple[Module, ...], codes: Mapping[str, NDArray[np.float64]], n: int
) -> dict[str, Mapping[str, NDArray[np.float64]]]:
    """Compute the SOFA aggregate the way the planner does, observations given per code."""
    registry = {i.code for m in modules for i in m.inputs if isinstance(i, ObservationInput)}
    graph = ModuleGraph(modules, codes=registry)
    results: dict[str, Mapping[str, NDArray[np.float64]]] = {}
    for module in graph.plan([SOFA]):
        inputs = {}
        for item in module.inputs:
            if isinstance(item, ObservationInput):
                inputs[item.name] = codes.get(item.code, np.full(n, np.nan))
            elif isinstance(item, ResultInput):
                inputs[item.name] = results[item.module][item.output]
        results[module.name] = module.compute(inputs)
    return results


def test_modules_agree_with_the_function() -> None:
    rows = [
        NORMAL,
        {**NORMAL, "pao2": 70.0, "fio2": 80.0, "respiratory_support": 1.0, "platelets": 40.0},
        {**NORMAL, "gcs": NAN, "creatinine": 2.2, "urine_output": NAN, "norepinephrine": NAN},
        dict.fromkeys(NORMAL, NAN),
    ]
    data = {SOFA_CODES[k]: np.array([r[k] for r in rows]) for k in NORMAL}
    out = run(sofa_modules(), data, len(rows))[SOFA]
    expected = batch(rows)
    np.testing.assert_array_equal(
        out["score"], np.where(expected.score < 0, NAN, expected.score.astype(float))
    )
    np.testing.assert_array_equal(out["missing_mask"], expected.missing_mask)
    np.testing.assert_array_equal(out["lower_bound_mask"], expected.lower_bound_mask)
    np.testing.assert_array_equal(out["complete"], expected.complete)
    np.testing.assert_array_equal(out["missing_count"], expected.missing_count)


def test_modules_read_the_worst_value_of_a_day() -> None:
    modules = {m.name: m for m in sofa_modules()}
    aggregations = {
        i.name: i.aggregate
        for m in modules.values()
        for i in m.inputs
        if isinstance(i, ObservationInput)
    }
    assert aggregations["platelets"] == "min"
    assert aggregations["bilirubin"] == "max"
    assert aggregations["gcs"] == "min"
    assert aggregations["pao2"] == aggregations["fio2"] == "latest"
    assert all(
        i.window_s == 86400.0
        for m in modules.values()
        for i in m.inputs
        if isinstance(i, ObservationInput)
    )


def test_module_takes_invalid_readings_as_missing() -> None:
    data = {
        "2703-7": np.array([80.0]),
        "3150-0": np.array([0.5]),  # a fraction sent as %
        "9269-2": np.array([2.0]),
        "777-3": np.array([-5.0]),
    }
    out = run(sofa_modules(), data, 1)
    assert out[SOFA]["missing_mask"][0] == 0b111111


def test_codes_restrict_the_modules_to_registered_inputs() -> None:
    vitals = [spec.code for spec in VITAL_SIGNS]
    with pytest.raises(ValueError, match="no SOFA component"):
        sofa_modules(codes=vitals)  # none of PaO2, labs, GCS, MAP
    labs = [*vitals, "777-3", "1975-2", "2160-0"]
    modules = sofa_modules(codes=labs)
    assert sorted(m.name for m in modules) == [SOFA, "sofa.coagulation", "sofa.liver", "sofa.renal"]
    ModuleGraph(modules, codes=labs)
    out = run(modules, {"777-3": np.array([30.0]), "2160-0": np.array([0.8])}, 1)[SOFA]
    assert out["score"][0] == 3
    assert out["missing_mask"][0] == 0b011101  # respiration, liver, cardiovascular, cns
    full = sofa_modules(codes=[*SOFA_CODES.values()])
    assert len(full) == 7
    # The default registry holds every SOFA input.
    registered = [spec.code for spec in DEFAULT_REGISTRY]
    assert set(SOFA_CODES.values()) <= set(registered)
    assert len(sofa_modules(codes=registered)) == 7
    assert set(LOCAL_CODES.values()) <= {
        i.code for m in full for i in m.inputs if isinstance(i, ObservationInput)
    }


def test_batch_is_read_only_and_sized() -> None:
    res = batch([NORMAL, NORMAL])
    assert len(res) == 2
    assert res.points.shape == (2, len(COMPONENTS))
    with pytest.raises(ValueError, match="read-only"):
        res.points[0, 0] = 1
