"""Tests for the vectorized NEWS2 score against the RCP 2017 chart."""

from __future__ import annotations

import json
import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import medtwin.models.scores as scores_pkg
from medtwin.models.scores import ACVPU, BANDS, INPUT_CODES, PARAMETERS, News2Batch, news2
from medtwin.models.scores.news2 import _round_half_away

NAN = math.nan

# A patient who scores 0 on every parameter (Scale 1, on air).
NORMAL: dict[str, float] = {
    "respiration_rate": 16.0,
    "spo2": 98.0,
    "fio2": 21.0,
    "systolic_bp": 120.0,
    "pulse": 70.0,
    "consciousness": 0.0,
    "temperature": 37.0,
}
INPUTS = tuple(NORMAL)
AIR = 21.0
OXYGEN = 40.0


def score_rows(rows: list[dict[str, float]], scale: Any = 1) -> News2Batch:
    """Score a list of input dicts in one batch."""
    arrays = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in INPUTS}
    return news2(**arrays, spo2_scale=scale)


def score_one(scale: int = 1, /, **overrides: float) -> dict[str, object]:
    """Score a single otherwise-normal patient and return its JSON result."""
    return score_rows([{**NORMAL, **overrides}], scale).result(0)


def sub(result: dict[str, object], param: str) -> object:
    subscores = result["subscores"]
    assert isinstance(subscores, dict)
    return subscores[param]


# --------------------------------------------------------------------------------------
# Independent scalar reference (plain Python, if/elif straight from the chart)
# --------------------------------------------------------------------------------------


