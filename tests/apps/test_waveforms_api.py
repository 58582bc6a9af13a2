"""POST /api/v1/waveforms, a patient's waveform window and its HRV, over a live server.

The PPG is HeartPy's own ``data2.csv`` recording (about 2 minutes, ~117 Hz), the
independent reference the beat detector is tested against in tests/devices.
"""

from __future__ import annotations

import base64
import json
import math
import time
from importlib import resources
from typing import Any

import heartpy
import httpx
import numpy as np
import pytest

from medtwin.core.clock import to_iso
from medtwin.data.accounts import Role
from medtwin.devices.conditioning.peaks import hrv_of_recording, hrv_summary, sample_rate_from_timer

from .conftest import LiveServer

S = 1_000_000


@pytest.fixture(scope="module")
def ppg() -> tuple[np.ndarray, float]:
    """HeartPy's data2.csv as float32 samples and its mean sampling rate (Hz)."""
    path = str(resources.files("heartpy") / "data" / "data2.csv")
    samples = heartpy.get_data(path, column_name="hr").astype(np.float32)
    rate = sample_rate_from_timer(heartpy.get_data(path, column_name="timer"))
    return samples, rate


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(np.asarray(samples, dtype="<f4").tobytes()).decode()


def recent_us(seconds_ago: float) -> int:
    """A whole second ``seconds_ago`` before now, in µs."""
    return (time.time_ns() // 1000 - round(seconds_ago * S)) // S * S


def segment(
    start_us: int,
    samples: np.ndarray,
    rate: float,
    *,
    id: str = "ppg-1",
    patient: str = "wp1",
    source: str = "oxi-1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": id,
        "source": source,
        "patient": patient,
        "kind": "ppg",
        "start": to_iso(start_us),
        "rate_hz": rate,
        "samples_b64": b64(samples),
        **extra,
    }


def window(
    client: httpx.Client, patient: str, start_us: int, end_us: int, path: str = "", **params: str
) -> httpx.Response:
    # The first HRV of a fresh install compiles the numba peak detector (then cached on
    # disk): on a slow machine that alone can take longer than the client's 10 s.
    return client.get(
        f"/api/v1/patients/{patient}/waveforms{path}",
        params={"kind": "ppg", "from": to_iso(start_us), "to": to_iso(end_us), **params},
        timeout=120.0,
    )


def test_post_read_back_exactly_and_hrv(
    live_server: LiveServer, ppg: tuple[np.ndarray, float]
) -> None:
    samples, rate = ppg
    admin = live_server.admin
    start = recent_us(180)
    item = segment(start, samples, rate)
    answer = admin.post("/api/v1/waveforms", json={"segments": [item]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["summary"] == {"stored": 1, "duplicate": 0, "conflict": 0, "rejected": 0}
    assert body["results"] == [{"index": 0, "id": "ppg-1", "status": "stored", "chunks": 3}]
    assert live_server.context.store.count("waveforms") == 3  # 60 s + 60 s + 8 s

    whole = window(admin, "wp1", start, start + 130 * S)
    assert whole.status_code == 200, whole.text
    got = whole.json()
    assert got["start"] == to_iso(start)
    assert got["rate_hz"] == rate
    assert (got["source"], got["code"], got["unit"]) == ("oxi-1", "150452", "[arb'U]")
    assert got["gaps"] == []
    assert np.asarray(got["samples"], dtype=np.float32).tobytes() == samples.tobytes()

    # A window across the first chunk boundary: the samples taken in [from, to).
    times = start + np.rint(np.arange(samples.size) * (1e6 / rate)).astype(np.int64)
    lo, hi = start + 50 * S, start + 70 * S
    part = window(admin, "wp1", lo, hi).json()
    inside = (times >= lo) & (times < hi)
    assert part["start"] == to_iso(int(times[inside][0]))
    assert np.asarray(part["samples"], dtype=np.float32).tobytes() == samples[inside].tobytes()

    hrv = window(admin, "wp1", start, start + 130 * S, "/hrv")
    assert hrv.status_code == 200, hrv.text
    ours = hrv.json()
    reference = hrv_summary(samples, rate, "ppg")
    for name in ("bpm", "rmssd_ms", "sdnn_ms"):
        assert ours[name] == pytest.approx(reference[name], rel=0.02), (name, ours, reference)  # type: ignore[literal-required]
    assert ours["n_peaks"] == reference["n_peaks"]
    assert ours["from"] == to_iso(start)
    assert ours["seconds"] == pytest.approx(samples.size / rate)

    # The same again is a duplicate; other samples under the same id a conflict.
    again = admin.post("/api/v1/waveforms", json={"segments": [item]}).json()
    assert again["results"][0]["status"] == "duplicate"
    changed = segment(start, samples + 1, rate)
    conflict = admin.post("/api/v1/waveforms", json={"segments": [changed]}).json()
    assert conflict["results"][0]["status"] == "conflict"
    entries = admin.get("/api/v1/quarantine", params={"channel": "waveforms"}).json()
    assert sorted(e["location"] for e in entries) == [
        "source=oxi-1 id=ppg-1",  # each chunk of the segment conflicts
        "source=oxi-1 id=ppg-1#1",
        "source=oxi-1 id=ppg-1#2",
    ]
    assert live_server.context.store.count("waveforms") == 3


def test_samples_as_numbers_and_gaps(live_server: LiveServer) -> None:
    admin = live_server.admin
    start = recent_us(120)
    rate = 50.0
    values = np.random.default_rng(1).normal(0, 1, 500).astype(np.float32)  # 10 s
    first = {**segment(start, values, rate, id="n-1"), "samples_b64": None}
    first["samples"] = [float(v) for v in values]
    second = segment(start + 15 * S, values, rate, id="n-2")  # 5 s later than first ends
    answer = admin.post("/api/v1/waveforms", json={"segments": [first, second]})
    assert answer.json()["summary"]["stored"] == 2, answer.text
    got = window(admin, "wp1", start, start + 25 * S).json()
    assert got["gaps"] == [
        {"start": to_iso(start + 10 * S), "end": to_iso(start + 15 * S), "n_samples": 250}
    ]
    samples = got["samples"]
    assert len(samples) == 1250
    assert samples[500:750] == [None] * 250
    assert np.asarray(samples[:500], dtype=np.float32).tobytes() == values.tobytes()
    assert np.asarray(samples[750:], dtype=np.float32).tobytes() == values.tobytes()
    # No stretch of 20 s without a gap: no HRV, and the answer says why.
    hrv = window(admin, "wp1", start, start + 25 * S, "/hrv")
    assert hrv.status_code == 422
    assert "gap-free stretch of at least 20 s" in hrv.json()["error"]["message"]
    assert "10 s" in hrv.json()["error"]["message"]
    # An empty window is an empty recording; nothing to compute HRV from is a 422.
    empty = window(admin, "wp1", start - 100 * S, start - 50 * S).json()
    assert (empty["samples"], empty["rate_hz"], empty["gaps"]) == ([], None, [])
    nothing = window(admin, "wp1", start - 100 * S, start - 50 * S, "/hrv")
    assert nothing.status_code == 422
    assert "no ppg recording" in nothing.json()["error"]["message"]


def test_window_limits_and_several_recordings(live_server: LiveServer) -> None:
    admin = live_server.admin
    start = recent_us(300)
    values = np.ones(100, dtype=np.float32)
    admin.post(
        "/api/v1/waveforms",
        json={
            "segments": [
                segment(start, values, 100.0, id="a"),
                segment(start, values, 100.0, id="b", source="oxi-2"),
            ]
        },
    )
    too_long = window(admin, "wp1", start, start + 601 * S)
    assert too_long.status_code == 422
    assert too_long.json()["error"]["location"] == "query.to"
    assert "at most 600 s (10 minutes)" in too_long.json()["error"]["message"]
    assert window(admin, "wp1", start, start).status_code == 422
    assert window(admin, "nobody", start, start + S).status_code == 404
    bad_time = admin.get(
        "/api/v1/patients/wp1/waveforms", params={"kind": "ppg", "from": "soon", "to": "later"}
    )
    assert bad_time.status_code == 422
    assert bad_time.json()["error"]["location"] == "query.from"
    both = window(admin, "wp1", start, start + S)
    assert both.status_code == 422
    assert "2 ppg recordings" in both.json()["error"]["message"]
    assert both.json()["error"]["location"] == "query.source"
    one = window(admin, "wp1", start, start + S, source="oxi-2").json()
    assert one["source"] == "oxi-2"
    assert len(one["samples"]) == 100


def test_bad_segments_are_rejected_with_locations_and_quarantined(
    live_server: LiveServer,
) -> None:
    admin = live_server.admin
    start = recent_us(60)
    ok = segment(start, np.zeros(100, np.float32), 100.0, id="ok")
    nan_b64 = np.zeros(10, np.float32)
    nan_b64[3] = np.nan
    listed = {**ok, "id": "x", "samples_b64": None, "samples": [0.0] * 5 + [math.nan]}
    future = time.time_ns() // 1000 + 3600 * S
    items = [
        ok,
        {**ok, "id": "r", "rate_hz": 0.5},
        listed,
        {**ok, "id": "k", "kind": "eeg"},
        {**ok, "id": "f", "start": to_iso(future)},
        {**ok, "id": "n", "samples_b64": b64(np.zeros(60_001, np.float32))},
        {**ok, "id": "b", "samples_b64": b64(nan_b64)},
        {**ok, "id": "both", "samples": [1.0]},
        {**ok, "id": "has#hash"},
        {**ok, "id": "z", "start": "2026-01-01T00:00:00"},
        {**ok, "id": "s", "samples_b64": "not base64!"},
        {**ok, "id": "big", "samples_b64": None, "samples": [1e39]},
        {**ok, "id": "t", "samples_b64": None, "samples": [1, "2"]},
        {**ok, "id": "u", "extra": 1},
        "not an object",
    ]
    answer = admin.post(
        "/api/v1/waveforms",
        content=json.dumps({"segments": items}),  # NaN as JavaScript spells it
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["summary"] == {"stored": 1, "duplicate": 0, "conflict": 0, "rejected": 14}
    locations = [r.get("location") for r in body["results"]]
    assert locations == [
        None,
        "segments[1].rate_hz",
        "segments[2].samples[5]",
        "segments[3].kind",
        "segments[4].start",
        "segments[5].samples_b64",
        "segments[6].samples_b64",
        "segments[7].samples",
        "segments[8].id",
        "segments[9].start",
        "segments[10].samples_b64",
        "segments[11].samples[0]",
        "segments[12].samples[1]",
        "segments[13].extra",
        "segments[14]",
    ]
    reasons = [r.get("reason") for r in body["results"]]
    assert "from 1 to 10000 Hz" in reasons[1]
    assert reasons[2] == "sample must be finite, got nan"
    assert "ahead of the clock" in reasons[4]
    assert "1 to 60000 samples (10 minutes at 100 Hz)" in reasons[5]
    assert "sample 3 is nan" in reasons[6]
    assert "not both" in reasons[7]
    assert "timezone" in reasons[9]
    assert body["results"][1]["field"] == "rate_hz"
    quarantined = admin.get("/api/v1/quarantine", params={"channel": "waveforms"}).json()
    assert len(quarantined) == 14
    by_location = {e["location"]: e for e in quarantined}
    entry = by_location["segments[1].rate_hz"]
    assert json.loads(entry["payload"]) == items[1]
    assert entry["reason"] == reasons[1]
    assert entry["source"] == "oxi-1"
    assert json.loads(by_location["segments[2].samples[5]"]["payload"])["id"] == "x"
    # Whole bodies that are not a batch are refused as for observations.
    assert admin.post("/api/v1/waveforms", content=b"{").status_code == 400
    assert admin.post("/api/v1/waveforms", json={"items": []}).status_code == 422


def test_roles_devices_and_care_teams(live_server: LiveServer) -> None:
    context = live_server.context
    _, key = context.accounts.add_api_key(
        "oximeter-a", sources=["oxi-a"], care_team="ward-a", now_us=0
    )
    device = httpx.Client(base_url=live_server.url, headers={"X-API-Key": key}, timeout=10)
    start = recent_us(60)
    values = np.zeros(100, np.float32)
    answer = device.post(
        "/api/v1/waveforms",
        json={
            "segments": [
                segment(start, values, 100.0, id="d1", patient="wa1", source="oxi-a"),
                segment(start, values, 100.0, id="d2", patient="wa1", source="oxi-b"),
            ]
        },
    ).json()
    assert [r["status"] for r in answer["results"]] == ["stored", "rejected"]
    assert answer["results"][1]["location"] == "segments[1].source"
    assert "not a device of this API key" in answer["results"][1]["reason"]
    assert "wa1" in context.runtime
    span = (start, start + S)
    with live_server.client("nurse-a", Role.CLINICIAN, care_team="ward-a") as nurse_a:
        assert window(nurse_a, "wa1", *span).status_code == 200
        assert window(nurse_a, "wa1", *span, "/hrv").status_code == 422  # 1 s: too short
        assert nurse_a.post("/api/v1/waveforms", json={"segments": []}).status_code == 403
    with live_server.client("nurse-b", Role.CLINICIAN, care_team="ward-b") as nurse_b:
        # Outside the care team: not found, exactly as a patient that does not exist.
        for path in ("", "/hrv"):
            other = window(nurse_b, "wa1", *span, path)
            missing = window(nurse_b, "nobody", *span, path)
            assert other.status_code == missing.status_code == 404
            assert other.json()["error"]["code"] == missing.json()["error"]["code"]
    with live_server.client("analyst", Role.RESEARCHER) as researcher:
        assert researcher.post("/api/v1/waveforms", json={"segments": []}).status_code == 403
        assert window(researcher, "wa1", *span).status_code == 403
        assert window(researcher, "wa1", *span, "/hrv").status_code == 403
    assert window(device, "wa1", *span).status_code == 403
    anonymous = httpx.post(f"{live_server.url}/api/v1/waveforms", json={"segments": []})
    assert anonymous.status_code == 401
    device.close()


def test_hrv_is_a_module_traced_to_its_chunks(
    live_server: LiveServer, ppg: tuple[np.ndarray, float]
) -> None:
    samples, rate = ppg
    seconds = len(samples) / rate
    start = recent_us(seconds + 10)
    posted = live_server.admin.post(
        "/api/v1/waveforms", json={"segments": [segment(start, samples, rate, id="hrv-1")]}
    )
    assert posted.status_code == 200, posted.text
    derived = live_server.admin.get("/api/v1/patients/wp1/derived/hrv.ppg")
    assert derived.status_code == 200, derived.text
    body = derived.json()
    outputs = {o["name"]: o["value"] for o in body["outputs"]}
    expected = hrv_of_recording(samples, rate, "ppg")
    assert outputs["bpm"] == pytest.approx(expected["bpm"])
    assert outputs["rmssd_ms"] == pytest.approx(expected["rmssd_ms"])
    assert outputs["bpm"] == pytest.approx(62.376, rel=0.02)  # HeartPy's figure for data2.csv
    tree = live_server.admin.get(body["provenance"]).json()
    chunks = tree["inputs"]
    assert {c["type"] for c in chunks} == {"waveform"}
    assert sorted(c["source_id"] for c in chunks) == sorted(
        ["hrv-1", *(f"hrv-1#{k}" for k in range(1, len(chunks)))]
    )
    assert sum(c["n_samples"] for c in chunks) == len(samples)
    again = live_server.admin.get("/api/v1/patients/wp1/derived/hrv.ppg").json()
    assert again["cached"] is True
    assert again["id"] == body["id"]
    prov = live_server.admin.get(body["provenance"], params={"format": "prov-json"}).json()
    assert len([e for e in prov["entity"].values() if "Waveform" in str(e["prov:type"])]) == len(
        chunks
    )
