"""Device bindings through the API: who may bind, times, overlaps, and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from medtwin.apps.api import ServiceContext, create_app
from medtwin.apps.api.deps import routes_of
from medtwin.apps.api.routes import devices
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from medtwin.data.store.schema import audit

from .conftest import user_token


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'bindings.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    app = create_app(settings, background=())
    if not any(getattr(r, "path", "").startswith("/api/v1/devices") for r in routes_of(app.routes)):
        app.include_router(devices.router)  # until the service registers it
    with TestClient(app) as test_client:
        yield test_client


def _as(client: TestClient, name: str, role: Role, team: str | None = None) -> dict[str, str]:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {user_token(context, name, role, team)}"}


def test_admin_binds_unbinds_and_lists(client: TestClient) -> None:
    admin = _as(client, "admin", Role.ADMIN)
    url = "/api/v1/devices/pump-1"
    answer = client.post(
        f"{url}/bindings",
        json={"patient": "p1", "from": "2026-01-01T08:00:00Z"},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["from"] == "2026-01-01T08:00:00Z"
    assert answer.json()["to"] is None
    overlap = client.post(
        f"{url}/bindings", json={"patient": "p2", "from": "2026-01-01T09:00:00Z"}, headers=admin
    )
    assert overlap.status_code == 409
    answer = client.post(f"{url}/unbind", json={"at": "2026-01-01T10:00:00+00:00"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["to"] == "2026-01-01T10:00:00Z"
    answer = client.post(
        f"{url}/bindings",
        json={"patient": "p2", "from": "2026-01-01T10:00:00Z", "to": "2026-01-02T10:00:00Z"},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    listed = client.get(f"{url}/bindings", headers=admin).json()
    assert [(b["patient"], b["to"]) for b in listed] == [
        ("p1", "2026-01-01T10:00:00Z"),
        ("p2", "2026-01-02T10:00:00Z"),
    ]
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    with context.store.reading() as conn:
        actions = [row[0] for row in conn.execute(sa.select(audit.c.action))]
    assert actions.count("device.bind") == 2
    assert actions.count("device.unbind") == 1


def test_bad_requests(client: TestClient) -> None:
    admin = _as(client, "admin", Role.ADMIN)
    url = "/api/v1/devices/pump-1"
    for body in (
        {"patient": "p1", "from": "2026-01-01T08:00:00"},  # no offset
        {"patient": "p1", "from": "2026-01-01T08:00:00Z", "to": "2026-01-01T07:00:00Z"},
        {"patient": "p 1", "from": "2026-01-01T08:00:00Z"},
        {"patient": "p1"},
    ):
        assert client.post(f"{url}/bindings", json=body, headers=admin).status_code == 422, body
    assert client.post(f"{url}/unbind", json={}, headers=admin).status_code == 404


def test_care_team_decides_for_clinicians(client: TestClient) -> None:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    context.accounts.assign("ward-a", ["p1"])
    nurse = _as(client, "nurse", Role.CLINICIAN, "ward-a")
    url = "/api/v1/devices/mon-3"
    own = {"patient": "p1", "from": "2026-01-01T08:00:00Z", "to": "2026-01-01T09:00:00Z"}
    other = {"patient": "p9", "from": "2026-01-01T10:00:00Z"}
    assert client.post(f"{url}/bindings", json=own, headers=nurse).status_code == 201
    assert client.post(f"{url}/bindings", json=other, headers=nurse).status_code == 404
    admin = _as(client, "admin", Role.ADMIN)
    assert client.post(f"{url}/bindings", json=other, headers=admin).status_code == 201
    # The nurse sees the binding of her patient only, and cannot end the other one.
    listed = client.get(f"{url}/bindings", headers=nurse).json()
    assert [b["patient"] for b in listed] == ["p1"]
    answer = client.post(f"{url}/unbind", json={"at": "2026-01-01T11:00:00Z"}, headers=nurse)
    assert answer.status_code == 404
    researcher = _as(client, "res", Role.RESEARCHER)
    assert client.get(f"{url}/bindings", headers=researcher).status_code == 403
    assert client.post(f"{url}/bindings", json=own).status_code == 401
