"""A loose SpO2 probe end to end: the burst is stored and shown flagged, NEWS2 holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.apps.conftest import NEWS2_ZERO, LiveServer, post_values


def test_a_burst_of_60_percent_does_not_raise_the_band(live_server: LiveServer) -> None:
    start = datetime.now(UTC) - timedelta(minutes=20)
    post_values(live_server, "p1", NEWS2_ZERO, prefix="base", time=start)
    admin = live_server.admin
    spo2 = [97, 97, 96, 97, 60, 60, 61, 97]
    bands = []
    for i, value in enumerate(spo2):
        post_values(
            live_server,
            "p1",
            [("59408-5", value, "%")],
            prefix=f"spo2-{i}",
            time=start + timedelta(minutes=2 + i),
        )
        twin = admin.get("/api/v1/twins/p1").json()
        bands.append(twin["news2"]["band"])
        if value < 70:
            shown = twin["vitals"]["59408-5"]
            assert shown["value"] != value  # the last good reading stays in use
            assert shown["artifact"]["value"] == value
            assert "artifact-suspected" in shown["artifact"]["flags"]
            assert twin["news2"]["ignored"] == ["spo2"]
            # The derived sub-score says which reading it held back, and why.
            derived = admin.get("/api/v1/patients/p1/derived/news2.spo2").json()
            tree = admin.get(derived["provenance"]).json()
            held = [i for i in tree["inputs"] if i.get("excluded")]
            assert [(i["source_id"], i["excluded"]) for i in held] == [
                (f"spo2-{i}-p1-0", "artifact-suspected")
            ]
            assert held[0]["origin"]["conditioning"]["artifact"]["detectors"]
    assert bands == ["low"] * len(spo2)  # a real SpO2 of 60 % would score 3

    # Stored, flagged, and traced to what conditioning found.
    history = admin.get("/api/v1/patients/p1/observations", params={"code": "59408-5"}).json()
    flags = {item["id"]: item["flags"] for item in history["items"]}
    assert ["artifact-suspected" in flags[f"spo2-{i}-p1-0"] for i in range(len(spo2))] == [
        v < 70 for v in spo2
    ]
    derived = admin.get("/api/v1/patients/p1/derived/news2").json()
    assert {o["name"]: o["value"] for o in derived["outputs"]}["band"] == 0  # low
    tree = admin.get(derived["provenance"]).json()
    (spo2_node,) = [c for c in tree["inputs"] if c["module"] == "news2.spo2"]
    used = [i for i in spo2_node["inputs"] if i["type"] == "observation"]
    assert [i["source_id"] for i in used if i["input"] == "value"] == ["spo2-7-p1-0"]