def _present(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def _round(x: float, quantum: str = "1") -> Decimal:
    """Round half away from zero using the decimal representation of ``x``."""
    return Decimal(repr(x)).quantize(Decimal(quantum), rounding=ROUND_HALF_UP)


def ref_respiration(x: float) -> int:
    v = _round(x)
    if v <= 8:
        return 3
    elif v <= 11:
        return 1
    elif v <= 20:
        return 0
    elif v <= 24:
        return 2
    else:
        return 3


def ref_spo2_scale1(x: float) -> int:
    v = _round(x)
    if v <= 91:
        return 3
    elif v <= 93:
        return 2
    elif v <= 95:
        return 1
    else:
        return 0


def ref_spo2_scale2(x: float, oxygen: bool | None) -> int | None:
    v = _round(x)
    if v <= 83:
        return 3
    elif v <= 85:
        return 2
    elif v <= 87:
        return 1
    elif v <= 92:
        return 0
    elif oxygen is None:
        return None  # undeterminable
    elif not oxygen:
        return 0
    elif v <= 94:
        return 1
    elif v <= 96:
        return 2
    else:
        return 3


def ref_on_oxygen(fio2: float) -> bool:
    return _round(fio2) > 21


def ref_systolic(x: float) -> int:
    v = _round(x)
    if v <= 90:
        return 3
    elif v <= 100:
        return 2
    elif v <= 110:
        return 1
    elif v <= 219:
        return 0
    else:
        return 3


def ref_pulse(x: float) -> int:
    v = _round(x)
    if v <= 40:
        return 3
    elif v <= 50:
        return 1
    elif v <= 90:
        return 0
    elif v <= 110:
        return 1
    elif v <= 130:
        return 2
    else:
        return 3


def ref_consciousness(x: float) -> int:
    return 0 if ACVPU[int(x)] == "A" else 3


def ref_temperature(x: float) -> int:
    v = _round(x, "0.1")
    if v <= Decimal("35.0"):
        return 3
    elif v <= Decimal("36.0"):
        return 1
    elif v <= Decimal("38.0"):
        return 0
    elif v <= Decimal("39.0"):
        return 1
    else:
        return 2


def ref_news2(row: dict[str, float], scale: int) -> dict[str, object]:
    """Scalar NEWS2 for one patient, in the ``News2Batch.result`` JSON shape."""
    missing = [
        p
        for p, k in zip(PARAMETERS, INPUTS, strict=True)
        if not _present(row[k if p != "air_or_oxygen" else "fio2"])
    ]
    oxygen = ref_on_oxygen(row["fio2"]) if _present(row["fio2"]) else None
    subs: dict[str, int | None] = dict.fromkeys(PARAMETERS)
    if _present(row["respiration_rate"]):
        subs["respiration_rate"] = ref_respiration(row["respiration_rate"])
    if _present(row["spo2"]):
        if scale == 1:
            subs["spo2"] = ref_spo2_scale1(row["spo2"])
        else:
            subs["spo2"] = ref_spo2_scale2(row["spo2"], oxygen)
    if oxygen is not None:
        subs["air_or_oxygen"] = 2 if oxygen else 0
    if _present(row["systolic_bp"]):
        subs["systolic_bp"] = ref_systolic(row["systolic_bp"])
    if _present(row["pulse"]):
        subs["pulse"] = ref_pulse(row["pulse"])
    if _present(row["consciousness"]):
        subs["consciousness"] = ref_consciousness(row["consciousness"])
    if _present(row["temperature"]):
        subs["temperature"] = ref_temperature(row["temperature"])

    partial = sum(s for s in subs.values() if s is not None)
    score: int | None = None
    band: str | None = None
    if all(s is not None for s in subs.values()):
        score = partial
        if score >= 7:
            band = "high"
        elif score >= 5:
            band = "medium"
        elif any(s == 3 for s in subs.values()):
            band = "low-medium"
        else:
            band = "low"
    return {
        "score": score,
        "partial_score": partial,
        "band": band,
        "subscores": subs,
        "missing": missing,
    }


def test_reference_sanity() -> None:
    assert ref_news2(NORMAL, 1) == {
        "score": 0,
        "partial_score": 0,
        "band": "low",
        "subscores": dict.fromkeys(PARAMETERS, 0),
        "missing": [],
    }


# --------------------------------------------------------------------------------------
# Constants and package surface
# --------------------------------------------------------------------------------------


def test_constants() -> None:
    assert PARAMETERS == (
        "respiration_rate",
        "spo2",
        "air_or_oxygen",
        "systolic_bp",
        "pulse",
        "consciousness",
        "temperature",
    )
    assert sorted(INPUT_CODES.values()) == sorted(PARAMETERS)
    assert INPUT_CODES["3150-0"] == "air_or_oxygen"
    assert INPUT_CODES["8310-5"] == "temperature"
    assert ACVPU == ("A", "C", "V", "P", "U")
    assert BANDS == ("low", "low-medium", "medium", "high")
    assert set(scores_pkg.__all__) == {
        "ACVPU",
        "BANDS",
        "INPUT_CODES",
        "PARAMETERS",
        "News2Batch",
        "news2",
    }


# --------------------------------------------------------------------------------------
# Cut points, both sides, every parameter
# --------------------------------------------------------------------------------------

RESPIRATION = [
    (0, 3),
    (8, 3),
    (9, 1),
    (11, 1),
    (12, 0),
    (20, 0),
    (21, 2),
    (24, 2),
    (25, 3),
    (60, 3),
]
SPO2_SCALE1 = [(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
SPO2_SCALE2_BELOW_93 = [
    (50, 3),
    (83, 3),
    (84, 2),
    (85, 2),
    (86, 1),
    (87, 1),
    (88, 0),
    (92, 0),
]
SPO2_SCALE2_AIR_HIGH = [(93, 0), (94, 0), (95, 0), (96, 0), (97, 0), (100, 0)]
SPO2_SCALE2_OXYGEN_HIGH = [(93, 1), (94, 1), (95, 2), (96, 2), (97, 3), (100, 3)]
FIO2 = [(0, 0), (21, 0), (21.4, 0), (21.5, 2), (22, 2), (24, 2), (100, 2)]
SYSTOLIC = [
    (40, 3),
    (90, 3),
    (91, 2),
    (100, 2),
    (101, 1),
    (110, 1),
    (111, 0),
    (219, 0),
    (220, 3),
    (300, 3),
]
PULSE = [
    (20, 3),
    (40, 3),
    (41, 1),
    (50, 1),
    (51, 0),
    (90, 0),
    (91, 1),
    (110, 1),
    (111, 2),
    (130, 2),
    (131, 3),
    (220, 3),
]
CONSCIOUSNESS = [(0, 0), (1, 3), (2, 3), (3, 3), (4, 3)]
TEMPERATURE = [
    (30.0, 3),
    (35.0, 3),
    (35.1, 1),
    (36.0, 1),
    (36.1, 0),
    (38.0, 0),
    (38.1, 1),
    (39.0, 1),
    (39.1, 2),
    (42.0, 2),
]


@pytest.mark.parametrize(("value", "points"), RESPIRATION)
def test_respiration_cut_points(value: float, points: int) -> None:
    assert sub(score_one(respiration_rate=value), "respiration_rate") == points


@pytest.mark.parametrize("fio2", [AIR, OXYGEN])
@pytest.mark.parametrize(("value", "points"), SPO2_SCALE1)
def test_spo2_scale1_cut_points(value: float, points: int, fio2: float) -> None:
    """Scale 1 ignores air/oxygen for the SpO2 sub-score."""
    assert sub(score_one(1, spo2=value, fio2=fio2), "spo2") == points


@pytest.mark.parametrize("fio2", [AIR, OXYGEN, NAN])
@pytest.mark.parametrize(("value", "points"), SPO2_SCALE2_BELOW_93)
def test_spo2_scale2_below_93(value: float, points: int, fio2: float) -> None:
    """Below 93 % the Scale 2 score does not depend on air/oxygen (even unknown)."""
    assert sub(score_one(2, spo2=value, fio2=fio2), "spo2") == points


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE2_AIR_HIGH)
def test_spo2_scale2_on_air(value: float, points: int) -> None:
    result = score_one(2, spo2=value, fio2=AIR)
    assert sub(result, "spo2") == points
    assert sub(result, "air_or_oxygen") == 0


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE2_OXYGEN_HIGH)
def test_spo2_scale2_on_oxygen(value: float, points: int) -> None:
    result = score_one(2, spo2=value, fio2=OXYGEN)
    assert sub(result, "spo2") == points
    assert sub(result, "air_or_oxygen") == 2
    assert result["score"] == points + 2


@pytest.mark.parametrize(("value", "points"), FIO2)
def test_air_or_oxygen(value: float, points: int) -> None:
    assert sub(score_one(fio2=value), "air_or_oxygen") == points


@pytest.mark.parametrize(("value", "points"), SYSTOLIC)
def test_systolic_cut_points(value: float, points: int) -> None:
    assert sub(score_one(systolic_bp=value), "systolic_bp") == points


@pytest.mark.parametrize(("value", "points"), PULSE)
def test_pulse_cut_points(value: float, points: int) -> None:
    assert sub(score_one(pulse=value), "pulse") == points


@pytest.mark.parametrize(("value", "points"), CONSCIOUSNESS)
def test_consciousness(value: float, points: int) -> None:
    assert sub(score_one(consciousness=value), "consciousness") == points


@pytest.mark.parametrize(("value", "points"), TEMPERATURE)
def test_temperature_cut_points(value: float, points: int) -> None:
    assert sub(score_one(temperature=value), "temperature") == points


@pytest.mark.parametrize(
    ("table", "param", "ref"),
    [
        (RESPIRATION, "respiration_rate", ref_respiration),
        (SPO2_SCALE1, "spo2", ref_spo2_scale1),
        (SYSTOLIC, "systolic_bp", ref_systolic),
        (PULSE, "pulse", ref_pulse),
        (TEMPERATURE, "temperature", ref_temperature),
    ],
)
def test_reference_agrees_with_tables(table: list[tuple[float, int]], param: str, ref: Any) -> None:
    """The scalar reference is itself checked against the hand-written chart tables."""
    assert [ref(v) for v, _ in table] == [p for _, p in table], param


def test_reference_scale2_agrees_with_tables() -> None:
    for oxygen in (False, True, None):
        for v, p in SPO2_SCALE2_BELOW_93:
            assert ref_spo2_scale2(v, oxygen) == p
    for v, p in SPO2_SCALE2_AIR_HIGH:
        assert ref_spo2_scale2(v, False) == p
        assert ref_spo2_scale2(v, None) is None
    for v, p in SPO2_SCALE2_OXYGEN_HIGH:
        assert ref_spo2_scale2(v, True) == p


# --------------------------------------------------------------------------------------
# Rounding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "points"),
    [
        ("respiration_rate", 20.49, 0),
        ("respiration_rate", 20.5, 2),
        ("respiration_rate", 24.49, 2),
        ("respiration_rate", 24.5, 3),
        ("respiration_rate", 8.49, 3),
        ("respiration_rate", 8.5, 1),
        ("respiration_rate", 11.5, 0),
        ("spo2", 91.49, 3),
        ("spo2", 91.5, 2),
        ("spo2", 95.5, 0),
        ("systolic_bp", 90.49, 3),
        ("systolic_bp", 90.5, 2),
        ("systolic_bp", 219.49, 0),
        ("systolic_bp", 219.5, 3),
        ("pulse", 40.5, 1),
        ("pulse", 50.5, 0),
        ("pulse", 90.49, 0),
        ("pulse", 90.5, 1),
        ("pulse", 130.49, 2),
        ("pulse", 130.5, 3),
        ("temperature", 35.04, 3),
        ("temperature", 35.05, 1),
        ("temperature", 36.04, 1),
        ("temperature", 36.05, 0),
        ("temperature", 38.04, 0),
        ("temperature", 38.05, 1),
        ("temperature", 39.04, 1),
        ("temperature", 39.05, 2),
        ("temperature", 38.0999, 1),
        ("fio2", 21.49, 0),
        ("fio2", 21.5, 2),
    ],
)
def test_rounding_before_scoring(param: str, value: float, points: int) -> None:
    key = "air_or_oxygen" if param == "fio2" else param
    assert sub(score_one(**{param: value}), key) == points


