"""MLLP (minimal lower layer protocol) over TCP, optionally TLS: server and a small client.

A frame is ``0x0B <message> 0x1C 0x0D``. The server reads frames one after the
other on each connection, hands each to a synchronous handler in a worker
thread and writes the handler's answer (the ACK) only when it returns, that is
after the data is committed. Defences, each answered without harming the
other connections:

- a peer outside ``allowed_peers`` (addresses or networks) is closed at once;
- a connection silent for ``idle_timeout_s``, or one whose frame is not complete
  ``frame_timeout_s`` after it began (a slow drip), is closed;
- a frame larger than ``max_message_bytes`` is read to its end and discarded,
  then answered by the ``oversize`` callback (an AR); one that never ends is
  closed after 16 times that size;
- bytes outside a frame are skipped; at most ``max_connections`` at once.

With a ``batch_handler`` the frames of all connections go through one queue: the
worker takes every frame waiting when it becomes free and hands them over together
(at most ``max_batch``), so that messages arriving at once on several connections
are committed together (group commit: one fsync for all); each connection still
gets its own answer, in order, after that commit. One connection alone sees no
difference: its frames are handed over one by one, as its sender waits for each ACK.

Senders wait for each ACK, so the connections just answered send their next frame a
moment after the answer, while the frames that came during the commit are already
queued. Taking the queue at once would split the connections into two groups that
take turns (one frame, then seven, then one... on eight connections), each group
paying a whole commit. So before taking a batch the worker waits for the connections
answered by the previous one to queue their next frame, at most ``group_wait_s``
after that answer and never longer than that commit took (a commit of the frames
present costs about that much again). A connection alone never waits: its own frame
is the one expected.

With a ``read_ahead`` callable, a frame that will wait for its batch (others are
expected, or a batch is being handled) is given to it at once, in the worker that
is otherwise idle meanwhile; the batch handler then gets what it returned in place
of the frame's bytes. The worker runs these in arrival order, each before any batch
handed over after it, and ``read_ahead`` must do only what needs nothing committed
before it (parsing, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

__all__ = [
    "END_BLOCK",
    "START_BLOCK",
    "MllpServer",
    "ServerStats",
    "frame",
    "send_messages",
]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
log = logging.getLogger("medtwin.devices.hl7.mllp")

# handler(message bytes, peer address) -> answer bytes (None: send nothing)
Handler = Callable[[bytes, str], bytes | None]
# batch_handler([(message bytes or what read_ahead made of them, peer address), ...])
# -> one answer per message, in order
BatchHandler = Callable[[list[tuple[object, str]]], list[bytes | None]]
# read_ahead(message bytes) -> what the batch handler is given in place of the bytes
ReadAhead = Callable[[bytes], object]
# oversize(first bytes of the frame) -> answer bytes for a frame that was too large
Oversize = Callable[[bytes], bytes | None]
_READ_CHUNK = 65_536
_DISCARD_FACTOR = 16


def frame(message: bytes | str) -> bytes:
    """``message`` wrapped in MLLP start and end blocks."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


@dataclass
class ServerStats:
    """Counters of one server (for metrics and tests)."""

    connections: int = 0
    refused_peers: int = 0
    messages: int = 0
    oversized: int = 0
    idle_closed: int = 0
    errors: int = 0


class _CloseConnectionError(Exception):
    """The connection is to be closed (timeout, refusal); not an error of the server."""


