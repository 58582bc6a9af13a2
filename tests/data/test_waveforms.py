"""Waveform chunks in the store, on both backends: idempotency, windows, erasure, merges."""

from __future__ import annotations

import base64
import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from medtwin.core.errors import InputError, StoreError
from medtwin.core.records import Patient
from medtwin.data.crypto import BlindIndex, DataKeys, Keyring, generate_key
from medtwin.data.store import AppendStatus, QuarantineEntry, SqlStore, schema
from medtwin.data.vault import PatientVault, Privacy
from medtwin.data.waveforms import MAX_CHUNK_S, WaveformStore
from medtwin.devices.conditioning.waveforms import WaveformSegment, chunk, join

if TYPE_CHECKING:
    from conftest import StoreFactory  # tests/conftest.py

STORED, DUPLICATE, CONFLICT = AppendStatus.STORED, AppendStatus.DUPLICATE, AppendStatus.CONFLICT
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
S = 1_000_000
RATE = 125.0
RECEIVED = T0 + 3600 * S


def recording(seconds: float, *, seed: int = 0, rate: float = RATE) -> np.ndarray:
    """A PPG-like float32 signal: a 1.2 Hz pulse, its harmonic and noise."""
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size)
    return (np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(4 * np.pi * 1.2 * t) + noise).astype(
        np.float32
    )


def chunks_of(
    seconds: float,
    *,
    patient: str = "p1",
    source: str = "mon-1",
    start_us: int = T0,
    seed: int = 0,
    kind: str = "ppg",
) -> list[WaveformSegment]:
    return chunk(
        recording(seconds, seed=seed),
        start_us,
        RATE,
        60.0,
        patient=patient,
        source=source,
        kind=kind,
    )


def with_ids(chunks: list[WaveformSegment], prefix: str = "w") -> list[tuple[str, WaveformSegment]]:
    return [(f"{prefix}-{k}", c) for k, c in enumerate(chunks)]


def patient(name: str) -> Patient:
    return Patient(name, f"pt-{name}", 1, T0)