def test_scale2_rounding_at_93() -> None:
    assert sub(score_one(2, spo2=92.49, fio2=OXYGEN), "spo2") == 0
    assert sub(score_one(2, spo2=92.5, fio2=OXYGEN), "spo2") == 1
    assert sub(score_one(2, spo2=96.5, fio2=OXYGEN), "spo2") == 3
    assert sub(score_one(2, spo2=92.5, fio2=NAN), "spo2") is None


def test_float_error_is_absorbed() -> None:
    # The traps: Python's round() sees the binary value just below the half, numpy's
    # round() is half-to-even, and computed values land a hair below x.x5.
    assert round(38.05, 1) == 38.0
    assert float(np.round(38.05, 1)) == 38.0
    assert (32.3 + 0.05) * 10 < 323.5
    below_half = 39.04999999999999  # e.g. a value converted from Fahrenheit
    assert below_half * 10 < 390.5
    vals = np.array([38.05, 38.04, 35.05, 36.05, 39.05, 32.3 + 0.05, below_half, -38.05])
    got = _round_half_away(vals, decimals=1)
    np.testing.assert_array_equal(got, [381, 380, 351, 361, 391, 324, 391, -381])
    assert sub(score_one(temperature=below_half), "temperature") == 2
    assert sub(score_one(temperature=38.1 - 0.05), "temperature") == 1