class MllpServer:
    """An asyncio MLLP listener around a synchronous message handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        oversize: Oversize,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = 30.0,
        frame_timeout_s: float | None = None,
        max_message_bytes: int = 1024 * 1024,
        allowed_peers: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 256,
        batch_handler: BatchHandler | None = None,
        max_batch: int = 64,
        group_wait_s: float = 0.002,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        self.handler = handler
        self.batch_handler = batch_handler
        self.max_batch = max_batch
        self.group_wait_s = group_wait_s
        self.read_ahead = read_ahead
        self.oversize = oversize
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s or 4 * idle_timeout_s
        self.max_message_bytes = max_message_bytes
        self.allowed_peers = tuple(ipaddress.ip_network(p, strict=False) for p in allowed_peers)
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # One worker: the store is synchronous and messages are handled in arrival order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mllp")
        # Frames waiting for the batch handler (with their connection), and the task
        # handing them over.
        self._queue: list[_Queued] = []
        self._drainer: asyncio.Task[None] | None = None
        self._busy = False  # a batch is in the worker
        # Connections answered by the last batch whose next frame has not come yet, when
        # that answer was given (loop time), how long that batch took, and the signal
        # that one of them came (or went).
        self._expected: set[int] = set()
        self._answered_at = 0.0
        self._last_batch_s = 0.0
        self._arrival = asyncio.Event()
        self._connection_ids = itertools.count()

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.idle_timeout_s if self.ssl_context else None,
            reuse_address=True,
        )

    async def stop(self) -> None:
        """Stop listening, close the connections, let a message being handled finish."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._drainer is not None:  # let a batch being handled finish its commit
            with contextlib.suppress(Exception):
                await self._drainer
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        # A handler already running finishes its commit; nothing new starts.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- one connection -----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = _peer_host(writer)
        try:
            if not self._peer_allowed(peer):
                self.stats.refused_peers += 1
                log.warning("mllp: connection from %s refused (not an allowed peer)", peer)
                return
            if len(self._tasks) > self.max_connections:
                log.warning("mllp: connection from %s refused (too many connections)", peer)
                return
            self.stats.connections += 1
            connection = next(self._connection_ids)
            try:
                await self._frames(reader, writer, peer, connection)
            finally:
                self._arrived(connection)  # none will come: not waited for
        except _CloseConnectionError:
            pass
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("mllp: connection from %s ended: %s", peer, type(exc).__name__)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must cost one connection, never the listener
            self.stats.errors += 1
            log.exception("mllp: connection from %s failed", peer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _peer_allowed(self, peer: str) -> bool:
        if not self.allowed_peers:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_peers)

    async def _frames(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        connection: int,
    ) -> None:
        pending = bytearray()  # bytes read and not yet taken apart
        in_frame = False
        scanned = 0  # bytes of the current frame already searched for the end block
        discarded = -1  # bytes thrown away of an oversized frame (-1: not discarding)
        head = b""  # the start of an oversized frame: enough for its MSH
        started = 0.0
        limit = self.max_message_bytes
        while True:
            while True:  # take every complete frame out of ``pending``
                if not in_frame:
                    start = pending.find(START_BLOCK)
                    if start < 0:
                        pending.clear()  # bytes between frames (line breaks, noise)
                        break
                    del pending[: start + 1]
                    in_frame, scanned, started = True, 0, time.monotonic()
                end = pending.find(END_BLOCK, max(0, scanned - 1))
                if end < 0:
                    scanned = len(pending)
                    if len(pending) > limit + 1:
                        if discarded < 0:
                            head, discarded = bytes(pending[:4096]), 0
                        # Keep the last byte: it may be the 0x1C of a split end block.
                        discarded += len(pending) - 1
                        del pending[:-1]
                        scanned = 1
                        if discarded > _DISCARD_FACTOR * limit:
                            raise _CloseConnectionError
                    break
                message = bytes(pending[:end])
                del pending[: end + 2]
                in_frame = False
                if discarded >= 0 or len(message) > limit:
                    self.stats.oversized += 1
                    log.warning("mllp: oversized message from %s discarded", peer)
                    answer = self.oversize(head if discarded >= 0 else message[:4096])
                    discarded = -1
                else:
                    self.stats.messages += 1
                    answer = await self._dispatch(message, peer, connection)
                if answer is not None:
                    writer.write(frame(answer))
                    # Usually sent at once: waiting for a drain would cost a timer per answer.
                    if writer.transport.get_write_buffer_size():
                        async with asyncio.timeout(self.idle_timeout_s):
                            await writer.drain()
            timeout = self.idle_timeout_s
            if in_frame:
                remaining = started + self.frame_timeout_s - time.monotonic()
                timeout = min(timeout, max(0.0, remaining))
            try:
                async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
                    chunk = await reader.read(_READ_CHUNK)
            except TimeoutError:
                self.stats.idle_closed += 1
                log.info("mllp: connection from %s timed out", peer)
                raise _CloseConnectionError from None
            if not chunk:
                return
            pending += chunk

    async def _dispatch(self, message: bytes, peer: str, connection: int) -> bytes | None:
        """The handler's answer to ``message`` (alone, or in the next batch)."""
        loop = asyncio.get_running_loop()
        if self.batch_handler is None:
            return await loop.run_in_executor(self._executor, self.handler, message, peer)
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._arrived(connection)
        read: Future[object] | None = None
        if self.read_ahead is not None and (self._expected or self._busy):
            # Not handed over at once: the worker reads it meanwhile.
            read = self._executor.submit(self.read_ahead, message)
        self._queue.append(_Queued(message, peer, connection, future, read))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    def _arrived(self, connection: int) -> None:
        """``connection`` queued its next frame, or closed: the worker need not wait for it."""
        if connection in self._expected:
            self._expected.discard(connection)
            self._arrival.set()

    async def _gather(self) -> None:
        """Wait for the connections answered last to queue their next frame (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = self._answered_at + min(self.group_wait_s, self._last_batch_s)
        while self._expected and len(self._queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrival.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrival.wait()
        self._expected.clear()  # a sender slower than that is not waited for again

    async def _drain(self) -> None:
        """Hand the waiting frames to the batch handler until none is left."""
        assert self.batch_handler is not None
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._expected:
                await self._gather()
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            started = loop.time()
            self._busy = True
            try:
                answers = await loop.run_in_executor(self._executor, self._handle_batch, batch)
                if len(answers) != len(batch):
                    raise RuntimeError("the batch handler answered the wrong number of frames")
            except Exception as exc:  # each connection ends on it, as with the plain handler
                for queued in batch:
                    if not queued.answer.done():
                        queued.answer.set_exception(exc)
                continue
            finally:
                self._busy = False
            self._answered_at = loop.time()
            self._last_batch_s = self._answered_at - started
            for queued, answer in zip(batch, answers, strict=True):
                if not queued.answer.done():  # a connection closed meanwhile: answer dropped
                    queued.answer.set_result(answer)
                    self._expected.add(queued.connection)

    def _handle_batch(self, batch: list[_Queued]) -> list[bytes | None]:
        """In the worker: the batch handler's answers, frames read ahead given as read."""
        assert self.batch_handler is not None
        frames: list[tuple[object, str]] = []
        for queued in batch:
            item: object = queued.message
            # Done already: the worker ran it before this batch. A failure is read again.
            if queued.read is not None and queued.read.exception() is None:
                item = queued.read.result()
            frames.append((item, queued.peer))
        return self.batch_handler(frames)


