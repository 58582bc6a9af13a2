"""Waveforms (ECG, PPG) in the store: chunks of samples, not one row per sample.

Each row of the ``waveforms`` table is one :class:`WaveformSegment` (a start time,
a sampling rate and a compressed float32 sample blob, see
:mod:`medtwin.devices.conditioning.waveforms`), keyed by the sender's
``(source, source_id)``. :meth:`WaveformStore.append` is idempotent on that key,
like observations: the same chunk again is a duplicate, other content under the
same key a conflict, quarantined with both in one transaction. Queries return the
chunks that overlap a time interval, in time order; :meth:`WaveformStore.window`
gives them with their keys, for the provenance of what is derived from them.

A chunk may span at most :data:`MAX_CHUNK_S` seconds: queries look back that far
from the interval's start, so the ``(patient_id, code, start_us)`` index bounds them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from medtwin.core.errors import InputError
from medtwin.core.records import Patient
from medtwin.data.store import AppendStatus, QuarantineEntry, SqlStore, schema
from medtwin.devices.conditioning.waveforms import WaveformSegment

__all__ = ["MAX_CHUNK_S", "WaveformKey", "WaveformStore"]

#: The longest chunk the store takes (s); longer recordings are cut with ``chunk`` first.
MAX_CHUNK_S = 600.0
_MAX_CHUNK_US = round(MAX_CHUNK_S * 1_000_000)
# Keys per IN (...) query.
_BATCH = 300

#: ``(source, source_id)`` of a stored chunk.
WaveformKey = tuple[str, str]


class WaveformStore:
    """The waveform chunks of a :class:`SqlStore` (the ``waveforms`` table)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- writing ---------------------------------------------------------------

    def append(
        self,
        segments_with_ids: Sequence[tuple[str, WaveformSegment]],
        *,
        received_us: int,
        channel: str = "api",
        new_patients: Sequence[Patient] = (),
        care_team: str | None = None,
        rejected: Sequence[QuarantineEntry] = (),
    ) -> list[AppendStatus]:
        """Store ``(source_id, segment)`` pairs in one transaction; one status per pair.

        The key is ``(segment.source, source_id)``. A key already stored (or earlier in
        the batch) with equal content is a duplicate; with other content a conflict,
        quarantined (on ``channel``) in the same transaction. ``new_patients`` are
        created and, with ``care_team``, the batch's patients join that team;
        ``rejected`` entries are quarantined with the batch.
        """
        for source_id, segment in segments_with_ids:
            _check(source_id, segment)
        statuses: list[AppendStatus | None] = [None] * len(segments_with_ids)
        first: dict[WaveformKey, WaveformSegment] = {}
        unique: list[tuple[int, str, WaveformSegment]] = []
        for index, (source_id, segment) in enumerate(segments_with_ids):
            key = (segment.source, source_id)
            seen = first.get(key)
            if seen is None:
                first[key] = segment
                unique.append((index, source_id, segment))
            else:
                statuses[index] = (
                    AppendStatus.DUPLICATE if seen == segment else AppendStatus.CONFLICT
                )
        table = schema.waveforms
        store = self.store
        with store.transaction() as conn:
            if new_patients:
                store._insert_patients(conn, new_patients)
            if care_team is not None and segments_with_ids:
                store._join_team(conn, care_team, {s.patient for _, s in segments_with_ids})
            stored = self._stored(conn, [(s.source, i) for _, i, s in unique])
            rows: list[dict[str, Any]] = []
            for index, source_id, segment in unique:
                existing = stored.get((segment.source, source_id))
                if existing is None:
                    rows.append(_row(source_id, segment, received_us))
                    statuses[index] = AppendStatus.STORED
                else:
                    statuses[index] = (
                        AppendStatus.DUPLICATE if existing == segment else AppendStatus.CONFLICT
                    )
            if rows:
                conn.execute(sa.insert(table), rows)
            conflicts = [
                _conflict_entry(source_id, segment, channel, received_us)
                for (source_id, segment), status in zip(segments_with_ids, statuses, strict=True)
                if status is AppendStatus.CONFLICT
            ]
            entries = [
                e if e.received_us else replace(e, received_us=received_us) for e in rejected
            ] + conflicts
            if entries:
                store._insert_quarantine(conn, entries)
        return [AppendStatus.STORED if s is None else s for s in statuses]

    @staticmethod
    def _stored(
        conn: sa.Connection, keys: Sequence[WaveformKey]
    ) -> dict[WaveformKey, WaveformSegment]:
        """The stored chunks among ``keys``."""
        table = schema.waveforms
        key = sa.tuple_(table.c.source, table.c.source_id)
        wanted = sorted(set(keys))
        found: dict[WaveformKey, WaveformSegment] = {}
        for start in range(0, len(wanted), _BATCH):
            query = sa.select(table).where(key.in_(wanted[start : start + _BATCH]))
            for r in conn.execute(query):
                found[(r.source, r.source_id)] = _segment(r)
        return found

    # -- reading ---------------------------------------------------------------

    def segments(
        self,
        patient: str,
        *,
        code: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        start_us: int,
        end_us: int,
    ) -> list[WaveformSegment]:
        """The patient's chunks that overlap ``[start_us, end_us)``, in time order."""
        found = self._query(
            [patient], code=code, kind=kind, source=source, start_us=start_us, end_us=end_us
        )
        return [segment for _, segment in found.get(patient, [])]

    def window(
        self,
        patients: Sequence[str],
        *,
        kind: str,
        start_us: int,
        end_us: int,
    ) -> dict[str, list[tuple[WaveformKey, WaveformSegment]]]:
        """Each patient's ``kind`` chunks overlapping ``[start_us, end_us)``, with their keys.

        Every patient asked for is a key of the answer (an empty list when it has none);
        chunks are in time order.
        """
        found = self._query(patients, kind=kind, start_us=start_us, end_us=end_us)
        return {patient: found.get(patient, []) for patient in patients}

    def _query(
        self,
        patients: Sequence[str],
        *,
        code: str | None = None,
        kind: str | None = None,
        source: str | None = None,
        start_us: int,
        end_us: int,
    ) -> dict[str, list[tuple[WaveformKey, WaveformSegment]]]:
        table = schema.waveforms
        wanted = sorted(set(patients))
        out: dict[str, list[tuple[WaveformKey, WaveformSegment]]] = {}
        if not wanted or end_us <= start_us:
            return out
        with self.store.reading() as conn:
            for first in range(0, len(wanted), _BATCH):
                query = sa.select(table).where(
                    table.c.patient_id.in_(wanted[first : first + _BATCH]),
                    table.c.start_us < end_us,
                    # No chunk is longer than MAX_CHUNK_S: this bounds the index scan.
                    table.c.start_us > start_us - _MAX_CHUNK_US,
                    table.c.end_us > start_us,
                )
                if code is not None:
                    query = query.where(table.c.code == code)
                if kind is not None:
                    query = query.where(table.c.kind == kind)
                if source is not None:
                    query = query.where(table.c.source == source)
                query = query.order_by(table.c.patient_id, table.c.start_us, table.c.row_id)
                for r in conn.execute(query):
                    out.setdefault(r.patient_id, []).append(((r.source, r.source_id), _segment(r)))
        return out