def test_round_half_away_from_zero_whole_numbers() -> None:
    vals = np.array([0.5, 1.5, 2.5, 20.5, 20.49, -0.5, -2.5, -2.49, 0.0, NAN])
    got = _round_half_away(vals)
    np.testing.assert_array_equal(got, [1, 2, 3, 21, 20, -1, -3, -2, 0, NAN])


# --------------------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------------------

BAND_CASES: list[tuple[dict[str, float], int, str]] = [
    ({}, 0, "low"),
    ({"temperature": 38.5}, 1, "low"),
    ({"respiration_rate": 22, "temperature": 38.5, "pulse": 95}, 4, "low"),
    ({"consciousness": 2}, 3, "low-medium"),  # aggregate 3 from a single 3
    ({"systolic_bp": 85, "temperature": 38.5}, 4, "low-medium"),  # 4 with a 3
    ({"respiration_rate": 22, "temperature": 38.5, "pulse": 120}, 5, "medium"),  # 5, no 3
    ({"consciousness": 1, "respiration_rate": 22}, 5, "medium"),  # 5 with a 3
    ({"respiration_rate": 22, "pulse": 120, "spo2": 95, "temperature": 38.5}, 6, "medium"),
    ({"pulse": 135, "respiration_rate": 22, "temperature": 38.5}, 6, "medium"),
    ({"pulse": 135, "respiration_rate": 22, "spo2": 93}, 7, "high"),  # 7
    ({"respiration_rate": 22, "pulse": 120, "spo2": 95, "temperature": 39.5}, 7, "high"),
    ({"consciousness": 4, "spo2": 80, "systolic_bp": 80, "pulse": 150}, 12, "high"),
    (
        {
            "respiration_rate": 30,
            "spo2": 85,
            "fio2": 60,
            "systolic_bp": 80,
            "pulse": 150,
            "consciousness": 4,
            "temperature": 34,
        },
        20,
        "high",
    ),
]


