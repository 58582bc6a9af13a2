"""The tamper-evident audit trail, on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from medtwin.apps.commands.audit import app as audit_app
from medtwin.core.clock import FixedClock
from medtwin.core.errors import StoreError
from medtwin.core.records import Patient
from medtwin.data.audit import GENESIS_HASH, AuditEntry, AuditError, AuditLog, AuditRecord
from medtwin.data.store import SqlStore
from tests.conftest import StoreFactory

KEY = b"test-audit-key-0123456789abcdef!"
OTHER_KEY = b"another-key-0123456789abcdefghij"
START = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fhir-r4-examples"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    return tmp_path / "anchors" / "audit.checkpoints"


@pytest.fixture
def audit(store: SqlStore, clock: FixedClock, checkpoints: Path) -> AuditLog:
    return AuditLog(store, KEY, clock, checkpoint_path=checkpoints, checkpoint_every=5)


def entry(i: int, **change: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "actor": f"user{i % 3}",
        "role": "clinician",
        "action": "read",
        "outcome": "success",
        "patient": f"p{i % 4}",
        "address": "10.1.2.3",
        "detail": {"route": "/patients/{id}/history", "n": i},
    }
    fields.update(change)
    return AuditEntry(**fields)


def fill(audit: AuditLog, n: int) -> list[AuditRecord]:
    return audit.append([entry(i) for i in range(n)])


def execute(store: SqlStore, statement: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def row(store: SqlStore, seq: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        found = conn.execute(sa.text("SELECT * FROM audit WHERE seq = :s"), {"s": seq})
        return dict(found.mappings().one())


def flip(text: str) -> str:
    """``text`` with one byte changed, in its middle."""
    middle = len(text) // 2
    return text[:middle] + chr(ord(text[middle]) ^ 1) + text[middle + 1 :]


# -- appending ----------------------------------------------------------------


def test_appends_are_numbered_consecutively_and_chained(audit: AuditLog, clock: FixedClock) -> None:
    first = audit.append([entry(0), entry(1), entry(2)])
    clock.advance(60)
    second = audit.append([entry(3, patient=None, address=None, detail={})])
    clock.advance(60)
    third = audit.append([entry(i) for i in range(4, 9)])
    records = first + second + third
    assert [r.seq for r in records] == list(range(1, 10))
    assert records[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert all(re.fullmatch(r"[0-9a-f]{64}", r.hash) for r in records)
    assert second[0].entry == entry(3, patient=None, address=None, detail={})
    assert audit.records() == records
    report = audit.verify(page_size=4)  # several pages
    assert report.ok, report
    assert report.checked == 9
    assert report.first_bad_seq is None
    assert report.problem is None


def test_records_filter_by_patient_time_and_seq(audit: AuditLog, clock: FixedClock) -> None:
    early = fill(audit, 4)
    clock.advance(3600)
    late = fill(audit, 4)
    assert audit.records(patient="p1") == [early[1], late[1]]
    assert audit.records(start_us=late[0].at_us) == late
    assert audit.records(end_us=early[0].at_us) == early
    assert audit.records(after_seq=6) == late[2:]
    assert audit.records(limit=3) == early[:3]
    with pytest.raises(ValueError, match="limit"):
        audit.records(limit=0)


def test_empty_append_writes_nothing(audit: AuditLog, store: SqlStore) -> None:
    assert audit.append([]) == []
    assert store.count("audit") == 0
    assert audit.verify().ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "ok"}, "outcome"),
        ({"priority": "urgent"}, "priority"),
        ({"actor": ""}, "actor"),
        ({"detail": {"password": "hunter2"}}, "secrets"),
        ({"detail": {"headers": {"Authorization": "Bearer x"}}}, "secrets"),
        ({"detail": {"when": datetime.now(UTC)}}, "JSON"),
        ({"detail": {"blob": "x" * 10_000}}, "bytes"),
    ],
)
def test_entries_are_validated(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry(0, **change)


def test_key_must_be_long_enough(stores: StoreFactory, clock: FixedClock) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        AuditLog(stores.new("sqlite"), b"short", clock)


# -- tampering ----------------------------------------------------------------

TEXT_COLUMNS = ("actor", "role", "patient", "action", "outcome", "address", "priority", "detail")


def test_a_changed_byte_in_any_column_is_detected(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 7)
    original = row(store, 4)
    changes: list[tuple[str, Any]] = [(c, flip(original[c])) for c in TEXT_COLUMNS]
    changes += [
        ("prev_hash", flip(original["prev_hash"])),
        ("hash", flip(original["hash"])),
        ("hash", original["hash"].upper()),
        ("at_us", original["at_us"] + 1),
        ("patient", None),
    ]
    for column, value in changes:
        execute(store, f"UPDATE audit SET {column} = :v WHERE seq = 4", v=value)
        report = audit.verify()
        assert not report.ok, column
        assert report.first_bad_seq == 4, (column, report)
        assert report.checked == 3
        assert report.problem
        execute(store, f"UPDATE audit SET {column} = :v WHERE seq = 4", v=original[column])
        assert audit.verify().ok, column
    # A changed seq leaves a gap where the entry was.
    execute(store, "UPDATE audit SET seq = 40 WHERE seq = 4")
    report = audit.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)


def test_a_deleted_entry_is_detected(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 7)
    execute(store, "DELETE FROM audit WHERE seq = 4")
    report = audit.verify(page_size=2)
    assert not report.ok
    assert report.first_bad_seq == 4
    assert report.problem is not None
    assert "missing" in report.problem


def test_swapped_entries_are_detected(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 7)
    third, fifth = row(store, 3), row(store, 5)
    columns = [c for c in third if c != "seq"]
    assignments = ", ".join(f"{c} = :{c}" for c in columns)
    for seq, content in ((3, fifth), (5, third)):
        execute(
            store,
            f"UPDATE audit SET {assignments} WHERE seq = :seq",
            seq=seq,
            **{c: content[c] for c in columns},
        )
    report = audit.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)


def test_reordered_entries_are_detected(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 7)
    execute(store, "UPDATE audit SET seq = -1 WHERE seq = 2")
    execute(store, "UPDATE audit SET seq = 2 WHERE seq = 6")
    execute(store, "UPDATE audit SET seq = 6 WHERE seq = -1")
    report = audit.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)


def test_an_entry_with_an_invalid_seq_is_detected(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 3)
    execute(
        store,
        "INSERT INTO audit (seq, at_us, actor, role, action, outcome, priority, detail, "
        "prev_hash, hash) VALUES (0, 0, 'x', 'x', 'x', 'success', 'normal', '{}', 'x', 'x')",
    )
    report = audit.verify(page_size=1)
    assert (report.ok, report.first_bad_seq, report.checked) == (False, 0, 3)


def test_a_forged_entry_is_detected(audit: AuditLog, store: SqlStore, clock: FixedClock) -> None:
    fill(audit, 7)
    # Linked to the real head, but hashed without the key.
    AuditLog(store, OTHER_KEY, clock).append([entry(99, actor="intruder")])
    report = audit.verify()
    assert (report.ok, report.first_bad_seq, report.checked) == (False, 8, 7)


def test_a_wrong_key_fails_verification(
    audit: AuditLog, store: SqlStore, clock: FixedClock, checkpoints: Path
) -> None:
    fill(audit, 3)
    report = AuditLog(store, OTHER_KEY, clock, checkpoint_path=checkpoints).verify()
    assert (report.ok, report.first_bad_seq, report.checked) == (False, 1, 0)


# -- checkpoints --------------------------------------------------------------


def anchored(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_checkpoints_are_written_every_n_entries_and_on_demand(
    audit: AuditLog, checkpoints: Path
) -> None:
    for _ in range(3):
        fill(audit, 4)  # heads 4, 8, 12: the chain passes 5 and 10
    assert anchored(checkpoints) == [8, 12]
    line = json.loads(checkpoints.read_text().splitlines()[0])
    assert set(line) == {"seq", "hash", "at_us", "mac"}
    assert line["hash"] == audit.records(after_seq=7, limit=1)[0].hash
    fill(audit, 1)
    audit.checkpoint()
    assert anchored(checkpoints) == [8, 12, 13]
    assert audit.verify().ok


def test_no_checkpoint_without_a_path_or_entries(
    store: SqlStore, clock: FixedClock, checkpoints: Path
) -> None:
    AuditLog(store, KEY, clock, checkpoint_path=checkpoints).checkpoint()
    assert not checkpoints.exists()
    plain = AuditLog(store, KEY, clock, checkpoint_every=1)
    fill(plain, 3)
    plain.checkpoint()
    assert not checkpoints.exists()


def test_a_truncated_tail_is_detected_by_the_checkpoint(
    audit: AuditLog, store: SqlStore, clock: FixedClock
) -> None:
    for _ in range(3):
        fill(audit, 4)
    execute(store, "DELETE FROM audit WHERE seq > 10")
    # The chain that is left is valid: only the anchor outside the database tells.
    assert AuditLog(store, KEY, clock).verify().ok
    report = audit.verify()
    assert (report.ok, report.first_bad_seq, report.checked) == (False, 11, 10)
    assert report.problem is not None
    assert "removed" in report.problem


def test_an_anchored_entry_replaced_with_the_key_is_detected(
    audit: AuditLog, store: SqlStore, clock: FixedClock
) -> None:
    fill(audit, 10)  # anchors entry 10
    execute(store, "DELETE FROM audit WHERE seq >= 9")
    # Someone holding the key rebuilds the end of the chain.
    AuditLog(store, KEY, clock).append([entry(50), entry(51)])
    report = audit.verify()
    assert (report.ok, report.first_bad_seq) == (False, 10)


@pytest.mark.parametrize(
    "edit",
    [
        lambda line: line.replace('"seq":10', '"seq":11'),
        lambda line: line.replace('"hash":"', '"hash":"f'),
        lambda line: line.replace('"at_us":', '"at_us":1'),
        lambda line: "not json",
    ],
)
def test_an_edited_checkpoint_file_is_detected(
    audit: AuditLog, checkpoints: Path, edit: Any
) -> None:
    fill(audit, 10)
    lines = checkpoints.read_text().splitlines()
    assert len(lines) == 1
    edited = edit(lines[0])
    assert edited != lines[0]
    checkpoints.write_text(edited + "\n")
    report = audit.verify()
    assert not report.ok
    assert report.first_bad_seq is None
    assert report.problem is not None
    assert "checkpoint file line 1" in report.problem


# -- failures and transactions -------------------------------------------------


def test_append_fails_when_the_table_is_unwritable(audit: AuditLog, store: SqlStore) -> None:
    fill(audit, 2)
    execute(store, "DROP TABLE audit")
    with pytest.raises(AuditError, match="could not be written") as raised:
        fill(audit, 1)
    assert isinstance(raised.value, StoreError)
    with pytest.raises(AuditError):
        audit.records()
    with pytest.raises(AuditError):
        audit.verify()


def test_append_in_commits_and_rolls_back_with_the_caller(
    audit: AuditLog, store: SqlStore, checkpoints: Path
) -> None:
    def failing_operation() -> None:
        with store._write() as conn:
            store._insert_patients(conn, [Patient("p1", "ps1")])
            assert [r.seq for r in audit.append_in(conn, [entry(0)])] == [1]
            raise RuntimeError("the operation fails after its audit")

    with pytest.raises(RuntimeError, match="operation fails"):
        failing_operation()
    assert store.count("audit") == 0
    assert store.patient("p1") is None

    with store._write() as conn:
        store._insert_patients(conn, [Patient("p1", "ps1")])
        records = audit.append_in(conn, [entry(i) for i in range(6)])
    assert [r.seq for r in records] == list(range(1, 7))
    assert store.patient("p1") is not None
    assert audit.records() == records
    # The checkpoint that fell due inside the caller's transaction is written next time.
    assert not checkpoints.exists()
    fill(audit, 1)
    assert anchored(checkpoints) == [6]
    assert audit.verify().ok


def test_append_in_needs_an_open_transaction(audit: AuditLog, store: SqlStore) -> None:
    with store.engine.connect() as conn, pytest.raises(AuditError, match="transaction"):
        audit.append_in(conn, [entry(0)])


def test_concurrent_appends_keep_a_valid_chain(
    stores: StoreFactory, store: SqlStore, clock: FixedClock, checkpoints: Path
) -> None:
    # One store (engine, pool, lock) per thread, as separate processes would have.
    logs = [
        AuditLog(
            stores.open(store.url), KEY, clock, checkpoint_path=checkpoints, checkpoint_every=7
        )
        for _ in range(4)
    ]
    errors: list[BaseException] = []

    def work(log: AuditLog, worker: int) -> None:
        try:
            for i in range(15):
                log.append([entry(i, actor=f"w{worker}")] * (1 + i % 2))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(log, n)) for n, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total = 4 * sum(1 + i % 2 for i in range(15))
    assert [r.seq for r in logs[0].records(limit=total + 1)] == list(range(1, total + 1))
    report = logs[0].verify()
    assert (report.ok, report.checked) == (True, total), report
    assert anchored(checkpoints)


# -- FHIR ---------------------------------------------------------------------


def fhir_events(audit: AuditLog) -> dict[str, dict[str, Any]]:
    records = audit.append(
        [
            entry(1, action="read", patient="p1"),
            entry(2, action="login", patient=None, role="admin", address="ward-pc-3"),
            entry(3, action="search", outcome="denied", detail={"reason": "not in care team"}),
            entry(4, action="break-glass", priority="high", detail={"reason": "arrest"}),
            entry(5, action="write", role="device", outcome="failure", actor="key-17"),
            entry(6, action="erase", role="system", patient=None, address=None, detail={}),
            entry(7, action="recompute", patient=None, address=None),
        ]
    )
    return {r.entry.action: audit.to_fhir(r) for r in records}


def test_to_fhir_maps_entries_to_audit_events(audit: AuditLog) -> None:
    events = fhir_events(audit)
    read = events["read"]
    assert read["resourceType"] == "AuditEvent"
    assert read["id"] == "audit-1"
    assert read["type"]["code"] == "110110"
    assert read["type"]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
    assert read["action"] == "R"
    assert read["recorded"] == "2024-05-01T08:30:00.000000Z"
    assert read["outcome"] == "0"
    assert "outcomeDesc" not in read
    (agent,) = read["agent"]
    assert agent["who"] == {"display": "user1"}
    assert agent["requestor"] is True
    assert agent["role"] == [{"text": "clinician"}]
    assert agent["network"] == {"address": "10.1.2.3", "type": "2"}
    assert read["source"]["observer"] == {"display": "medtwin"}
    (patient,) = read["entity"]
    assert patient["what"] == {"reference": "Patient/p1"}
    assert {"type": "n", "valueString": "1"} in patient["detail"]

    login = events["login"]
    assert (login["type"]["code"], login["action"], login["subtype"][0]["code"]) == (
        "110114",
        "E",
        "110122",
    )
    assert login["agent"][0]["network"] == {"address": "ward-pc-3", "type": "1"}
    assert "Patient/" not in json.dumps(login)

    denied = events["search"]
    assert (denied["type"]["code"], denied["action"], denied["outcome"]) == ("110110", "E", "4")
    assert denied["outcomeDesc"] == "not in care team"

    glass = events["break-glass"]
    assert (glass["type"]["code"], glass["action"]) == ("rest", "E")
    assert glass["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert {"type": "priority", "valueString": "high"} in glass["entity"][0]["detail"]

    write = events["write"]
    assert (write["type"]["code"], write["action"], write["outcome"]) == ("rest", "C", "8")
    assert write["agent"][0]["type"]["coding"][0]["code"] == "datacollector"

    erase = events["erase"]
    assert (erase["action"], "entity" in erase, "network" in erase["agent"][0]) == (
        "D",
        False,
        False,
    )
    assert events["recompute"]["subtype"] == [{"code": "recompute", "display": "recompute"}]
    assert events["recompute"]["entity"][0]["type"]["code"] == "2"
    for event in events.values():
        assert_fhir_json(event)
        assert {"resourceType", "type", "recorded", "agent", "source"} <= set(event)


def assert_fhir_json(value: Any, path: str = "") -> None:
    """FHIR JSON: no empty strings, arrays or objects, no nulls."""
    assert value is not None, path
    if isinstance(value, dict):
        assert value, path
        for key, item in value.items():
            assert_fhir_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        assert value, path
        for item in value:
            assert_fhir_json(item, f"{path}[]")
    elif isinstance(value, str):
        assert value, path


def shape(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, JSON type) of every element; list items share the path ``name[]``."""
    if isinstance(value, dict):
        yield path, "object"
        for key, item in value.items():
            yield from shape(item, f"{path}.{key}")
    elif isinstance(value, list):
        yield path, "array"
        for item in value:
            yield from shape(item, f"{path}[]")
    else:
        yield path, type(value).__name__


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"no FHIR examples at {EXAMPLES}")
def test_to_fhir_has_the_shape_of_the_official_examples(audit: AuditLog) -> None:
    known: set[tuple[str, str]] = set()
    for path in sorted(EXAMPLES.glob("AuditEvent-example*.json")):
        known |= set(shape(json.loads(path.read_text(encoding="utf-8-sig"))))
    assert ("", "object") in known
    for event in fhir_events(audit).values():
        unknown = set(shape(event)) - known
        assert not unknown, f"{event['id']}: not in the official examples: {sorted(unknown)}"


