"""``medtwin mappings``: add, list, remove, and what is stored unmapped."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app


def test_unmapped_codes_then_a_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_STORE_URL", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.chdir(tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text(
        '{"id": "a", "source": "lab", "patient": "p1", "code": "HR-LOCAL", "system": "urn:lab",'
        ' "value": 72, "unit": "/min", "time": "2026-01-01T10:00:00Z"}\n'
    )
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(items)]).exit_code == 0
    unmapped = runner.invoke(app, ["mappings", "unmapped"])
    assert unmapped.exit_code == 0
    assert unmapped.output.strip() == "lab\turn:lab\tHR-LOCAL\t1"
    added = runner.invoke(
        app, ["mappings", "add", "urn:lab", "HR-LOCAL", "8867-4", "--unit", "/min"]
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["mappings", "list"]).output
    assert listed.strip() == "urn:lab\tHR-LOCAL\t8867-4\t/min"
    assert runner.invoke(app, ["mappings", "remove", "urn:lab", "HR-LOCAL"]).exit_code == 0
    assert runner.invoke(app, ["mappings", "remove", "urn:lab", "HR-LOCAL"]).exit_code == 1
    assert runner.invoke(app, ["mappings", "list"]).output == ""
