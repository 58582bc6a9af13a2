"""Alarm routes: list, read, acknowledge, resolve, suppress; care teams; audit; WebSocket;
the dashboard's session cookie on a same-origin POST only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.apps.api import ServiceContext, create_app, refresh_twins
from medtwin.core.settings import Settings
from tests.apps.conftest import (
    WARD_PASSWORD,
    LiveServer,
    _free_port,
    add_ward_users,
    post_values,
    serving,
)
from tests.twins.test_alarms_outbound import Receiver

PASSWORD = WARD_PASSWORD
# NEWS2 8: RR 26 (3), SpO2 91 (3), HR 115 (2); the rest normal.
HIGH: list[tuple[str, float | str, str]] = [
    ("9279-1", 26, "/min"),
    ("59408-5", 91, "%"),
    ("3150-0", 21, "%"),
    ("8480-6", 125, "mm[Hg]"),
    ("8867-4", 115, "/min"),
    ("80288-4", "A", ""),
    ("8310-5", 37.0, "Cel"),
]


def _context(client: TestClient) -> ServiceContext:
    context: ServiceContext = client.app.state.context  # type: ignore[attr-defined]
    return context


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'alarms.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    # No background refresh: the test evaluates the alarms when it wants to.
    with TestClient(create_app(settings, background=())) as test_client:
        accounts = _context(test_client).accounts
        add_ward_users(accounts)
        when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        for patient, team in (("pa", "ward-a"), ("pb", "ward-b")):
            _, key = accounts.add_api_key(
                f"monitor-{patient}", sources=[f"mon-{patient}"], care_team=team, now_us=0
            )
            items = [
                {
                    "id": f"{patient}-{i}",
                    "source": f"mon-{patient}",
                    "patient": patient,
                    "code": code,
                    "value": value,
                    "unit": unit,
                    "time": when,
                }
                for i, (code, value, unit) in enumerate(HIGH)
            ]
            answer = test_client.post(
                "/api/v1/observations", json={"observations": items}, headers={"X-API-Key": key}
            )
            assert answer.json()["summary"]["stored"] == len(items), answer.text
        yield test_client


def bearer(client: TestClient, user: str) -> dict[str, str]:
    answer = client.post(
        "/auth/token", data={"grant_type": "password", "username": user, "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _raise(client: TestClient) -> list[dict[str, Any]]:
    return _context(client).alarms.evaluate()


def _alarm(client: TestClient, patient: str, rule: str = "news2-high") -> str:
    alarms = _context(client).alarms.alarms(patients=[patient])
    return next(a.id for a in alarms if a.rule == rule)


def test_list_alarms_by_care_team_and_filters(client: TestClient) -> None:
    raised = _raise(client)
    assert sorted((e["patient"], e["alarm"]["rule"]) for e in raised) == [
        ("pa", "news2-high"),
        ("pa", "news2-single-3"),
        ("pb", "news2-high"),
        ("pb", "news2-single-3"),
    ]
    alice, ada = bearer(client, "alice"), bearer(client, "ada")
    mine = client.get("/api/v1/alarms", headers=alice).json()
    assert [(a["patient"], a["rule"], a["priority"]) for a in mine] == [
        ("pa", "news2-high", "high"),  # highest priority first
        ("pa", "news2-single-3", "medium"),
    ]
    assert mine[0]["status"] == "active"
    assert mine[0]["recipient"] == "care-team"
    assert mine[0]["level"] == 0
    assert mine[0]["value"] == 8
    assert len(client.get("/api/v1/alarms", headers=ada).json()) == 4
    high = client.get("/api/v1/alarms", params={"priority": "high"}, headers=ada).json()
    assert {a["patient"] for a in high} == {"pa", "pb"}
    assert {a["rule"] for a in high} == {"news2-high"}
    assert client.get("/api/v1/alarms", params={"patient": "pb"}, headers=alice).json() == []
    assert len(client.get("/api/v1/alarms", params={"patient": "pb"}, headers=ada).json()) == 2
    assert client.get("/api/v1/alarms", headers=bearer(client, "rita")).status_code == 403
    assert client.get("/api/v1/alarms").status_code == 401
    # One alarm: the care team's own, 404 elsewhere exactly like an unknown id.
    pb = _alarm(client, "pb")
    assert client.get(f"/api/v1/alarms/{pb}", headers=ada).json()["patient"] == "pb"
    other = client.get(f"/api/v1/alarms/{pb}", headers=alice)
    unknown = client.get("/api/v1/alarms/nope", headers=alice)
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"]["code"] == unknown.json()["error"]["code"]


def test_acknowledge_and_resolve_with_a_reason(client: TestClient) -> None:
    _raise(client)
    alice = bearer(client, "alice")
    pa, pb = _alarm(client, "pa"), _alarm(client, "pb")
    path = f"/api/v1/alarms/{pa}/acknowledge"
    assert client.post(path, json={}, headers=alice).status_code == 422
    assert client.post(path, json={"reason": ""}, headers=alice).status_code == 422
    answer = client.post(path, json={"reason": "on my way"}, headers=alice)
    assert answer.status_code == 200, answer.text
    taken = answer.json()
    assert taken["status"] == "acknowledged"
    assert taken["acknowledged"]["by"] == "alice"
    assert taken["acknowledged"]["reason"] == "on my way"
    assert client.post(path, json={"reason": "again"}, headers=alice).status_code == 409
    assert (
        client.post(
            f"/api/v1/alarms/{pb}/acknowledge", json={"reason": "x"}, headers=alice
        ).status_code
        == 404
    )
    done = client.post(f"/api/v1/alarms/{pa}/resolve", json={"reason": "reviewed"}, headers=alice)
    assert done.status_code == 200
    assert done.json()["resolved"] == {
        "at": done.json()["resolved"]["at"],
        "by": "alice",
        "reason": "reviewed",
    }
    assert (
        client.post(f"/api/v1/alarms/{pa}/resolve", json={"reason": "x"}, headers=alice).status_code
        == 409
    )
    listed = client.get("/api/v1/alarms", params={"status": "all"}, headers=alice).json()
    assert {a["id"]: a["status"] for a in listed}[pa] == "resolved"
    # The transitions are in the audit chain as alice's, with her reasons.
    context = _context(client)
    pseudonym = context.store.patient("pa").pseudonym  # type: ignore[union-attr]
    records = [
        r.entry
        for r in context.audit.records(patient=pseudonym)
        if r.entry.action.startswith("alarm-")
    ]
    assert [(e.action, e.actor, e.detail.get("reason")) for e in records] == [
        ("alarm-raise", "system", None),
        ("alarm-raise", "system", None),
        ("alarm-acknowledge", "alice", "on my way"),
        ("alarm-resolve", "alice", "reviewed"),
    ]
    assert context.audit.verify().ok


def test_suppress_a_rule_for_a_patient(client: TestClient) -> None:
    alice = bearer(client, "alice")
    path = "/api/v1/patients/pa/alarms/suppress"
    body = {"rule": "news2-high", "minutes": 30, "reason": "end of life care"}
    answer = client.post(path, json=body, headers=alice)
    assert answer.status_code == 201, answer.text
    assert answer.json()["by"] == "alice"
    assert answer.json()["rule"] == "news2-high"
    assert client.post(path, json={**body, "rule": "nope"}, headers=alice).status_code == 422
    too_long = client.post(path, json={**body, "minutes": 100_000}, headers=alice)
    assert too_long.status_code == 422
    assert too_long.json()["error"]["location"] == "minutes"
    other = client.post("/api/v1/patients/pb/alarms/suppress", json=body, headers=alice)
    assert other.status_code == 404
    raised = _raise(client)
    assert sorted((e["patient"], e["alarm"]["rule"]) for e in raised) == [
        ("pa", "news2-single-3"),  # news2-high is suppressed for pa
        ("pb", "news2-high"),
        ("pb", "news2-single-3"),
    ]


def test_events_reach_the_websocket_of_the_care_team_only(client: TestClient) -> None:
    token = bearer(client, "alice")["Authorization"].split()[1]
    context = _context(client)
    with client.websocket_connect(f"/ws/events?access_token={token}") as socket:
        _raise(client)
        context.bus.publish([{"type": "marker"}])
        seen = []
        while (event := socket.receive_json())["type"] != "marker":
            seen.append(event)
    assert sorted((e["type"], e["patient"], e["alarm"]["rule"]) for e in seen) == [
        ("alarm.raised", "pa", "news2-high"),
        ("alarm.raised", "pa", "news2-single-3"),
    ]


def test_the_dashboard_session_acknowledges_from_the_same_origin_only(
    client: TestClient,
) -> None:
    _raise(client)
    pa = _alarm(client, "pa")
    login = client.post(
        "/login", data={"username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert login.status_code == 303
    path = f"/api/v1/alarms/{pa}/acknowledge"
    body = {"reason": "from the ward page"}
    # The session cookie alone, or with another site's origin: refused (no CSRF).
    assert client.post(path, json=body).status_code == 403
    foreign = client.post(path, json=body, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert _context(client).alarms.get(pa).status == "active"
    answer = client.post(path, json=body, headers={"Origin": "http://testserver"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["acknowledged"]["by"] == "alice"
    # The cookie still opens no other patient's alarm.
    pb = _alarm(client, "pb")
    assert (
        client.post(
            f"/api/v1/alarms/{pb}/acknowledge", json=body, headers={"Origin": "http://testserver"}
        ).status_code
        == 404
    )


def test_the_service_refresh_raises_alarms_and_posts_them_to_the_webhook(
    tmp_path: Path,
) -> None:
    """End to end: readings in, the periodic refresh raises, the webhook receives."""
    with Receiver() as receiver:
        port = _free_port()
        settings = Settings(
            store_url=f"sqlite:///{tmp_path / 'live.db'}",
            secrets_file=tmp_path / "secrets.json",
            audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
            port=port,
            refresh_interval_s=0.2,
            alarm_webhook_urls=[receiver.url],
        )
        app = create_app(settings, background=(refresh_twins,))
        with serving(app, port) as url:
            server = LiveServer(url, f"ws://127.0.0.1:{port}", app.state)
            post_values(server, "bed-9", HIGH)
            assert receiver.received.wait(15), "no alarm reached the webhook"
            deadline = time.monotonic() + 15
            while len(receiver.bodies) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the service's own refresh loop, on the wall clock
            listed = server.admin.get("/api/v1/alarms").json()
    assert sorted(a["rule"] for a in listed) == ["news2-high", "news2-single-3"]
    assert sorted((b["type"], b["patient"], b["alarm"]["rule"]) for b in receiver.bodies) == [
        ("alarm.raised", "bed-9", "news2-high"),
        ("alarm.raised", "bed-9", "news2-single-3"),
    ]
