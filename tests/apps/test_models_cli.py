"""``medtwin models``: train, list, promote (audited as the operator), drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.apps.cli import app
from medtwin.apps.commands import operator
from medtwin.core.clock import SystemClock
from medtwin.core.settings import Settings
from medtwin.data.audit import AuditLog
from medtwin.data.store import open_store
from medtwin.models.learning import generate_cohort
from medtwin.models.learning.physionet import HEADER

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    url = f"sqlite:///{tmp_path / 'models.db'}"
    monkeypatch.setenv("MEDTWIN_STORE_URL", url)
    monkeypatch.setenv("MEDTWIN_SECRETS_FILE", str(tmp_path / "secrets.json"))
    monkeypatch.setenv("MEDTWIN_AUDIT_CHECKPOINT_PATH", str(tmp_path / "checkpoints.jsonl"))
    return Settings()


def _write_psv(folder: Path, n: int, seed: int) -> None:
    folder.mkdir()
    for i, patient in enumerate(generate_cohort(n, seed=seed, setting="ward").patients):
        lines = ["|".join(HEADER)]
        for row, label in zip(patient.values, patient.labels, strict=True):
            cells = ["NaN" if v != v else repr(float(v)) for v in row]
            lines.append("|".join([*cells, str(int(label))]))
        (folder / f"p{i:05d}.psv").write_text("\n".join(lines) + "\n")


def test_train_list_promote_and_drift(env: Settings, tmp_path: Path) -> None:
    assert "no models registered" in runner.invoke(app, ["models", "list"]).output
    trained = runner.invoke(
        app, ["models", "train", "--patients", "120", "--seed", "3", "--trees", "30"]
    )
    assert trained.exit_code == 0, trained.output
    assert "registered deterioration version 1" in trained.output
    assert "AUROC" in trained.output

    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["name"] == "deterioration"
    assert row["version"] == 1
    assert row["serving"] is False
    assert row["created_by"] == operator()
    assert row["source"] == "generated:ward:120:3"

    # No reason, unknown version: refused.
    assert runner.invoke(app, ["models", "promote", "deterioration", "1"]).exit_code == 2
    missing = runner.invoke(app, ["models", "promote", "deterioration", "9", "--reason", "x"])
    assert missing.exit_code == 1
    promoted = runner.invoke(
        app, ["models", "promote", "deterioration", "1", "--reason", "validated on ward data"]
    )
    assert promoted.exit_code == 0, promoted.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.output.startswith("* deterioration\tv1")

    store = open_store(env.store_url)
    try:
        audit = AuditLog(store, env.secret("audit_key"), SystemClock())
        entries = [r.entry for r in audit.records(limit=1000)]
    finally:
        store.close()
    promotions = [e for e in entries if e.action == "model-promote"]
    assert [(e.actor, e.detail["reason"]) for e in promotions] == [
        (operator(), "validated on ward data")
    ]
    assert [e.actor for e in entries if e.action == "model-register"] == [operator()]

    # Drift: a similar cohort is stable; a PSV folder is read the same way.
    # Without data: what a service scored (counted in the store), nothing here yet.
    served = runner.invoke(app, ["models", "drift", "deterioration", "--days", "3"])
    assert served.exit_code == 0, served.output
    assert json.loads(served.output)["rows"] == 0
    assert json.loads(served.output)["source"] == "served over the last 3 days"
    same = runner.invoke(app, ["models", "drift", "deterioration", "--patients", "120"])
    assert same.exit_code == 0, same.output
    report = json.loads(same.output)
    assert report["version"] == 1
    assert report["rows"] > 1000
    _write_psv(tmp_path / "psv", 30, seed=11)
    from_psv = runner.invoke(
        app, ["models", "drift", "deterioration", "--psv", str(tmp_path / "psv")]
    )
    assert from_psv.exit_code == 0, from_psv.output
    assert json.loads(from_psv.output)["source"] == "psv:psv"


def test_train_on_a_psv_folder(env: Settings, tmp_path: Path) -> None:
    _write_psv(tmp_path / "training", 80, seed=4)
    trained = runner.invoke(
        app, ["models", "train", "--psv", str(tmp_path / "training"), "--trees", "20"]
    )
    assert trained.exit_code == 0, trained.output
    assert "(psv:training, 80 patients" in trained.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["models", "train", "--psv", str(empty)]).exit_code == 2


def test_a_fresh_demo_trains_promotes_and_shows_risks(tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from medtwin.apps.demo import create_demo_app

    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'demo.db'}",
        demo_patients=4,
        demo_acceleration=120,
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    started = time.perf_counter()
    app, (user, password) = create_demo_app(settings)
    assert time.perf_counter() - started < 20  # measured: about 3 s with the imports
    with TestClient(app) as client:
        context = client.app.state.context  # type: ignore[attr-defined]
        assert context.risk is not None
        assert context.risk.version == 1
        answer = client.post(
            "/auth/token",
            data={"grant_type": "password", "username": user, "password": password},
        )
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        deadline = time.monotonic() + 20
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            if "ward-01" in context.runtime:
                body = client.get("/api/v1/patients/ward-01/risk").json()
                if body.get("risk") is not None:
                    break
            time.sleep(0.3)
        assert body.get("risk") is not None, body
        assert body["factors"]
        ward = client.get("/")
        assert ward.status_code == 200
        assert 'data-field="risk"' in ward.text
    # A second start keeps the served version: nothing is trained again.
    app, _ = create_demo_app(settings)
    with TestClient(app) as client:
        assert client.app.state.context.risk.version == 1  # type: ignore[attr-defined]
