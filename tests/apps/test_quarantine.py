"""GET /api/v1/quarantine and replay; ``medtwin quarantine`` on the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.data.accounts import Role

from .conftest import LiveServer


def _future_item() -> dict[str, object]:
    moment = datetime.now(UTC) + timedelta(hours=2)
    return {
        "id": "q-1",
        "source": "test",
        "patient": "qp1",
        "code": "8867-4",
        "value": 72,
        "unit": "/min",
        "time": moment.isoformat().replace("+00:00", "Z"),
    }


def test_admin_lists_shows_and_replays(live_server: LiveServer) -> None:
    answer = live_server.admin.post("/api/v1/observations", json={"observations": [_future_item()]})
    assert answer.json()["summary"]["rejected"] == 1
    listing = live_server.admin.get("/api/v1/quarantine", params={"channel": "api"})
    assert listing.status_code == 200
    (entry,) = listing.json()
    assert entry["location"] == "observations[0].time"
    assert "ahead of the clock" in entry["reason"]
    assert '"q-1"' in entry["payload"]
    assert entry["resolved"] is None
    one = live_server.admin.get(f"/api/v1/quarantine/{entry['id']}")
    assert one.json() == entry
    replay = live_server.admin.post(f"/api/v1/quarantine/{entry['id']}/replay")
    assert replay.status_code == 200
    assert replay.json()["taken"] is False
    assert replay.json()["location"] == "observations[0].time"
    assert live_server.admin.get("/api/v1/quarantine/999999").status_code == 404
    assert live_server.admin.get("/api/v1/quarantine", params={"resolved": "true"}).json() == []


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.DEVICE, Role.RESEARCHER])
def test_only_administrators_see_raw_payloads(live_server: LiveServer, role: Role) -> None:
    with live_server.client(f"user-{role.value}", role, care_team="ward") as client:
        assert client.get("/api/v1/quarantine").status_code == 403
        assert client.post("/api/v1/quarantine/1/replay").status_code == 403


def test_cli_lists_shows_and_replays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_STORE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.chdir(tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text(
        '{"id": "a", "source": "s", "patient": "p1", "code": "8867-4", "value": 72, '
        '"unit": "kg", "time": "2026-01-01T10:00:00Z"}\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(items)]).exit_code == 1
    listed = runner.invoke(app, ["quarantine", "list"])
    assert listed.exit_code == 0, listed.output
    fields = listed.output.strip().split("\t")
    assert fields[2:5] == ["cli:items.jsonl", "open", "items.jsonl:1: unit"]
    entry_id = fields[0]
    shown = runner.invoke(app, ["quarantine", "show", entry_id])
    assert shown.exit_code == 0
    assert '"unit": "kg"' in shown.output
    replayed = runner.invoke(app, ["quarantine", "replay", entry_id])
    assert replayed.exit_code == 1
    assert "still refused\tobservations[0].unit\tunit 'kg' does not fit" in replayed.output
    assert runner.invoke(app, ["quarantine", "show", "4242"]).exit_code == 1
    audit = runner.invoke(app, ["audit", "verify"])
    assert audit.exit_code == 0, audit.output