@pytest.mark.parametrize(("overrides", "score", "band"), BAND_CASES)
def test_bands(overrides: dict[str, float], score: int, band: str) -> None:
    result = score_one(**overrides)
    assert result["score"] == score
    assert result["partial_score"] == score
    assert result["band"] == band


def test_band_boundaries_vectorized() -> None:
    rows = [{**NORMAL, **o} for o, _, _ in BAND_CASES]
    batch = score_rows(rows)
    assert batch.score.tolist() == [s for _, s, _ in BAND_CASES]
    assert [BANDS[b] for b in batch.band] == [b for _, _, b in BAND_CASES]


# --------------------------------------------------------------------------------------
# Missing parameters
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMETERS)
def test_single_missing_parameter(param: str) -> None:
    key = "fio2" if param == "air_or_oxygen" else param
    abnormal = {
        "respiration_rate": 22.0,
        "spo2": 93.0,
        "fio2": OXYGEN,
        "systolic_bp": 95.0,
        "pulse": 45.0,
        "consciousness": 1.0,
        "temperature": 35.5,
    }
    full = score_one(**abnormal)
    assert full["score"] == 2 + 2 + 2 + 2 + 1 + 3 + 1
    result = score_one(**{**abnormal, key: NAN})
    full_subs = full["subscores"]
    assert isinstance(full_subs, dict)
    assert result["score"] is None
    assert result["band"] is None
    assert result["missing"] == [param]
    assert sub(result, param) is None
    assert result["partial_score"] == 13 - full_subs[param]


def test_fio2_nan_is_missing_not_air() -> None:
    result = score_one(1, fio2=NAN)
    assert result["score"] is None
    assert result["partial_score"] == 0
    assert result["missing"] == ["air_or_oxygen"]
    assert sub(result, "air_or_oxygen") is None
    assert sub(result, "spo2") == 0  # Scale 1 SpO2 is determinable without air/oxygen


@pytest.mark.parametrize("spo2", [93.0, 95.0, 97.0, 100.0, 92.5])
def test_scale2_undeterminable(spo2: float) -> None:
    result = score_one(2, spo2=spo2, fio2=NAN, pulse=95)
    assert sub(result, "spo2") is None
    assert sub(result, "air_or_oxygen") is None
    assert result["missing"] == ["air_or_oxygen"]  # SpO2 is present, just undeterminable
    assert result["score"] is None
    assert result["band"] is None
    assert result["partial_score"] == 1


