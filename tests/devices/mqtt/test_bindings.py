"""Device bindings: which patient a device was on, and when."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.store import SqlStore
from medtwin.devices.mqtt import DeviceBindings

H = 3_600_000_000  # an hour in µs


def test_bind_unbind_and_lookup(store: SqlStore) -> None:
    bindings = DeviceBindings(store)
    bindings.bind("d1", "p1", from_us=10 * H, now_us=1)
    assert bindings.patient_at("d1", 9 * H) is None
    assert bindings.patient_at("d1", 10 * H) == "p1"
    closed = bindings.unbind("d1", at_us=12 * H)
    assert (closed.patient, closed.to_us) == ("p1", 12 * H)
    assert bindings.patient_at("d1", 12 * H) is None  # the end is exclusive
    bindings.bind("d1", "p2", from_us=12 * H, now_us=2)
    assert bindings.patient_at("d1", 11 * H) == "p1"  # a late reading keeps its patient
    assert bindings.patient_at("d1", 13 * H) == "p2"
    assert [b.patient for b in bindings.history("d1")] == ["p1", "p2"]
    index = bindings.index(["d1", "d2"])
    assert (index.patient_at("d1", 11 * H), index.patient_at("d2", 11 * H)) == ("p1", None)


def test_overlaps_are_refused_and_retries_are_not(store: SqlStore) -> None:
    bindings = DeviceBindings(store)
    first = bindings.bind("d1", "p1", from_us=10 * H, to_us=20 * H, now_us=1)
    assert bindings.bind("d1", "p1", from_us=10 * H, to_us=20 * H, now_us=2) == first
    with pytest.raises(ConflictError):
        bindings.bind("d1", "p2", from_us=19 * H, now_us=3)
    with pytest.raises(ConflictError):
        bindings.bind("d1", "p2", from_us=0, to_us=11 * H, now_us=3)
    bindings.bind("d1", "p2", from_us=20 * H, now_us=3)
    with pytest.raises(InputError):
        bindings.bind("d2", "p1", from_us=5 * H, to_us=5 * H, now_us=3)
    with pytest.raises(InputError):
        bindings.bind("d 2", "p1", from_us=5 * H, now_us=3)
    with pytest.raises(NotFoundError):
        bindings.unbind("d2", at_us=5 * H)
