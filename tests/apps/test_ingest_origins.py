"""``medtwin ingest`` of JSON lines and mapped CSV records each observation's origin:
channel ``file``, the file's name and ``name:line``; the demo ward's readings trace to
the ward's step."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.apps.demo import create_demo_app
from medtwin.core.settings import Settings
from medtwin.data.store import Origin, open_store, schema
from tests.devices.csv.test_csv import MAPPING, ROWS

runner = CliRunner()
START = datetime.now(UTC) - timedelta(minutes=30)


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MEDTWIN_STORE_URL", url)
    return url


def line(i: int, **change: object) -> str:
    item = {
        "id": f"l{i}",
        "source": "export",
        "patient": f"p{i % 3}",
        "code": "8867-4",
        "value": 60 + i,
        "unit": "/min",
        "time": (START + timedelta(seconds=i)).isoformat(),
        **change,
    }
    return json.dumps(item)


def test_jsonl_lines_are_the_origin(tmp_path: Path, store_url: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "night.jsonl"
    # Blank lines, a line that is not JSON and a rejected item: the numbers are the file's.
    lines = [line(0), "", line(1), "{oops", line(2, value="fast"), line(3), line(4), "", line(5)]
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["ingest", str(path), "--batch", "2"])
    assert result.exit_code == 1, result.output
    assert "stored=5 duplicate=0 conflict=0 rejected=2" in result.output
    store = open_store(store_url)
    keys = [("export", f"l{i}", 1) for i in range(6)]
    numbers = {0: 1, 1: 3, 3: 6, 4: 7, 5: 9}  # item -> line
    assert store.origins_of(keys) == {
        ("export", f"l{i}", 1): Origin("file", "night.jsonl", f"night.jsonl:{n}")
        for i, n in numbers.items()
    }
    # The same lines again under another name: duplicates, the first origin stays.
    copy = tmp_path / "resent.jsonl"
    copy.write_text(path.read_text())
    again = runner.invoke(app, ["ingest", str(copy)])
    assert "stored=0 duplicate=5" in again.output
    assert store.origins_of(keys[:1]) == {keys[0]: Origin("file", "night.jsonl", "night.jsonl:1")}
    store.close()


def test_csv_rows_are_the_origin(tmp_path: Path, store_url: str) -> None:
    mapping = tmp_path / "map.toml"
    mapping.write_text(MAPPING)
    data = tmp_path / "vitals.csv"
    data.write_text(ROWS)
    result = runner.invoke(app, ["ingest", str(data), "--map", str(mapping)])
    assert result.exit_code == 1, result.output  # a bad time and a value out of range
    store = open_store(store_url)
    keys = [("ward-export", f"r{r}.{code}", 1) for r in (1, 2, 4) for code in ("8867-4", "8480-6")]
    found = store.origins_of(keys)
    # One item per value cell: the cells of a row share the row's line.
    assert found == {
        ("ward-export", "r1.8867-4", 1): Origin("file", "vitals.csv", "vitals.csv:2"),
        ("ward-export", "r1.8480-6", 1): Origin("file", "vitals.csv", "vitals.csv:2"),
        ("ward-export", "r2.8480-6", 1): Origin("file", "vitals.csv", "vitals.csv:3"),
        ("ward-export", "r4.8480-6", 1): Origin("file", "vitals.csv", "vitals.csv:5"),
    }
    store.close()


def test_the_demo_ward_names_each_step_and_reading(tmp_path: Path) -> None:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'demo.db'}",
        demo_patients=3,
        demo_acceleration=120,
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    app, _ = create_demo_app(settings)
    table = schema.observations
    with TestClient(app):
        store = app.state.context.store
        deadline = time.monotonic() + 15
        while store.count("observations") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        with store.reading() as conn:
            query = sa.select(table.c.source, table.c.source_id, table.c.version)
            keys = [(r.source, r.source_id, r.version) for r in conn.execute(query)]
        assert keys
        origins = store.origins_of(keys)
    assert set(origins) == set(keys)
    assert {o.channel for o in origins.values()} == {"demo"}
    # The monitors' steps, and the CGM steps of the demo's patients with diabetes.
    assert all(re.fullmatch(r"(ward|t1d)-\d{8}T\d{6}Z", o.message) for o in origins.values())
    ward = [o for o in origins.values() if o.message.startswith("ward-")]
    assert ward
    first = [o for o in ward if o.message == min(x.message for x in ward)]
    # Within a step, each reading has its own place.
    assert sorted(int((o.entry or "")[1:-1]) for o in first) == list(range(len(first)))
