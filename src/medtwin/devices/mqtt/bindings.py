"""Which patient a device was on, and when: the device bindings.

A binding puts a device on a patient over ``[from_us, to_us)`` (``to_us`` None: still
on). A device is on at most one patient at any moment, so bindings of one device
never overlap; a reading is attributed to the patient whose binding covers its
time, however late it arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from medtwin.core.clock import to_iso
from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.store import SqlStore
from medtwin.data.store.schema import device_bindings
from medtwin.data.validation import ID_PATTERN


@dataclass(frozen=True, slots=True)
class Binding:
    """A device on a patient from ``from_us`` until ``to_us`` (exclusive; None: open)."""

    row_id: int
    device: str
    patient: str
    from_us: int
    to_us: int | None
    created_us: int

    def covers(self, at_us: int) -> bool:
        return self.from_us <= at_us and (self.to_us is None or at_us < self.to_us)

    def overlaps(self, start_us: int, end_us: int | None) -> bool:
        starts_before_end = end_us is None or self.from_us < end_us
        ends_after_start = self.to_us is None or start_us < self.to_us
        return starts_before_end and ends_after_start

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "patient": self.patient,
            "from": to_iso(self.from_us),
            "to": None if self.to_us is None else to_iso(self.to_us),
            "created": to_iso(self.created_us),
        }


class BindingIndex:
    """The bindings of a few devices, loaded at once, to attribute a batch of readings."""

    def __init__(self, bindings: Iterable[Binding]) -> None:
        self._by_device: dict[str, list[Binding]] = {}
        for binding in bindings:
            self._by_device.setdefault(binding.device, []).append(binding)

    def patient_at(self, device: str, at_us: int) -> str | None:
        for binding in self._by_device.get(device, ()):
            if binding.covers(at_us):
                return binding.patient
        return None


class DeviceBindings:
    """The ``device_bindings`` table of a store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def bind(
        self, device: str, patient: str, *, from_us: int, to_us: int | None = None, now_us: int
    ) -> Binding:
        """Put ``device`` on ``patient`` over [from_us, to_us); the same binding again is a no-op.

        InputError for a malformed id or an empty interval; ConflictError when the
        device is on a patient during part of that interval already.
        """
        _check_id(device, "device")
        _check_id(patient, "patient")
        if to_us is not None and to_us <= from_us:
            raise InputError("'to' must be later than 'from'", "to")
        table = device_bindings
        with self.store.transaction() as conn:
            existing = _select(conn, [device])
            for binding in existing:
                if (binding.patient, binding.from_us, binding.to_us) == (patient, from_us, to_us):
                    return binding  # a retried request
                if binding.overlaps(from_us, to_us):
                    raise ConflictError(
                        f"device {device} is bound from {to_iso(binding.from_us)}"
                        + ("" if binding.to_us is None else f" to {to_iso(binding.to_us)}")
                        + " already; unbind it first"
                    )
            result = conn.execute(
                sa.insert(table).values(
                    device_id=device,
                    patient_id=patient,
                    from_us=from_us,
                    to_us=to_us,
                    created_us=now_us,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            row_id = int(key[0])
        return Binding(row_id, device, patient, from_us, to_us, now_us)

    def unbind(self, device: str, *, at_us: int) -> Binding:
        """End the binding of ``device`` that covers ``at_us`` at that time.

        NotFoundError when the device is on no patient at ``at_us``; a binding whose
        start is ``at_us`` cannot be cut to nothing (InputError).
        """
        _check_id(device, "device")
        table = device_bindings
        with self.store.transaction() as conn:
            current = next((b for b in _select(conn, [device]) if b.covers(at_us)), None)
            if current is None:
                raise NotFoundError(f"device {device} is not bound to a patient at {to_iso(at_us)}")
            if current.from_us == at_us:
                raise InputError("'at' must be later than the binding's start", "at")
            conn.execute(
                sa.update(table).where(table.c.row_id == current.row_id).values(to_us=at_us)
            )
        return Binding(
            current.row_id, device, current.patient, current.from_us, at_us, current.created_us
        )

    def history(self, device: str) -> list[Binding]:
        """Every binding of ``device``, oldest first."""
        with self.store.reading() as conn:
            return _select(conn, [device])

    def patient_at(self, device: str, at_us: int) -> str | None:
        """The patient ``device`` was on at ``at_us``, None when it was on none."""
        return self.index([device]).patient_at(device, at_us)

    def index(self, devices: Iterable[str]) -> BindingIndex:
        """The bindings of ``devices`` in one query."""
        wanted = sorted(set(devices))
        if not wanted:
            return BindingIndex(())
        with self.store.reading() as conn:
            return BindingIndex(_select(conn, wanted))


def _select(conn: sa.Connection, devices: Sequence[str]) -> list[Binding]:
    table = device_bindings
    query = (
        sa.select(table)
        .where(table.c.device_id.in_(list(devices)))
        .order_by(table.c.device_id, table.c.from_us)
    )
    return [
        Binding(r.row_id, r.device_id, r.patient_id, r.from_us, r.to_us, r.created_us)
        for r in conn.execute(query)
    ]


def _check_id(value: object, name: str) -> None:
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InputError(f"{name} must be 1-64 letters, digits, '.', '_' or '-'", name)
