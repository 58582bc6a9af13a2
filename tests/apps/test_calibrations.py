"""Device calibration: fitted against a reference from stored readings, then applied as
readings arrive, and recorded in their provenance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.data.accounts import Role
from tests.apps.conftest import LiveServer

GLUCOSE = "2339-0"


def _post(server: LiveServer, source: str, items: list[tuple[str, float, datetime]]) -> None:
    body = {
        "observations": [
            {"id": item_id, "source": source, "patient": "p1", "code": GLUCOSE,
             "value": value, "unit": "mg/dL", "time": at.isoformat()}
            for item_id, value, at in items
        ]
    }  # fmt: skip
    answer = server.admin.post("/api/v1/observations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["stored"] == len(items), answer.text


def test_a_cgm_is_calibrated_against_finger_sticks(live_server: LiveServer) -> None:
    start = datetime.now(UTC) - timedelta(hours=6)
    rng = np.random.default_rng(5)
    truth = 110 + 40 * np.sin(np.arange(72) / 9)  # every 5 min for 6 h
    # The sensor reads 8 % low and 6 mg/dL high: reference = 1.08 * sensor - 6.48.
    sensor = (truth + 6) / 1.08
    readings = [
        (f"c{i}", round(float(v), 1), start + timedelta(minutes=5 * i))
        for i, v in enumerate(sensor)
    ]
    _post(live_server, "cgm-9", readings)
    sticks = [(f"f{i}", round(float(truth[i] + rng.normal(0, 1)), 1),
               start + timedelta(minutes=5 * i, seconds=40)) for i in range(0, 72, 6)]  # fmt: skip
    _post(live_server, "meter-1", sticks)

    request = {
        "code": GLUCOSE,
        "reference": "meter-1",
        "from": start.isoformat(),
        "to": (start + timedelta(hours=6)).isoformat(),
        "max_gap_s": 120,
    }
    nurse = live_server.client("nurse", Role.CLINICIAN, care_team="ward")
    assert nurse.post("/api/v1/devices/cgm-9/calibrations", json=request).status_code == 403
    fitted = live_server.admin.post("/api/v1/devices/cgm-9/calibrations", json=request)
    assert fitted.status_code == 201, fitted.text
    calibration = fitted.json()
    assert calibration["n"] == 12
    assert calibration["gain"] == pytest.approx(1.08, abs=0.02)
    assert calibration["offset"] == pytest.approx(-6.48, abs=3)

    now = datetime.now(UTC) - timedelta(seconds=30)
    _post(live_server, "cgm-9", [("late", 140.0, now)])
    twin = live_server.admin.get("/api/v1/twins/p1").json()
    shown = twin["vitals"][GLUCOSE]
    assert shown["value"] == pytest.approx(calibration["gain"] * 140 + calibration["offset"])
    assert "calibrated" in shown["flags"]
    origin = live_server.context.store.origins_of([("cgm-9", "late", 1)])[("cgm-9", "late", 1)]
    assert origin.conditioning is not None
    assert '"raw":140.0' in origin.conditioning
    assert calibration["id"] in origin.conditioning

    # A refit of the same data treats calibrated readings by their raw value.
    again = live_server.admin.post("/api/v1/devices/cgm-9/calibrations", json=request).json()
    assert again["gain"] == pytest.approx(calibration["gain"])
    history = live_server.admin.get("/api/v1/devices/cgm-9/calibrations").json()
    assert [c["id"] for c in history] == [calibration["id"], again["id"]]


def test_too_few_pairs_are_refused_with_the_reason(live_server: LiveServer) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    _post(live_server, "cgm-3", [("c0", 100.0, at)])
    _post(live_server, "meter-3", [("f0", 110.0, at + timedelta(minutes=30))])
    request = {
        "code": GLUCOSE,
        "reference": "meter-3",
        "from": (at - timedelta(hours=1)).isoformat(),
        "to": datetime.now(UTC).isoformat(),
    }
    answer = live_server.admin.post("/api/v1/devices/cgm-3/calibrations", json=request)
    assert answer.status_code == 422
    assert "0 reading pairs" in answer.json()["error"]["message"]


def test_drift_tracking_follows_the_sensor_as_it_is_now(live_server: LiveServer) -> None:
    start = datetime.now(UTC) - timedelta(hours=12)
    hours = np.arange(0, 12, 0.25)
    truth = 120 + 30 * np.sin(hours)
    drift = 2.0 * hours  # the sensor reads 2 mg/dL lower every hour
    readings = [
        (f"d{i}", round(float(truth[i] - drift[i]), 2), start + timedelta(hours=float(h)))
        for i, h in enumerate(hours)
    ]
    _post(live_server, "cgm-5", readings)
    sticks = [
        (f"s{i}", round(float(truth[i]), 2), start + timedelta(hours=float(h), seconds=30))
        for i, h in enumerate(hours)
    ]
    _post(live_server, "meter-5", sticks)
    request = {
        "code": GLUCOSE,
        "reference": "meter-5",
        "from": start.isoformat(),
        "to": (start + timedelta(hours=12)).isoformat(),
        "max_gap_s": 120,
    }
    plain = live_server.admin.post("/api/v1/devices/cgm-5/calibrations", json=request).json()
    tracked = live_server.admin.post(
        "/api/v1/devices/cgm-5/calibrations", json={**request, "half_life_s": 900}
    ).json()
    assert tracked["method"].startswith("drift-tracker")
    # At the end the sensor reads 23.5 mg/dL low: the tracked fit is near it (behind by
    # about the drift of one half-life / ln 2), the plain fit near the 12-hour average.
    end_error = 2.0 * hours[-1]
    at = 120.0
    plain_shift = plain["gain"] * at + plain["offset"] - at
    tracked_shift = tracked["gain"] * at + tracked["offset"] - at
    assert abs(tracked_shift - end_error) < 3, tracked_shift
    assert abs(plain_shift - end_error) > 2 * abs(tracked_shift - end_error), plain_shift