# -- command line -------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, store: SqlStore, checkpoints: Path) -> dict[str, str]:
    env = {
        "MEDTWIN_ENVIRONMENT": "development",
        "MEDTWIN_SECRETS_FILE": str(checkpoints.parent / "secrets.json"),
        "MEDTWIN_STORE_URL": store.url,
        "MEDTWIN_AUDIT_KEY": KEY.decode(),
        "MEDTWIN_AUDIT_CHECKPOINT_PATH": str(checkpoints),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_cli_verify_and_export(
    cli_env: dict[str, str], audit: AuditLog, store: SqlStore, tmp_path: Path
) -> None:
    runner = CliRunner()
    fill(audit, 6)
    result = runner.invoke(audit_app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "6 entries verified" in result.output

    out = tmp_path / "audit.json"
    result = runner.invoke(audit_app, ["export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    events = [item["resource"] for item in bundle["entry"]]
    assert [e["id"] for e in events] == [f"audit-{n}" for n in range(1, 8)]
    assert {e["resourceType"] for e in events} == {"AuditEvent"}
    # The export is itself audited, before the events are read.
    assert events[-1]["subtype"] == [{"code": "export", "display": "export"}]
    assert events[-1]["agent"][0]["who"]["display"].startswith("cli")

    result = runner.invoke(audit_app, ["export", "--patient", "p1", "--since", "2024-05-01T00:00Z"])
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.stdout)
    references = [e["resource"]["entity"][0]["what"]["reference"] for e in bundle["entry"]]
    assert references == ["Patient/p1"] * 3  # entries 2 and 6, and this export

    result = runner.invoke(audit_app, ["export", "--patient", "p9", "--until", "2000-01-01T00:00Z"])
    assert result.exit_code == 0, result.output
    assert "entry" not in json.loads(result.stdout)

    execute(store, "UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    result = runner.invoke(audit_app, ["verify"])
    assert result.exit_code == 1, result.output
    assert "TAMPERED at seq 2" in result.output


def test_cli_refuses_to_run_without_a_key_in_production(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_SECRET_KEY", "s" * 32)
    monkeypatch.delenv("MEDTWIN_AUDIT_KEY")
    result = CliRunner().invoke(audit_app, ["verify"])
    assert result.exit_code == 2
    assert "configuration error" in result.output
    assert "MEDTWIN_AUDIT_KEY" in result.output


def test_cli_shares_the_generated_development_key(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, store: SqlStore, clock: FixedClock
) -> None:
    from medtwin.core.settings import Settings

    monkeypatch.delenv("MEDTWIN_AUDIT_KEY")
    fill(AuditLog(store, Settings().secret("audit_key"), clock), 3)
    result = CliRunner().invoke(audit_app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "3 entries verified" in result.output


def test_cli_refuses_a_time_without_zone(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(audit_app, ["export", "--since", "2024-05-01T00:00"])
    assert result.exit_code == 2
    assert "time zone" in result.output
