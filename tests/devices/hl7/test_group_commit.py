"""Group commit over MLLP: messages of concurrent connections are committed together,
each connection gets its own answer only after that commit, and nothing is lost."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from medtwin.data.store import Origin, SqlStore
from medtwin.devices.hl7 import HL7Processor, MllpServer, frame, send_messages
from medtwin.devices.hl7.mllp import END_BLOCK, START_BLOCK
from tests.devices.hl7.conftest import serve
from tests.devices.hl7.helpers import read_ack
from tests.devices.hl7.test_mllp import hr, oru


class _Listener:
    """An ``MllpServer`` running in an event loop of its own thread."""

    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server.bound_port

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _listen(
    batch_handler: Callable[[list[tuple[object, str]]], list[bytes | None]], **options: Any
) -> _Listener:
    server = MllpServer(
        lambda message, peer: b"unused",
        oversize=lambda head: None,
        batch_handler=batch_handler,
        **options,
    )
    return _Listener(server)


def _together(count: int, send: Callable[[int], None]) -> None:
    """Run ``send(n)`` for n in range(count) in threads started together."""
    threads = [threading.Thread(target=send, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def _exchange(conn: socket.socket, message: str, pending: bytearray) -> str:
    """Send one framed message and read its answer."""
    conn.sendall(frame(message))
    while END_BLOCK not in pending:
        data = conn.recv(65536)
        assert data, "the server closed the connection"
        pending += data
    end = pending.index(END_BLOCK)
    answer = bytes(pending[pending.index(START_BLOCK) + 1 : end])
    del pending[: end + len(END_BLOCK)]
    return answer.decode()


@pytest.fixture
def commits(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The control ids of each commit of ``store``, recorded once it has returned."""
    recorded: list[set[str]] = []
    append = store.append

    def recording(*args: Any, **kwargs: Any) -> Any:
        statuses = append(*args, **kwargs)
        # An answer sent before the commit would be read while this sleeps.
        time.sleep(0.002)
        origins: list[Origin | None] = kwargs.get("origins") or []
        recorded.append({o.message.split("|", 1)[1] for o in origins if o is not None})
        return statuses

    monkeypatch.setattr(store, "append", recording)
    return recorded


def test_concurrent_connections_commit_together_each_answered_after_its_commit(
    processor: HL7Processor, store: SqlStore, commits: list[set[str]]
) -> None:
    connections, each = 4, 25
    early: list[str] = []  # control ids answered before their commit had returned
    answers: dict[int, list[str]] = {}

    def sender(number: int) -> None:
        got: list[str] = []
        pending = bytearray()
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as conn:
            for i in range(each):
                cid = f"C{number}-{i}"
                message = oru(cid, hr(str(60 + i)), pid=str(number))
                ack = read_ack(_exchange(conn, message, pending))
                if not any(cid in commit for commit in list(commits)):
                    early.append(cid)
                got.append(f"{ack.code} {ack.control_id}")
        answers[number] = got

    with serve(processor) as running:
        _together(connections, sender)

    assert early == []
    for number in range(connections):
        assert answers[number] == [f"AA C{number}-{i}" for i in range(each)]
    # Nothing lost, nothing twice.
    committed = [cid for commit in commits for cid in commit]
    assert sorted(committed) == sorted(f"C{n}-{i}" for n in range(connections) for i in range(each))
    assert store.count("observations") == connections * each
    assert store.count("hl7_messages") == connections * each
    # Committed together: commits holding several connections' messages, fewer commits.
    shared = [c for c in commits if len({cid.split("-")[0] for cid in c}) > 1]
    assert shared
    assert len(commits) < connections * each


