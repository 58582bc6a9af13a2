"""The twin runtime: the live state of every patient's twin, updated in batches.

Each twin keeps the newest value of every registered code (one row of a
patients x codes array, so a batch of observations updates a whole ward with
a few array operations) and the NEWS2 derived from them. ``observe`` returns
the twins whose state changed; ``events`` turns those into JSON events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medtwin.core.clock import Clock, to_iso
from medtwin.core.records import Observation, ObservationStatus, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry
from medtwin.models.scores import ACVPU, INPUT_CODES, PARAMETERS, News2Batch, news2

# Time of a cell that never had a value; far in the past yet safe to subtract from now.
_NEVER = np.iinfo(np.int64).min // 4
_ACVPU_INDEX = {letter: float(i) for i, letter in enumerate(ACVPU)}
_NEWS2_ARGUMENT = {"air_or_oxygen": "fio2"}  # parameter -> keyword of news2() where they differ
_HIDDEN = int(QualityFlag.ARTIFACT_SUSPECTED)
_UNMAPPED = int(QualityFlag.UNMAPPED)
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value


@dataclass(frozen=True)
class TwinUpdate:
    """Twins touched by one batch: their row indices and their NEWS2 now."""

    rows: NDArray[np.intp]
    news2: News2Batch
    changed: NDArray[np.bool_]  # NEWS2 (score, partial, band or a sub-score) differs from before
    at_us: int


class TwinRuntime:
    """Live state of every twin. Thread-safe; one writer at a time."""

    def __init__(
        self,
        clock: Clock,
        *,
        news2_window_s: float = 3600.0,
        registry: CodeRegistry = DEFAULT_REGISTRY,
    ) -> None:
        self.clock = clock
        self.window_us = round(news2_window_s * 1_000_000)
        self.codes: tuple[str, ...] = tuple(spec.code for spec in registry)
        self._units = {spec.code: spec.unit for spec in registry}
        self._column = {code: i for i, code in enumerate(self.codes)}
        self._news2_columns = np.array([self._column[c] for c in INPUT_CODES], dtype=np.intp)
        self._news2_keywords = [
            _NEWS2_ARGUMENT.get(INPUT_CODES[c], INPUT_CODES[c]) for c in INPUT_CODES
        ]
        self._row: dict[str, int] = {}
        self.patient_ids: list[str] = []
        capacity = 64
        self._values = np.full((capacity, len(self.codes)), np.nan)
        self._times = np.full((capacity, len(self.codes)), _NEVER, dtype=np.int64)
        self._flags = np.zeros((capacity, len(self.codes)), dtype=np.int32)
        # (source, source_id, version) of each held value: what a module read, for provenance.
        self._keys = np.full((capacity, len(self.codes)), None, dtype=object)
        # The newest reading flagged as a suspected artifact per cell, kept apart: it is
        # shown, never scored, and the last good value stays in use meanwhile.
        self._art_values = np.full((capacity, len(self.codes)), np.nan)
        self._art_times = np.full((capacity, len(self.codes)), _NEVER, dtype=np.int64)
        self._art_flags = np.zeros((capacity, len(self.codes)), dtype=np.int32)
        self._art_keys = np.full((capacity, len(self.codes)), None, dtype=object)
        self._scale = np.ones(capacity, dtype=np.int8)
        self._news2_state = np.full((capacity, len(PARAMETERS) + 3), -2, dtype=np.int16)
        # The NEWS2 inputs (usable values, then the SpO2 scale) each row's state was scored
        # from: a row rescored from the same inputs keeps its state without a new news2()
        # call (NaN: never scored). Most batches (lab results, unmapped codes) leave them as
        # they were, and news2() costs ~0.3 ms per call however few rows it scores.
        self._news2_inputs = np.full((capacity, len(PARAMETERS) + 1), np.nan)
        self._unmapped: dict[str, dict[str, Observation]] = {}
        # Per patient, the tick of its last change: equal revisions mean equal twin state.
        self._revision: dict[str, int] = {}
        self._tick = 0
        self._lock = threading.RLock()

    # -- patients -------------------------------------------------------------

    def __contains__(self, patient: object) -> bool:
        return patient in self._row

    def __len__(self) -> int:
        return len(self.patient_ids)

    def add(self, patient: str, *, spo2_scale: int = 1) -> int:
        """Row of ``patient``, creating the twin on first sight."""
        with self._lock:
            row = self._row.get(patient)
            if row is None:
                row = len(self.patient_ids)
                if row == len(self._scale):
                    self._grow()
                self._row[patient] = row
                self.patient_ids.append(patient)
            if self._scale[row] != spo2_scale or patient not in self._revision:
                self._scale[row] = spo2_scale
                self._changed(patient)
            return row

    def rename(self, patient: str, new_id: str) -> None:
        """Carry a twin over to a new patient id (erasure replaces ids by pseudonyms)."""
        with self._lock:
            row = self._row.pop(patient)
            self._row[new_id] = row
            self.patient_ids[row] = new_id
            self._revision.pop(patient, None)
            self._changed(new_id)
            if patient in self._unmapped:
                self._unmapped[new_id] = self._unmapped.pop(patient)

    def merge(self, prior: str, survivor: str) -> TwinUpdate:
        """Fold ``prior``'s twin into ``survivor``'s (newest value per code wins); drop it."""
        with self._lock:
            target = self.add(survivor, spo2_scale=1) if survivor not in self._row else None
            dst = self._row[survivor]
            if target is not None and prior in self._row:
                self._scale[dst] = self._scale[self._row[prior]]
            src = self._row.get(prior)
            if src is not None:
                newer = self._times[src] > self._times[dst]
                self._values[dst, newer] = self._values[src, newer]
                self._times[dst, newer] = self._times[src, newer]
                self._flags[dst, newer] = self._flags[src, newer]
                self._keys[dst, newer] = self._keys[src, newer]
                later = self._art_times[src] > self._art_times[dst]
                for layer in self._artifact_layer():
                    layer[dst, later] = layer[src, later]
                for key, obs in self._unmapped.pop(prior, {}).items():
                    held = self._unmapped.setdefault(survivor, {}).get(key)
                    if held is None or held.effective_us <= obs.effective_us:
                        self._unmapped[survivor][key] = obs._replace(patient=survivor)
                self._remove(prior)
            self._changed(survivor)
            return self._score(np.array([self._row[survivor]], dtype=np.intp))

    def _remove(self, patient: str) -> None:
        """Drop a twin; the last row moves into its place so rows stay dense."""
        row = self._row.pop(patient)
        self._revision.pop(patient, None)
        last = len(self.patient_ids) - 1
        if row != last:
            moved = self.patient_ids[last]
            arrays = (self._values, self._times, self._flags, self._keys, self._scale)
            for array in (
                *arrays,
                *self._artifact_layer(),
                self._news2_state,
                self._news2_inputs,
            ):
                array[row] = array[last]
            self.patient_ids[row] = moved
            self._row[moved] = row
        self.patient_ids.pop()
        self._values[last] = np.nan
        self._times[last] = _NEVER
        self._flags[last] = 0
        self._keys[last] = None
        self._art_values[last] = np.nan
        self._art_times[last] = _NEVER
        self._art_flags[last] = 0
        self._art_keys[last] = None
        self._scale[last] = 1
        self._news2_state[last] = -2
        self._news2_inputs[last] = np.nan

    def set_spo2_scale(self, patient: str, scale: int) -> TwinUpdate:
        with self._lock:
            row = self._row[patient]
            self._scale[row] = scale
            self._changed(patient)
            return self._score(np.array([row], dtype=np.intp))

    def _grow(self) -> None:
        grow = len(self._scale)
        self._values = np.vstack([self._values, np.full_like(self._values[:grow], np.nan)])
        self._times = np.vstack([self._times, np.full_like(self._times[:grow], _NEVER)])
        self._flags = np.vstack([self._flags, np.zeros_like(self._flags[:grow])])
        self._keys = np.vstack([self._keys, np.full_like(self._keys[:grow], None)])
        self._art_values = np.vstack(
            [self._art_values, np.full_like(self._art_values[:grow], np.nan)]
        )
        self._art_times = np.vstack([self._art_times, np.full_like(self._art_times[:grow], _NEVER)])
        self._art_flags = np.vstack([self._art_flags, np.zeros_like(self._art_flags[:grow])])
        self._art_keys = np.vstack([self._art_keys, np.full_like(self._art_keys[:grow], None)])
        self._scale = np.concatenate([self._scale, np.ones(grow, dtype=np.int8)])
        self._news2_state = np.vstack(
            [self._news2_state, np.full_like(self._news2_state[:grow], -2)]
        )
        self._news2_inputs = np.vstack(
            [self._news2_inputs, np.full_like(self._news2_inputs[:grow], np.nan)]
        )

    # -- updates --------------------------------------------------------------

    def observe(self, observations: Sequence[Observation]) -> TwinUpdate:
        """Fold stored observations into the twins and rescore the twins they touch."""
        with self._lock:
            rows: list[int] = []
            columns: list[int] = []
            times: list[int] = []
            values: list[float] = []
            flags: list[int] = []
            keys: list[tuple[str, str, int]] = []
            touched: set[int] = set()
            retracted: list[tuple[int, int, int]] = []
            column_of = self._column.get
            row_of = self._row.get
            for obs in observations:
                row = row_of(obs.patient)
                if row is None:
                    row = self.add(obs.patient)
                touched.add(row)
                column = column_of(obs.code) if not obs.flags & _UNMAPPED else None
                if column is None:
                    self._remember_unmapped(obs)
                    continue
                if obs.status == _ENTERED_IN_ERROR:
                    retracted.append((row, column, obs.effective_us))
                    continue
                value = obs.value_num
                if value is None:
                    value = _ACVPU_INDEX.get(obs.value_text or "", np.nan)
                rows.append(row)
                columns.append(column)
                times.append(obs.effective_us)
                values.append(value)
                flags.append(obs.flags)
                keys.append((obs.source, obs.source_id, obs.version))
            if rows:
                flag_array = np.array(flags, dtype=np.int32)
                suspect = (flag_array & _HIDDEN) != 0
                row_array = np.array(rows, dtype=np.intp)
                column_array = np.array(columns, dtype=np.intp)
                time_array = np.array(times, dtype=np.int64)
                value_array = np.array(values, dtype=np.float64)
                key_array = _object_array(keys)
                for pick, layer in (
                    (~suspect, self._main_layer()),
                    (suspect, self._artifact_layer()),
                ):
                    self._fold(
                        row_array[pick],
                        column_array[pick],
                        time_array[pick],
                        value_array[pick],
                        flag_array[pick],
                        key_array[pick],
                        layer,
                    )
            # A result entered in error stops counting: the twin forgets the value it held
            # from that measurement (an older one comes back with the next warm start).
            for row, column, at_us in retracted:
                for values_, times_, flags_, keys_ in (
                    self._main_layer(),
                    self._artifact_layer(),
                ):
                    if times_[row, column] == at_us:
                        values_[row, column] = np.nan
                        times_[row, column] = _NEVER
                        flags_[row, column] = 0
                        keys_[row, column] = None
            for row in touched:
                self._changed(self.patient_ids[row])
            return self._score(np.array(sorted(touched), dtype=np.intp))

    def _fold(
        self,
        rows: NDArray[np.intp],
        columns: NDArray[np.intp],
        times: NDArray[np.int64],
        values: NDArray[np.float64],
        flags: NDArray[np.int32],
        keys: NDArray[np.object_],
        layer: tuple[Any, Any, Any, Any],
    ) -> None:
        """Fold readings into ``layer`` (values, times, flags, keys arrays)."""
        if not len(rows):
            return
        layer_values, layer_times, layer_flags, layer_keys = layer
        # Newest reading per (row, column) within the batch: sort, keep each group's last.
        order = np.lexsort((times, columns, rows))
        rows, columns, times, values, flags, keys = (
            rows[order],
            columns[order],
            times[order],
            values[order],
            flags[order],
            keys[order],
        )
        last = np.ones(len(rows), dtype=bool)
        last[:-1] = (rows[1:] != rows[:-1]) | (columns[1:] != columns[:-1])
        rows, columns, times, values, flags, keys = (
            rows[last],
            columns[last],
            times[last],
            values[last],
            flags[last],
            keys[last],
        )
        newer = times >= layer_times[rows, columns]
        rows, columns = rows[newer], columns[newer]
        layer_times[rows, columns] = times[newer]
        layer_values[rows, columns] = values[newer]
        layer_flags[rows, columns] = flags[newer]
        layer_keys[rows, columns] = keys[newer]

    def _main_layer(self) -> tuple[Any, Any, Any, Any]:
        return self._values, self._times, self._flags, self._keys

    def _artifact_layer(self) -> tuple[Any, Any, Any, Any]:
        return self._art_values, self._art_times, self._art_flags, self._art_keys

    def _remember_unmapped(self, obs: Observation) -> None:
        latest = self._unmapped.setdefault(obs.patient, {})
        key = f"{obs.system}|{obs.code}"
        held = latest.get(key)
        if held is None or held.effective_us <= obs.effective_us:
            latest[key] = obs

    def refresh(self) -> TwinUpdate:
        """Rescore every twin at the clock's now (values age out of the NEWS2 window)."""
        with self._lock:
            return self._score(np.arange(len(self.patient_ids), dtype=np.intp))

    def _score(self, rows: NDArray[np.intp], *, commit: bool = True) -> TwinUpdate:
        """NEWS2 of ``rows`` now; ``commit`` records it as the state later changes compare to."""
        now = self.clock.now_us()
        cells = np.ix_(rows, self._news2_columns)
        times = self._times[cells]
        usable = (now - times <= self.window_us) & (self._flags[cells] & _HIDDEN == 0)
        values = np.where(usable, self._values[cells], np.nan)
        scale = self._scale[rows]
        # A suspected artifact newer than the value in use, within the window, is ignored.
        art = self._art_times[cells]
        ignored = (now - art <= self.window_us) & (art > times)
        inputs = np.column_stack([values, scale])
        # Bit for bit the inputs a row was last scored from: its state is that score
        # (news2() is a pure function of them), so only the other rows are scored.
        fresh = np.any(inputs.view(np.int64) != self._news2_inputs[rows].view(np.int64), axis=1)
        if fresh.all():
            result = news2(**self._news2_arguments(values), spo2_scale=scale)
            result = replace(result, ignored=ignored)
        else:
            result = self._news2_reusing(rows, values, scale, fresh, ignored)
            if not fresh.any():
                # Every row as last committed: that state is its score, and nothing changed.
                return TwinUpdate(rows, result, np.zeros(len(rows), dtype=np.bool_), now)
        state = np.column_stack(
            [result.subscores, result.score, result.partial_score, result.band]
        ).astype(np.int16)
        changed = np.any(state != self._news2_state[rows], axis=1)
        if commit:
            self._news2_state[rows] = state
            self._news2_inputs[rows] = inputs
        return TwinUpdate(rows, result, changed, now)

    def _news2_arguments(self, values: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        """news2()'s keyword arguments from a (rows, NEWS2 inputs) array of values."""
        return {kw: values[:, i] for i, kw in enumerate(self._news2_keywords)}

    def _news2_reusing(
        self,
        rows: NDArray[np.intp],
        values: NDArray[np.float64],
        scale: NDArray[np.int8],
        fresh: NDArray[np.bool_],
        ignored: NDArray[np.bool_],
    ) -> News2Batch:
        """NEWS2 of ``rows``: the committed state where the inputs are unchanged, news2()
        for the ``fresh`` rows only; equal to news2() of every row."""
        held = self._news2_state[rows]
        count = len(PARAMETERS)
        subscores = held[:, :count]
        score = held[:, count]
        partial = held[:, count + 1]
        band = held[:, count + 2].astype(np.int8)
        if fresh.any():
            scored = news2(**self._news2_arguments(values[fresh]), spo2_scale=scale[fresh])
            subscores[fresh] = scored.subscores
            score[fresh] = scored.score
            partial[fresh] = scored.partial_score
            band[fresh] = scored.band
        # news2()'s own rule: a parameter is missing where its input is not finite.
        missing = ~np.isfinite(values)
        for array in (subscores, score, partial, band, missing):
            array.setflags(write=False)
        return News2Batch(
            subscores=subscores,
            score=score,
            partial_score=partial,
            band=band,
            missing=missing,
            ignored=ignored,
        )

    def _changed(self, patient: str) -> None:
        self._tick += 1
        self._revision[patient] = self._tick

    # -- module inputs --------------------------------------------------------

    def revisions(self, patients: Sequence[str]) -> list[int]:
        """Per patient, a number that changes whenever its twin's state does (values, scale,
        identity): equal revisions mean a module reads the same inputs, bar ageing."""
        with self._lock:
            revision = self._revision.get
            return [revision(patient, 0) for patient in patients]

    def latest_values(
        self, rows: NDArray[np.intp], code: str, window_us: int, now_us: int
    ) -> tuple[NDArray[np.float64], NDArray[np.object_]]:
        """Newest usable value of ``code`` per row within the window, and its key.

        Usable as NEWS2 uses it: not older than ``window_us``, not flagged as a
        suspected artifact. Keys are (source, source_id, version), None where no value.
        """
        return self.latest_table(rows, [(code, window_us)], now_us)[0]

    def latest_table(
        self, rows: NDArray[np.intp], wanted: Sequence[tuple[str, int]], now_us: int
    ) -> list[tuple[NDArray[np.float64], NDArray[np.object_]]]:
        """:meth:`latest_values` for several (code, window µs) at once, in that order."""
        return [(values, keys) for values, keys, _ in self.latest_cells(rows, wanted, now_us)[0]]

    def latest_cells(
        self, rows: NDArray[np.intp], wanted: Sequence[tuple[str, int]], now_us: int
    ) -> tuple[
        list[tuple[NDArray[np.float64], NDArray[np.object_], NDArray[np.object_]]],
        NDArray[np.int64],
    ]:
        """:meth:`latest_table` with, per (code, window), the keys of suspected artifacts
        held back (newer than the value in use, within the window; None where none);
        and per row the time (µs) the first of those readings ages out of its window
        (int64 max when none will)."""
        with self._lock:
            columns = np.array([self._column[code] for code, _ in wanted], dtype=np.intp)
            windows = np.array([window for _, window in wanted], dtype=np.int64)
            cells = np.ix_(rows, columns)
            usable = (now_us - self._times[cells] <= windows) & (self._flags[cells] & _HIDDEN == 0)
            values = np.where(usable, self._values[cells], np.nan)
            keys: NDArray[np.object_] = self._keys[cells]  # a copy: the twin keeps its keys
            keys[~usable] = None
            art_times = self._art_times[cells]
            held_back = (now_us - art_times <= windows) & (art_times > self._times[cells])
            excluded: NDArray[np.object_] = self._art_keys[cells]
            excluded[~held_back] = None
            never = np.iinfo(np.int64).max
            expiry = np.minimum(
                np.where(usable, self._times[cells] + windows, never),
                np.where(held_back, art_times + windows, never),
            )
            until = expiry.min(axis=1) if len(wanted) else np.full(len(rows), never)
            columns_out = [(values[:, j], keys[:, j], excluded[:, j]) for j in range(len(wanted))]
            return columns_out, until

    def attribute(self, rows: NDArray[np.intp], name: str) -> NDArray[np.float64]:
        """A twin attribute per row (see ``medtwin.models.modules.ATTRIBUTES``)."""
        if name != "spo2_scale":
            raise KeyError(f"no twin attribute {name!r}")
        with self._lock:
            out: NDArray[np.float64] = self._scale[rows].astype(np.float64)
            return out

    # -- views ----------------------------------------------------------------

    def rows_of(self, patients: Iterable[str]) -> NDArray[np.intp]:
        return np.array([self._row[p] for p in patients if p in self._row], dtype=np.intp)

    def vitals(self, row: int) -> dict[str, dict[str, Any]]:
        """Newest value of each registered code of one twin, with its time and flags.

        A suspected artifact newer than the value in use is shown under ``artifact``
        (or as the entry itself when the twin has no good value of that code).
        """
        out: dict[str, dict[str, Any]] = {}
        for column, code in enumerate(self.codes):
            good = self._entry(code, self._values, self._times, self._flags, row, column)
            suspect = self._entry(
                code, self._art_values, self._art_times, self._art_flags, row, column
            )
            if good is None:
                if suspect is not None:
                    out[code] = suspect
                continue
            if suspect is not None and self._art_times[row, column] > self._times[row, column]:
                good["artifact"] = {k: suspect[k] for k in ("value", "time", "flags")}
            out[code] = good
        return out

    def _entry(
        self,
        code: str,
        values: NDArray[np.float64],
        times: NDArray[np.int64],
        flags: NDArray[np.int32],
        row: int,
        column: int,
    ) -> dict[str, Any] | None:
        time_us = int(times[row, column])
        if time_us == _NEVER:
            return None
        value: float | str = float(values[row, column])
        if code == "80288-4":
            value = ACVPU[int(value)]
        return {
            "value": value,
            "unit": self._units[code],
            "time": to_iso(time_us),
            "flags": QualityFlag.names_of(int(flags[row, column])),
        }

    def other(self, patient: str) -> list[dict[str, Any]]:
        """Newest value of each unmapped code of one twin."""
        return [
            {
                "system": obs.system,
                "code": obs.code,
                "value": obs.value_num if obs.value_num is not None else obs.value_text,
                "unit": obs.unit,
                "time": to_iso(obs.effective_us),
                "flags": QualityFlag.names_of(obs.flags),
            }
            for obs in self._unmapped.get(patient, {}).values()
        ]

    def view(self, patient: str) -> dict[str, Any]:
        """The twin as JSON: newest vitals and NEWS2 at the clock's now."""
        with self._lock:
            row = self._row[patient]
            update = self._score(np.array([row], dtype=np.intp), commit=False)
            return self._view(row, update.news2.result(0), update.at_us)

    def _view(self, row: int, news2_result: dict[str, object], at_us: int) -> dict[str, Any]:
        patient = self.patient_ids[row]
        return {
            "patient": patient,
            "time": to_iso(at_us),
            "spo2_scale": int(self._scale[row]),
            "vitals": self.vitals(row),
            "other": self.other(patient),
            "news2": news2_result,
        }

    def events(self, update: TwinUpdate, *, only_changed: bool = False) -> list[dict[str, Any]]:
        """``twin.updated`` events for the twins of ``update``."""
        with self._lock:
            return [
                {
                    "type": "twin.updated",
                    **self._view(int(row), update.news2.result(i), update.at_us),
                }
                for i, row in enumerate(update.rows)
                if not only_changed or update.changed[i]
            ]

    def summaries(self) -> list[dict[str, Any]]:
        """Every twin's view, for the ward list."""
        with self._lock:
            update = self._score(np.arange(len(self.patient_ids), dtype=np.intp), commit=False)
            return [
                self._view(int(row), update.news2.result(i), update.at_us)
                for i, row in enumerate(update.rows)
            ]


def _object_array(items: Sequence[object]) -> NDArray[np.object_]:
    """A 1-D object array of ``items`` (tuples stay elements, not rows)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
