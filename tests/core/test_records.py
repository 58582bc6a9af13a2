"""Core records: quality flag names and duplicate detection of observations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from medtwin.core.clock import to_us
from medtwin.core.records import LOINC, Observation, ObservationStatus, QualityFlag

T_US = to_us(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
HR = Observation("monitor-7", "msg-1", "p1", LOINC, "8867-4", 72.0, None, "/min", T_US)


def test_names_of_no_flags() -> None:
    assert QualityFlag.names_of(0) == []


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        (QualityFlag.UNMAPPED, "unmapped"),
        (QualityFlag.OUT_OF_RANGE, "out-of-range"),
        (QualityFlag.CALIBRATED, "calibrated"),
        (QualityFlag.SMOOTHED, "smoothed"),
        (QualityFlag.IMPUTED, "imputed"),
        (QualityFlag.ARTIFACT_SUSPECTED, "artifact-suspected"),
    ],
)
def test_names_of_each_flag(flag: QualityFlag, name: str) -> None:
    assert QualityFlag.names_of(int(flag)) == [name]
    assert QualityFlag.names_of(flag) == [name]


def test_names_of_several_flags_in_declaration_order() -> None:
    bits = int(QualityFlag.ARTIFACT_SUSPECTED | QualityFlag.UNMAPPED | QualityFlag.SMOOTHED)
    assert QualityFlag.names_of(bits) == ["unmapped", "smoothed", "artifact-suspected"]


def test_names_of_every_flag() -> None:
    every = 0
    for flag in QualityFlag:
        every |= flag
    assert len(QualityFlag.names_of(every)) == len(QualityFlag)


def test_names_of_ignores_unknown_bits() -> None:
    assert QualityFlag.names_of(1024) == []
    assert QualityFlag.names_of(1024 | int(QualityFlag.IMPUTED)) == ["imputed"]


def test_observation_defaults_and_effective() -> None:
    assert HR.status == "final"
    assert ObservationStatus(HR.status) is ObservationStatus.FINAL
    assert HR.version == 1
    assert HR.flags == 0
    assert HR.effective == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_same_content_of_itself_and_an_equal_copy() -> None:
    assert HR.same_content(HR)
    assert HR.same_content(Observation(*HR))


@pytest.mark.parametrize(
    "change",
    [
        {"source": "monitor-8"},
        {"source_id": "msg-2"},
        {"version": 2},
        {"flags": int(QualityFlag.OUT_OF_RANGE)},
    ],
)
def test_same_content_ignores_identity_and_flags(change: dict[str, Any]) -> None:
    assert HR.same_content(HR._replace(**change))


@pytest.mark.parametrize(
    "change",
    [
        {"patient": "p2"},
        {"system": "http://example.org/codes"},
        {"code": "9279-1"},
        {"value_num": 73.0},
        {"value_num": None},
        {"value_text": "72"},
        {"unit": "{beats}/min"},
        {"effective_us": T_US + 1},
        {"status": ObservationStatus.AMENDED.value},
        {"status": ObservationStatus.ENTERED_IN_ERROR.value},
    ],
)
def test_same_content_sees_every_measured_field(change: dict[str, Any]) -> None:
    other = HR._replace(**change)
    assert not HR.same_content(other)
    assert not other.same_content(HR)
