"""The medtwin command line, on real stores."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.apps.demo import create_demo_app
from medtwin.core.settings import Settings
from medtwin.data.store import open_store

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MEDTWIN_STORE_URL", url)
    return url


def line(i: int, **change: object) -> str:
    start = datetime.now(UTC) - timedelta(minutes=30)
    moment = (start + timedelta(milliseconds=100 * i)).isoformat()
    item = {
        "id": f"l{i}",
        "source": "file",
        "patient": f"p{i % 3}",
        "code": "8867-4",
        "value": 60 + i % 40,
        "unit": "/min",
        "time": moment,
        **change,
    }
    return json.dumps(item)


def test_ingest_jsonl_reports_faults_by_line(tmp_path: Path, store_url: str) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\ufeff" + "\n".join(line(i) for i in range(2500)) + "\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([line(9000), "{oops", line(9001, value="fast"), line(9002)]) + "\n")
    result = runner.invoke(app, ["ingest", str(good), str(bad), "--batch", "1000"])
    assert result.exit_code == 1, result.output
    assert "stored=2502 duplicate=0 conflict=0 rejected=2" in result.output
    assert "bad.jsonl:2: line is not JSON" in result.output
    assert "bad.jsonl:3: value:" in result.output
    store = open_store(store_url)
    assert store.count("observations") == 2502
    locations = {entry.location for entry in store.quarantined()}
    assert locations == {"bad.jsonl:2:2", "bad.jsonl:3: value"}
    again = runner.invoke(app, ["ingest", str(good)])
    assert again.exit_code == 0
    assert "stored=0 duplicate=2500" in again.output
    store.close()


def test_ingest_refuses_unknown_format(tmp_path: Path, store_url: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n")
    result = runner.invoke(app, ["ingest", str(path), "--format", "xml"])
    assert result.exit_code == 2


def test_backup_and_restore(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(line(i) for i in range(100)))
    assert runner.invoke(app, ["ingest", str(source)]).exit_code == 0
    backup = tmp_path / "backup.db"
    assert runner.invoke(app, ["backup", str(backup)]).exit_code == 0
    assert runner.invoke(app, ["backup", str(backup)]).exit_code == 2  # never overwrites
    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(line(i) for i in range(100, 150)))
    assert runner.invoke(app, ["ingest", str(more)]).exit_code == 0
    assert runner.invoke(app, ["restore", str(backup)]).exit_code == 0
    store = open_store(store_url)
    assert store.count("observations") == 100
    assert len(store.patients()) == 3
    store.close()


def test_schemas_command_writes_the_published_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schemas", "--out", str(tmp_path)])
    assert result.exit_code == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in (ROOT / "docs" / "schemas").iterdir())
    for name in written:
        assert (tmp_path / name).read_text() == (ROOT / "docs" / "schemas" / name).read_text()


def test_bench_quick_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["bench", "ingest", "--quick"])
    assert result.exit_code == 0, result.output
    assert "of the plain insert rate" in result.output


def test_production_refuses_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.delenv("MEDTWIN_STORE_URL", raising=False)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "MEDTWIN_STORE_URL" in result.output


def sign_in(client: TestClient, user: str, password: str) -> int:
    answer = client.post(
        "/auth/token", data={"grant_type": "password", "username": user, "password": password}
    )
    if answer.status_code == 200:
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return answer.status_code


def test_demo_ward_feeds_twins_the_demo_clinician_sees(tmp_path: Path) -> None:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'demo.db'}",
        demo_patients=6,
        demo_acceleration=120,
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    app, (user, password) = create_demo_app(settings)
    with TestClient(app) as client:
        assert client.get("/api/v1/twins").status_code == 401
        assert sign_in(client, user, password) == 200
        deadline = time.monotonic() + 15
        twins: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            # The ward's monitored patients; the demo's patients with diabetes send CGM only.
            twins = [t for t in client.get("/api/v1/twins").json() if t["patient"][:5] == "ward-"]
            if len(twins) == 6 and all(t["news2"]["score"] is not None for t in twins):
                break
            time.sleep(0.2)
        assert len(twins) == 6  # the ward's patients are in the demo clinician's care team
        assert all(t["news2"]["score"] is not None for t in twins)
        assert client.get("/readyz").status_code == 200
    # A second run starts its clock after everything stored, so its readings still update the
    # twins, and it prints a new password: the old one no longer works.
    store = open_store(settings.store_url)
    newest = store.newest_time()
    store.close()
    assert newest is not None
    app, (user, new_password) = create_demo_app(settings)
    with TestClient(app) as client:
        assert new_password != password
        assert sign_in(client, user, password) == 401
        assert sign_in(client, user, new_password) == 200
        clock = client.app.state.context.clock  # type: ignore[attr-defined]
        assert clock.now_us() > newest
        assert client.get("/api/v1/twins/ward-01").status_code == httpx.codes.OK


def test_account_changes_are_audited_without_secrets(tmp_path: Path, store_url: str) -> None:
    env = {
        "MEDTWIN_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "MEDTWIN_AUDIT_CHECKPOINT_PATH": str(tmp_path / "checkpoints.jsonl"),
    }
    added = runner.invoke(
        app, ["users", "add", "nurse.jo", "--role", "clinician", "--care-team", "ward"], env=env
    )
    assert added.exit_code == 0, added.output
    password = added.output.rsplit("password: ", 1)[1].strip()
    key = runner.invoke(app, ["users", "add-key", "monitor-7", "--source", "monitor-7"], env=env)
    assert key.exit_code == 0, key.output
    secret = key.output.rsplit(": ", 1)[1].strip()
    assert runner.invoke(app, ["users", "disable", "nurse.jo"], env=env).exit_code == 0
    assert runner.invoke(app, ["users", "list"], env=env).output.strip().endswith("disabled")
    assert runner.invoke(app, ["users", "disable", "ghost"], env=env).exit_code == 1
    verified = runner.invoke(app, ["audit", "verify"], env=env)
    assert verified.exit_code == 0, verified.output
    exported = runner.invoke(app, ["audit", "export"], env=env).output
    for action in ("user-add", "device-add", "user-disable", "user-list"):
        assert action in exported
    assert password not in exported
    assert secret not in exported
