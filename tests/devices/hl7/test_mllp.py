"""The listener and the processor on hand-made messages: resends, separators, limits,
allowlists, corrections, time zones and enhanced-mode acknowledgement."""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime

import pytest

from medtwin.core.clock import to_us
from medtwin.data.store import SqlStore
from medtwin.devices.hl7 import HL7Processor, frame, send_messages
from medtwin.devices.hl7.ack import sends_accept_ack
from medtwin.devices.hl7.parse import parse_message
from tests.devices.hl7.conftest import RunningServer, make_processor, serve
from tests.devices.hl7.helpers import read_ack

MSH = "MSH|^~\\&|LAB|HOSP|MEDTWIN|WARD|20300101120000||ORU^R01|{cid}|P|2.5.1{modes}"
PID = "PID|1||MRN-{pid}^^^HOSP^MR||SECRETNAME^JANE||19700101|F"
OBR = "OBR|1|ORD1|FIL1|57021-8^CBC^LN|||20300101110000+0000"


def oru(cid: str, *obx: str, pid: str = "1", modes: str = "") -> str:
    return "\r".join([MSH.format(cid=cid, modes=modes), PID.format(pid=pid), OBR, *obx]) + "\r"


HR = "OBX|1|NM|8867-4^Heart rate^LN||{value}|/min|||||{status}|||{time}"


def hr(value: str = "72", status: str = "F", time: str = "20300101113000+0000") -> str:
    return HR.format(value=value, status=status, time=time)


def closed_by_server(conn: socket.socket) -> bool:
    """Whether the server closed ``conn`` without answering (a reset counts: data was unread)."""
    try:
        return conn.recv(10) == b""
    except ConnectionResetError:
        return True


def test_identical_resend_is_stored_once(server: RunningServer, store: SqlStore) -> None:
    message = oru("C1", hr(), "OBX|2|NM|9279-1^Resp rate^LN||18|/min|||||F")
    first, again = send_messages("127.0.0.1", server.port, [message, message])
    assert first is not None
    assert again is not None
    assert read_ack(first).code == "AA"
    assert read_ack(again).code == "AA"
    assert "duplicate" in read_ack(again).text
    assert store.count("observations") == 2


def test_bom_and_any_line_break(server: RunningServer, store: SqlStore) -> None:
    base = oru("C2", hr(), "OBX|2|ST|X-1^Note^L||hello|||||||F")
    variants = [
        base,
        base.replace("\r", "\n"),
        base.replace("\r", "\r\n"),
        "\ufeff" + base.replace("\r", "\n"),
        "\ufeff" + base.replace("\r", "\r\n") + "\r\n\r\n",
    ]
    assert len({parse_message(v.encode()).digest for v in variants}) == 1
    answers = send_messages("127.0.0.1", server.port, variants)
    assert [read_ack(a).code for a in answers if a is not None] == ["AA"] * 5
    assert store.count("observations") == 2


