"""GET /api/v1/patients/{patient}/series: the grid, imputed flags, scoping and limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin.data.accounts import Role
from tests.apps.conftest import LiveServer, post_values

HR = "8867-4"
SPO2 = "59408-5"


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_series_flags_imputed_values(live_server: LiveServer) -> None:
    t0 = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    post_values(live_server, "p1", [(HR, 70, "/min"), (SPO2, 97, "%")], prefix="a", time=t0)
    post_values(live_server, "p1", [(HR, 80, "/min")], prefix="b", time=t0 + timedelta(minutes=3))
    answer = live_server.admin.get(
        "/api/v1/patients/p1/series",
        params={
            "code": [HR, SPO2],
            "from": z(t0),
            "to": z(t0 + timedelta(minutes=5)),
            "step_s": 60,
            "max_age_s": 120,
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["times"][0] == z(t0)
    assert len(body["times"]) == 6
    assert (body["method"], body["fill"]) == ("last", "carry")
    hr, spo2 = body["series"][HR], body["series"][SPO2]
    assert hr["values"] == [70, 70, 70, 80, 80, 80]
    assert hr["age_s"] == [0, 60, 120, 0, 60, 120]
    imputed = ["imputed"]
    assert hr["flags"] == [[], imputed, imputed, [], imputed, imputed]
    assert hr["counts"] == {"measured": 2, "imputed": 4, "missing": 0}
    assert spo2["values"] == [97, 97, 97, None, None, None]
    assert spo2["flags"] == [[], imputed, imputed, [], [], []]
    assert spo2["gaps"] == [
        {"start": z(t0), "end": z(t0 + timedelta(minutes=5)), "length_s": 300.0}
    ]
    linear = live_server.admin.get(
        "/api/v1/patients/p1/series",
        params={"code": HR, "from": z(t0), "to": z(t0 + timedelta(minutes=3)), "method": "linear"},
    ).json()["series"][HR]
    assert linear["values"] == pytest.approx([70, 70 + 10 / 3, 70 + 20 / 3, 80])
    assert linear["flags"] == [[], imputed, imputed, []]
    default = live_server.admin.get("/api/v1/patients/p1/series")  # the last hour, every code
    assert default.status_code == 200, default.text
    assert set(default.json()["series"]) == {HR, SPO2}


def test_care_team_scoping_and_limits(live_server: LiveServer) -> None:
    context = live_server.context
    post_values(live_server, "mine", [(HR, 70, "/min")], prefix="m")
    post_values(live_server, "theirs", [(HR, 70, "/min")], prefix="t")
    context.accounts.assign("ward-a", ["mine"])
    context.accounts.assign("ward-b", ["theirs"])
    alice = live_server.client("alice-series", Role.CLINICIAN, care_team="ward-a")
    own = alice.get("/api/v1/patients/mine/series", params={"code": HR})
    other = alice.get("/api/v1/patients/theirs/series", params={"code": HR})
    missing = alice.get("/api/v1/patients/nobody/series", params={"code": HR})
    assert own.status_code == 200, own.text
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    admin = live_server.admin
    too_many = admin.get(
        "/api/v1/patients/mine/series",
        params={"code": HR, "from": "2026-01-01T00:00:00Z", "to": "2026-01-08T00:00:00Z"},
    )
    assert too_many.status_code == 422
    error = too_many.json()["error"]
    assert error["location"] == "query.step_s"
    assert "10,081 grid times asked for, at most 10,000" in error["message"]
    bad_time = admin.get("/api/v1/patients/mine/series", params={"from": "yesterday"})
    assert bad_time.status_code == 422
    assert bad_time.json()["error"]["location"] == "query.from"
    backwards = admin.get(
        "/api/v1/patients/mine/series",
        params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    )
    assert backwards.status_code == 422
    assert admin.get("/api/v1/patients/mine/series", params={"method": "cubic"}).status_code == 422
