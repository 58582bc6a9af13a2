"""Device calibrations: fitted from stored readings against a reference, kept in the store.

A calibration of a device's readings of one code maps them onto the reference's
scale (``reference ≈ gain * measured + offset``, see
:mod:`medtwin.devices.conditioning.calibration`). It is fitted from the readings
of the device and of a reference source (e.g. finger-stick glucose meters against a
CGM) for the same patients, paired when no further apart than ``max_gap_s``. The
newest calibration of a (device, code) is the one the conditioning pipelines apply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import sqlalchemy as sa

from medtwin.core.errors import InputError
from medtwin.core.records import ObservationStatus, QualityFlag
from medtwin.data.store import SqlStore, schema
from medtwin.devices.conditioning.calibration import (
    Calibration,
    DriftTracker,
    fit_calibration,
    pair_readings,
)

__all__ = ["CalibrationStore", "StoredCalibration"]

_CALIBRATED = int(QualityFlag.CALIBRATED)
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value


@dataclass(frozen=True, slots=True)
class StoredCalibration:
    """A calibration of ``device``'s readings of ``code`` against ``reference``."""

    device: str
    code: str
    reference: str
    created_us: int
    calibration: Calibration

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "code": self.code,
            "reference": self.reference,
            "created_us": self.created_us,
            **self.calibration.as_dict(),
        }


class CalibrationStore:
    """The ``calibrations`` table."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def add(
        self, device: str, code: str, reference: str, calibration: Calibration, *, now_us: int
    ) -> StoredCalibration:
        fields = {
            "gain": calibration.gain,
            "offset": calibration.offset,
            "n": calibration.n,
            "residual_sd": None
            if not np.isfinite(calibration.residual_sd)
            else calibration.residual_sd,
            "fitted_at_us": calibration.fitted_at_us,
            "method": calibration.method,
        }
        with self.store.transaction() as conn:
            conn.execute(
                sa.insert(schema.calibrations).values(
                    device=device,
                    code=code,
                    reference=reference,
                    created_us=now_us,
                    calibration=json.dumps(fields, separators=(",", ":")),
                )
            )
        return StoredCalibration(device, code, reference, now_us, calibration)

    def history(self, device: str) -> list[StoredCalibration]:
        """Every calibration of ``device``, oldest first."""
        table = schema.calibrations
        query = sa.select(table).where(table.c.device == device).order_by(table.c.row_id)
        with self.store.reading() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def current(self) -> list[StoredCalibration]:
        """The newest calibration of each (device, code)."""
        table = schema.calibrations
        newest = (
            sa.select(sa.func.max(table.c.row_id))
            .group_by(table.c.device, table.c.code)
            .scalar_subquery()
        )
        with self.store.reading() as conn:
            rows = conn.execute(sa.select(table).where(table.c.row_id.in_(newest))).all()
        return [_stored(row) for row in rows]

    def fit(
        self,
        device: str,
        code: str,
        reference: str,
        *,
        start_us: int,
        end_us: int,
        max_gap_s: float,
        lag_s: float = 0.0,
        half_life_s: float | None = None,
    ) -> Calibration:
        """Fit ``device``'s readings of ``code`` to ``reference``'s, patient by patient.

        With ``half_life_s`` the fit tracks slow drift: pairs weigh ``2 ** (-age /
        half_life_s)`` by their age at ``end_us`` (a time-weighted refit, see
        :class:`~medtwin.devices.conditioning.calibration.DriftTracker`), so the
        calibration follows the sensor as it is now. Readings the device sent already
        calibrated count by their raw value (kept with their origin). InputError when
        fewer than two pairs are found.
        """
        if end_us <= start_us:
            raise InputError("must be after 'from'", "to")
        table = schema.observations
        query = (
            sa.select(
                table.c.source,
                table.c.source_id,
                table.c.version,
                table.c.patient_id,
                table.c.value_num,
                table.c.effective_us,
                table.c.status,
                table.c.flags,
            )
            .where(
                table.c.source.in_([device, reference]),
                table.c.code == code,
                table.c.effective_us >= start_us,
                table.c.effective_us <= end_us,
                table.c.value_num.is_not(None),
            )
            .order_by(table.c.effective_us)
        )
        with self.store.reading() as conn:
            rows = conn.execute(query).all()
        newest: dict[tuple[str, str], sa.Row[tuple[object, ...]]] = {}
        for row in rows:
            held = newest.get((row.source, row.source_id))
            if held is None or row.version > held.version:
                newest[(row.source, row.source_id)] = row
        kept = [r for r in newest.values() if r.status != _ENTERED_IN_ERROR]
        raw = self._raw_values([r for r in kept if r.source == device and r.flags & _CALIBRATED])
        measured: list[np.ndarray] = []
        references: list[np.ndarray] = []
        when: list[np.ndarray] = []
        for patient in sorted({r.patient_id for r in kept}):
            sensor = sorted(
                (r for r in kept if r.patient_id == patient and r.source == device),
                key=lambda r: r.effective_us,
            )
            ref = [r for r in kept if r.patient_id == patient and r.source == reference]
            if not sensor or not ref:
                continue
            pairs = pair_readings(
                [r.effective_us for r in sensor],
                [raw.get((r.source, r.source_id, r.version), r.value_num) for r in sensor],
                [r.effective_us for r in ref],
                [r.value_num for r in ref],
                round(max_gap_s * 1_000_000),
                lag_us=round(lag_s * 1_000_000),
            )
            measured.append(pairs.measured)
            references.append(pairs.reference)
            when.append(pairs.ref_times_us)
        x = np.concatenate(measured) if measured else np.zeros(0)
        y = np.concatenate(references) if references else np.zeros(0)
        if len(x) < 2 or np.ptp(x) == 0:
            raise InputError(
                f"{len(x)} reading pairs of {device!r} and {reference!r} for {code} within "
                f"{max_gap_s:g} s: a calibration needs at least two with different readings",
                "reference",
            )
        fitted = fit_calibration(x, y, fitted_at_us=end_us)
        if half_life_s is None:
            return fitted
        order = np.argsort(np.concatenate(when), kind="stable")
        t = np.concatenate(when)[order]
        # The plain fit as a weak prior at the first pair; the pairs then count by age.
        tracker = DriftTracker.from_calibration(
            replace(fitted, fitted_at_us=int(t[0])),
            half_life_s=half_life_s,
            x_range=(float(x.min()), float(x.max())),
            prior_weight=1.0,
        )
        tracker.track(t, x[order], y[order])
        return tracker.calibration(0)

    def _raw_values(
        self, rows: Sequence[sa.Row[tuple[object, ...]]]
    ) -> dict[tuple[str, str, int], float]:
        keys = [(r.source, r.source_id, r.version) for r in rows]
        out: dict[tuple[str, str, int], float] = {}
        for key, origin in self.store.origins_of(keys).items():
            note = json.loads(origin.conditioning) if origin.conditioning else {}
            if isinstance(note.get("raw"), int | float):
                out[key] = float(note["raw"])
        return out


def _stored(row: sa.Row[tuple[object, ...]]) -> StoredCalibration:
    fields = json.loads(str(row.calibration))
    if fields.get("residual_sd") is None:
        fields["residual_sd"] = float("nan")
    return StoredCalibration(
        str(row.device),
        str(row.code),
        str(row.reference),
        int(row.created_us),
        Calibration(**fields),
    )
