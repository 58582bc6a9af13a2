"""HL7 v2 over MLLP throughput: ORU^R01 messages/s with acknowledgements, against baselines.

The MLLP listener runs in this process on a SQLite store (synchronous=FULL, a temp
file), exactly as ``medtwin serve`` runs it. Senders are separate processes (so
they do not compete for this interpreter's lock), each on its own MLLP
connection, sending one message and waiting for its ACK before the next, as MLLP
senders do. The message is LAB-ORU-2 of the reference set (10 OBX), with a
unique MSH-10 each time so that nothing is a resend. Every ACK must be AA.

Measured over one connection and over 4 and 8 concurrent connections (a hospital's
interface engine forwards several feeds at once), against two baselines run the
same way in the same run:

- *echo*: an asyncio MLLP server answering a fixed ACK (the transport alone);
- *plain sqlite3*: that server committing, per message, the same 10 observation
  rows and 1 message-log row with plain ``sqlite3`` into the same schema and
  durability (one transaction per message): the least a listener committing each
  message on its own does.

medtwin commits the messages that arrive together on several connections in one
transaction (group commit: one fsync for all), each answered only after that commit;
that is how it can pass the plain baseline with several connections, not with one.

Run: ``medtwin bench interop_hl7`` or ``python bench/interop_hl7.py [--quick] [--runs N]``.

``--cpu`` measures instead the CPU time (``time.process_time``, so a busy machine
skews it less than it does throughput) the processor spends per message, called
directly (no sockets) in groups of 8 messages per commit, as 8 connections give it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

HL7_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hl7v2"
MESSAGE = "LAB-ORU-2.hl7"
NOW = datetime(2031, 1, 1, tzinfo=UTC)
ACK = b"MSH|^~\\&|MEDTWIN||SomeSystem||20310101||ACK^R01^ACK|1|T|2.5\rMSA|AA|{cid}\r"
START, END = b"\x0b", b"\x1c\r"
# One feed alone, and 4 and 8 feeds at once (lab, ADT, monitors... of one hospital).
CONNECTIONS = (1, 4, 8)


# -- sender (a separate process) ------------------------------------------------------


def client(port: int, prefix: str, count: int, path: Path) -> None:
    """Send ``count`` messages over one connection; print start and end (monotonic ns)."""
    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    head, rest = text.split("|ControlID|", 1)
    frames = [START + f"{head}|{prefix}-{i}|{rest}".encode() + END for i in range(count)]
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sys.stdin.readline()  # "go": every sender starts together
        started = time.monotonic_ns()
        pending = b""
        for i, data in enumerate(frames):
            conn.sendall(data)
            while END not in pending:
                chunk = conn.recv(65536)
                if not chunk:
                    raise SystemExit(f"connection closed after {i} messages")
                pending += chunk
            answer, pending = pending.split(END, 1)
            if b"MSA|AA|" not in answer and b"MSA|CA|" not in answer:
                raise SystemExit(f"message {i} not accepted: {answer[-300:]!r}")
        ended = time.monotonic_ns()
    print(started, ended, flush=True)


def send(port: int, connections: int, count: int, tag: str) -> float:
    """Messages/s of ``connections`` senders, ``count`` messages each, started together."""
    senders = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", str(port), f"{tag}c{c}", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in range(connections)
    ]
    time.sleep(0.5)  # interpreters up and connected
    for sender in senders:
        assert sender.stdin is not None
        sender.stdin.write("go\n")
        sender.stdin.flush()
    spans = []
    for sender in senders:
        out, _ = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise SystemExit(f"sender failed ({sender.returncode})")
        started, ended = (int(x) for x in out.split())
        spans.append((started, ended))
    elapsed = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
    return connections * count / elapsed


# -- servers --------------------------------------------------------------------------


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def medtwin_server(folder: Path) -> Iterator[tuple[int, Callable[[], int]]]:
    """medtwin's MLLP listener on a fresh store; yields its port and an observation count."""
    from medtwin.core.clock import FixedClock
    from medtwin.data.store import open_store
    from medtwin.devices.hl7 import HL7Processor, MllpCoordinator
    from medtwin.twins import EventBus, Ingestor, TwinRuntime

    store = open_store(f"sqlite:///{folder / 'medtwin.db'}", sqlite_synchronous="FULL")
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    coordinator = MllpCoordinator(HL7Processor(store, ingestor, clock), port=0)
    with event_loop() as loop:
        asyncio.run_coroutine_threadsafe(coordinator.start(), loop).result(10)
        try:
            yield coordinator.port, lambda: store.count("observations")
        finally:
            asyncio.run_coroutine_threadsafe(coordinator.stop(), loop).result(30)
            store.close()


_CONTROL_ID = re.compile(rb"^MSH\|[^|]*\|(?:[^|]*\|){7}([^|]*)\|")


async def _mllp(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    answer: Callable[[bytes], Awaitable[bytes]],
) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await reader.readuntil(START)
            message = (await reader.readuntil(END))[:-2]
            writer.write(START + await answer(message) + END)
            await writer.drain()
    writer.close()


def _ack(message: bytes) -> bytes:
    match = _CONTROL_ID.match(message)
    return ACK.replace(b"{cid}", match[1] if match else b"")


