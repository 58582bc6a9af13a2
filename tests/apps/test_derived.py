"""Derived values over REST: results on request, cached reuse, provenance, who may see them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from medtwin.data.accounts import Role
from tests.apps.conftest import NEWS2_ZERO, LiveServer, post_values


def test_a_derived_value_is_computed_once_and_traces_to_the_posted_observations(
    live_server: LiveServer,
) -> None:
    post_values(live_server, "p1", NEWS2_ZERO, prefix="v")
    admin = live_server.admin
    first = admin.get("/api/v1/patients/p1/derived/news2")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["module"] == "news2"
    assert body["cached"] is False
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["score"]["value"] == 0
    assert outputs["score"]["unit"] == "{score}"
    again = admin.get("/api/v1/patients/p1/derived/news2").json()
    assert again["cached"] is True
    assert again["id"] == body["id"]
    assert admin.get(f"/api/v1/derived/{body['id']}").json()["outputs"] == body["outputs"]

    tree = admin.get(body["provenance"])
    assert tree.status_code == 200, tree.text
    leaves = [
        leaf
        for child in tree.json()["inputs"]
        for leaf in child["inputs"]
        if leaf["type"] == "observation"
    ]
    posted = {f"v-p1-{i}" for i, (code, _, _) in enumerate(NEWS2_ZERO) if code != "8462-4"}
    assert {leaf["source_id"] for leaf in leaves} == posted  # diastolic is not a NEWS2 input
    assert all(leaf["origin"]["channel"] == "api" for leaf in leaves)
    bundle = admin.get(body["provenance"], params={"format": "fhir"}).json()
    assert bundle["resourceType"] == "Bundle"
    kinds = [e["resource"]["target"][0]["identifier"]["system"] for e in bundle["entry"]]
    assert kinds.count("urn:medtwin:derived") == 8
    assert kinds.count("urn:medtwin:observation") == len(posted)
    prov = admin.get(body["provenance"], params={"format": "prov-json"}).json()
    assert len(prov["activity"]) == 8
    assert len(prov["wasGeneratedBy"]) == 8
    shallow = admin.get(body["provenance"], params={"depth": 0}).json()
    assert shallow["truncated"] is True
    assert "inputs" not in shallow


def test_new_data_gives_a_new_derived_value(live_server: LiveServer) -> None:
    # Half an hour apart: a rise to 135 /min that slowly is no artifact.
    earlier = datetime.now(UTC) - timedelta(minutes=30)
    post_values(live_server, "p1", NEWS2_ZERO, prefix="v", time=earlier)
    admin = live_server.admin
    before = admin.get("/api/v1/patients/p1/derived/news2").json()
    posted = datetime.now(UTC)
    post_values(live_server, "p1", [("8867-4", 135, "/min")], prefix="late")
    after = admin.get("/api/v1/patients/p1/derived/news2").json()
    assert after["id"] != before["id"]
    # Computed from the new reading: by this request, or by a refresh pass (every 0.5 s
    # on the live server) that came first and left it cached.
    assert datetime.fromisoformat(after["computed"]) >= posted - timedelta(seconds=1)
    assert {o["name"]: o["value"] for o in after["outputs"]}["score"] == 3
    # The earlier value stays readable under its own id.
    assert admin.get(f"/api/v1/derived/{before['id']}").status_code == 200


def test_unknown_modules_patients_and_ids_answer_404(live_server: LiveServer) -> None:
    post_values(live_server, "p1", NEWS2_ZERO)
    admin = live_server.admin
    assert admin.get("/api/v1/patients/p1/derived/apache-ii").status_code == 404
    assert admin.get("/api/v1/patients/nobody/derived/news2").status_code == 404
    missing = admin.get("/api/v1/derived/" + "0" * 32 + "/provenance")
    assert missing.status_code == 404
    known = admin.get("/api/v1/patients/p1/derived/news2").json()["provenance"]
    assert admin.get(known, params={"depth": -1}).status_code == 422


def test_derived_values_follow_the_care_team(live_server: LiveServer) -> None:
    post_values(live_server, "p1", NEWS2_ZERO, prefix="a")
    post_values(live_server, "p2", NEWS2_ZERO, prefix="b")
    live_server.context.accounts.assign("ward-a", ["p1"])
    result = live_server.admin.get("/api/v1/patients/p2/derived/news2").json()
    nurse = live_server.client("nurse-a", Role.CLINICIAN, care_team="ward-a")
    assert nurse.get("/api/v1/patients/p1/derived/news2").status_code == 200
    assert nurse.get("/api/v1/patients/p2/derived/news2").status_code == 404
    hidden = nurse.get(f"/api/v1/derived/{result['id']}/provenance")
    assert hidden.status_code == 404
    assert "p2" not in hidden.text  # the answer does not tell whose value it is
    researcher = live_server.client("res", Role.RESEARCHER)
    assert researcher.get(f"/api/v1/derived/{result['id']}").status_code == 403
    modules = researcher.get("/api/v1/modules")
    assert modules.status_code == 200
    news2 = next(m for m in modules.json() if m["name"] == "news2")
    assert [i["module"] for i in news2["inputs"]] == [
        f"news2.{p}"
        for p in (
            "respiration_rate",
            "spo2",
            "air_or_oxygen",
            "systolic_bp",
            "pulse",
            "consciousness",
            "temperature",
        )
    ]
    assert httpx_status(live_server, "/api/v1/modules") == 401


def httpx_status(server: LiveServer, path: str) -> int:
    import httpx

    return httpx.get(server.url + path, timeout=10).status_code


def test_the_service_derives_and_stores_values_without_being_asked(
    live_server: LiveServer,
) -> None:
    post_values(live_server, "p1", NEWS2_ZERO, prefix="auto")
    provenance = live_server.context.provenance
    deadline = time.monotonic() + 10
    while provenance.latest("p1", "news2") is None:
        assert time.monotonic() < deadline, "no NEWS2 derived by the refresh pass"
        time.sleep(0.1)
    stored = provenance.latest("p1", "news2")
    assert stored is not None
    assert stored.outputs["score"] == 0
    asked = live_server.admin.get("/api/v1/patients/p1/derived/news2").json()
    assert asked["id"] == stored.fingerprint
    assert asked["cached"] is True
