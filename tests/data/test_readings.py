"""Which stored readings a model may read: newest version, not in error, canonical unit."""

from __future__ import annotations

import math

from medtwin.core.records import LOINC, Observation, ObservationStatus, Patient, QualityFlag
from medtwin.data.readings import usable_readings
from medtwin.data.store import SqlStore

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, µs
MIN = 60_000_000
LACTATE = "2524-7"


def _obs(n: int, value: float, unit: str = "mmol/L", **kw: object) -> Observation:
    fields: dict[str, object] = {
        "source": "lab",
        "source_id": f"l{n}",
        "patient": "p1",
        "system": LOINC,
        "code": LACTATE,
        "value_num": value,
        "value_text": None,
        "unit": unit,
        "effective_us": T0 + n * MIN,
    }
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def test_newest_version_in_the_window_oldest_first(store: SqlStore) -> None:
    store.append(
        [_obs(3, 2.5), _obs(1, 1.1), _obs(2, 4.0), _obs(9, 3.0)],
        received_us=T0,
        new_patients=[Patient("p1", "pt-0001", 1, T0)],
    )
    store.append([_obs(2, 4.2, version=2, status="corrected")], received_us=T0 + MIN)
    (found,) = usable_readings(store, ["p1"], LACTATE, T0, T0 + 5 * MIN, exclude_flags=0)
    assert [(key, at, value) for key, at, value in found] == [
        (("lab", "l1", 1), T0 + MIN, 1.1),
        (("lab", "l2", 2), T0 + 2 * MIN, 4.2),
        (("lab", "l3", 1), T0 + 3 * MIN, 2.5),
    ]


def test_entered_in_error_flagged_and_unmapped_values_are_left_out(store: SqlStore) -> None:
    error = ObservationStatus.ENTERED_IN_ERROR.value
    store.append(
        [
            _obs(1, 1.4),
            _obs(2, 2.0),
            _obs(3, 3.3, flags=int(QualityFlag.ARTIFACT_SUSPECTED)),
            # Stored before lactate was registered: the sender's mg/dL, not mmol/L.
            _obs(4, 18.0, unit="mg/dL", flags=int(QualityFlag.UNMAPPED)),
            _obs(5, 2.2, flags=int(QualityFlag.OUT_OF_RANGE)),
        ],
        received_us=T0,
        new_patients=[Patient("p1", "pt-0001", 1, T0)],
    )
    store.append([_obs(2, 2.0, version=2, status=error)], received_us=T0 + MIN)
    hidden = int(QualityFlag.ARTIFACT_SUSPECTED)
    (found,) = usable_readings(store, ["p1"], LACTATE, 0, T0 + 9 * MIN, exclude_flags=hidden)
    assert [key[1] for key, _, _ in found] == ["l1", "l5"]
    (everything,) = usable_readings(store, ["p1"], LACTATE, 0, T0 + 9 * MIN, exclude_flags=0)
    assert [key[1] for key, _, _ in everything] == ["l1", "l3", "l5"]
    assert all(math.isfinite(v) and v < 10 for _, _, v in everything)


def test_patients_in_the_order_asked_with_empty_lists(store: SqlStore) -> None:
    store.append(
        [_obs(1, 1.0), _obs(2, 2.0, patient="p2", source_id="x")],
        received_us=T0,
        new_patients=[Patient("p1", "pt-0001", 1, T0), Patient("p2", "pt-0002", 1, T0)],
    )
    found = usable_readings(store, ["p2", "p3", "p1"], LACTATE, 0, T0 + MIN * 9, exclude_flags=0)
    assert [[value for _, _, value in r] for r in found] == [[2.0], [], [1.0]]
