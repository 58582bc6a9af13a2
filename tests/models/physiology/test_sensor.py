"""Tests for the CGM sensor model against simglucose 0.2.11's CGMSensor and CGMNoise."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from numba import njit
from scipy import stats

from medtwin.core.errors import InputError
from medtwin.models.physiology.sensor import KNOT_MIN, SENSOR_PRESETS, CgmSensor, cgm_value

with warnings.catch_warnings():
    # gym 0.9.4, imported by simglucose/__init__.py, uses distutils' LooseVersion.
    warnings.simplefilter("ignore", DeprecationWarning)
    from simglucose.sensor.cgm import SENSOR_PARA_FILE, CGMSensor
    from simglucose.sensor.noise_gen import CGMNoise

PRESETS = ("Dexcom", "GuardianRT", "Navigator")


def simglucose_row(name: str) -> pd.Series:
    table = pd.read_csv(SENSOR_PARA_FILE)
    row: pd.Series = table.loc[table.Name == name].squeeze()
    return row


# --------------------------------------------------------------------------------------
# Presets and parameters
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_copy_simglucose_sensor_params(name: str) -> None:
    row = simglucose_row(name)
    sensor = CgmSensor.preset(name)
    assert sensor.sample_min == row["sample_time"]
    assert sensor.pacf == row["PACF"]
    assert sensor.gamma == row["gamma"]
    assert sensor.lambda_ == row["lambda"]
    assert sensor.delta == row["delta"]
    assert sensor.xi == row["xi"]
    assert sensor.min_mg_dl == row["min"]
    assert sensor.max_mg_dl == row["max"]
    assert (sensor.gain, sensor.offset_mg_dl, sensor.noise) == (1.0, 0.0, True)
    assert set(SENSOR_PRESETS) == set(PRESETS)


def test_preset_overrides_and_default() -> None:
    sensor = CgmSensor.preset("Dexcom", gain=1.05, noise=False)
    assert (sensor.sample_min, sensor.gain, sensor.noise) == (3, 1.05, False)
    assert CgmSensor() == CgmSensor.preset("GuardianRT")


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"sample_min": 0}, "CgmSensor.sample_min"),
        ({"sample_min": 2.5}, "CgmSensor.sample_min"),
        ({"pacf": 1.0}, "CgmSensor.pacf"),
        ({"pacf": 0.0}, "CgmSensor.pacf"),
        ({"delta": 0.0}, "CgmSensor.delta"),
        ({"lambda_": -1.0}, "CgmSensor.lambda_"),
        ({"gain": 0.0}, "CgmSensor.gain"),
        ({"offset_mg_dl": math.nan}, "CgmSensor.offset_mg_dl"),
        ({"min_mg_dl": 600.0}, "CgmSensor.min_mg_dl"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, Any], location: str) -> None:
    with pytest.raises(InputError) as info:
        CgmSensor(**kwargs)
    assert info.value.location == location


def test_unknown_preset() -> None:
    with pytest.raises(InputError, match="GuardianRT"):
        CgmSensor.preset("Libre")


# --------------------------------------------------------------------------------------
# Readings: calibration, clipping, zero-order hold
# --------------------------------------------------------------------------------------


def test_noise_free_reading_is_calibrated_clipped_and_held() -> None:
    sensor = CgmSensor(sample_min=5, gain=1.1, offset_mg_dl=-3.0, noise=False)
    rng = np.random.default_rng(0)
    glucose = rng.uniform(20.0, 650.0, size=(4, 23))
    glucose[0, 0], glucose[1, 5] = 10.0, 700.0  # sampled minutes beyond the limits
    cgm = sensor.measure(glucose)
    assert cgm.shape == glucose.shape
    for minute in range(23):
        sampled = glucose[:, 5 * (minute // 5)]
        expected = np.clip(1.1 * sampled - 3.0, 39.0, 600.0)
        np.testing.assert_array_equal(cgm[:, minute], expected)
    assert cgm[0, 0] == 39.0
    assert cgm[1, 5] == 600.0


def test_measure_timing_and_values_match_simglucose_cgm_sensor() -> None:
    """simglucose's ``CGMSensor.measure`` called each minute on ``Gsub``, given its own noise."""
    seed, minutes = 11, 400
    rng = np.random.default_rng(5)
    gsub = 140.0 + 80.0 * np.sin(np.arange(minutes) / 37.0) + rng.normal(0.0, 5.0, minutes)
    for name in PRESETS:
        reference = CGMSensor.withName(name, seed=seed)
        patient = SimpleNamespace(t=0, observation=SimpleNamespace(Gsub=0.0))
        expected = np.empty(minutes)
        for t in range(minutes):
            patient.t, patient.observation.Gsub = t, gsub[t]
            expected[t] = reference.measure(patient)

        sensor = CgmSensor.preset(name)
        n_samples = -(-minutes // sensor.sample_min)
        draws = np.random.RandomState(seed).randn(sensor.n_knots(n_samples))
        noise = sensor.noise_from_innovations(draws[None, :], n_samples)
        cgm = sensor.measure(gsub[None, :], noise_mg_dl=noise)
        np.testing.assert_allclose(cgm[0], expected, rtol=0.0, atol=1e-9, err_msg=name)


def test_noisy_readings_stay_within_limits() -> None:
    sensor = CgmSensor.preset("Navigator")
    glucose = np.full((200, 300), 35.0)
    glucose[100:] = 598.0
    cgm = sensor.measure(glucose, np.random.default_rng(1))
    assert cgm.min() == 32.0
    assert cgm.max() == 600.0
    assert ((cgm >= 32.0) & (cgm <= 600.0)).all()


def test_cgm_value_compiles_with_numba_and_matches_calibrate() -> None:
    sensor = CgmSensor(gain=0.95, offset_mg_dl=4.0)
    compiled: Any = njit(cgm_value)
    for glucose, noise in ((100.0, 3.0), (20.0, -5.0), (700.0, 1.0)):
        args = (sensor.gain, sensor.offset_mg_dl, sensor.min_mg_dl, sensor.max_mg_dl)
        assert compiled(glucose, noise, *args) == sensor.calibrate(glucose, noise)
    glucose_array, noise_array = np.array([20.0, 100.0, 700.0]), np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(
        sensor.calibrate(glucose_array, noise_array),
        np.clip(0.95 * glucose_array + 4.0 + noise_array, 39.0, 600.0),
    )


def test_measure_input_errors() -> None:
    sensor = CgmSensor()
    with pytest.raises(InputError):
        sensor.measure(np.full(10, 100.0), np.random.default_rng(0))
    with pytest.raises(InputError):
        sensor.measure(np.full((2, 10), 100.0))  # noisy, but no generator
    with pytest.raises(InputError):
        sensor.measure(np.full((2, 10), 100.0), noise_mg_dl=np.zeros((2, 3)))


# --------------------------------------------------------------------------------------
# Noise: simglucose's sequence, statistics, reproducibility
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("seed", [0, 123])
def test_noise_reproduces_simglucose_cgm_noise(name: str, seed: int) -> None:
    """Same standard normal draws in, simglucose's noise sequence out (to rounding)."""
    row = simglucose_row(name)
    reference = CGMNoise(row, seed=seed)
    n = 700
    expected = np.array([next(reference) for _ in range(n)])
    sensor = CgmSensor.preset(name)
    draws = np.random.RandomState(seed).randn(sensor.n_knots(n))
    noise = sensor.noise_from_innovations(draws[None, :], n)
    np.testing.assert_allclose(noise[0], expected, rtol=0.0, atol=1e-12)


def test_n_knots_covers_whole_150_min_blocks() -> None:
    dexcom = CgmSensor.preset("Dexcom")
    assert dexcom.n_knots(0) == 0
    assert dexcom.n_knots(1) == 11
    assert dexcom.n_knots(50) == 11  # 50 * 3 min = 150 min, one block
    assert dexcom.n_knots(51) == 21


def test_samples_are_at_their_true_times_when_period_does_not_divide_150() -> None:
    # simglucose would drift here (37 samples per 150-min block); we keep (k + 1) * 4 min,
    # so every 60 min a sample falls on a knot and equals its Johnson SU value.
    sensor = CgmSensor(sample_min=4)
    draws = np.random.default_rng(2).standard_normal((3, sensor.n_knots(150)))
    noise = sensor.noise_from_innovations(draws, 150)
    latent = draws[:, :1].copy()
    for k in range(1, draws.shape[1]):
        latent = np.hstack([latent, sensor.pacf * (latent[:, -1:] + draws[:, k : k + 1])])
    knots = sensor.xi + sensor.lambda_ * np.sinh((latent - sensor.gamma) / sensor.delta)
    for minutes in range(60, 601, 60):
        np.testing.assert_allclose(
            noise[:, minutes // 4 - 1], knots[:, minutes // KNOT_MIN], atol=1e-9
        )


def test_noise_statistics_at_knots() -> None:
    """At 15-min knots the noise is Johnson SU of simglucose's latent Gaussian.

    The latent recursion ``e_k = PACF (e_{k-1} + w_k)`` has stationary variance
    ``PACF^2 / (1 - PACF^2)`` and lag-1 autocorrelation ``PACF`` (per knot).
    """
    sensor = CgmSensor.preset("GuardianRT")  # 3 samples per knot
    noise = sensor.noise_mg_dl(100_000, 60, np.random.default_rng(42))
    assert noise.shape == (100_000, 60)
    knots = noise[:, 2::3]  # (k + 1) * 5 min = 15, 30, ... 300 min
    # Invert the Johnson SU transform to get the latent Gaussian back at the knots.
    latent = sensor.gamma + sensor.delta * np.arcsinh((knots - sensor.xi) / sensor.lambda_)
    stationary = latent[:, 5:]  # e_0 has variance 1; by knot 6 it is within 1e-3 of 0.961
    variance = 0.49 / 0.51
    assert stationary.mean() == pytest.approx(0.0, abs=0.01)
    assert stationary.var() == pytest.approx(variance, rel=0.01)
    lag1 = np.mean(stationary[:, 1:] * stationary[:, :-1]) / variance
    assert lag1 == pytest.approx(sensor.pacf, abs=0.01)

    # One knot per patient: independent draws of the marginal noise distribution.
    sample = knots[:, -1]
    s = math.sqrt(variance)
    marginal = stats.johnsonsu(sensor.gamma / s, sensor.delta / s, loc=sensor.xi, scale=15.9574)
    assert sensor.knot_distribution().mean() == pytest.approx(marginal.mean())
    assert sample.mean() == pytest.approx(marginal.mean(), abs=0.2)  # SE 0.04 mg/dL
    assert sample.std() == pytest.approx(marginal.std(), rel=0.02)
    assert stats.kstest(sample, marginal.cdf).pvalue > 1e-3
    # Nearly, but not exactly, johnsonsu with the CSV's own shape parameters.
    csv = stats.johnsonsu(sensor.gamma, sensor.delta, loc=sensor.xi, scale=sensor.lambda_)
    assert sample.mean() == pytest.approx(csv.mean(), abs=0.25)
    assert sample.std() == pytest.approx(csv.std(), rel=0.05)


def test_noise_is_reproducible_and_independent_across_patients() -> None:
    sensor = CgmSensor.preset("Dexcom")
    first = sensor.noise_mg_dl(3, 120, np.random.default_rng(7))
    again = sensor.noise_mg_dl(3, 120, np.random.default_rng(7))
    other = sensor.noise_mg_dl(3, 120, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])
    cgm = sensor.measure(np.full((3, 360), 150.0), np.random.default_rng(7))
    np.testing.assert_array_equal(cgm[:, ::3], np.clip(150.0 + first, 39.0, 600.0))


def test_noise_free_sensor_draws_nothing() -> None:
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    noise = CgmSensor(noise=False).noise_mg_dl(2, 10, rng)
    np.testing.assert_array_equal(noise, np.zeros((2, 10)))
    assert rng.bit_generator.state == state
