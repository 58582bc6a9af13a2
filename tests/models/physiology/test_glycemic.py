"""Tests for the glycemic outcome metrics (Battelino 2019, Bergenstal 2018, Kovatchev)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.core.errors import InputError
from medtwin.models.physiology.glycemic import (
    KOVATCHEV_ROOT_MG_DL,
    GlycemicOutcomes,
    glycemic_outcomes,
    kovatchev_f,
)

with warnings.catch_warnings():
    # gym 0.9.4, imported by simglucose/__init__.py, uses distutils' LooseVersion.
    warnings.simplefilter("ignore", DeprecationWarning)
    from simglucose.analysis.risk import risk_index

NAN = math.nan
BANDS = ("tbr54_pct", "tbr70_pct", "tir_pct", "tar180_pct", "tar250_pct")
FIELDS = (
    "n_samples",
    "mean_mg_dl",
    "sd_mg_dl",
    "cv_pct",
    "gmi_pct",
    *BANDS,
    "lbgi",
    "hbgi",
)


def outcomes(*values: float) -> GlycemicOutcomes:
    return glycemic_outcomes(np.array(values, dtype=np.float64))


def value(out: GlycemicOutcomes, field: str) -> float:
    return float(getattr(out, field))


# --------------------------------------------------------------------------------------
# Time in ranges: thresholds on both sides (Battelino 2019)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glucose", "in_bands"),
    [
        (53.99, {"tbr54_pct", "tbr70_pct"}),
        (54.0, {"tbr70_pct"}),
        (54.01, {"tbr70_pct"}),
        (69.99, {"tbr70_pct"}),
        (70.0, {"tir_pct"}),
        (70.01, {"tir_pct"}),
        (179.99, {"tir_pct"}),
        (180.0, {"tir_pct"}),
        (180.01, {"tar180_pct"}),
        (249.99, {"tar180_pct"}),
        (250.0, {"tar180_pct"}),
        (250.01, {"tar180_pct", "tar250_pct"}),
    ],
)
def test_band_edges(glucose: float, in_bands: set[str]) -> None:
    out = outcomes(glucose, glucose)
    for band in BANDS:
        assert value(out, band) == (100.0 if band in in_bands else 0.0), band


def test_bands_count_shares_of_valid_samples() -> None:
    out = outcomes(40.0, 60.0, 100.0, 150.0, NAN, 200.0, 300.0, NAN, 120.0)
    assert value(out, "n_samples") == 7.0
    assert value(out, "tbr54_pct") == pytest.approx(100 / 7)
    assert value(out, "tbr70_pct") == pytest.approx(200 / 7)
    assert value(out, "tir_pct") == pytest.approx(300 / 7)
    assert value(out, "tar180_pct") == pytest.approx(200 / 7)
    assert value(out, "tar250_pct") == pytest.approx(100 / 7)


# --------------------------------------------------------------------------------------
# Known values worked by hand
# --------------------------------------------------------------------------------------


def test_mean_sd_cv_gmi_by_hand() -> None:
    out = outcomes(100.0, 200.0)
    assert value(out, "mean_mg_dl") == 150.0
    # Sample SD (ddof=1): sqrt((50^2 + 50^2) / 1).
    assert value(out, "sd_mg_dl") == pytest.approx(math.sqrt(5000.0))
    assert value(out, "cv_pct") == pytest.approx(100.0 * math.sqrt(5000.0) / 150.0)
    assert value(out, "gmi_pct") == pytest.approx(3.31 + 0.02392 * 150.0)  # 6.898 %
    assert value(out, "tir_pct") == 50.0
    assert value(out, "tar180_pct") == 50.0


def test_kovatchev_risk_by_hand() -> None:
    # ln 40 = 3.688879; ^1.084 = 4.116480; f = 1.509 * (4.116480 - 5.381) = -1.908160;
    # r = 10 f^2 = 36.4108 (to the 4 digits carried by hand).
    r40 = 10.0 * (1.509 * (math.log(40.0) ** 1.084 - 5.381)) ** 2
    assert r40 == pytest.approx(36.41, abs=0.01)
    r180 = 10.0 * (1.509 * (math.log(180.0) ** 1.084 - 5.381)) ** 2
    assert r180 == pytest.approx(7.73, abs=0.01)
    out = outcomes(40.0, 180.0, NAN)
    # Means over all valid samples (2), not over the low or high ones only.
    assert value(out, "lbgi") == pytest.approx(r40 / 2, rel=1e-12)
    assert value(out, "hbgi") == pytest.approx(r180 / 2, rel=1e-12)


def test_risk_is_zero_at_the_root_of_f_and_one_sided_around_it() -> None:
    root = math.exp(5.381 ** (1 / 1.084))
    assert root == pytest.approx(112.517, abs=1e-3)
    assert root == pytest.approx(KOVATCHEV_ROOT_MG_DL, rel=1e-15)
    assert abs(float(kovatchev_f(np.array(root)))) < 1e-12
    at = outcomes(root, root)
    assert value(at, "lbgi") < 1e-20
    assert value(at, "hbgi") < 1e-20
    below = outcomes(root - 0.01)
    assert value(below, "lbgi") > 0.0
    assert value(below, "hbgi") == 0.0
    above = outcomes(root + 0.01)
    assert value(above, "lbgi") == 0.0
    assert value(above, "hbgi") > 0.0
    # At 112.5 mg/dL risk is tiny but not zero: f(112.5) is about -3e-4.
    assert 0.0 < value(outcomes(112.5), "lbgi") < 1e-3


# --------------------------------------------------------------------------------------
# Shapes, NaN and invalid input
# --------------------------------------------------------------------------------------


def test_one_trace_gives_0d_arrays() -> None:
    out = outcomes(100.0, 150.0)
    for field in FIELDS:
        assert getattr(out, field).shape == (), field


@pytest.mark.filterwarnings("error")
def test_nan_samples_are_ignored_and_empty_patients_get_nan() -> None:
    g = np.array(
        [
            [NAN, 100.0, NAN, 200.0],
            [100.0, 200.0, NAN, NAN],
            [NAN, NAN, NAN, NAN],
            [NAN, 60.0, NAN, NAN],
        ]
    )
    out = glycemic_outcomes(g)
    reference = outcomes(100.0, 200.0)
    np.testing.assert_array_equal(out.n_samples, [2.0, 2.0, 0.0, 1.0])
    for field in FIELDS:
        column = getattr(out, field)
        assert column.shape == (4,)
        assert column[0] == pytest.approx(value(reference, field), rel=1e-12), field
        assert column[1] == pytest.approx(value(reference, field), rel=1e-12), field
        if field != "n_samples":
            assert math.isnan(column[2]), field
    # One sample: no SD, but the rest is defined.
    assert math.isnan(out.sd_mg_dl[3])
    assert math.isnan(out.cv_pct[3])
    assert out.mean_mg_dl[3] == 60.0
    assert out.tbr70_pct[3] == 100.0


def test_axis_selects_the_time_axis() -> None:
    rng = np.random.default_rng(3)
    g = rng.uniform(40.0, 400.0, size=(5, 30))
    by_row = glycemic_outcomes(g)
    by_column = glycemic_outcomes(g.T, axis=0)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(by_column, field), getattr(by_row, field), rtol=1e-12)


@pytest.mark.parametrize(
    ("glucose", "location"),
    [
        ([100.0, 0.0, -5.0], "glucose_mg_dl[1]"),
        ([100.0, NAN, -5.0], "glucose_mg_dl[2]"),
        ([[100.0, 90.0], [NAN, -1.0]], "glucose_mg_dl[1, 1]"),
        ([100.0, 0.5], "glucose_mg_dl[1]"),
        ([math.inf, 100.0], "glucose_mg_dl[0]"),
    ],
)
def test_invalid_glucose_names_the_first_bad_index(glucose: list[float], location: str) -> None:
    with pytest.raises(InputError) as info:
        glycemic_outcomes(np.array(glucose))
    assert info.value.location == location


def test_bad_axis_and_scalar_are_input_errors() -> None:
    with pytest.raises(InputError):
        glycemic_outcomes(np.array(100.0))
    with pytest.raises(InputError):
        glycemic_outcomes(np.ones((2, 3)) * 100.0, axis=2)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

_glucose = st.one_of(st.floats(1.0, 600.0), st.just(NAN))


@settings(max_examples=200, deadline=None)
@given(st.lists(_glucose, min_size=1, max_size=60), st.floats(0.0, 100.0))
def test_properties(values: list[float], rise: float) -> None:
    g = np.array(values)
    out = glycemic_outcomes(g)
    if np.isnan(g).all():
        assert math.isnan(value(out, "lbgi"))
        return
    parts = value(out, "tbr70_pct") + value(out, "tir_pct") + value(out, "tar180_pct")
    assert parts == pytest.approx(100.0)
    assert value(out, "tbr54_pct") <= value(out, "tbr70_pct")
    assert value(out, "tar250_pct") <= value(out, "tar180_pct")
    assert value(out, "lbgi") >= 0.0
    assert value(out, "hbgi") >= 0.0
    assert value(out, "mean_mg_dl") == pytest.approx(float(np.nanmean(g)))
    # Raising every value cannot make hypoglycemia risk worse, nor hyperglycemia risk better.
    raised = glycemic_outcomes(g + rise)
    assert value(raised, "lbgi") <= value(out, "lbgi") + 1e-12
    assert value(raised, "hbgi") >= value(out, "hbgi") - 1e-12


# --------------------------------------------------------------------------------------
# Against simglucose.analysis.risk.risk_index
# --------------------------------------------------------------------------------------


def test_risk_matches_simglucose_up_to_its_denominator() -> None:
    """simglucose's ``risk_index(BG, horizon)`` uses the same constants but averages ``rl``
    over the samples with f < 0 only (``np.mean(rl)`` of the subset ``fBG[fBG < 0]``), and
    ``rh`` over those with f > 0, giving 0 where there are none.  Kovatchev's indices
    average over all samples, so ours = simglucose's * (samples on that side) / (all samples).
    """
    rng = np.random.default_rng(20190801)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        trace = np.exp(rng.normal(math.log(140.0), 0.45, size=n)).clip(20.0, 600.0)
        sg_lbgi, sg_hbgi, _ = risk_index(trace, n)
        out = outcomes(*trace)
        f = kovatchev_f(trace)
        n_low, n_high = int((f < 0).sum()), int((f > 0).sum())
        assert value(out, "lbgi") == pytest.approx(sg_lbgi * n_low / n, rel=1e-12, abs=1e-15)
        assert value(out, "hbgi") == pytest.approx(sg_hbgi * n_high / n, rel=1e-12, abs=1e-15)


def test_risk_equals_simglucose_when_all_samples_are_on_one_side() -> None:
    low = np.linspace(40.0, 110.0, 37)
    high = np.linspace(115.0, 400.0, 41)
    assert value(outcomes(*low), "lbgi") == pytest.approx(risk_index(low, low.size)[0])
    assert value(outcomes(*high), "hbgi") == pytest.approx(risk_index(high, high.size)[1])
