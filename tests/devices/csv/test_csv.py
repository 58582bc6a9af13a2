"""CSV with a TOML mapping: rows to items, faults with file:line:column, bad mappings named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.core.errors import InputError
from medtwin.devices.csv import load_mapping, read_csv

MAPPING = """
source = "ward-export"
time_zone = "Europe/Berlin"

[columns]
id = "row"
patient = "mrn"
time = "taken"

[[values]]
column = "hr"
code = "8867-4"
unit = "/min"

[[values]]
column = "sbp"
code = "8480-6"
unit = "mm[Hg]"
"""
ROWS = (
    "row,mrn,taken,hr,sbp\n"
    "r1,p1,2026-01-01T10:00:00,72,120\n"
    "r2,p1,2026-01-01T11:00:00Z,,118\n"
    "r3,p2,not a time,80,110\n"
    "r4,p2,2026-01-01T12:00:00+01:00,500,110\n"
)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    mapping = tmp_path / "map.toml"
    mapping.write_text(MAPPING)
    data = tmp_path / "vitals.csv"
    data.write_text("\ufeff" + ROWS)  # exported with a byte-order mark
    return mapping, data


def test_rows_become_items_in_the_senders_time_zone(tmp_path: Path) -> None:
    mapping, data = _files(tmp_path)
    lines = list(read_csv(data, load_mapping(mapping)))
    items = [line.item for line in lines if line.error is None]
    assert [i["id"] for i in items] == [
        "r1.8867-4", "r1.8480-6", "r2.8480-6", "r4.8867-4", "r4.8480-6",
    ]  # fmt: skip
    assert items[0]["time"] == "2026-01-01T10:00:00+01:00"  # Berlin, no offset given
    assert items[2]["time"] == "2026-01-01T11:00:00+00:00"
    assert items[0]["value"] == 72.0
    assert items[0]["source"] == "ward-export"
    (fault,) = [line for line in lines if line.error is not None]
    assert (fault.number, fault.column) == (4, 3)
    assert "unparseable time" in (fault.error or "")


@pytest.mark.parametrize(
    ("text", "location"),
    [
        (MAPPING.replace('source = "ward-export"', ""), "map.toml:source"),
        (MAPPING.replace('patient = "mrn"', ""), "map.toml:columns.patient"),
        (MAPPING.replace("Europe/Berlin", "Mars/Olympus"), "map.toml:time_zone"),
        (MAPPING.replace('code = "8867-4"', ""), "map.toml:values[0].code"),
        ("colour = 1\n" + MAPPING, "map.toml:colour"),
        ("source = [", "map.toml"),
    ],
)
def test_bad_mappings_name_the_key(tmp_path: Path, text: str, location: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_mapping(path)
    assert err.value.location == location


def test_cli_ingests_csv_and_quarantines_the_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDTWIN_STORE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    monkeypatch.chdir(tmp_path)
    mapping, data = _files(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(data), "--map", str(mapping)])
    # r3's bad time and r4's impossible heart rate (500/min) are refused.
    assert result.exit_code == 1, result.output
    assert "stored=4 duplicate=0 conflict=0 rejected=2" in result.output
    assert "vitals.csv:4" in result.output
    again = runner.invoke(app, ["ingest", str(data), "--map", str(mapping), "--format", "csv"])
    assert "stored=0 duplicate=4" in again.output
    assert runner.invoke(app, ["ingest", str(data)]).exit_code == 2  # CSV needs --map
    listed = runner.invoke(app, ["quarantine", "list"]).output
    assert "vitals.csv:4:3" in listed
