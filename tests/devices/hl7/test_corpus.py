"""All reference messages over a real MLLP socket: the right acknowledgement for each,
and every ORU^R01 OBX either stored or quarantined with its reason."""

from __future__ import annotations

import re
from pathlib import Path

from medtwin.data.store import SqlStore
from medtwin.devices.hl7 import HL7Processor, send_messages
from medtwin.devices.hl7.adt import ADT_EVENTS
from medtwin.devices.hl7.parse import parse_message
from tests.devices.hl7.conftest import RunningServer
from tests.devices.hl7.helpers import read_ack


def _expected(path: Path) -> tuple[set[str], bool]:
    """The acknowledgement codes a reference message may get, and whether one is sent."""
    header = parse_message(path.read_bytes()).header
    supported = header.kind == "ORU^R01" or (
        header.message_type == "ADT" and header.trigger_event in ADT_EVENTS
    )
    if not header.enhanced:
        return ({"AA", "AE"} if supported else {"AR"}), True
    code = "CA" if supported else "CR"
    sent = {"NE": False, "ER": code != "CA", "SU": code == "CA"}.get(header.accept_ack, True)
    return {code}, sent


def test_every_reference_message_gets_its_acknowledgement(
    hl7_files: list[Path], processor: HL7Processor, server: RunningServer, store: SqlStore
) -> None:
    assert len(hl7_files) == 139
    messages = [path.read_bytes() for path in hl7_files]
    answers = send_messages("127.0.0.1", server.port, messages)
    assert len(answers) == len(messages)
    oru_obx = 0
    quarantined_obx = 0
    for path, answer in zip(hl7_files, answers, strict=True):
        codes, sent = _expected(path)
        parsed = parse_message(path.read_bytes())
        if parsed.header.kind == "ORU^R01":
            oru_obx += sum(1 for s in parsed.text.split("\r") if s.startswith("OBX"))
        if not sent:
            assert answer is None, path.name
            continue
        assert answer is not None, path.name
        ack = read_ack(answer)
        assert ack.code in codes, (path.name, ack.code, ack.errors)
        assert ack.control_id == parsed.header.control_id, path.name
        if ack.code in ("AE", "AR", "CR"):
            assert ack.errors, path.name  # each refusal or error names where
        if parsed.header.kind == "ORU^R01":
            quarantined_obx += sum(1 for err in ack.errors if err[4] == "E")
    # The listener survived all of it and still answers.
    assert server.coordinator.server.stats.errors == 0
    assert send_messages("127.0.0.1", server.port, [messages[0]])[0] is not None

    assert oru_obx == 54
    stored = store.count("observations")
    entries = store.quarantined(limit=10_000)
    oru_entries = [
        e for e in entries if re.match(r"OBX\[\d+\]", e.location) or e.location == "PID-3"
    ]
    assert all(e.reason and e.payload and e.channel == "mllp" for e in entries)
    assert stored + len(oru_entries) == oru_obx
    assert len(oru_entries) == quarantined_obx
    reasons = [e.reason for e in oru_entries]
    assert reasons.count("value type RP not supported") == 2
    assert reasons.count("value type ED not supported") == 1
    # Unsupported message types are kept whole, with MSH-9 as the location.
    assert any(e.location == "MSH-9" and "SIU^S12" in e.reason for e in entries)