def _check(source_id: str, segment: WaveformSegment) -> None:
    """InputError for a chunk the table cannot key, place or hold."""
    where = f"waveform {segment.source}/{source_id}"
    if not source_id or not segment.source:
        raise InputError("a waveform chunk needs a source and a source id", where)
    if not segment.patient or not segment.kind:
        raise InputError("a waveform chunk needs a patient and a kind", where)
    if segment.n_samples < 1:
        raise InputError("a waveform chunk needs at least one sample", where)
    if segment.end_us - segment.start_us > _MAX_CHUNK_US:
        raise InputError(
            f"chunk of {(segment.end_us - segment.start_us) / 1e6:g} s is longer than "
            f"{MAX_CHUNK_S:g} s (cut it with chunk())",
            where,
        )


def _row(source_id: str, segment: WaveformSegment, received_us: int) -> dict[str, Any]:
    row = segment.to_row()
    row["patient_id"] = row.pop("patient")
    row["source_id"] = source_id
    row["received_us"] = received_us
    return row


def _segment(r: Any) -> WaveformSegment:
    return WaveformSegment.from_row({**r._mapping, "patient": r.patient_id})


def _conflict_entry(
    source_id: str, segment: WaveformSegment, channel: str, received_us: int
) -> QuarantineEntry:
    """The refused chunk, whole: metadata and its samples as base64 of little-endian float32."""
    payload = {
        "id": source_id,
        "source": segment.source,
        "patient": segment.patient,
        "kind": segment.kind,
        "code": segment.code,
        "system": segment.system,
        "unit": segment.unit,
        "start_us": segment.start_us,
        "rate_hz": segment.rate_hz,
        "samples_b64": base64.b64encode(segment.samples.astype("<f4").tobytes()).decode(),
    }
    return QuarantineEntry(
        channel=channel,
        location=f"source={segment.source} id={source_id}",
        reason="conflict: this (source, id) was already stored with a different waveform",
        payload=json.dumps(payload, separators=(",", ":")),
        source=segment.source,
        received_us=received_us,
    )