@dataclass(frozen=True, slots=True)
class _Queued:
    """A frame waiting for its batch: whose it is, where its answer goes, its read-ahead."""

    message: bytes
    peer: str
    connection: int
    answer: asyncio.Future[bytes | None]
    read: Future[object] | None


def _peer_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "unknown")


# -- client -------------------------------------------------------------------------


def ack_expected(message: bytes | str) -> str:
    """Whether a server answers ``message``: ``yes``, ``no`` (MSH-15 NE) or ``maybe`` (ER/SU)."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    first = text.removeprefix("\ufeff").replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return "yes"
    fields = first.split(first[3])
    # fields[n] is MSH-(n+1): the separator itself is MSH-1.
    accept = fields[14].strip().upper() if len(fields) > 14 else ""
    application = fields[15].strip().upper() if len(fields) > 15 else ""
    if not accept and not application:
        return "yes"
    if accept == "NE":
        return "no"
    if accept in ("ER", "SU"):
        return "maybe"
    return "yes"


def send_messages(
    host: str,
    port: int,
    messages: Sequence[bytes | str],
    *,
    timeout_s: float = 30.0,
    maybe_timeout_s: float = 0.5,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> list[str | None]:
    """Send ``messages`` in turn over one MLLP connection; each one's ACK text or None.

    Waits for each answer before sending the next (as MLLP senders do). None: the
    message asked for no accept acknowledgement (MSH-15 NE), or ER/SU asked for one
    only in some cases and none came within ``maybe_timeout_s``.
    """
    answers: list[str | None] = []
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn: socket.socket = raw
        if ssl_context is not None:
            conn = ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
        pending = bytearray()
        for message in messages:
            conn.sendall(frame(message))
            expected = ack_expected(message)
            if expected == "no":
                answers.append(None)
                continue
            conn.settimeout(timeout_s if expected == "yes" else maybe_timeout_s)
            try:
                answers.append(_receive(conn, pending))
            except TimeoutError:
                if expected == "yes":
                    raise
                answers.append(None)
            conn.settimeout(timeout_s)
    return answers


def _receive(conn: socket.socket, pending: bytearray) -> str:
    """The next framed answer on ``conn`` (``pending`` keeps bytes read past it)."""
    while True:
        start = pending.find(START_BLOCK)
        end = pending.find(END_BLOCK, start + 1) if start >= 0 else -1
        if start >= 0 and end >= 0:
            answer = bytes(pending[start + 1 : end])
            del pending[: end + 2]
            return answer.decode("utf-8", "replace")
        data = conn.recv(_READ_CHUNK)
        if not data:
            raise ConnectionError("the server closed the connection before answering")
        pending += data
