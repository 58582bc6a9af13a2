"""Quality flags set by conditioning, as :class:`medtwin.core.records.QualityFlag` bits.

Conditioning never drops or silently changes a value: every detector and
imputer returns a boolean mask, and :func:`flag_bits` turns those masks into the
per-value flag integers that travel with observations into the store.
"""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medtwin.core.records import QualityFlag

__all__ = ["ConditioningFlag", "flag_bits"]


class ConditioningFlag(enum.IntFlag):
    """The subset of :class:`QualityFlag` that conditioning sets (same bit values)."""

    OUT_OF_RANGE = QualityFlag.OUT_OF_RANGE.value  # beyond soft limits
    CALIBRATED = QualityFlag.CALIBRATED.value  # gain/offset calibration applied
    SMOOTHED = QualityFlag.SMOOTHED.value  # value replaced by a filter/smoother estimate
    IMPUTED = QualityFlag.IMPUTED.value  # carried forward or interpolated, not measured
    ARTIFACT_SUSPECTED = QualityFlag.ARTIFACT_SUSPECTED.value  # rate or Hampel detector fired

    def to_quality(self) -> QualityFlag:
        """The same bits as a :class:`QualityFlag`."""
        return QualityFlag(int(self))


def flag_bits(
    *,
    base: ArrayLike = 0,
    out_of_range: ArrayLike = False,
    calibrated: ArrayLike = False,
    smoothed: ArrayLike = False,
    imputed: ArrayLike = False,
    artifact: ArrayLike = False,
) -> NDArray[np.int64]:
    """Flag integers: ``base`` bits OR the bit of every mask that is True (broadcast)."""
    parts: list[tuple[ArrayLike, ConditioningFlag]] = [
        (out_of_range, ConditioningFlag.OUT_OF_RANGE),
        (calibrated, ConditioningFlag.CALIBRATED),
        (smoothed, ConditioningFlag.SMOOTHED),
        (imputed, ConditioningFlag.IMPUTED),
        (artifact, ConditioningFlag.ARTIFACT_SUSPECTED),
    ]
    bits = np.asarray(base, dtype=np.int64)
    for mask, flag in parts:
        bits = bits | np.where(np.asarray(mask, dtype=np.bool_), np.int64(flag.value), 0)
    return np.asarray(bits, dtype=np.int64)