@contextlib.contextmanager
def baseline_server(folder: Path, *, store: bool) -> Iterator[int]:
    """The echo server, or with ``store`` the plain-sqlite3 one; yields its port."""
    from medtwin.data.store import open_store
    from medtwin.data.store.schema import OBSERVATION_COLUMNS
    from medtwin.data.store.sqlite import TUNING

    path = folder / "plain.db"
    open_store(f"sqlite:///{path}").close()  # same schema and indexes
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for pragma in TUNING:
        conn.execute(pragma)
    insert = (
        f"INSERT INTO observations ({', '.join(OBSERVATION_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(OBSERVATION_COLUMNS))})"
    )
    log = "INSERT INTO hl7_messages VALUES (?, ?, ?, ?, ?)"
    lock = threading.Lock()

    def commit(message: bytes) -> bytes:
        ack = _ack(message)
        cid = ack.rsplit(b"|", 1)[1].strip().decode()
        rows = [
            ("SomeSystem", f"{cid}.{i}", "10006579", "http://loinc.org", f"c{i}", 1.0 * i, None,
             "%", 1412562600000000, "final", 1, 0, 0)
            for i in range(10)
        ]  # fmt: skip
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows)
            conn.execute(log, ("SomeSystem", cid, cid, 0, "AA"))
            conn.execute("COMMIT")
        return ack

    async def answer(message: bytes) -> bytes:
        if not store:
            return _ack(message)
        return await asyncio.get_running_loop().run_in_executor(None, commit, message)

    with event_loop() as loop:

        async def start() -> asyncio.Server:
            return await asyncio.start_server(lambda r, w: _mllp(r, w, answer), "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            conn.close()


# -- CPU per message -----------------------------------------------------------------


def cpu_per_message(path: Path, count: int, group: int = 8) -> float:
    """CPU µs per message of ``HL7Processor.handle_batch`` over ``count`` messages."""
    from medtwin.core.clock import FixedClock
    from medtwin.data.store import open_store
    from medtwin.devices.hl7 import HL7Processor
    from medtwin.twins import EventBus, Ingestor, TwinRuntime

    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    head, rest = text.split("|ControlID|", 1)
    # Each message of a group from another sender connection, as in the socket runs: their
    # control ids interleave in the store's indexes.
    messages = [f"{head}|cpu{i % group}-{i // group}|{rest}".encode() for i in range(count + group)]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/medtwin.db", sqlite_synchronous="FULL")
        clock = FixedClock(NOW)
        ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
        processor = HL7Processor(store, ingestor, clock)
        processor.handle_batch(messages[:group])  # warm: the patient's twin, caches
        started = time.process_time()
        for start in range(group, count + group, group):
            for outcome in processor.handle_batch(messages[start : start + group]):
                assert outcome.code == "AA", outcome
        spent = time.process_time() - started
        assert store.count("observations") == 10 * (count + group)
        store.close()
    return spent / count * 1e6


# -- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 messages per run, 3 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None, help="messages per run")
    parser.add_argument("--client", nargs=3, metavar=("PORT", "PREFIX", "COUNT"))
    parser.add_argument(
        "--cpu", action="store_true", help="CPU µs per message of the processor alone"
    )
    args = parser.parse_args()
    path = HL7_DIR / MESSAGE
    if args.client:
        port, prefix, count = args.client
        client(int(port), prefix, int(count), path)
        return
    if not path.is_file():
        raise SystemExit(f"reference message not found: {path}")
    if args.cpu:
        count, runs = args.messages or 2400, args.runs or 3
        spent = min(cpu_per_message(path, count) for _ in range(runs))
        print(
            f"interop_hl7 --cpu: {spent:.0f} µs CPU per ORU^R01 message ({MESSAGE}, "
            f"10 OBX), 8 messages per commit, best of {runs} runs of {count:,}"
        )
        return
    total, runs = (500, 3) if args.quick else (3000, 5)
    total = args.messages or total
    runs = args.runs or runs
    rates: dict[str, list[float]] = {}
    for run in range(runs):
        line = []
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for connections in CONNECTIONS:
                each = total // connections
                tag = f"r{run}n{connections}"
                with baseline_server(folder / f"echo{connections}", store=False) as port:
                    rate = send(port, connections, each, tag)
                rates.setdefault(f"echo x{connections}", []).append(rate)
                with baseline_server(folder / f"plain{connections}", store=True) as port:
                    rate = send(port, connections, each, tag)
                rates.setdefault(f"plain x{connections}", []).append(rate)
                with medtwin_server(folder / f"medtwin{connections}") as (port, count):
                    rate = send(port, connections, each, tag)
                    assert count() == 10 * each * connections, count()
                rates.setdefault(f"medtwin x{connections}", []).append(rate)
                line.append(
                    f"x{connections}: medtwin {rates[f'medtwin x{connections}'][-1]:,.0f}, "
                    f"plain {rates[f'plain x{connections}'][-1]:,.0f}, "
                    f"echo {rates[f'echo x{connections}'][-1]:,.0f}"
                )
        print(f"run {run + 1}/{runs} (msg/s): " + "; ".join(line), flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"interop_hl7: {total:,} ORU^R01 messages ({MESSAGE}, 10 OBX each) per run, "
        f"{runs} runs, SQLite synchronous=FULL, ACK awaited before the next message"
    )
    for connections in CONNECTIONS:
        medtwin = median[f"medtwin x{connections}"]
        plain = median[f"plain x{connections}"]
        echo = median[f"echo x{connections}"]
        print(
            f"  {connections} connection{'s' if connections > 1 else ''}: "
            f"medtwin {medtwin:,.0f} msg/s ({10 * medtwin:,.0f} OBX/s); "
            f"plain sqlite3 {plain:,.0f} msg/s; echo {echo:,.0f} msg/s; "
            f"medtwin = {medtwin / plain:.0%} of plain sqlite3, {medtwin / echo:.0%} of echo"
        )


if __name__ == "__main__":
    main()
