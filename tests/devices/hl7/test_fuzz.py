"""Property tests: arbitrary input never crashes the parser, the processor or the listener."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.core.errors import InputError
from medtwin.data.store import SqlStore, open_store
from medtwin.devices.hl7 import HL7Processor, frame, parse_message, send_messages
from tests.devices.hl7.conftest import RunningServer, make_processor, serve
from tests.devices.hl7.helpers import read_ack

HEADER = "MSH|^~\\&|LAB|H|||20300101||ORU^R01|F1|P|2.5.1\r"
_hl7ish = st.text(alphabet="|^~\\&\r\n\x0b\x1cMSHPIDOBXNMSTCWE0123456789.+-<>: ", max_size=300)
messages = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(str.encode),
    st.builds(lambda body: (HEADER + body).encode(), _hl7ish),
    st.builds(lambda body: ("\ufeffMSH" + body).encode(), _hl7ish),
)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlStore]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    store = open_store(f"sqlite:///{path}")
    yield store
    store.close()


@pytest.fixture(scope="module")
def fuzz_processor(fuzz_store: SqlStore) -> HL7Processor:
    return make_processor(fuzz_store)


@pytest.fixture(scope="module")
def fuzz_server(fuzz_processor: HL7Processor) -> Iterator[RunningServer]:
    with serve(fuzz_processor, idle_timeout_s=2.0) as running:
        yield running


@given(raw=messages)
@settings(max_examples=300, deadline=None)
def test_parser_raises_only_input_error(raw: bytes) -> None:
    location = None
    try:
        parse_message(raw)
    except InputError as exc:
        location = exc.location
    assert location is None or location


@given(raw=messages)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_processor_always_answers(raw: bytes, fuzz_processor: HL7Processor) -> None:
    outcome = fuzz_processor.handle(raw)
    if outcome.ack is not None:
        ack = read_ack(outcome.ack)
        assert ack.code in {"AA", "AE", "AR", "CA", "CE", "CR"}


@given(raw=messages)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_listener_answers_or_closes_cleanly(raw: bytes, fuzz_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=10) as conn:
        conn.sendall(frame(raw))
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    # Each frame's answer is one well-formed framed ACK; a frame the raw bytes cut
    # short (an embedded end block) may add answers, never garbage.
    for part in [p for p in received.split(b"\x1c\r") if p]:
        assert part.startswith(b"\x0b")
        read_ack(part[1:].decode("utf-8"))
    # And the listener still serves a good message.
    (answer,) = send_messages(
        "127.0.0.1", fuzz_server.port, [HEADER + "PID|1||P1\rOBX|1|NM|X^Y^L||1|||||||F|||20300101"]
    )
    assert answer is not None
    assert fuzz_server.coordinator.server.stats.errors == 0
