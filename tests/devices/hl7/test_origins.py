"""HL7 v2 origins: every stored OBX traces to ``sender|control id`` and ``OBX[n]``.

On the reference messages, through group commit, resends and the replay of a
quarantined part (whose origin is the quarantine entry).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from medtwin.core.clock import FixedClock
from medtwin.data.store import Origin, SqlStore, schema
from medtwin.devices.hl7 import HL7Processor, replayer
from medtwin.devices.hl7.parse import parse_message
from medtwin.twins.replay import Replayers
from tests.devices.hl7.conftest import NOW
from tests.devices.hl7.test_mllp import hr, oru

Key = tuple[str, str, int]


def _keys(store: SqlStore) -> set[Key]:
    table = schema.observations
    with store.reading() as conn:
        rows = conn.execute(sa.select(table.c.source, table.c.source_id, table.c.version))
        return {(r.source, r.source_id, r.version) for r in rows}


def _obx_number(source_id: str) -> int:
    """The OBX position the HL7 adapter puts in an observation id (``<cid>.<n>.<digest>``)."""
    return int(source_id.rsplit(".", 2)[1])


def test_reference_messages_trace_to_sender_control_id_and_obx(
    hl7_files: list[Path], processor: HL7Processor, store: SqlStore
) -> None:
    expected: dict[Key, Origin] = {}
    for path in hl7_files:
        raw = path.read_bytes()
        header = parse_message(raw).header
        before = _keys(store)
        processor.handle(raw)
        message = f"{header.sender}|{header.control_id}"
        for key in _keys(store) - before:
            expected[key] = Origin("mllp", message, f"OBX[{_obx_number(key[1])}]")
    assert len(expected) > 20  # the corpus stores most of its OBX
    assert store.origins_of(list(expected)) == expected
    # Every message again: identical resends, nothing stored, the origins as they were.
    for path in hl7_files:
        processor.handle(path.read_bytes())
    assert _keys(store) == set(expected)
    assert store.origins_of(list(expected)) == expected
    assert store.count("observation_origins") == len(expected)


def test_each_message_of_a_group_commit_keeps_its_own_origin(
    processor: HL7Processor, store: SqlStore
) -> None:
    outcomes = processor.handle_batch(
        [
            oru("G1", hr("72"), "OBX|2|NM|9279-1^Resp rate^LN||18|/min|||||F").encode(),
            oru("G2", "OBX|1|NM|9279-1^Resp rate^LN||fast|/min|||||F", hr("80"), pid="2").encode(),
        ]
    )
    assert [o.code for o in outcomes] == ["AA", "AE"]
    origins = store.origins_of(list(_keys(store)))
    assert sorted((o.message, o.entry) for o in origins.values()) == [
        ("LAB|G1", "OBX[1]"),
        ("LAB|G1", "OBX[2]"),
        ("LAB|G2", "OBX[2]"),  # OBX[1] was quarantined: no observation, no origin
    ]
    assert {o.channel for o in origins.values()} == {"mllp"}


def test_a_replayed_obx_traces_to_its_quarantine_entry(
    processor: HL7Processor, store: SqlStore
) -> None:
    replayers = Replayers(store, processor.ingestor, FixedClock(NOW))
    replayers.register("mllp", replayer(processor))
    # OBX 2 deletes a result not yet received: quarantined with its place in the message.
    early = oru("R1", "OBX|1|NM|9279-1^Resp rate^LN||18|/min|||||F", hr("", "D"), pid="3").encode()
    assert processor.handle(early).code == "AE"
    (entry,) = store.quarantined()
    assert entry.location == "OBX[2]-11"
    assert entry.row_id is not None
    before = _keys(store)
    assert processor.handle(oru("R2", hr("72"), pid="3").encode()).code == "AA"
    (result,) = _keys(store) - before
    assert replayers.replay(entry.row_id).taken
    (deletion,) = _keys(store) - before - {result}
    assert deletion[2] == 2  # a new version of the result
    assert store.origins_of([deletion]) == {
        deletion: Origin("mllp", f"quarantine/{entry.row_id}", "OBX[2]")
    }
    assert store.origins_of([result])[result] == Origin("mllp", "LAB|R2", "OBX[1]")
