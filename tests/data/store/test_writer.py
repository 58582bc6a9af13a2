"""WriterProcess: Store.append in a child process, answering exactly as in this one."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medtwin.core.errors import StoreError
from medtwin.core.records import LOINC, Observation, Patient
from medtwin.data.crypto import generate_key
from medtwin.data.store import AppendStatus, QuarantineEntry, SqlStore, open_store
from medtwin.data.store.writer import WriterProcess

STORED, DUPLICATE, CONFLICT = AppendStatus.STORED, AppendStatus.DUPLICATE, AppendStatus.CONFLICT
HR = "8867-4"
T0 = 1_767_225_600_000_000
MINUTE = 60_000_000
RECEIVED = T0 + 60 * MINUTE


def obs(
    n: int, *, patient: str = "p1", value: float | None = 70.0, **fields: object
) -> Observation:
    return Observation(
        source="monitor-1",
        source_id=f"m-{n}",
        patient=patient,
        system=LOINC,
        code=HR,
        value_num=value,
        value_text=None,
        unit="/min",
        effective_us=T0 + n * MINUTE,
    )._replace(**fields)


def patient(n: int) -> Patient:
    return Patient(f"p{n}", f"pt-{n:016x}", created_us=T0 + n)


def rejected(n: int) -> QuarantineEntry:
    return QuarantineEntry(
        "api", f"observations[{n}].value", "value must be finite", '{"value": NaN}', "monitor-1"
    )


BROKEN = QuarantineEntry(None, "x", "y", "z")  # type: ignore[arg-type]  # channel NOT NULL

# Appends covering every outcome: new, repeated in the batch, stored before, conflicts
# (with the store and inside the batch), rejects, new patients, a care team, flags.
REQUESTS: list[dict[str, object]] = [
    {
        "observations": [obs(1), obs(2, patient="p2"), obs(1)],
        "received_us": RECEIVED,
        "new_patients": [patient(1), patient(2)],
        "rejected": [rejected(3)],
        "channel": "api",
        "care_team": "ward-7",
    },
    {
        "observations": [
            obs(3, flags=2),
            obs(1),
            obs(2, patient="p2", value=1.0),
            obs(4, value=None, value_text="A", status="amended"),
            obs(3, flags=2),
            obs(4, value=3.0),
            obs(1, version=2, value=71.0),
        ],
        "received_us": RECEIVED + 1,
        "new_patients": [patient(1), patient(3)],
        "rejected": [rejected(7), QuarantineEntry("cli", "f:1", "not JSON", "{", None, 42)],
        "channel": "cli",
    },
    {"observations": [], "received_us": RECEIVED + 2, "rejected": [rejected(0)]},
    {"observations": [], "received_us": RECEIVED + 3},
]


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("observations", "quarantine", "patients", "care_team_patients")
        }


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "writer.db"
    open_store(f"sqlite:///{path}").close()
    return path


@pytest.fixture
def writer(path: Path) -> Iterator[WriterProcess]:
    with WriterProcess(f"sqlite:///{path}", migrate=False) as writer:
        yield writer


def test_appends_like_the_store_in_this_process(
    writer: WriterProcess, path: Path, tmp_path: Path
) -> None:
    local = open_store(f"sqlite:///{tmp_path / 'local.db'}")
    seen: set[AppendStatus] = set()
    try:
        for request in REQUESTS:
            expected = local.append(**request)  # type: ignore[arg-type]
            # Two in flight at once, as ingest_stream sends them.
            writer.submit(**request)  # type: ignore[arg-type]
            writer.submit(observations=[], received_us=0)
            assert writer.pending == 2
            got = writer.result()
            assert writer.result() == []
            assert got == expected
            seen.update(got)
            assert all(type(status) is AppendStatus for status in got)
        assert writer.append(**REQUESTS[1]) == local.append(**REQUESTS[1])  # type: ignore[arg-type]
    finally:
        local.close()
    assert dump(path) == dump(tmp_path / "local.db")
    assert seen == {STORED, DUPLICATE, CONFLICT}


def test_a_failed_append_is_a_store_error_with_the_childs_message(
    writer: WriterProcess, path: Path
) -> None:
    with pytest.raises(StoreError, match=r"NOT NULL constraint failed: quarantine\.channel"):
        writer.append([obs(1)], received_us=RECEIVED, new_patients=[patient(1)], rejected=[BROKEN])
    assert dump(path)["observations"] == []  # rolled back
    # The writer goes on.
    assert writer.append([obs(1)], received_us=RECEIVED) == [STORED]


def test_appends_sent_after_a_failed_one_are_not_carried_out(
    writer: WriterProcess, path: Path
) -> None:
    writer.submit([obs(1)], received_us=RECEIVED, rejected=[BROKEN])
    writer.submit([obs(2)], received_us=RECEIVED)
    with pytest.raises(StoreError, match="NOT NULL"):
        writer.result()
    with pytest.raises(StoreError, match="not attempted, an earlier append failed"):
        writer.result()
    assert dump(path)["observations"] == []
    # Sent after the failure was taken: carried out again.
    assert writer.append([obs(2)], received_us=RECEIVED) == [STORED]


def test_pending_requests_are_bounded(writer: WriterProcess) -> None:
    writer.submit([obs(1)], received_us=RECEIVED)
    writer.submit([obs(2)], received_us=RECEIVED)
    with pytest.raises(RuntimeError, match="pending"):
        writer.submit([obs(3)], received_us=RECEIVED)
    with pytest.raises(RuntimeError, match="pending"):
        writer.append([obs(3)], received_us=RECEIVED)
    assert [writer.result(), writer.result()] == [[STORED], [STORED]]
    with pytest.raises(RuntimeError, match="no request is pending"):
        writer.result()
    with pytest.raises(ValueError, match="max_pending"):
        WriterProcess("sqlite:///unused.db", max_pending=0)


def test_big_requests_in_flight_do_not_deadlock(writer: WriterProcess) -> None:
    # Requests and answers well beyond a pipe's buffer, both ways at once.
    big = [obs(n, source_id=f"big-{n}-" + "x" * 200) for n in range(20_000)]
    writer.submit(big, received_us=RECEIVED)
    writer.submit(big, received_us=RECEIVED)
    assert writer.result(timeout_s=60) == [STORED] * len(big)
    assert writer.result(timeout_s=60) == [DUPLICATE] * len(big)


def test_close_carries_out_pending_requests_then_stops(path: Path) -> None:
    writer = WriterProcess(f"sqlite:///{path}", migrate=False)
    writer.submit([obs(1)], received_us=RECEIVED)
    writer.submit([obs(2)], received_us=RECEIVED)
    writer.close()
    assert not writer.alive
    assert writer.pending == 0
    assert len(dump(path)["observations"]) == 2
    with pytest.raises(StoreError, match="closed"):
        writer.submit([obs(3)], received_us=RECEIVED)
    writer.close()  # again: nothing happens


def test_store_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(StoreError, match="could not open the store"):
        WriterProcess(f"sqlite:///{not_a_folder / 'x.db'}")


def test_child_exits_when_the_parent_closes_the_pipe(writer: WriterProcess) -> None:
    writer._conn.close()  # as when the parent dies
    writer._process.join(timeout=10)
    assert writer._process.exitcode == 0


def test_dead_child_is_a_store_error(writer: WriterProcess) -> None:
    writer.submit([obs(1)], received_us=RECEIVED)
    pid = writer._process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(StoreError, match="exited"):
        writer.result()
    with pytest.raises(StoreError, match="exited"):
        writer.submit([obs(2)], received_us=RECEIVED)


def test_child_exits_when_the_parent_dies(path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os
        from medtwin.data.store.writer import WriterProcess
        if __name__ == "__main__":
            writer = WriterProcess({f"sqlite:///{path}"!r}, migrate=False)
            print(writer._process.pid, flush=True)
            os._exit(0)  # no clean-up at all
        """
    )
    main = path.parent / "parent.py"
    main.write_text(script)
    out = subprocess.run(
        [sys.executable, str(main)], capture_output=True, text=True, timeout=60, check=True
    )
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sealed_store_needs_a_sealing_writer(writer: WriterProcess, path: Path) -> None:
    from medtwin.data.crypto import Keyring

    spec = f"k1:{generate_key()}"
    store: SqlStore = open_store(f"sqlite:///{path}", migrate=False)
    try:
        writer.check_serves(store)
        store.seal_payloads(Keyring.from_spec(spec))
        with pytest.raises(ValueError, match="seals"):
            writer.check_serves(store)
        with WriterProcess(store.url, migrate=False, keyring_spec=spec) as sealing:
            sealing.check_serves(store)
            sealing.append([obs(1)], received_us=RECEIVED, rejected=[rejected(1)])
            sealing.append([obs(1, value=1.0)], received_us=RECEIVED)  # a conflict
        stored = dump(path)["quarantine"]
        assert len(stored) == 2
        # Columns: row_id, received_us, channel, source, location, reason, payload, resolved_us.
        assert all(str(row[6]).startswith(SqlStore.SEALED_PREFIX) for row in stored)
        assert [e.reason for e in store.quarantined()][1] == "value must be finite"
        assert '"value_num":1.0' in store.quarantined()[0].payload
    finally:
        store.close()
    other = open_store(f"sqlite:///{path.parent / 'other.db'}")
    try:
        with pytest.raises(ValueError, match="not to"):
            writer.check_serves(other)
    finally:
        other.close()