def test_the_next_batch_waits_for_the_connections_just_answered() -> None:
    sizes: list[int] = []

    def handler(frames: list[tuple[object, str]]) -> list[bytes | None]:
        sizes.append(len(frames))
        time.sleep(0.02)  # a commit
        return [b"ACK " + item for item, _ in frames if isinstance(item, bytes)]

    connections, each = 6, 10
    answers: dict[int, list[str | None]] = {}
    with _listen(handler, group_wait_s=0.5) as port:

        def sender(number: int) -> None:
            messages = [f"c{number}-{i}".encode() for i in range(each)]
            answers[number] = send_messages("127.0.0.1", port, messages)

        _together(connections, sender)

    for number in range(connections):
        assert answers[number] == [f"ACK c{number}-{i}" for i in range(each)]
    assert sum(sizes) == connections * each
    # Without waiting, the connections answered together and the one that came during
    # their commit take turns (1, 5, 1, 5...): twice the commits.
    assert len(sizes) <= each + 3, sizes
    assert sizes.count(connections) >= each - 3, sizes


def test_a_connection_alone_does_not_wait_and_a_silent_one_is_not_waited_for() -> None:
    def handler(frames: list[tuple[object, str]]) -> list[bytes | None]:
        time.sleep(0.1)
        return [b"ok" for _ in frames]

    with _listen(handler, group_wait_s=10.0) as port:
        # One message, then the connection stays open and silent.
        silent = socket.create_connection(("127.0.0.1", port))
        assert _exchange(silent, "first", bytearray()) == "ok"
        started = time.monotonic()
        answers = send_messages("127.0.0.1", port, [b"m"] * 10)
        elapsed = time.monotonic() - started
        silent.close()
    assert answers == ["ok"] * 10
    # 10 commits of 0.1 s; the silent connection is waited for once, at most one commit
    # (waiting each time, as long as a commit, would take 2 s).
    assert elapsed < 1.0 + 0.1 + 0.5, elapsed


def test_frames_waiting_for_their_batch_are_read_ahead_in_the_worker() -> None:
    reads: list[tuple[bytes, str]] = []
    given: list[object] = []

    def read_ahead(message: bytes) -> object:
        reads.append((message, threading.current_thread().name))
        return ("read", message)

    def handler(frames: list[tuple[object, str]]) -> list[bytes | None]:
        given.extend(item for item, _ in frames)
        time.sleep(0.01)
        out: list[bytes | None] = []
        for item, _ in frames:
            message = item[1] if isinstance(item, tuple) else item
            assert isinstance(message, bytes)
            out.append(b"ACK " + message)
        return out

    connections, each = 4, 8
    answers: dict[int, list[str | None]] = {}
    with _listen(handler, group_wait_s=0.5, read_ahead=read_ahead) as port:

        def sender(number: int) -> None:
            messages = [f"c{number}-{i}".encode() for i in range(each)]
            answers[number] = send_messages("127.0.0.1", port, messages)

        _together(connections, sender)

    for number in range(connections):
        assert answers[number] == [f"ACK c{number}-{i}" for i in range(each)]
    assert reads, "no frame was read ahead"
    assert all(thread.startswith("mllp") for _, thread in reads)
    # Each frame was handed over once: read ahead (as read) or as its bytes.
    read_messages = {message for message, _ in reads}
    for item in given:
        if isinstance(item, tuple):
            assert item[1] in read_messages
        else:
            assert item not in read_messages
    assert len(given) == connections * each


def test_messages_read_ahead_have_the_outcomes_of_messages_read_at_their_turn(
    processor: HL7Processor, store: SqlStore
) -> None:
    first = oru("R1", hr("72"))
    raws = [
        first.encode(),
        oru("R2", hr("80", time="20300101114000+0000"), pid="2").encode(),
        first.encode(),  # a resend inside the group
        oru("R3", "OBX|1|NM|9279-1^Resp rate^LN||fast|/min|||||F").encode(),
        oru("R4", hr("76", "C")).encode(),  # a correction: read again at its turn
        b"MSH|^~\\&|SCH|H|||20300101||SIU^S12|R5|P|2.5\rSCH|1",
        b"garbage",
    ]
    read = [processor.read_ahead(raw) for raw in raws]
    assert [r.work is not None for r in read] == [True, True, True, True, False, False, False]
    outcomes = processor.handle_batch(read)
    assert [o.code for o in outcomes] == ["AA", "AA", "AA", "AE", "AA", "AR", "AR"]
    assert [o.duplicate_message for o in outcomes] == [False, False, True] + [False] * 4
    assert store.count("observations") == 3  # R1, R2 and R1's corrected version
    assert store.count("hl7_messages") == 5
