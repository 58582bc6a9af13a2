"""Personal data at rest: encrypted, searchable by blind index, erasable, rotatable."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medtwin.apps.api import create_app
from medtwin.apps.cli import app as cli
from medtwin.core.settings import Settings
from medtwin.data.crypto import generate_key
from tests.apps.conftest import user_token

PEOPLE = {
    "p1": {
        "names": [{"family": "Wolkenstein", "given": ["Ottilie", "Maren"]}],
        "identifiers": [
            {"kind": "ssn", "value": "987-65-4329"},
            {"kind": "passport", "value": "X44U81927"},
        ],
        "birth_date": "1951-03-09",
        "address": ["12 Quillfeather Lane", "Brackwater"],
        "telecom": ["+1 555 0199 321"],
    },
    "p2": {
        "names": [{"family": "Zanzibarov", "given": ["Ignatius"]}],
        "identifiers": [{"kind": "drivers-license", "value": "D-7731-55Q"}],
        "birth_date": "1988-11-30",
    },
}
SECRETS = [
    "Wolkenstein",
    "Ottilie",
    "Maren",
    "987-65-4329",
    "987654329",
    "X44U81927",
    "Quillfeather",
    "0199 321",
    "Zanzibarov",
    "Ignatius",
    "D-7731-55Q",
    "1951-03-09",
]


def observation(patient: str, n: int = 0, **change: Any) -> dict[str, Any]:
    when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {
        "id": f"{patient}-{n}",
        "source": "mon",
        "patient": patient,
        "code": "8867-4",
        "value": 70,
        "unit": "/min",
        "time": when,
        **change,
    }


def settings_for(tmp_path: Path, store_url: str, **extra: Any) -> Settings:
    return Settings(
        store_url=store_url,
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
        **extra,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path: Path, stores: Any) -> Iterator[TestClient]:
    url = stores.url(request.param)
    with TestClient(create_app(settings_for(tmp_path, url))) as client:
        context = client.app.state.context  # type: ignore[attr-defined]
        client.headers["Authorization"] = f"Bearer {user_token(context, 'root-admin')}"
        client.backend = request.param  # type: ignore[attr-defined]
        client.stores = stores  # type: ignore[attr-defined]
        for patient, demographics in PEOPLE.items():
            answer = client.post(
                "/api/v1/observations", json={"observations": [observation(patient)]}
            )
            assert answer.json()["summary"]["stored"] == 1
            put = client.put(f"/api/v1/patients/{patient}", json={"demographics": demographics})
            assert put.status_code == 200, put.text
        # A bad item carrying a name lands in quarantine: raw input is personal data too.
        client.post(
            "/api/v1/observations",
            json={"observations": [observation("p1", 9, value="Wolkenstein")]},
        )
        yield client


def raw_database_text(client: TestClient) -> str:
    """Everything the database holds, as bytes on disk (SQLite) or as a dump (PostgreSQL)."""
    context = client.app.state.context  # type: ignore[attr-defined]
    store = context.store
    if client.backend == "sqlite":  # type: ignore[attr-defined]
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        files = [store.path, Path(f"{store.path}-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists()).decode("latin-1")
    stores = client.stores  # type: ignore[attr-defined]
    schema = stores.schema_of(store.url)
    dump = subprocess.run(
        ["pg_dump", "--data-only", "-n", schema, stores.pg_url.split("?")[0]],
        capture_output=True,
        text=True,
        check=True,
    )
    return dump.stdout


def test_demographics_round_trip_and_never_rest_in_plaintext(service: TestClient) -> None:
    answer = service.get("/api/v1/patients/p1/demographics")
    assert answer.status_code == 200
    assert answer.json()["names"][0]["family"] == "Wolkenstein"
    assert answer.json()["identifiers"][1]["value"] == "X44U81927"
    text = raw_database_text(service)
    assert "p1" in text  # the dump is real: ids are there
    for secret in SECRETS:
        assert secret not in text, secret
    entry = service.app.state.context.store.quarantined()[0]  # type: ignore[attr-defined]
    assert "Wolkenstein" in entry.payload  # readable through the service, sealed at rest


def test_blind_index_search(service: TestClient) -> None:
    def ids(**query: Any) -> list[str]:
        answer = service.post("/api/v1/patients/search", json=query)
        assert answer.status_code == 200, answer.text
        return [p["id"] for p in answer.json()]

    def identifier(kind: str, value: str) -> dict[str, str]:
        return {"kind": kind, "value": value}

    assert ids(identifier=identifier("ssn", "987 65 4329")) == ["p1"]
    assert ids(identifier=identifier("passport", "x44u81927")) == ["p1"]
    assert ids(identifier=identifier("drivers-license", "D773155Q")) == ["p2"]
    assert ids(identifier=identifier("ssn", "111-11-1111")) == []
    assert ids(name="ottilie wolkenstein") == ["p1"]
    assert ids(name="Ignatius") == ["p2"]
    assert ids(birth_year=1988) == ["p2"]
    assert ids(name="Ignatius", birth_year=1951) == []
    assert service.post("/api/v1/patients/search", json={}).status_code == 422
    assert (
        service.post("/api/v1/patients/search", json={"name": "x", "ssn": "1"}).status_code == 422
    )


def test_logs_hold_no_personal_data_or_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'l.db'}"))) as client:
        token = user_token(client.app.state.context, "admin-l")  # type: ignore[attr-defined]
        client.headers["Authorization"] = f"Bearer {token}"
        client.post("/api/v1/observations", json={"observations": [observation("p1")]})
        client.put("/api/v1/patients/p1", json={"demographics": PEOPLE["p1"]})
        client.put("/api/v1/patients/p1", json={"demographics": {"names": "Wolkenstein"}})
        client.post("/api/v1/patients/search", json={"name": "Wolkenstein"})
    for secret in [*SECRETS, token]:
        assert secret not in caplog.text


def test_erasure_removes_personal_data_and_keeps_the_audit_chain(service: TestClient) -> None:
    context = service.app.state.context  # type: ignore[attr-defined]
    pseudonym = context.store.patient("p1").pseudonym
    clinician = user_token(context, "cara", role="clinician", care_team="w")  # type: ignore[arg-type]
    refused = service.delete(
        "/api/v1/patients/p1/personal-data", headers={"Authorization": f"Bearer {clinician}"}
    )
    assert refused.status_code == 403
    answer = service.delete("/api/v1/patients/p1/personal-data")
    assert answer.json() == {"patient": pseudonym, "status": "erased"}
    assert service.get("/api/v1/patients/p1/demographics").status_code == 404
    assert service.get(f"/api/v1/patients/{pseudonym}/demographics").status_code == 404
    assert context.vault.get(pseudonym) is None
    history = service.get(f"/api/v1/patients/{pseudonym}/observations").json()["items"]
    assert len(history) == 1  # the clinical record stays, under the pseudonym
    assert service.post("/api/v1/patients/search", json={"name": "Wolkenstein"}).json() == []
    text = raw_database_text(service)
    assert '"p1"' not in text
    assert "\tp1\t" not in text
    assert context.audit.verify().ok
    erase = [r for r in context.audit.records(limit=10_000) if r.entry.action == "erase"]
    assert erase
    assert erase[-1].entry.patient == pseudonym
    assert context.vault.get("p2") is not None  # the other patient is untouched


def test_key_rotation_keeps_everything_readable(tmp_path: Path) -> None:
    first = f"k1:{generate_key()}"
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with TestClient(create_app(settings_for(tmp_path, url, data_keys=first))) as client:
        client.headers["Authorization"] = f"Bearer {user_token(client.app.state.context, 'ra')}"  # type: ignore[attr-defined]
        client.post("/api/v1/observations", json={"observations": [observation("p1")]})
        client.put("/api/v1/patients/p1", json={"demographics": PEOPLE["p1"]})
        client.post(
            "/api/v1/observations", json={"observations": [observation("p1", 2, value="x")]}
        )
    both = f"{first},k2:{generate_key()}"
    runner = CliRunner()
    env = {
        "MEDTWIN_STORE_URL": url,
        "MEDTWIN_DATA_KEYS": both,
        "MEDTWIN_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "MEDTWIN_AUDIT_CHECKPOINT_PATH": str(tmp_path / "checkpoints.jsonl"),
    }
    rotated = runner.invoke(cli, ["keys", "rotate"], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert "re-encrypted 1 patient keys, 1 quarantined payloads" in rotated.output
    only_new = both.split(",")[1]
    with TestClient(create_app(settings_for(tmp_path, url, data_keys=only_new))) as client:
        context = client.app.state.context  # type: ignore[attr-defined]
        assert context.vault.get("p1").names[0].family == "Wolkenstein"
        assert context.store.quarantined()[0].payload.startswith("{")
        assert context.audit.verify().ok
    again = runner.invoke(cli, ["keys", "rotate"], env=env)
    assert "re-encrypted 0 patient keys, 0 quarantined payloads" in again.output


def test_without_its_key_data_stays_sealed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    with TestClient(create_app(settings_for(tmp_path, url, data_keys=f"k1:{generate_key()}"))) as c:
        c.headers["Authorization"] = f"Bearer {user_token(c.app.state.context, 'na')}"  # type: ignore[attr-defined]
        c.post("/api/v1/observations", json={"observations": [observation("p1")]})
        c.put("/api/v1/patients/p1", json={"demographics": PEOPLE["p1"]})
    other = settings_for(tmp_path, url, data_keys=f"k9:{generate_key()}")
    with TestClient(create_app(other)) as c, pytest.raises(Exception, match="key"):
        c.app.state.context.vault.get("p1")  # type: ignore[attr-defined]


def test_cli_erase_is_audited(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    settings = settings_for(tmp_path, url)
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {user_token(c.app.state.context, 'ea')}"  # type: ignore[attr-defined]
        c.post("/api/v1/observations", json={"observations": [observation("p7")]})
        c.put("/api/v1/patients/p7", json={"demographics": PEOPLE["p2"]})
    env = {
        "MEDTWIN_STORE_URL": url,
        "MEDTWIN_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "MEDTWIN_AUDIT_CHECKPOINT_PATH": str(tmp_path / "checkpoints.jsonl"),
    }
    result = CliRunner().invoke(cli, ["patients", "erase", "p7"], env=env)
    assert result.exit_code == 0, result.output
    assert "now known as pt-" in result.output
    with TestClient(create_app(settings)) as c:
        context = c.app.state.context  # type: ignore[attr-defined]
        assert context.store.patient("p7") is None
        last = context.audit.records(limit=10_000)[-1]
        assert last.entry.action == "erase"
        assert last.entry.role == "system"
        assert context.audit.verify().ok
    assert CliRunner().invoke(cli, ["patients", "erase", "p7"], env=env).exit_code == 1
