"""Per-sender code mappings, the ``mllp`` replayer, and group commit of messages that
arrive together: each with the outcome it would have had alone."""

from __future__ import annotations

import threading

import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.records import LOINC
from medtwin.data.mappings import (
    CodeMapping,
    add_mapping,
    list_mappings,
    remove_mapping,
    unmapped_codes,
)
from medtwin.data.store import SqlStore
from medtwin.devices.hl7 import HL7Processor, replayer, send_messages
from medtwin.twins.replay import Replayers
from tests.devices.hl7.conftest import NOW, RunningServer
from tests.devices.hl7.helpers import read_ack
from tests.devices.hl7.test_mllp import hr, oru

GLUCOSE_LOCAL = "OBX|1|NM|GLU^Glucose^99LAB||5.5|mmol/L|||||F|||20300101113000+0000"
SODIUM_LOCAL = "OBX|2|NM|NA^Sodium^L||140|mmol/L|||||F|||20300101113000+0000"


def test_mapping_functions(store: SqlStore) -> None:
    assert add_mapping(store, "LAB", "GLU", "2339-0", "mmol/L") == CodeMapping(
        "LAB", "GLU", "2339-0", "mmol/L"
    )
    add_mapping(store, "LAB", "GLU", "2345-7")  # replaces
    add_mapping(store, "OTHER", "HR", "8867-4", "/min")
    assert list_mappings(store) == [
        CodeMapping("LAB", "GLU", "2345-7", None),
        CodeMapping("OTHER", "HR", "8867-4", "/min"),
    ]
    assert list_mappings(store, "OTHER") == [CodeMapping("OTHER", "HR", "8867-4", "/min")]
    assert remove_mapping(store, "OTHER", "HR")
    assert not remove_mapping(store, "OTHER", "HR")
    with pytest.raises(ValueError, match="local code"):
        add_mapping(store, "LAB", " ", "2339-0")


def test_local_codes_are_mapped_per_sender_and_the_others_reported(
    processor: HL7Processor, store: SqlStore
) -> None:
    add_mapping(store, "LAB", "HRLOCAL", "8867-4", "/min")
    add_mapping(store, "OTHER-LAB", "NA", "2951-2", "mmol/L")  # another sender's table
    message = oru(
        "M1",
        "OBX|1|NM|HRLOCAL^Pulse^99LAB||88|bpm|||||F|||20300101113000+0000",
        SODIUM_LOCAL,
    )
    outcome = processor.handle(message.encode())
    assert outcome.code == "AA"
    assert outcome.stored == 2
    assert outcome.unmapped == {"urn:hl7v2:coding-system:L|NA": 1}
    assert "1 unmapped" in read_ack(outcome.ack or "").text
    stored = {o.observation.code: o.observation for o in store.history("MRN-1").items}
    pulse = stored["8867-4"]
    assert (pulse.system, pulse.value_num, pulse.unit, pulse.flags) == (LOINC, 88.0, "/min", 0)
    assert stored["NA"].flags & 1  # unmapped: kept and flagged
    (unmapped,) = unmapped_codes(store)
    assert (unmapped.source, unmapped.code, unmapped.count) == ("LAB", "NA", 1)
    assert unmapped_codes(store, source="OTHER-LAB") == []


def test_replay_takes_a_deletion_in_once_its_result_has_arrived(
    processor: HL7Processor, store: SqlStore
) -> None:
    replayers = Replayers(store, processor.ingestor, FixedClock(NOW))
    replayers.register("mllp", replayer(processor))
    # The deletion arrives before the result it deletes: quarantined.
    deletion = processor.handle(oru("R1", hr("", "D")).encode())
    assert deletion.code == "AE"
    (entry,) = store.quarantined()
    assert entry.location == "OBX[1]-11"
    assert entry.row_id is not None
    before = (store.count("observations"), store.count("quarantine"))
    refused = replayers.replay(entry.row_id)
    assert not refused.taken
    assert refused.location == "OBX[1]-11"
    # Refused: nothing written.
    assert (store.count("observations"), store.count("quarantine")) == before
    assert processor.handle(oru("R2", hr("72")).encode()).code == "AA"
    assert replayers.replay(entry.row_id).taken
    versions = sorted(
        (o.observation.version, o.observation.status) for o in store.history("MRN-1").items
    )
    assert versions == [(1, "final"), (2, "entered-in-error")]
    assert store.quarantined(resolved=False) == []


def test_replay_of_unreplayable_entries_explains_why(
    processor: HL7Processor, store: SqlStore
) -> None:
    replay = replayer(processor)
    processor.handle(b"MSH|^~\\&|SCH|H|||20300101||SIU^S12|S1|P|2.5\rSCH|1")
    processor.handle(b"not hl7 at all")
    for entry in store.quarantined():
        fault = replay(entry)
        assert fault is not None
        assert fault[0]
    assert store.count("observations") == 0


def test_a_group_is_answered_as_each_message_alone(
    processor: HL7Processor, store: SqlStore
) -> None:
    first = oru("G1", hr("72"))
    outcomes = processor.handle_batch(
        [
            first.encode(),
            oru("G2", hr("80", time="20300101114000+0000"), pid="2").encode(),
            first.encode(),  # the same message twice in one group: a resend
            oru("G3", "OBX|1|NM|9279-1^Resp rate^LN||fast|/min|||||F").encode(),
            oru("G4", hr("76", "C")).encode(),  # a correction: must see G1 committed
            b"MSH|^~\\&|SCH|H|||20300101||SIU^S12|G5|P|2.5\rSCH|1",
            b"garbage",
        ]
    )
    assert [o.code for o in outcomes] == ["AA", "AA", "AA", "AE", "AA", "AR", "AR"]
    assert [o.duplicate_message for o in outcomes] == [False, False, True] + [False] * 4
    assert [o.control_id for o in outcomes[:6]] == ["G1", "G2", "G1", "G3", "G4", "G5"]
    assert store.count("observations") == 3  # G1, G2 and G1's corrected version
    assert store.count("hl7_messages") == 5
    # A resend of the whole group later: every ORU is a duplicate again.
    again = processor.handle_batch([first.encode(), oru("G3", "OBX|1|NM|9279-1^R^LN||x").encode()])
    assert [o.duplicate_message for o in again] == [True, False]


def test_concurrent_connections_are_group_committed(
    processor: HL7Processor, server: RunningServer, store: SqlStore
) -> None:
    answers: dict[int, list[str | None]] = {}

    def sender(number: int) -> None:
        messages = [
            oru(
                f"K{number}-{i}",
                hr(str(60 + i), time=f"203001011{i % 6}0000+0000"),
                pid=str(number),
            )
            for i in range(30)
        ]
        answers[number] = send_messages("127.0.0.1", server.port, messages)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for number in range(4):
        acks = [read_ack(a or "") for a in answers[number]]
        assert [a.code for a in acks] == ["AA"] * 30
        assert [a.control_id for a in acks] == [f"K{number}-{i}" for i in range(30)]
    assert store.count("observations") == 120
    assert store.count("hl7_messages") == 120
