"""Artifact detectors: soft limits, rate of change and the Hampel filter.

Every detector returns a boolean mask of the values it suspects, shaped like the
values; nothing is dropped or changed. Batches are ``(S, N)`` (streams ×
samples, NaN-padded, see :mod:`.streams`); 1-D input is one stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

from medtwin.core.errors import InputError
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry
from medtwin.devices.conditioning.quality import flag_bits
from medtwin.devices.conditioning.streams import (
    US_PER_S,
    BoolArray,
    FloatArray,
    IntArray,
    as_times,
    as_values,
    per_stream,
)
from medtwin.devices.conditioning.streams import restore as _restore

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "MAD_TO_SD",
    "ArtifactMasks",
    "ArtifactRule",
    "HampelResult",
    "detect_artifacts",
    "hampel_filter",
    "rate_of_change_mask",
    "soft_limit_mask",
]

#: 1 / Φ⁻¹(3/4): the median absolute deviation times this estimates a normal SD.
MAD_TO_SD = 1.4826

#: Per LOINC code: (largest plausible change per minute, Hampel scale floor), canonical units.
#: The floor keeps integer-valued readings (SpO2 %, beats/min) from a zero MAD.
DEFAULT_RATE_LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "8867-4": (25.0, 2.0),  # heart rate, /min
        "59408-5": (10.0, 1.0),  # SpO2, %
        "9279-1": (10.0, 1.0),  # respiratory rate, /min
        "8480-6": (40.0, 3.0),  # systolic BP, mm[Hg]
        "8462-4": (30.0, 2.0),  # diastolic BP, mm[Hg]
        "8310-5": (0.5, 0.1),  # body temperature, Cel
        "2339-0": (5.0, 3.0),  # glucose, mg/dL
    }
)


@dataclass(frozen=True, slots=True)
class ArtifactRule:
    """Detector settings for one code, in its canonical unit.

    ``low``/``high``: soft limits; ``max_rate_per_min``: largest plausible
    change per minute; Hampel: centred window of ``hampel_window`` samples (odd),
    threshold ``hampel_k`` scale units, scale at least ``hampel_min_sigma``, and
    no verdict with fewer than ``hampel_min_count`` values in the window.
    """

    low: float = -math.inf
    high: float = math.inf
    max_rate_per_min: float = math.inf
    hampel_window: int = 11
    hampel_k: float = 3.0
    hampel_min_sigma: float = 0.0
    hampel_min_count: int = 3

    @classmethod
    def for_code(
        cls, code: str, registry: CodeRegistry = DEFAULT_REGISTRY, **overrides: Any
    ) -> ArtifactRule:
        """Soft limits from the code registry, rate and scale floor from the defaults.

        ``overrides`` replace fields by name (e.g. ``hampel_window=7``).
        """
        spec = registry.get(code)
        rate, floor = DEFAULT_RATE_LIMITS.get(code, (math.inf, 0.0))
        rule = cls(max_rate_per_min=rate, hampel_min_sigma=floor)
        if spec is not None:
            rule = replace(rule, low=float(spec.soft[0]), high=float(spec.soft[1]))
        return replace(rule, **overrides) if overrides else rule


def soft_limit_mask(values: ArrayLike, low: ArrayLike, high: ArrayLike) -> BoolArray:
    """True where a value lies outside ``[low, high]`` (per stream or scalar); NaN is False."""
    v, one = as_values(values)
    lo = per_stream(low, v.shape[0], "low")[:, np.newaxis]
    hi = per_stream(high, v.shape[0], "high")[:, np.newaxis]
    return _restore((v < lo) | (v > hi), one)


def rate_of_change_mask(
    times_us: ArrayLike,
    values: ArrayLike,
    max_rate_per_min: ArrayLike,
    *,
    min_interval_s: float = 0.0,
) -> BoolArray:
    """True where ``|Δvalue| / Δt`` exceeds the limit [value units per minute].

    Δ is taken against the previous *accepted* value of the stream (NaN and
    flagged values are skipped), so a burst of artifacts is flagged whole and a
    real level change is accepted once enough time has passed. The first value
    of a stream is never flagged; with ``min_interval_s`` 0, repeated times with
    different values are. Δt is taken as at least ``min_interval_s`` seconds, so
    a stream sampled every second may move by a minute's budget between samples
    (beat-to-beat heart rate varies that much).
    """
    v, one = as_values(values)
    t = as_times(times_us, v.shape)
    limit = per_stream(max_rate_per_min, v.shape[0], "max_rate_per_min")
    if bool(np.any(np.isnan(limit) | (limit < 0))):
        raise InputError("must be >= 0", "max_rate_per_min")
    mask = np.zeros(v.shape, dtype=np.bool_)
    prev_v = np.full(v.shape[0], np.nan)
    prev_t = np.zeros(v.shape[0], dtype=np.int64)
    finite = np.isfinite(limit)
    for j in range(v.shape[1]):
        x = v[:, j]
        dt_min = np.maximum((t[:, j] - prev_t) / US_PER_S, min_interval_s) / 60
        allowed = np.where(finite, limit * dt_min, np.inf)
        flagged = ~np.isnan(prev_v) & (np.abs(x - prev_v) > allowed)
        mask[:, j] = flagged
        accept = ~np.isnan(x) & ~flagged
        prev_v = np.where(accept, x, prev_v)
        prev_t = np.where(accept, t[:, j], prev_t)
    return _restore(mask, one)


class HampelResult(NamedTuple):
    """Hampel outliers, with the window median and scale (SD units) at each sample.

    ``filtered`` is the input with outliers replaced by the median (a copy).
    """

    outliers: BoolArray
    median: FloatArray
    sigma: FloatArray
    filtered: FloatArray


def hampel_filter(
    values: ArrayLike,
    *,
    window: int = 11,
    k: float = 3.0,
    min_sigma: float = 0.0,
    min_count: int = 3,
) -> HampelResult:
    """Hampel filter: outlier where ``|x - median| > k · max(1.4826 · MAD, min_sigma)``.

    Median and MAD (median absolute deviation) over a centred window of
    ``window`` samples (odd), NaN ignored; windows holding fewer than
    ``min_count`` values give no verdict. A constant series is never flagged.
    """
    if window < 3 or window % 2 == 0:
        raise InputError("must be an odd number >= 3", "window")
    if k <= 0 or min_sigma < 0 or min_count < 1:
        raise InputError("needs k > 0, min_sigma >= 0, min_count >= 1", "k")
    v, one = as_values(values)
    streams, n = v.shape
    median = np.full(v.shape, np.nan)
    sigma = np.full(v.shape, np.nan)
    count = np.zeros(v.shape, dtype=np.int64)
    half = window // 2
    rows = max(1, 4_000_000 // max(1, n * window))  # bound the (rows, n, window) temporaries
    for start in range(0, streams if n else 0, rows):
        block = v[start : start + rows]
        padded = np.pad(block, ((0, 0), (half, half)), constant_values=np.nan)
        view = sliding_window_view(padded, window, axis=1)
        cnt = np.sum(~np.isnan(view), axis=2)
        med = _sorted_median(np.sort(view, axis=2), cnt)
        mad = _sorted_median(np.sort(np.abs(view - med[..., np.newaxis]), axis=2), cnt)
        median[start : start + rows] = med
        sigma[start : start + rows] = MAD_TO_SD * mad
        count[start : start + rows] = cnt
    scale = np.maximum(sigma, min_sigma)
    with np.errstate(invalid="ignore"):
        outliers = (count >= min_count) & (np.abs(v - median) > k * scale)
    filtered = np.where(outliers, median, v)
    return HampelResult(
        _restore(outliers, one),
        _restore(median, one),
        _restore(sigma, one),
        _restore(filtered, one),
    )


def _sorted_median(ordered: FloatArray, count: IntArray) -> FloatArray:
    """Median of windows sorted along the last axis with their NaNs last."""
    lo = np.maximum((count - 1) // 2, 0)[..., np.newaxis]
    hi = np.maximum(count // 2, 0)[..., np.newaxis]
    a = np.take_along_axis(ordered, lo, axis=-1)[..., 0]
    b = np.take_along_axis(ordered, hi, axis=-1)[..., 0]
    return np.where(count > 0, 0.5 * (a + b), np.nan)


class ArtifactMasks(NamedTuple):
    """Masks of one detector run; ``artifact`` = rate or Hampel (soft limits stand apart)."""

    out_of_range: BoolArray
    rate: BoolArray
    hampel: BoolArray

    @property
    def artifact(self) -> BoolArray:
        return self.rate | self.hampel

    def flags(self) -> IntArray:
        """:class:`~medtwin.core.records.QualityFlag` bits: OUT_OF_RANGE, ARTIFACT_SUSPECTED."""
        return flag_bits(out_of_range=self.out_of_range, artifact=self.artifact)


def detect_artifacts(times_us: ArrayLike, values: ArrayLike, rule: ArtifactRule) -> ArtifactMasks:
    """Run all three detectors of ``rule`` over one code's streams."""
    return ArtifactMasks(
        out_of_range=soft_limit_mask(values, rule.low, rule.high),
        rate=rate_of_change_mask(times_us, values, rule.max_rate_per_min),
        hampel=hampel_filter(
            values,
            window=rule.hampel_window,
            k=rule.hampel_k,
            min_sigma=rule.hampel_min_sigma,
            min_count=rule.hampel_min_count,
        ).outliers,
    )
