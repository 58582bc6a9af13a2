"""Flags and batch layout."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.core.errors import InputError
from medtwin.core.records import QualityFlag
from medtwin.devices.conditioning import ConditioningFlag, flag_bits, pad_streams


def test_flags_are_the_quality_flag_bits() -> None:
    for flag in ConditioningFlag:
        assert flag.value == QualityFlag[str(flag.name)].value
        assert flag.to_quality() is QualityFlag[str(flag.name)]


def test_flag_bits_combine_masks() -> None:
    bits = flag_bits(
        base=[0, 1, 0],
        out_of_range=[True, False, False],
        smoothed=True,
        imputed=[False, False, True],
    )
    assert bits.tolist() == [2 | 8, 1 | 8, 8 | 16]
    assert QualityFlag.names_of(int(bits[2])) == ["smoothed", "imputed"]


def test_pad_streams() -> None:
    batch = pad_streams([[1, 2, 3], [], [5]], [[1.0, 2.0, 3.0], [], [9.0]])
    assert batch.times_us.tolist() == [[1, 2, 3], [0, 0, 0], [5, 5, 5]]
    np.testing.assert_array_equal(batch.values[2], [9.0, np.nan, np.nan])
    assert [row.tolist() for row in batch.unpad(batch.values)] == [[1.0, 2.0, 3.0], [], [9.0]]
    with pytest.raises(InputError, match="non-decreasing"):
        pad_streams([[2, 1]], [[1.0, 2.0]])
    with pytest.raises(InputError, match="integer microseconds"):
        pad_streams([[1.5]], [[1.0]])
