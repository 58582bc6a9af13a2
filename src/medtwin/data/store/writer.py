"""A writer process: one child process that owns the store's write connection.

Bulk ingestion has two halves of about equal weight: validation (Python, in the
ingesting process) and the SQLite insert. Threads cannot overlap them: sqlite3's
``executemany`` hands the interpreter lock back after every row, so a second thread
busy validating turns each row into a lock hand-over (a convoy measured at 20%
slower than doing both in turn). :class:`WriterProcess` moves the insert to a child
process with its own interpreter, so both halves run at once on two cores::

    with WriterProcess(store.url) as writer:
        writer.submit(observations, received_us=now, new_patients=fresh)
        ...  # validate the next batch meanwhile
        statuses = writer.result()

The child opens the store with :func:`open_store` and runs the ordinary
:meth:`Store.append` on every request, in the order submitted: one transaction
per request, the same statuses, quarantine and durability as an in-process call.
Requests and answers travel over a pipe as plain tuples (pickling named tuples
and dataclasses costs three times as much). Errors in the child come back as
:class:`StoreError` with the child's message.

When an append fails, the requests sent after it before the parent took that
failure are not carried out (their results raise StoreError too): appends stay
in submission order with no gaps, however many were in flight.

At most ``max_pending`` requests may wait for their results; the child reads
requests in a thread of its own, so it takes them even while the parent is not
reading answers, and neither side can block the other for good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from medtwin.core.errors import StoreError
from medtwin.core.records import Observation, Patient
from medtwin.data.store.base import AppendStatus, Origin, QuarantineEntry, SqlStore, Store

_STATUS = {status.value: status for status in AppendStatus}

# How often the child checks, while idle, that its parent is still alive (s).
_PARENT_CHECK_S = 1.0

# Messages: parent -> child
#   ("append", epoch, observations, received_us, new_patients, rejected, channel, care_team)
#   None: stop after the requests sent before
# child -> parent
#   ("ready", url, seals) | ("ok", [status values]) | ("error", message)
#   | ("skipped", message): not carried out, an earlier request of its epoch failed
# The parent starts a new epoch each time it takes a failure: the child skips the
# requests of an epoch after one of them failed.


class WriterProcess:
    """A child process that appends batches to the store at ``url`` in submission order.

    ``sqlite_synchronous`` is the child's SQLite durability level (FULL: every
    answered batch survives power loss). ``keyring_spec`` (the ``data_keys``
    setting's format) seals quarantined payloads in the child as
    :meth:`SqlStore.seal_payloads` does in the parent; a store that seals
    payloads must only be written through a writer that does too.

    The constructor waits until the child has opened the store (StoreError if it
    cannot). Not thread-safe: one thread submits and takes the results.
    """

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        migrate: bool = True,
        keyring_spec: str | None = None,
        max_pending: int = 2,
        start_timeout_s: float = 120.0,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._pending = 0
        self._epoch = 0
        self._broken: str | None = None
        # spawn, not fork: the parent may run threads (a fork copies their locks mid-use).
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_serve,
            args=(child_conn, url, sqlite_synchronous, migrate, keyring_spec, os.getpid()),
            name="medtwin-store-writer",
            daemon=True,
        )
        self._process.start()
        # Only the child holds its end now: its exit reads as end-of-file here.
        child_conn.close()
        try:
            reply = self._receive(start_timeout_s)
        except BaseException:
            self._stop(timeout_s=5.0)
            raise
        if reply[0] == "error":
            self._stop(timeout_s=5.0)
            raise StoreError(f"writer process could not open the store: {reply[1]}")
        self.url: str = reply[1]  # the store's URL, as the child opened it
        self.seals: bool = reply[2]  # whether the child seals quarantined payloads

    # -- requests -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests submitted whose results have not been taken yet."""
        return self._pending

    def submit(
        self,
        observations: Sequence[Observation],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        rejected: Sequence[QuarantineEntry] = (),
        channel: str = "api",
        care_team: str | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> None:
        """Send one :meth:`Store.append` request; :meth:`result` gives its statuses.

        RuntimeError when ``max_pending`` results are already waiting to be taken.
        """
        self._check_usable()
        if self._pending >= self.max_pending:
            raise RuntimeError(
                f"{self._pending} requests are pending: take a result() before submitting more"
            )
        request = (
            "append",
            self._epoch,
            [tuple(obs) for obs in observations],
            received_us,
            [_fields(patient) for patient in new_patients],
            [_fields(entry) for entry in rejected],
            channel,
            care_team,
            None if origins is None else [None if o is None else tuple(o) for o in origins],
        )
        try:
            self._conn.send(request)
        except (OSError, ValueError) as exc:
            raise self._fail(f"sending to the writer process failed: {exc}") from exc
        self._pending += 1

    def result(self, timeout_s: float | None = None) -> list[AppendStatus]:
        """The statuses of the oldest pending request, waiting for them.

        StoreError if that append failed (it was rolled back), if it was skipped
        because an earlier one failed, or if the writer process died (the outcome
        of its pending requests is then unknown; appends are idempotent, so sending
        them again is safe). ``timeout_s`` None waits as long as the child lives.
        """
        if self._pending == 0:
            raise RuntimeError("no request is pending")
        self._check_usable()
        reply = self._receive(timeout_s)
        self._pending -= 1
        if reply[0] == "ok":
            status_of = _STATUS
            return [status_of[value] for value in reply[1]]
        if reply[0] == "error":
            self._epoch += 1  # requests sent from now on are carried out again
        raise StoreError(reply[1])

    def append(
        self,
        observations: Sequence[Observation],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        rejected: Sequence[QuarantineEntry] = (),
        channel: str = "api",
        care_team: str | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> list[AppendStatus]:
        """Submit one request and wait for its statuses (nothing else may be pending)."""
        if self._pending:
            raise RuntimeError("append() with requests pending: take their results first")
        self.submit(
            observations,
            received_us=received_us,
            new_patients=new_patients,
            rejected=rejected,
            channel=channel,
            care_team=care_team,
            origins=origins,
        )
        return self.result()

    def check_serves(self, store: Store) -> None:
        """ValueError unless this writer writes to ``store``'s database, sealed likewise."""
        if store.url != self.url:
            raise ValueError(f"the writer writes to {self.url}, not to {store.url}")
        seals = isinstance(store, SqlStore) and store._keyring is not None
        if seals and not self.seals:
            raise ValueError(
                "the store seals quarantined payloads and the writer does not: "
                "give the writer the keyring (keyring_spec)"
            )

    # -- lifetime -------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the child after the requests already sent, and wait for it.

        Requests still pending are carried out (or fail) in the child; their
        results are discarded. A child still running after ``timeout_s`` is
        terminated (a transaction it had open rolls back). Idempotent.
        """
        if self._broken is None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
            self._broken = "the writer process is closed"
        self._stop(timeout_s)

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A writer dropped without close(): ask the child to stop, do not wait for it.
        with contextlib.suppress(Exception):
            if self._broken is None and not self._conn.closed:
                self._conn.send(None)

    # -- internals ------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StoreError(self._broken)

    def _receive(self, timeout_s: float | None) -> Any:
        """The child's next reply; StoreError if it died or ``timeout_s`` passed."""
        waited = 0.0
        step = 1.0
        try:
            while not self._conn.poll(step):
                waited += step
                if not self._process.is_alive():
                    break
                if timeout_s is not None and waited >= timeout_s:
                    raise self._fail(f"the writer process did not answer within {timeout_s:g} s")
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            self._process.join(timeout=5.0)
            code = self._process.exitcode
            raise self._fail(
                f"the writer process exited (code {code}); the outcome of its "
                f"{self._pending} pending request(s) is unknown"
            ) from exc

    def _fail(self, message: str) -> StoreError:
        self._broken = message
        return StoreError(message)

    def _stop(self, timeout_s: float) -> None:
        # Drain the answers to requests still pending, so the child never waits on a full pipe.
        deadline_waits = max(1, int(timeout_s * 10))
        with contextlib.suppress(EOFError, OSError, ValueError):
            while self._pending and deadline_waits > 0 and self._process.is_alive():
                if self._conn.poll(0.1):
                    self._conn.recv()
                    self._pending -= 1
                else:
                    deadline_waits -= 1
        self._process.join(timeout=max(timeout_s, 0.1))
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5.0)
        self._pending = 0
        self._conn.close()


def _fields(record: Any) -> tuple[Any, ...]:
    """A dataclass's field values, in order (its constructor's positional arguments)."""
    return tuple(getattr(record, f.name) for f in dataclasses.fields(record))


# -- the child ------------------------------------------------------------------


def _serve(
    conn: Connection,
    url: str,
    synchronous: str,
    migrate: bool,
    keyring_spec: str | None,
    parent_pid: int,
) -> None:
    """The writer process: open the store, then append each request in turn."""
    # Ctrl-C reaches the whole process group: the parent decides when the writer stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from medtwin.data.store import open_store

        store = open_store(url, migrate=migrate, sqlite_synchronous=synchronous)
        if keyring_spec is not None:
            from medtwin.data.crypto import Keyring

            store.seal_payloads(Keyring.from_spec(keyring_spec))
    except Exception as exc:
        conn.send(("error", _message(exc)))
        conn.close()
        return
    # Requests come in through a thread, which also decodes them (mostly while this
    # one is inside SQLite, the interpreter lock released): the next batch is ready
    # when this one is done, and the parent, busy sending, never waits for a reader.
    requests: queue.SimpleQueue[tuple[int, dict[str, Any]] | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_read_requests, args=(conn, requests, parent_pid), daemon=True)
    failed: tuple[int, str] | None = None  # (epoch, message) of the last failure
    try:
        conn.send(("ready", store.url, keyring_spec is not None))
        reader.start()
        while (request := requests.get()) is not None:
            epoch, call = request
            if failed is not None and epoch == failed[0]:
                answer: tuple[Any, ...] = (
                    "skipped",
                    f"not attempted, an earlier append failed: {failed[1]}",
                )
            else:
                answer = _append(store, call)
                if answer[0] == "error":
                    failed = (epoch, answer[1])
            conn.send(answer)
    except (OSError, ValueError):
        pass  # the parent is gone
    finally:
        store.close()
        conn.close()


def _read_requests(
    conn: Connection,
    requests: queue.SimpleQueue[tuple[int, dict[str, Any]] | None],
    parent_pid: int,
) -> None:
    """Receive and decode requests until the parent stops, closes the pipe or dies."""
    try:
        while True:
            if not conn.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the parent died without closing the pipe
                continue
            request = conn.recv()
            if request is None:
                return
            requests.put(_decode(request))
    except (EOFError, OSError):
        return  # the parent closed the pipe or died
    finally:
        requests.put(None)


def _decode(request: tuple[Any, ...]) -> tuple[int, dict[str, Any]]:
    """(epoch, keyword arguments of Store.append) of an append request."""
    _, epoch, rows, received_us, patients, rejected, channel, care_team, origins = request
    return epoch, {
        "observations": list(map(Observation._make, rows)),
        "received_us": received_us,
        "new_patients": [Patient(*fields) for fields in patients],
        "rejected": [QuarantineEntry(*fields) for fields in rejected],
        "channel": channel,
        "care_team": care_team,
        "origins": None if origins is None else [o and Origin(*o) for o in origins],
    }


def _append(store: SqlStore, call: dict[str, Any]) -> tuple[Any, ...]:
    try:
        statuses = store.append(**call)
    except Exception as exc:
        return ("error", _message(exc))
    return ("ok", [status.value for status in statuses])


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