def test_same_control_id_other_content_is_new_and_logged_without_personal_data(
    server: RunningServer, store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = send_messages("127.0.0.1", server.port, [oru("C3", hr("70")), oru("C3", hr("75"))])
    assert [read_ack(a).code for a in answers if a is not None] == ["AA", "AA"]
    assert store.count("observations") == 2
    assert "control id 'C3' reused" in caplog.text
    assert "SECRETNAME" not in caplog.text
    assert "MRN-1" not in caplog.text


def test_failing_obx_is_quarantined_and_the_others_stored(
    processor: HL7Processor, store: SqlStore
) -> None:
    message = oru(
        "C4",
        hr(),
        "OBX|2|NM|9279-1^Resp rate^LN||fast|/min|||||F",
        "OBX|3|ED|X^Scan^L||^AP^Octet-stream^Base64^AAAA|||||||F",
        "OBX|4|SN|2339-0^Glucose^LN||>^10|mg/dL|||||F",
        "OBX|5|SN|X-2^Ratio^L||^1^:^2||||||F",
        "OBX|6|NM|8867-4^Heart rate^LN||72|kg|||||F",
        "OBX|7|TX|X-3^Text^L||" + "x" * 300 + "|||||||F",
        "OBX|8|CWE|X-4^Finding^L||260415000^not detected^SCT|||||||F",
    )
    outcome = processor.handle(message.encode())
    assert outcome.code == "AE"
    ack = read_ack(outcome.ack or "")
    assert ack.error_locations == [
        "OBX^2^5",
        "OBX^3^2",
        "OBX^4^5",
        "OBX^6^6",
        "OBX^7^5",
    ]
    assert outcome.stored == 3
    assert outcome.quarantined == 5
    stored = {obs.observation.code: obs.observation for obs in store.history("MRN-1").items}
    assert stored["X-2"].value_text == "1:2"
    assert stored["X-4"].value_text == "260415000"
    assert stored["X-4"].flags & 1  # unmapped code: stored and flagged
    locations = sorted(e.location for e in store.quarantined())
    assert locations == ["OBX[2]-5", "OBX[3]-2", "OBX[4]-5", "OBX[6]-6", "OBX[7]-5"]
    assert outcome.unsupported == {"ED": 1}


def test_correction_and_deletion_make_new_versions(
    processor: HL7Processor, store: SqlStore
) -> None:
    assert processor.handle(oru("C5", hr("72")).encode()).code == "AA"
    assert processor.handle(oru("C6", hr("76", "C")).encode()).code == "AA"
    deletion = oru("C7", hr("", "D"))
    assert processor.handle(deletion.encode()).code == "AA"
    versions = sorted(
        (obs.observation.version, obs.observation.status, obs.observation.value_num)
        for obs in store.history("MRN-1").items
    )
    assert versions == [(1, "final", 72.0), (2, "corrected", 76.0), (3, "entered-in-error", 76.0)]
    ids = {obs.observation.source_id for obs in store.history("MRN-1").items}
    assert len(ids) == 1
    # Deleting a result medtwin never had is an error, and is kept.
    orphan = processor.handle(oru("C8", hr("", "D", "20300101100000+0000")).encode())
    assert orphan.code == "AE"
    assert read_ack(orphan.ack or "").error_locations == ["OBX^1^11"]


def test_times_without_offset_are_read_in_the_sender_zone(store: SqlStore) -> None:
    processor = make_processor(store, time_zones={"LAB": "Europe/Berlin"})
    outcome = processor.handle(oru("C9", hr(time="20300701120000")).encode())
    assert outcome.code == "AA"
    (stored,) = store.history("MRN-1").items
    assert stored.observation.effective_us == to_us(datetime(2030, 7, 1, 10, tzinfo=UTC))


def test_adt_registers_patients_and_merges_them(processor: HL7Processor, store: SqlStore) -> None:
    admit = (
        "MSH|^~\\&|ADT|HOSP|MEDTWIN|WARD|20300101||ADT^A01|A1|P|2.5.1\r"
        "PID|1||NEW-7^^^HOSP^MR||DOE^JOHN\rPV1|1|I|WARD1^101^1"
    )
    assert processor.handle(admit.encode()).code == "AA"
    assert store.patient("NEW-7") is not None
    # Results filed under an old record number, then merged into the new one.
    assert processor.handle(oru("R1", hr(), pid="OLD9").encode()).code == "AA"
    merge = (
        "MSH|^~\\&|ADT|HOSP|MEDTWIN|WARD|20300101||ADT^A40|A2|P|2.5.1\r"
        "PID|1||NEW-7^^^HOSP^MR\rMRG|MRN-OLD9^^^HOSP^MR"
    )
    assert processor.handle(merge.encode()).code == "AA"
    assert [i.observation.patient for i in store.history("NEW-7").items] == ["NEW-7"]
    assert store.history("MRN-OLD9").items == []
    assert "MRN-OLD9" not in {p.id for p in store.patients()}
    runtime = processor.ingestor.runtime
    assert "MRN-OLD9" not in runtime
    assert runtime.view("NEW-7")["vitals"]["8867-4"]["value"] == 72.0
    unknown = (
        "MSH|^~\\&|ADT|HOSP|MEDTWIN|WARD|20300101||ADT^A40|A3|P|2.5.1\r"
        "PID|1||NEW-7^^^HOSP^MR\rMRG|NEVER-SEEN^^^HOSP^MR"
    )
    outcome = processor.handle(unknown.encode())
    assert outcome.code == "AE"
    assert read_ack(outcome.ack or "").error_locations == ["MRG^1^1"]


def test_unsupported_type_and_version_are_rejected(processor: HL7Processor) -> None:
    siu = "MSH|^~\\&|SCH|H|||20300101||SIU^S12|S1|P|2.5\rSCH|1"
    assert processor.handle(siu.encode()).code == "AR"
    v3 = "MSH|^~\\&|LAB|H|||20300101||ORU^R01|S2|P|3.0\rPID|1||X"
    outcome = processor.handle(v3.encode())
    assert outcome.code == "AR"
    assert read_ack(outcome.ack or "").error_locations == ["MSH^1^12"]


def test_enhanced_mode_accept_acknowledgements(processor: HL7Processor) -> None:
    always = processor.handle(oru("E1", hr(), modes="|||AL|AL").encode())
    assert always.code == "CA"
    assert always.ack is not None
    never = processor.handle(oru("E2", hr(), modes="|||NE|AL").encode())
    assert never.code == "CA"
    assert never.ack is None
    errors_only = processor.handle(oru("E3", hr(), modes="|||ER|NE").encode())
    assert errors_only.ack is None
    siu = "MSH|^~\\&|SCH|H|||20300101||SIU^S12|E4|P|2.5|||ER|NE\rSCH|1"
    refused = processor.handle(siu.encode())
    assert refused.code == "CR"
    assert refused.ack is not None
    assert sends_accept_ack(None, "AA")


def test_sender_allowlist(store: SqlStore) -> None:
    processor = make_processor(store, allowed_senders=["OTHER"])
    outcome = processor.handle(oru("S1", hr()).encode())
    assert outcome.code == "AR"
    assert store.count("observations") == 0


def test_idle_connection_is_closed(processor: HL7Processor) -> None:
    with serve(processor, idle_timeout_s=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            started = time.monotonic()
            assert conn.recv(10) == b""
            assert time.monotonic() - started < 3
        # A sender that starts a frame and stalls is closed too.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(b"\x0bMSH|^~\\&|LAB")
            assert conn.recv(10) == b""
        assert server.coordinator.server.stats.idle_closed == 2


def test_oversized_message_is_refused_and_the_server_goes_on(
    processor: HL7Processor, store: SqlStore
) -> None:
    with serve(processor, max_message_bytes=2_000) as server:
        big = oru("BIG", *[hr() for _ in range(100)])
        small = oru("SMALL", hr())
        too_big, fine = send_messages("127.0.0.1", server.port, [big, small])
        assert too_big is not None
        assert fine is not None
        assert read_ack(too_big).code == "AR"
        assert read_ack(too_big).control_id == "BIG"
        assert read_ack(fine).code == "AA"
        # Split into small writes, with the end block cut in two.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            data = frame(oru("SPLIT", hr()))
            for position in range(0, len(data), 7):
                conn.sendall(data[position : position + 7])
            assert b"MSA|AA|SPLIT" in conn.recv(4096)
    assert store.count("observations") == 2


def test_peer_allowlist_closes_other_peers(processor: HL7Processor) -> None:
    with serve(processor, allowed_peers=["10.0.0.0/8"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(frame(oru("P1", hr())))
            assert closed_by_server(conn)
        assert server.coordinator.server.stats.refused_peers == 1
    with serve(processor, allowed_peers=["127.0.0.1"]) as server:
        (answer,) = send_messages("127.0.0.1", server.port, [oru("P2", hr())])
        assert answer is not None
        assert read_ack(answer).code == "AA"
