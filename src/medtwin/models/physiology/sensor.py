"""Continuous glucose monitor (CGM) sensor model, after simglucose 0.2.11.

The noise model is the one of simglucose (J. Xie, MIT licence;
``simglucose/sensor/noise_gen.py``), itself after A. Facchinetti et al. and
M. Breton & B. Kovatchev, *Analysis, modeling, and simulation of the accuracy of
continuous glucose sensors*, J. Diabetes Sci. Technol. 2(5):853-862, 2008:

1. a latent Gaussian sequence on a 15-min grid (the "knots"):
   ``e_0 = w_0``, ``e_k = PACF * (e_{k-1} + w_k)`` with ``w_k ~ N(0, 1)`` i.i.d.;
2. Johnson SU transform of every knot: ``xi + lambda * sinh((e - gamma) / delta)`` (mg/dL);
3. cubic (not-a-knot) spline interpolation to the sensor's sample times, one spline
   per block of 10 knot intervals (150 min); consecutive blocks share their end knot,
   so the noise is continuous but its slope can jump every 150 min.

What matches simglucose and what does not:

- The recursion in 1. is simglucose's, kept as is although it is not the unit-variance
  AR(1) ``phi e + sqrt(1 - phi^2) w``: its stationary variance is ``PACF^2 / (1 - PACF^2)``
  (0.961 for 0.7; ``e_0`` has variance 1) and its lag-1 autocorrelation is ``PACF``
  *per 15 min*, not per sensor sample.  At a knot, the stationary noise is therefore
  Johnson SU with ``a = gamma / s``, ``b = delta / s``, ``loc = xi``, ``scale = lambda``
  (``s`` the latent SD; see ``knot_distribution``); between knots the spline smooths it.
- Sensor sample ``k`` (0-based) takes the spline at ``(k + 1) * sample_min`` on the knot
  clock, as simglucose does (it drops the value at 0).  When ``sample_min`` divides
  150 min (all presets: 1, 3, 5) the sequence is simglucose's, given the same standard
  normal draws, to rounding (< 1e-12 mg/dL; tested against
  ``simglucose.sensor.noise_gen.CGMNoise``).
  When it does not (e.g. 4 min), simglucose evaluates each block at ``j * sample_min``,
  ``j = 1 .. floor(150 / sample_min)``, and starts the next block, so its noise clock
  runs slow (37 samples per 150 min at 4 min); here sample ``k`` is always at its true
  time ``(k + 1) * sample_min``.
- Random numbers come from a ``numpy.random.Generator`` (simglucose seeds a legacy
  ``RandomState`` per sensor), so seeded sequences differ from simglucose's; the
  draws are one ``(n_patients, n_knots)`` standard normal array per call.
- Calibration error (``gain``, ``offset_mg_dl``) is an addition; simglucose has none
  (``gain = 1``, ``offset_mg_dl = 0`` reproduce it).

A reading is ``clip(gain * glucose + offset_mg_dl + noise, min_mg_dl, max_mg_dl)``
at minutes 0, ``sample_min``, ``2 * sample_min``, ... and held in between, as in
simglucose's ``CGMSensor.measure``.  The glucose given is what the sensor sees
(simglucose feeds it subcutaneous glucose, ``Gsub``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray
from scipy.interpolate import make_interp_spline
from scipy.stats import johnsonsu

from medtwin.core.errors import InputError

__all__ = ["KNOT_MIN", "SENSOR_PRESETS", "CgmSensor", "cgm_value"]

FloatArray = NDArray[np.float64]
_F = TypeVar("_F", float, NDArray[np.float64])

KNOT_MIN = 15
"""Spacing of the latent noise knots, min (simglucose ``CGMNoise.MDL_SAMPLE_TIME``)."""
_KNOTS_PER_BLOCK = 10  # knot intervals per interpolation block (simglucose ``PRECOMPUTE``)
_BLOCK_MIN = KNOT_MIN * _KNOTS_PER_BLOCK
_BLOCK_KNOT_TIMES = np.arange(_KNOTS_PER_BLOCK + 1, dtype=np.float64) * KNOT_MIN

# Copied from simglucose 0.2.11 params/sensor_params.csv (MIT licence, (c) Jinyu Xie):
# Name, PACF, gamma, lambda, delta, xi, sample_time (min), min, max (mg/dL).
SENSOR_PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        name: MappingProxyType(
            {
                "pacf": 0.7,
                "gamma": -0.5444,
                "lambda_": 15.9574,
                "delta": 1.6898,
                "xi": -5.47,
                "sample_min": sample_min,
                "min_mg_dl": min_mg_dl,
                "max_mg_dl": 600.0,
            }
        )
        for name, sample_min, min_mg_dl in (
            ("Dexcom", 3, 39.0),
            ("GuardianRT", 5, 39.0),
            ("Navigator", 1, 32.0),
        )
    }
)
"""simglucose's sensor presets, keyed by name; values are ``CgmSensor`` field values."""


