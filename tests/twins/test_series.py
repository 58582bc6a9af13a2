"""Vital signs on a common grid from the store: imputed values are always flagged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock, from_us, to_us
from medtwin.core.errors import InputError
from medtwin.core.records import LOINC, Observation, QualityFlag
from medtwin.data.store import SqlStore
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.series import aligned_series
from tests.twins.vitals import HR, SPO2, TEMP, UNITS

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
T0_US = to_us(T0)
S = 1_000_000
MIN = 60 * S
IMP = ["imputed"]


def iso(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


@pytest.fixture
def ingestor(store: SqlStore) -> Ingestor:
    clock = FixedClock(from_us(T0_US + 3 * 3600 * S))  # after every reading below
    return Ingestor(store, TwinRuntime(clock), EventBus(), clock)


def feed(ingestor: Ingestor, *readings: tuple[Any, ...], patient: str = "p1") -> None:
    """Ingest ``(code, time_us, value[, id, extra fields])`` readings for ``patient``."""
    items = []
    for code, at, value, *rest in readings:
        item = {
            "id": rest[0] if rest else f"{patient}-{code}-{at}",
            "source": "monitor",
            "patient": patient,
            "code": code,
            "value": value,
            "unit": UNITS[code],
            "time": iso(at),
        }
        items.append({**item, **(rest[1] if len(rest) > 1 else {})})
    results = ingestor.ingest(items)
    assert all(r.status == "stored" for r in results), results


def series(store: SqlStore, codes: list[str], **kw: Any) -> dict[str, Any]:
    """08:00 to 08:10 every minute, maximum age 3 minutes, unless ``kw`` says otherwise."""
    options: dict[str, Any] = {
        "start_us": T0_US,
        "end_us": T0_US + 10 * MIN,
        "step_s": 60.0,
        "max_age_s": 180.0,
    }
    return aligned_series(store, "p1", codes, **{**options, **kw})


def test_carry_forward_within_max_age_is_flagged_imputed_with_its_age(
    store: SqlStore, ingestor: Ingestor
) -> None:
    feed(ingestor, (HR, T0_US, 70), (HR, T0_US + 330 * S, 80))  # 08:00:00 and 08:05:30
    out = series(store, [HR])
    assert out["times"][:2] == ["2026-01-01T08:00:00Z", "2026-01-01T08:01:00Z"]
    assert len(out["times"]) == 11
    hr = out["series"][HR]
    assert hr["values"] == [70, 70, 70, 70, None, None, 80, 80, 80, None, None]
    assert hr["age_s"] == [0, 60, 120, 180, None, None, 30, 90, 150, None, None]
    assert hr["flags"] == [[], IMP, IMP, IMP, [], [], [], IMP, IMP, [], []]
    assert hr["counts"] == {"measured": 2, "imputed": 5, "missing": 4}
    assert hr["unit"] == "/min"


def test_beyond_max_age_is_null_and_a_reading_before_the_window_is_carried(
    store: SqlStore, ingestor: Ingestor
) -> None:
    feed(ingestor, (HR, T0_US - 4 * MIN, 70))  # 07:56, before the window
    hr = series(store, [HR], max_age_s=300.0)["series"][HR]
    assert hr["values"] == [70, 70] + [None] * 9  # 4 and 5 minutes old, then too old
    assert hr["age_s"] == [240, 300] + [None] * 9
    assert hr["flags"] == [IMP, IMP] + [[]] * 9
    assert hr["counts"] == {"measured": 0, "imputed": 2, "missing": 9}


def test_linear_mode_flags_interpolated_values(store: SqlStore, ingestor: Ingestor) -> None:
    feed(
        ingestor,
        (HR, T0_US, 60),
        (HR, T0_US + 4 * MIN, 100),
        (HR, T0_US + 330 * S, 70),
        (HR, T0_US + 450 * S, 90),
    )
    hr = series(store, [HR], method="linear")["series"][HR]
    # 08:00 measured; 08:01-08:03 on the line to 08:04; 08:05 on the line to 08:05:30;
    # 08:06 is 30 s after 08:05:30, but on the line to 08:07:30: imputed all the same;
    # 08:08 is 08:07:30 as measured, then carried forward
    assert hr["values"] == pytest.approx([60, 70, 80, 90, 100, 80, 75, 85, 90, 90, 90])
    assert hr["age_s"] == [0, 60, 120, 180, 0, 60, 30, 90, 30, 90, 150]
    assert hr["flags"] == [[], IMP, IMP, IMP, [], IMP, IMP, IMP, [], IMP, IMP]
    assert hr["counts"] == {"measured": 3, "imputed": 8, "missing": 0}


def test_measured_grid_points_are_not_flagged_and_reading_flags_travel(
    store: SqlStore, ingestor: Ingestor
) -> None:
    feed(ingestor, *[(SPO2, T0_US + k * MIN + 5 * S, 96 - k) for k in range(-1, 10)])
    # every grid time gets the reading 55 s before it: within the step, measured
    spo2 = series(store, [SPO2])["series"][SPO2]
    assert spo2["values"] == [97, 96, 95, 94, 93, 92, 91, 90, 89, 88, 87]
    assert spo2["age_s"] == [55] * 11
    assert spo2["flags"] == [[]] * 11
    assert spo2["counts"] == {"measured": 11, "imputed": 0, "missing": 0}
    feed(ingestor, (SPO2, T0_US + 10 * MIN, 65, "low"))  # below the soft limit of 70 %
    spo2 = series(store, [SPO2], end_us=T0_US + 12 * MIN)["series"][SPO2]
    assert spo2["values"][-3:] == [65, 65, 65]
    assert spo2["age_s"][-3:] == [0, 60, 120]
    assert spo2["flags"][-3:] == [["out-of-range"], ["out-of-range", *IMP], ["out-of-range", *IMP]]


def test_fill_none_gives_measured_values_only(store: SqlStore, ingestor: Ingestor) -> None:
    feed(ingestor, (HR, T0_US, 70), (HR, T0_US + 330 * S, 80))
    hr = series(store, [HR], fill="none", method="linear")["series"][HR]
    assert hr["values"] == [70, None, None, None, None, None, 80, None, None, None, None]
    assert hr["age_s"] == [0, None, None, None, None, None, 30, None, None, None, None]
    assert hr["flags"] == [[]] * 11
    assert hr["counts"] == {"measured": 2, "imputed": 0, "missing": 9}


def test_artifacts_entered_in_error_and_superseded_versions(
    store: SqlStore, ingestor: Ingestor
) -> None:
    feed(
        ingestor,
        (HR, T0_US, 70),
        (HR, T0_US + 5 * MIN, 90, "amended"),
        (HR, T0_US + 7 * MIN, 40, "withdrawn"),
    )
    feed(
        ingestor,
        (HR, T0_US + 5 * MIN, 95, "amended", {"status": "amended", "version": 2}),
        (HR, T0_US + 7 * MIN, 40, "withdrawn", {"status": "entered-in-error", "version": 2}),
    )
    artifact = int(QualityFlag.ARTIFACT_SUSPECTED)  # set by conditioning, not by validation
    store.append(
        [
            Observation(
                "monitor", f"spike{k}", "p1", LOINC, HR, 190, None, "/min", at, flags=artifact
            )
            for k, at in enumerate([T0_US + 2 * MIN, T0_US + 8 * MIN])
        ],
        received_us=T0_US,
    )
    hr = series(store, [HR])["series"][HR]
    # the spike at 08:02 is skipped: 08:00 is carried; 08:07 was withdrawn; 08:05 amended
    assert hr["values"] == [70, 70, 70, 70, None, 95, 95, 95, 95, None, None]
    assert hr["flags"] == [[], IMP, IMP, IMP, [], [], IMP, IMP, IMP, [], []]
    assert hr["skipped"] == {"artifact_suspected": 2, "non_numeric": 0}
    assert hr["gaps"] == [
        {"start": iso(T0_US), "end": iso(T0_US + 5 * MIN), "length_s": 300.0},
        {"start": iso(T0_US + 5 * MIN), "end": iso(T0_US + 10 * MIN), "length_s": 300.0},
    ]


def test_gap_report_is_exact(store: SqlStore, ingestor: Ingestor) -> None:
    feed(
        ingestor,
        (HR, T0_US - 2 * MIN, 70),  # 07:58, read as the value before the window
        (HR, T0_US + 1 * MIN, 71),
        (HR, T0_US + 2 * MIN, 72),
        (HR, T0_US + 9 * MIN, 73),
    )
    out = series(store, [HR, TEMP])  # gaps longer than max_age_s (3 min) by default
    assert out["series"][HR]["gaps"] == [
        {"start": iso(T0_US + 2 * MIN), "end": iso(T0_US + 9 * MIN), "length_s": 420.0}
    ]
    assert out["series"][TEMP]["gaps"] == [  # nothing at all: the whole window
        {"start": iso(T0_US), "end": iso(T0_US + 10 * MIN), "length_s": 600.0}
    ]
    assert out["series"][TEMP]["values"] == [None] * 11
    assert out["series"][TEMP]["unit"] is None
    shorter = series(store, [HR], min_gap_s=60.0)["series"][HR]["gaps"]
    assert shorter == [
        {"start": iso(T0_US - 2 * MIN), "end": iso(T0_US + 1 * MIN), "length_s": 180.0},
        {"start": iso(T0_US + 2 * MIN), "end": iso(T0_US + 9 * MIN), "length_s": 420.0},
    ]
    linear = series(store, [HR], method="linear")["series"][HR]["gaps"]
    assert linear == out["series"][HR]["gaps"]


def test_all_numeric_codes_when_none_named(store: SqlStore, ingestor: Ingestor) -> None:
    feed(ingestor, (SPO2, T0_US, 97), (HR, T0_US, 70))
    feed(ingestor, (HR, T0_US, 72), patient="p2")
    out = series(store, [])
    assert list(out["series"]) == sorted([HR, SPO2])
    assert out["series"][HR]["values"][0] == 70


def test_limits(store: SqlStore) -> None:
    with pytest.raises(InputError, match="at most 10,000"):
        series(store, [HR], end_us=T0_US + 10_000 * MIN)
    assert len(series(store, [HR], end_us=T0_US + 9_999 * MIN)["times"]) == 10_000
    with pytest.raises(InputError, match="unknown method"):
        series(store, [HR], method="cubic")


def test_kalman_smoothing_reduces_noise_and_is_flagged(store: SqlStore, ingestor: Ingestor) -> None:
    rng = np.random.default_rng(8)
    truth = 80 + 10 * np.sin(np.arange(120) / 15)
    noisy = truth + rng.normal(0, 3, truth.size)
    feed(ingestor, *[(HR, T0_US + i * MIN, round(float(v), 2)) for i, v in enumerate(noisy)])
    window = {"start_us": T0_US, "end_us": T0_US + 119 * MIN, "step_s": 60.0}
    raw = aligned_series(store, "p1", [HR], **window)["series"][HR]
    smooth = aligned_series(store, "p1", [HR], smooth="kalman", **window)["series"][HR]
    error_raw = np.sqrt(np.mean((np.array(raw["values"]) - truth) ** 2))
    error_smooth = np.sqrt(np.mean((np.array(smooth["values"]) - truth) ** 2))
    assert error_smooth < 0.7 * error_raw, (error_raw, error_smooth)
    assert all("smoothed" in flags for flags in smooth["flags"])
    assert not any("smoothed" in flags for flags in raw["flags"])