def test_migrated_table_matches_the_schema(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert [d for d in diffs if "waveforms" in str(d)] == []
    columns = {c.name for c in schema.waveforms.columns}
    row = chunks_of(10)[0].to_row()
    assert set(row) - {"patient"} < columns
    assert columns - set(row) == {"row_id", "source_id", "patient_id", "received_us"}


def test_append_stores_chunks_bit_exact(store: SqlStore) -> None:
    waves = WaveformStore(store)
    samples = recording(30)
    samples[3] = np.float32(-0.0)
    samples[4] = np.float32(1e-40)  # subnormal
    segment = WaveformSegment("p1", "mon-1", "ecg", T0, 500.0, samples)
    statuses = waves.append([("e-1", segment)], received_us=RECEIVED, new_patients=[patient("p1")])
    assert statuses == [STORED]
    [back] = waves.segments("p1", start_us=T0, end_us=T0 + 60 * S)
    assert back == segment
    assert back.samples.tobytes() == samples.tobytes()
    assert (back.code, back.unit) == ("131330", "mV")  # MDC ECG lead II by default
    assert store.patient("p1") == patient("p1")
    assert store.count("waveforms") == 1


def test_resend_is_a_duplicate(store: SqlStore) -> None:
    waves = WaveformStore(store)
    batch = with_ids(chunks_of(150))
    assert waves.append(batch, received_us=RECEIVED) == [STORED] * 3
    assert waves.append(batch, received_us=RECEIVED + 1) == [DUPLICATE] * 3
    # Twice in one batch: the second is a duplicate of the first.
    again = [("x", batch[0][1]), ("x", batch[0][1])]
    assert waves.append(again, received_us=RECEIVED) == [STORED, DUPLICATE]
    assert store.count("waveforms") == 4
    assert store.count("quarantine") == 0


def test_other_content_under_a_stored_key_is_a_quarantined_conflict(store: SqlStore) -> None:
    waves = WaveformStore(store)
    first = chunks_of(60)[0]
    assert waves.append([("w-1", first)], received_us=RECEIVED, channel="api") == [STORED]
    changed = chunks_of(60, seed=9)[0]
    answer = waves.append(
        [("w-1", changed), ("w-2", changed)], received_us=RECEIVED + 5, channel="waveforms"
    )
    assert answer == [CONFLICT, STORED]
    [entry] = store.quarantined()
    assert entry.channel == "waveforms"
    assert entry.source == "mon-1"
    assert entry.location == "source=mon-1 id=w-1"
    assert "conflict" in entry.reason
    assert entry.received_us == RECEIVED + 5
    payload = json.loads(entry.payload)
    assert payload["id"] == "w-1"
    assert payload["start_us"] == first.start_us
    assert np.frombuffer(base64.b64decode(payload["samples_b64"]), "<f4").tobytes() == (
        changed.samples.tobytes()
    )
    # The stored chunk is the first one, untouched.
    stored = waves.segments("p1", start_us=T0, end_us=T0 + 60 * S, source="mon-1")
    assert stored[0] == first


@pytest.mark.parametrize(
    "change",
    [
        {"patient": "p2"},
        {"start_us": T0 + 1},
        {"rate_hz": 126.0},
        {"unit": "%"},
        {"code": "150456"},
        {"kind": "ecg"},
    ],
)
def test_every_field_can_conflict(store: SqlStore, change: dict[str, object]) -> None:
    waves = WaveformStore(store)
    base = chunks_of(10)[0]
    fields: dict[str, object] = {
        "patient": base.patient,
        "source": base.source,
        "kind": base.kind,
        "start_us": base.start_us,
        "rate_hz": base.rate_hz,
        "samples": base.samples,
        "unit": base.unit,
        "code": base.code,
    }
    other = WaveformSegment(**{**fields, **change})  # type: ignore[arg-type]
    waves.append([("w", base)], received_us=RECEIVED)
    assert waves.append([("w", other)], received_us=RECEIVED) == [CONFLICT]
    assert waves.append([("a", base), ("a", other)], received_us=RECEIVED) == [STORED, CONFLICT]
    assert store.count("quarantine") == 2


def test_same_id_from_another_source_is_another_chunk(store: SqlStore) -> None:
    waves = WaveformStore(store)
    a = chunks_of(10)[0]
    b = chunks_of(10, source="mon-2", seed=3)[0]
    assert waves.append([("w", a), ("w", b)], received_us=RECEIVED) == [STORED, STORED]


def test_rejected_entries_are_quarantined_with_the_batch(store: SqlStore) -> None:
    waves = WaveformStore(store)
    refused = QuarantineEntry("waveforms", "segments[1].rate_hz", "bad rate", '{"rate_hz": 0}')
    waves.append([("w", chunks_of(5)[0])], received_us=RECEIVED, rejected=[refused])
    [entry] = store.quarantined()
    assert (entry.location, entry.received_us) == ("segments[1].rate_hz", RECEIVED)
    # Rejections alone are quarantined too.
    waves.append([], received_us=RECEIVED + 1, rejected=[refused])
    assert store.count("quarantine") == 2


def test_a_bad_chunk_stores_nothing_of_its_batch(store: SqlStore) -> None:
    waves = WaveformStore(store)
    too_long = WaveformSegment("p1", "mon-1", "ppg", T0, 1.0, np.zeros(int(MAX_CHUNK_S) + 1))
    good = chunks_of(10)[0]
    with pytest.raises(InputError, match="longer than"):
        waves.append([("ok", good), ("long", too_long)], received_us=RECEIVED)
    with pytest.raises(InputError, match="source id"):
        waves.append([("", good)], received_us=RECEIVED)
    assert store.count("waveforms") == 0


def test_a_failed_transaction_stores_nothing(store: SqlStore) -> None:
    waves = WaveformStore(store)
    duplicate_pseudonym = [patient("p1"), Patient("p2", "pt-p1", 1, T0)]
    with pytest.raises(StoreError):
        waves.append(
            with_ids(chunks_of(70)), received_us=RECEIVED, new_patients=duplicate_pseudonym
        )
    assert store.count("waveforms") == store.count("patients") == 0


def test_new_patients_join_the_care_team(store: SqlStore) -> None:
    waves = WaveformStore(store)
    waves.append(
        with_ids(chunks_of(10, patient="p7")),
        received_us=RECEIVED,
        new_patients=[patient("p7")],
        care_team="ward-a",
    )
    with store.reading() as conn:
        teams = conn.execute(sa.select(schema.care_team_patients)).all()
    assert [(r.team, r.patient_id) for r in teams] == [("ward-a", "p7")]


def test_segments_overlapping_a_window_across_chunk_boundaries(store: SqlStore) -> None:
    waves = WaveformStore(store)
    chunks = chunks_of(150)  # 60 s + 60 s + 30 s
    waves.append(with_ids(chunks)[::-1], received_us=RECEIVED)  # stored out of order
    waves.append(with_ids(chunks_of(150, patient="p2"), "q"), received_us=RECEIVED)

    def starts(start_s: float, end_s: float) -> list[int]:
        found = waves.segments("p1", start_us=T0 + int(start_s * S), end_us=T0 + int(end_s * S))
        return [(c.start_us - T0) // S for c in found]

    assert starts(0, 150) == [0, 60, 120]
    assert starts(70, 130) == [60, 120]
    assert starts(59.99, 60) == [0]
    assert starts(60, 60.01) == [60]  # a chunk ends where the next begins: [start, end)
    assert starts(150, 200) == []
    assert starts(-100, 0) == []
    assert starts(30, 30) == []
    whole = join(waves.segments("p1", start_us=T0, end_us=T0 + 150 * S))
    assert whole.complete
    assert whole.segment.samples.tobytes() == recording(150).tobytes()
    assert waves.segments("p1", kind="ecg", start_us=T0, end_us=T0 + 150 * S) == []
    assert len(waves.segments("p1", code="150452", start_us=T0, end_us=T0 + 150 * S)) == 3


def test_window_gives_keys_per_patient(store: SqlStore) -> None:
    waves = WaveformStore(store)
    waves.append(with_ids(chunks_of(130)), received_us=RECEIVED)
    waves.append(with_ids(chunks_of(30, patient="p2", kind="ecg"), "e"), received_us=RECEIVED)
    window = waves.window(["p1", "p2", "p3"], kind="ppg", start_us=T0 + 90 * S, end_us=T0 + 200 * S)
    assert set(window) == {"p1", "p2", "p3"}
    assert [key for key, _ in window["p1"]] == [("mon-1", "w-1"), ("mon-1", "w-2")]
    assert window["p1"][0][1] == chunks_of(130)[1]
    assert window["p2"] == window["p3"] == []
    ecg = waves.window(["p2"], kind="ecg", start_us=T0, end_us=T0 + 10 * S)
    assert [key for key, _ in ecg["p2"]] == [("mon-1", "e-0")]
    assert waves.window([], kind="ppg", start_us=T0, end_us=T0 + S) == {}


def test_gaps_show_when_joined(store: SqlStore) -> None:
    waves = WaveformStore(store)
    chunks = chunks_of(180)
    waves.append(with_ids([chunks[0], chunks[2]]), received_us=RECEIVED)
    joined = join(waves.segments("p1", start_us=T0, end_us=T0 + 180 * S))
    [gap] = joined.gaps
    assert (gap.start_us, gap.end_us, gap.n_samples) == (T0 + 60 * S, T0 + 120 * S, 60 * 125)


def _vault(store: SqlStore) -> PatientVault:
    keyring = Keyring.from_spec(f"k1:{generate_key()}")
    return PatientVault(
        store, Privacy(keyring, DataKeys(keyring), BlindIndex(os.urandom(32)), b"p")
    )


def test_erasure_renames_the_patient_of_waveforms(store: SqlStore) -> None:
    waves = WaveformStore(store)
    waves.append(with_ids(chunks_of(70)), received_us=RECEIVED, new_patients=[patient("p1")])
    pseudonym = _vault(store).erase("p1", now_us=RECEIVED)
    assert pseudonym == "pt-p1"
    assert waves.segments("p1", start_us=T0, end_us=T0 + 70 * S) == []
    moved = waves.segments(pseudonym, start_us=T0, end_us=T0 + 70 * S)
    assert [c.patient for c in moved] == [pseudonym, pseudonym]
    assert moved[0].samples.tobytes() == chunks_of(70)[0].samples.tobytes()


def test_merge_moves_waveforms_to_the_survivor(store: SqlStore) -> None:
    waves = WaveformStore(store)
    waves.append(
        with_ids(chunks_of(70, patient="old")),
        received_us=RECEIVED,
        new_patients=[patient("old"), patient("new")],
    )
    moved = store.merge_patients("old", "new", at_us=RECEIVED)
    assert moved == 2
    assert waves.segments("old", start_us=T0, end_us=T0 + 70 * S) == []
    assert [c.patient for c in waves.segments("new", start_us=T0, end_us=T0 + 70 * S)] == [
        "new",
        "new",
    ]


def test_waveforms_survive_backup_and_restore(stores: StoreFactory, backend: str) -> None:
    source = stores.new(backend)
    WaveformStore(source).append(
        with_ids(chunks_of(150)), received_us=RECEIVED, new_patients=[patient("p1")]
    )
    path = stores.backup_path()
    source.backup(path)
    target = stores.new(backend)
    WaveformStore(target).append(with_ids(chunks_of(10, patient="gone"), "g"), received_us=1)
    target.restore(path)
    span = {"start_us": T0, "end_us": T0 + 150 * S}
    restored = WaveformStore(target).segments("p1", **span)
    assert restored == WaveformStore(source).segments("p1", **span)
    assert [c.samples.tobytes() for c in restored] == [c.samples.tobytes() for c in chunks_of(150)]
    assert WaveformStore(target).segments("gone", **span) == []
    assert target.count("waveforms") == 3


def test_appends_after_a_restore_get_new_row_ids(stores: StoreFactory, backend: str) -> None:
    source = stores.new(backend)
    WaveformStore(source).append(with_ids(chunks_of(130)), received_us=RECEIVED)
    path = stores.backup_path()
    source.backup(path)
    target = stores.new(backend)
    target.restore(path)
    later = with_ids(chunks_of(10, start_us=T0 + 200 * S), "later")
    assert WaveformStore(target).append(later, received_us=RECEIVED) == [STORED]
    assert target.count("waveforms") == 4