def test_scale2_determinable_without_oxygen_status() -> None:
    result = score_one(2, spo2=85, fio2=NAN)
    assert sub(result, "spo2") == 2
    assert result["missing"] == ["air_or_oxygen"]
    assert result["partial_score"] == 2
    assert result["score"] is None


def test_all_missing() -> None:
    result = score_one(**dict.fromkeys(INPUTS, NAN))
    assert result == {
        "score": None,
        "partial_score": 0,
        "band": None,
        "subscores": dict.fromkeys(PARAMETERS),
        "missing": list(PARAMETERS),
    }


def test_infinite_counts_as_missing() -> None:
    result = score_one(pulse=math.inf, temperature=-math.inf)
    assert result["missing"] == ["pulse", "temperature"]
    assert result["score"] is None


def test_missing_matrix_without_explicit_missing() -> None:
    """A batch constructed without ``missing`` derives it from the sub-scores."""
    b = score_rows([{**NORMAL, "pulse": NAN}])
    bare = News2Batch(
        subscores=b.subscores, score=b.score, partial_score=b.partial_score, band=b.band
    )
    assert bare.result(0)["missing"] == ["pulse"]


# --------------------------------------------------------------------------------------
# Output shape, dtypes, JSON, validation
# --------------------------------------------------------------------------------------


def test_batch_arrays() -> None:
    batch = score_rows([NORMAL, {**NORMAL, "pulse": NAN}, {**NORMAL, "consciousness": 3}])
    assert len(batch) == 3
    assert batch.subscores.shape == (3, 7)
    assert batch.subscores.dtype == np.int16
    assert batch.score.dtype == np.int16
    assert batch.partial_score.dtype == np.int16
    assert batch.band.dtype == np.int8
    assert batch.score.tolist() == [0, -1, 3]
    assert batch.partial_score.tolist() == [0, 0, 3]
    assert batch.band.tolist() == [0, -1, 1]
    assert batch.subscores[1].tolist() == [0, 0, 0, 0, -1, 0, 0]
    with pytest.raises(ValueError, match="read-only"):
        batch.score[0] = 5


def test_result_json_shape() -> None:
    batch = score_rows([{**NORMAL, "respiration_rate": 26, "pulse": NAN}])
    result = batch.result(0)
    assert list(result) == ["score", "partial_score", "band", "subscores", "missing"]
    subs = result["subscores"]
    assert isinstance(subs, dict)
    assert list(subs) == list(PARAMETERS)
    assert result == json.loads(json.dumps(result))
    assert result == {
        "score": None,
        "partial_score": 3,
        "band": None,
        "subscores": {**dict.fromkeys(PARAMETERS, 0), "respiration_rate": 3, "pulse": None},
        "missing": ["pulse"],
    }
    for value in subs.values():
        assert value is None or type(value) is int
    assert type(result["partial_score"]) is int
    full = score_rows([NORMAL]).result(0)
    assert type(full["score"]) is int
    assert full["band"] == "low"


def test_empty_batch() -> None:
    batch = news2(**{k: np.array([]) for k in INPUTS}, spo2_scale=1)
    assert len(batch) == 0
    assert batch.subscores.shape == (0, 7)


def test_scale_array_and_scalar() -> None:
    rows = [{**NORMAL, "spo2": 95.0, "fio2": OXYGEN}] * 2
    assert score_rows(rows, np.array([1, 2])).subscores[:, 1].tolist() == [1, 2]
    assert score_rows(rows, 2).subscores[:, 1].tolist() == [2, 2]
    assert score_rows(rows, np.int64(1)).subscores[:, 1].tolist() == [1, 1]