def cgm_value(
    glucose: _F, noise: _F, gain: float, offset_mg_dl: float, min_mg_dl: float, max_mg_dl: float
) -> _F:
    """Reading ``clip(gain * glucose + offset_mg_dl + noise, min_mg_dl, max_mg_dl)``, mg/dL.

    Plain arithmetic on floats or arrays, so a Numba kernel can call it.  NaN propagates.
    """
    raw = gain * glucose + offset_mg_dl + noise
    # No typing.cast here: Numba cannot type it (local annotations are never evaluated).
    value: _F = np.minimum(np.maximum(raw, min_mg_dl), max_mg_dl)
    return value


@dataclass(frozen=True, slots=True)
class CgmSensor:
    """A CGM sensor: sampling, Johnson SU noise, calibration error and clipping.

    Defaults are simglucose's ``GuardianRT`` row; ``CgmSensor.preset`` gives the others.
    """

    sample_min: int = 5
    """Sampling period, min (whole minutes; readings are held in between)."""
    pacf: float = 0.7
    """Lag-1 autocorrelation of the latent Gaussian per 15-min knot, in (0, 1)."""
    gamma: float = -0.5444
    """Johnson SU shape ``gamma`` (scipy ``a``)."""
    lambda_: float = 15.9574
    """Johnson SU scale ``lambda``, mg/dL (scipy ``scale``)."""
    delta: float = 1.6898
    """Johnson SU shape ``delta`` (scipy ``b``), > 0."""
    xi: float = -5.47
    """Johnson SU location ``xi``, mg/dL (scipy ``loc``)."""
    gain: float = 1.0
    """Multiplicative calibration error, > 0."""
    offset_mg_dl: float = 0.0
    """Additive calibration error, mg/dL."""
    min_mg_dl: float = 39.0
    """Lowest reading, mg/dL."""
    max_mg_dl: float = 600.0
    """Highest reading, mg/dL."""
    noise: bool = True
    """False: noise-free sensor (calibration error and clipping still apply)."""

    def __post_init__(self) -> None:
        """Refuse parameters the model cannot use."""

        def check(ok: bool, field: str, reason: str) -> None:
            if not ok:
                raise InputError(reason, f"CgmSensor.{field}")

        sample_ok = isinstance(self.sample_min, int | np.integer) and not isinstance(
            self.sample_min, bool
        )
        check(sample_ok and self.sample_min >= 1, "sample_min", "must be a whole number >= 1 min")
        for field in ("pacf", "gamma", "lambda_", "delta", "xi", "gain", "offset_mg_dl"):
            check(math.isfinite(getattr(self, field)), field, "must be finite")
        # pacf = 0 would freeze simglucose's latent recursion at 0 after the first knot.
        check(0.0 < self.pacf < 1.0, "pacf", "must be in (0, 1)")
        check(self.lambda_ > 0.0, "lambda_", "must be > 0")
        check(self.delta > 0.0, "delta", "must be > 0")
        check(self.gain > 0.0, "gain", "must be > 0")
        limits_ok = math.isfinite(self.min_mg_dl) and math.isfinite(self.max_mg_dl)
        check(limits_ok and self.min_mg_dl < self.max_mg_dl, "min_mg_dl", "must be < max_mg_dl")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CgmSensor:
        """simglucose's ``Dexcom``, ``GuardianRT`` or ``Navigator`` sensor, with overrides."""
        if name not in SENSOR_PRESETS:
            raise InputError(f"unknown sensor, expected one of {sorted(SENSOR_PRESETS)}", "name")
        return dataclasses.replace(cls(), **{**SENSOR_PRESETS[name], **overrides})

    def calibrate(self, glucose: _F, noise: _F) -> _F:
        """Reading from true glucose and noise (mg/dL): see ``cgm_value``."""
        return cgm_value(
            glucose, noise, self.gain, self.offset_mg_dl, self.min_mg_dl, self.max_mg_dl
        )

    def knot_distribution(self) -> Any:
        """Stationary distribution of the noise at a 15-min knot (frozen ``scipy.stats``).

        The latent SD is ``s = pacf / sqrt(1 - pacf^2)``, so the knot noise is
        ``johnsonsu(gamma / s, delta / s, loc=xi, scale=lambda_)``.
        """
        s = self.pacf / math.sqrt(1.0 - self.pacf**2)
        return johnsonsu(self.gamma / s, self.delta / s, loc=self.xi, scale=self.lambda_)

    def n_knots(self, n_samples: int) -> int:
        """Latent standard normal draws per patient that ``n_samples`` sensor samples need."""
        if n_samples <= 0:
            return 0
        blocks = -(-n_samples * self.sample_min // _BLOCK_MIN)
        return _KNOTS_PER_BLOCK * blocks + 1

    def noise_mg_dl(self, n_patients: int, n_samples: int, rng: np.random.Generator) -> FloatArray:
        """Noise (mg/dL) of successive sensor samples, shape ``(n_patients, n_samples)``.

        Zeros, drawing nothing from ``rng``, when ``noise`` is False.
        """
        if n_patients < 0 or n_samples < 0:
            raise InputError("counts must be >= 0", "n_patients, n_samples")
        if not self.noise or n_samples == 0:
            return np.zeros((n_patients, n_samples))
        innovations = rng.standard_normal((n_patients, self.n_knots(n_samples)))
        return self.noise_from_innovations(innovations, n_samples)

    def noise_from_innovations(self, innovations: FloatArray, n_samples: int) -> FloatArray:
        """Noise (mg/dL) of ``n_samples`` sensor samples from given standard normal draws.

        ``innovations`` is ``(n_patients, n_knots(n_samples))`` (extra columns are
        ignored); ``noise_mg_dl`` draws it.  Deterministic, so the same draws as a
        simglucose ``RandomState`` give simglucose's sequence.
        """
        w = np.asarray(innovations, dtype=np.float64)
        needed = self.n_knots(n_samples)
        if w.ndim != 2 or w.shape[1] < needed:
            raise InputError(f"need shape (n_patients, >= {needed}), got {w.shape}", "innovations")
        n_patients = w.shape[0]
        if n_samples == 0:
            return np.zeros((n_patients, 0))

        # simglucose's recursion with its grouping, so the latent knots agree to the last bit.
        latent = np.empty((n_patients, needed))
        latent[:, 0] = w[:, 0]
        for k in range(1, needed):
            latent[:, k] = self.pacf * (latent[:, k - 1] + w[:, k])
        knots = self.xi + self.lambda_ * np.sinh((latent - self.gamma) / self.delta)

        # Sample k sits at (k + 1) * sample_min; a time on a block boundary belongs to the
        # block that ends there, as in simglucose.
        t = (np.arange(n_samples, dtype=np.int64) + 1) * self.sample_min
        block = (t - 1) // _BLOCK_MIN
        offset = (t - block * _BLOCK_MIN).astype(np.float64)
        # The spline is linear in its knot values: weights[k] maps block knots to sample k.
        weights = make_interp_spline(_BLOCK_KNOT_TIMES, np.eye(_KNOTS_PER_BLOCK + 1), k=3)(offset)
        out = np.empty((n_patients, n_samples))
        starts = np.searchsorted(block, np.arange(int(block[-1]) + 2))
        for b in range(int(block[-1]) + 1):
            lo, hi = int(starts[b]), int(starts[b + 1])
            first = b * _KNOTS_PER_BLOCK
            out[:, lo:hi] = knots[:, first : first + _KNOTS_PER_BLOCK + 1] @ weights[lo:hi].T
        return out

    def measure(
        self,
        glucose_mg_dl: FloatArray,
        rng: np.random.Generator | None = None,
        *,
        noise_mg_dl: FloatArray | None = None,
    ) -> FloatArray:
        """CGM reading each minute (mg/dL) of glucose sampled each minute, ``(n_patients, T)``.

        Samples at minutes 0, ``sample_min``, ... and holds each reading until the next.
        The noise of the ``ceil(T / sample_min)`` samples comes from ``noise_mg_dl`` if
        given (shape ``(n_patients, ceil(T / sample_min))``), else is drawn from ``rng``.
        """
        g = np.asarray(glucose_mg_dl, dtype=np.float64)
        if g.ndim != 2:
            raise InputError(f"need shape (n_patients, T), got {g.shape}", "glucose_mg_dl")
        n_patients, n_minutes = g.shape
        sampled = g[:, :: self.sample_min]
        if noise_mg_dl is not None:
            noise = np.asarray(noise_mg_dl, dtype=np.float64)
            if noise.shape != sampled.shape:
                raise InputError(f"need shape {sampled.shape}, got {noise.shape}", "noise_mg_dl")
        elif self.noise and rng is None:
            raise InputError("a noisy sensor needs a random generator", "rng")
        else:
            noise = self.noise_mg_dl(n_patients, sampled.shape[1], cast(np.random.Generator, rng))
        readings = self.calibrate(sampled, noise)
        held: FloatArray = np.repeat(readings, self.sample_min, axis=1)[:, :n_minutes]
        return held
