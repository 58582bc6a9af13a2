"""POST /api/v1/interventions and a patient's intervention history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medtwin.data.accounts import Role

from .conftest import LiveServer

AN_HOUR_AGO = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
BOLUS = {
    "id": "b-1",
    "source": "pump-1",
    "patient": "ip1",
    "kind": "insulin-bolus",
    "amount": 4.5,
    "unit": "U",
    "time": AN_HOUR_AGO,
}
MEAL = {**BOLUS, "id": "m-1", "source": "logger-1", "kind": "meal", "amount": 45, "unit": "g"}


def test_store_history_duplicates_and_conflicts(live_server: LiveServer) -> None:
    admin = live_server.admin
    bad = {**BOLUS, "id": "b-2", "unit": "mL"}
    answer = admin.post("/api/v1/interventions", json={"interventions": [BOLUS, MEAL, bad]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["summary"] == {"stored": 2, "duplicate": 0, "conflict": 0, "rejected": 1}
    assert body["results"][2]["location"] == "interventions[2].unit"
    again = admin.post("/api/v1/interventions", json={"interventions": [BOLUS]}).json()
    assert again["summary"]["duplicate"] == 1
    changed = admin.post(
        "/api/v1/interventions", json={"interventions": [{**BOLUS, "amount": 6}]}
    ).json()
    assert changed["summary"]["conflict"] == 1
    history = admin.get("/api/v1/patients/ip1/interventions")
    assert history.status_code == 200
    rows = history.json()
    assert [(r["kind"], r["amount"], r["unit"]) for r in rows] == [
        ("insulin-bolus", 4.5, "[IU]"),
        ("meal", 45.0, "g"),
    ]
    reasons = {e["reason"] for e in admin.get("/api/v1/quarantine").json()}
    assert "id already stored with different content" in reasons
    assert any("unit of insulin-bolus" in r for r in reasons)


def test_refused_bodies_and_roles(live_server: LiveServer) -> None:
    admin = live_server.admin
    assert admin.post("/api/v1/interventions", content=b"{").status_code == 400
    assert admin.post("/api/v1/interventions", json={"items": []}).status_code == 422
    with live_server.client("analyst", Role.RESEARCHER) as researcher:
        assert (
            researcher.post("/api/v1/interventions", json={"interventions": [BOLUS]}).status_code
            == 403
        )
    with live_server.client("nurse", Role.CLINICIAN, care_team="ward-b") as nurse:
        # Not in the nurse's care team: not found, as for a patient that does not exist.
        assert nurse.get("/api/v1/patients/ip1/interventions").status_code == 404