@pytest.mark.parametrize("scale", [0, 3, np.array([1, 3]), np.array([1.0, NAN]), np.array([1])])
def test_bad_scale(scale: Any) -> None:
    with pytest.raises(ValueError, match="spo2_scale"):
        score_rows([NORMAL, NORMAL], scale)


@pytest.mark.parametrize("code", [5.0, -1.0, 1.5])
def test_bad_consciousness(code: float) -> None:
    with pytest.raises(ValueError, match="consciousness"):
        score_one(consciousness=code)


def test_shape_mismatch() -> None:
    arrays = {k: np.array([NORMAL[k]] * 2) for k in INPUTS}
    arrays["pulse"] = np.array([70.0])
    with pytest.raises(ValueError, match="pulse"):
        news2(**arrays, spo2_scale=1)
    arrays = {k: np.array([[NORMAL[k]]]) for k in INPUTS}
    with pytest.raises(ValueError, match="1-D"):
        news2(**arrays, spo2_scale=1)


# --------------------------------------------------------------------------------------
# Property: vectorized == scalar reference; batch == row by row
# --------------------------------------------------------------------------------------


def _measure(lo: int, hi: int, places: int) -> st.SearchStrategy[float]:
    """Values in [lo, hi] with ``places`` decimals (as recorded clinically), or NaN."""
    q = 10**places
    return st.one_of(
        st.just(NAN),
        st.integers(lo * q, hi * q).map(lambda k: k / q),
        st.integers(lo, hi).map(float),
    )


ROW = st.fixed_dictionaries(
    {
        "respiration_rate": _measure(0, 60, 2),
        "spo2": _measure(60, 100, 2),
        "fio2": st.one_of(st.sampled_from([21.0, 20.5, 21.49, 21.5, 22.0]), _measure(0, 100, 1)),
        "systolic_bp": _measure(40, 300, 2),
        "pulse": _measure(20, 220, 2),
        "consciousness": st.sampled_from([NAN, 0.0, 1.0, 2.0, 3.0, 4.0]),
        "temperature": _measure(30, 44, 2),
    }
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(ROW, st.sampled_from([1, 2])), min_size=1, max_size=40))
def test_matches_scalar_reference(rows: list[tuple[dict[str, float], int]]) -> None:
    batch = score_rows([r for r, _ in rows], np.array([s for _, s in rows]))
    for i, (row, scale) in enumerate(rows):
        assert batch.result(i) == ref_news2(row, scale), (row, scale)


def _random_rows(n: int, seed: int) -> tuple[list[dict[str, float]], np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "respiration_rate": np.round(rng.uniform(0, 45, n), 1),
        "spo2": np.round(rng.uniform(75, 100, n), 1),
        "fio2": np.round(rng.choice([21.0, 28.0, 40.0, 21.5, 21.4], n), 1),
        "systolic_bp": np.round(rng.uniform(60, 240, n), 1),
        "pulse": np.round(rng.uniform(25, 160, n), 1),
        "consciousness": rng.integers(0, 5, n).astype(np.float64),
        "temperature": np.round(rng.uniform(33, 41, n), 2),
    }
    for k in INPUTS:
        cols[k][rng.random(n) < 0.03] = NAN
    scale = rng.integers(1, 3, n)
    rows = [{k: float(cols[k][i]) for k in INPUTS} for i in range(n)]
    return rows, scale


def test_batch_of_10000_equals_row_by_row() -> None:
    rows, scale = _random_rows(10_000, seed=2017)
    batch = score_rows(rows, scale)
    assert len(batch) == 10_000
    assert set(batch.band.tolist()) == {-1, 0, 1, 2, 3}
    for i, row in enumerate(rows):
        alone = score_rows([row], int(scale[i]))
        np.testing.assert_array_equal(alone.subscores[0], batch.subscores[i])
        assert alone.score[0] == batch.score[i]
        assert alone.partial_score[0] == batch.partial_score[i]
        assert alone.band[0] == batch.band[i]
        assert batch.result(i) == ref_news2(row, int(scale[i]))
