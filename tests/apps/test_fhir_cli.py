"""``medtwin ingest`` of FHIR folders, FHIR errors as OperationOutcome, erasure of raw resources."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.core.settings import Settings
from medtwin.data.store import open_store
from medtwin.data.vault import PatientVault, Privacy

from .conftest import LiveServer

HIV = Path(__file__).resolve().parents[3] / "shared" / "data" / "synthea-hiv"


def test_a_folder_loads_batches_first_and_loads_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not HIV.is_dir():
        pytest.fail(f"reference data missing: {HIV}")
    db = tmp_path / "f.db"
    monkeypatch.setenv("MEDTWIN_STORE_URL", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", str(HIV)])
    assert first.exit_code == 0, first.output
    assert "bundles=16 replayed=0 failed=0" in first.output
    assert "unmapped codes:" in first.output
    with sqlite3.connect(db) as conn:
        (resources,) = conn.execute("SELECT count(*) FROM fhir_resources").fetchone()
    again = runner.invoke(app, ["ingest", str(HIV), "--format", "fhir"])
    assert again.exit_code == 0, again.output
    assert "bundles=16 replayed=16" in again.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM fhir_resources").fetchone() == (resources,)
        (patient,) = conn.execute(
            "SELECT id FROM fhir_resources WHERE resource_type = 'Patient' LIMIT 1"
        ).fetchone()
    # Erasure takes the patient's raw resources with it.
    settings = Settings(store_url=f"sqlite:///{db}")
    store = open_store(settings.store_url)
    try:
        PatientVault(store, Privacy.from_settings(settings)).erase(patient, now_us=1)
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        left = conn.execute(
            "SELECT count(*) FROM fhir_resources WHERE patient_id = ? OR id = ?",
            (patient, patient),
        ).fetchone()
    assert left == (0,)


def test_fhir_errors_are_operation_outcomes(live_server: LiveServer) -> None:
    anonymous = httpx.get(f"{live_server.url}/fhir/Patient/x", timeout=10)
    assert anonymous.status_code == 401
    body = anonymous.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"
    metadata = httpx.get(f"{live_server.url}/fhir/metadata", timeout=10)
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"


def test_loading_synthea_logs_no_personal_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    if not HIV.is_dir():
        pytest.fail(f"reference data missing: {HIV}")
    secrets: set[str] = set()
    for path in HIV.glob("*.json"):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") != "Patient":
                continue
            for name in resource.get("name", []):
                secrets.update(part for part in [name.get("family", ""), *name.get("given", [])])
            secrets.update(i.get("value", "") for i in resource.get("identifier", []))
    secrets = {s for s in secrets if len(s) >= 5}
    assert len(secrets) > 20
    monkeypatch.setenv("MEDTWIN_STORE_URL", f"sqlite:///{tmp_path / 'log.db'}")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["ingest", str(HIV)])
    assert result.exit_code == 0, result.output
    logged = "\n".join(record.getMessage() for record in caplog.records) + result.output
    assert not [s for s in secrets if s in logged]
