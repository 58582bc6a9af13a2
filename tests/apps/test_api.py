"""The REST API and WebSocket over real HTTP against a running server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import websockets
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.apps.api import create_app
from medtwin.apps.api.schemas import json_schemas
from medtwin.core.settings import Settings
from tests.apps.conftest import LiveServer, user_token

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    settings = Settings(
        store_url=f"sqlite:///{path}",
        secrets_file=path.parent / "secrets.json",
        audit_checkpoint_path=path.parent / "checkpoints.jsonl",
    )
    with TestClient(create_app(settings)) as client:
        token = user_token(client.app.state.context, "fuzz-admin")  # type: ignore[attr-defined]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


def validate(instance: object, name: str) -> None:
    jsonschema.Draft202012Validator(schema(name)).validate(instance)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def vitals(
    patient: str, *, rr: float = 16, when: datetime | None = None, tag: str = ""
) -> list[dict[str, Any]]:
    """A complete NEWS2 vital set: RR 16, SpO2 97, air, SBP 120, HR 70, A, 37.0 -> NEWS2 0."""
    moment = iso(when or datetime.now(UTC) - timedelta(minutes=1))
    rows = [
        ("9279-1", rr, "/min"),
        ("59408-5", 97, "%"),
        ("3150-0", 21, "%"),
        ("8480-6", 120, "mm[Hg]"),
        ("8462-4", 80, "mm[Hg]"),
        ("8867-4", 70, "/min"),
        ("80288-4", "A", ""),
        ("8310-5", 37.0, "Cel"),
    ]
    return [
        {
            "id": f"{patient}-{code}{tag}",
            "source": "monitor-1",
            "patient": patient,
            "code": code,
            "value": value,
            "unit": unit,
            "time": moment,
        }
        for code, value, unit in rows
    ]


def post(server: LiveServer, items: list[dict[str, Any]]) -> httpx.Response:
    return server.admin.post("/api/v1/observations", json={"observations": items})


def quarantined(server: LiveServer) -> list[Any]:
    return server.context.store.quarantined(limit=1000)


def test_published_schemas_match_the_models() -> None:
    for name, generated in json_schemas().items():
        assert schema(name) == json.loads(json.dumps(generated)), (
            f"docs/schemas/{name} is stale: run make schemas"
        )


def test_post_then_read_twin_and_history(live_server: LiveServer) -> None:
    answer = post(live_server, vitals("p1"))
    assert answer.status_code == 200
    body = answer.json()
    validate(body, "ingest-answer")
    assert [r["status"] for r in body["results"]] == ["stored"] * 8
    assert body["summary"] == {"stored": 8, "duplicate": 0, "conflict": 0, "rejected": 0}

    twin = live_server.admin.get("/api/v1/twins/p1").json()
    validate(twin, "twin")
    assert twin["news2"] == {
        "score": 0,
        "partial_score": 0,
        "band": "low",
        "subscores": {k: 0 for k in twin["news2"]["subscores"]},
        "missing": [],
        "ignored": [],
    }
    assert twin["vitals"]["8867-4"]["value"] == 70
    assert twin["vitals"]["80288-4"]["value"] == "A"

    patients = live_server.admin.get("/api/v1/patients").json()
    assert [p["id"] for p in patients] == ["p1"]
    validate(patients[0], "patient")

    history = live_server.admin.get(
        "/api/v1/patients/p1/observations", params={"code": ["8867-4", "9279-1"]}
    ).json()
    validate(history, "history")
    assert sorted(i["code"] for i in history["items"]) == ["8867-4", "9279-1"]


def test_history_pages_cover_everything_once(live_server: LiveServer) -> None:
    start = datetime.now(UTC) - timedelta(minutes=50)
    items = [
        {
            "id": f"hr-{i}",
            "source": "m",
            "patient": "p2",
            "code": "8867-4",
            "value": 60 + i % 30,
            "unit": "/min",
            "time": iso(start + timedelta(seconds=20 * i)),
        }
        for i in range(120)
    ]
    assert post(live_server, items).status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 25}
        if cursor:
            params["cursor"] = cursor
        page = live_server.admin.get("/api/v1/patients/p2/observations", params=params).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"hr-{i}" for i in range(120)]
    window = live_server.admin.get(
        "/api/v1/patients/p2/observations",
        params={
            "from": iso(start + timedelta(seconds=200)),
            "to": iso(start + timedelta(seconds=400)),
        },
    ).json()
    assert [i["id"] for i in window["items"]] == [f"hr-{i}" for i in range(10, 21)]


def test_websocket_receives_twin_event(live_server: LiveServer) -> None:
    # An hour's rise in breathing rate, not a jump: conditioning would hold a jump back.
    post(live_server, vitals("p3", when=datetime.now(UTC) - timedelta(minutes=59)))

    async def scenario() -> dict[str, Any]:
        async with websockets.connect(
            f"{live_server.ws_url}/ws/events?access_token={live_server.token('admin-test')}"
        ) as ws:
            await asyncio.sleep(0.2)  # subscribed before the post below
            await asyncio.to_thread(post, live_server, vitals("p3", rr=26, tag="-b"))
            while True:
                event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                if event.get("type") != "twin.updated" or event.get("patient") != "p3":
                    continue  # derived.updated events come on the same socket
                if event["vitals"]["9279-1"]["value"] == 26:
                    return event

    event = asyncio.run(scenario())
    validate(event, "twin-event")
    assert event["type"] == "twin.updated"
    assert event["news2"]["subscores"]["respiration_rate"] == 3
    assert event["news2"]["band"] == "low-medium"


def test_spo2_scale_is_set_by_put(live_server: LiveServer) -> None:
    items = vitals("p4")
    items[1]["value"] = 90  # SpO2 90: 3 on Scale 1, 0 on Scale 2
    post(live_server, items)
    assert live_server.admin.get("/api/v1/twins/p4").json()["news2"]["subscores"]["spo2"] == 3
    answer = live_server.admin.put("/api/v1/patients/p4", json={"spo2_scale": 2})
    assert answer.status_code == 200
    assert answer.json()["spo2_scale"] == 2
    twin = live_server.admin.get("/api/v1/twins/p4").json()
    assert twin["spo2_scale"] == 2
    assert twin["news2"]["subscores"]["spo2"] == 0
    for bad in ({"spo2_scale": 3}, {"spo2_scale": "2x"}, {"other": 1}):
        refused = live_server.admin.put("/api/v1/patients/p4", json=bad)
        assert refused.status_code == 422
        validate(refused.json(), "error")
    missing = live_server.admin.put("/api/v1/patients/nobody", json={"spo2_scale": 2})
    assert missing.status_code == 404


def test_duplicates_and_conflicts(live_server: LiveServer) -> None:
    items = vitals("p5")
    post(live_server, items)
    again = post(live_server, items).json()
    assert {r["status"] for r in again["results"]} == {"duplicate"}
    changed = dict(items[0], value=30)
    answer = post(live_server, [changed]).json()
    assert answer["results"][0]["status"] == "conflict"
    entry = quarantined(live_server)[0]
    assert entry.reason.startswith("conflict")
    assert json.loads(entry.payload)["value_num"] == 30
    assert live_server.context.store.count("observations") == 8


def test_unmapped_code_is_stored_and_flagged(live_server: LiveServer) -> None:
    item = {
        "id": "x1",
        "source": "lab",
        "patient": "p6",
        "code": "99999-9",
        "value": 4.2,
        "unit": "mmol/L",
        "time": iso(datetime.now(UTC)),
    }
    result = post(live_server, [item]).json()["results"][0]
    assert result == {"index": 0, "id": "x1", "status": "stored", "flags": ["unmapped"]}
    twin = live_server.admin.get("/api/v1/twins/p6").json()
    assert twin["other"][0]["code"] == "99999-9"
    assert twin["other"][0]["flags"] == ["unmapped"]


NOW_ITEM = {
    "id": "b1",
    "source": "m",
    "patient": "p7",
    "code": "8867-4",
    "value": 70,
    "unit": "/min",
}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"value": "seventy"}, "value", "must be a number"),
        ({"value": True}, "value", "must be a number"),
        ({"value": None}, "value", "missing required field"),
        ({"patient": 7}, "patient", "patient must be"),
        ({"id": ""}, "id", "non-empty"),
        ({"unit": "kPa"}, "unit", "does not fit code 8867-4"),
        ({"value": 400}, "value", "impossible"),
        ({"value": -1}, "value", "impossible"),
        ({"time": "yesterday"}, "time", "unparseable time"),
        ({"time": "2026-01-01T10:00:00"}, "time", "no timezone"),
        ({"time": None}, "time", "missing required field"),
        ({"vlaue": 3}, "vlaue", "unknown field"),
    ],
)
def test_bad_items_are_rejected_and_quarantined(
    live_server: LiveServer, change: dict[str, Any], field: str, words: str
) -> None:
    item = {**NOW_ITEM, "time": iso(datetime.now(UTC)), **change}
    answer = post(live_server, [item])
    assert answer.status_code == 200
    result = answer.json()["results"][0]
    assert result["status"] == "rejected"
    assert result["field"] == field
    assert result["location"] == f"observations[0].{field}"
    assert words in result["reason"]
    entry = quarantined(live_server)[0]
    assert entry.location == f"observations[0].{field}"
    assert entry.reason == result["reason"]
    assert json.loads(entry.payload) == item


def test_future_time_and_non_finite_values_are_rejected(live_server: LiveServer) -> None:
    future = {**NOW_ITEM, "time": iso(datetime.now(UTC) + timedelta(minutes=6))}
    near = {**NOW_ITEM, "id": "b2", "time": iso(datetime.now(UTC) + timedelta(minutes=4))}
    raw = (
        '{"observations": ['
        + json.dumps(future)
        + ","
        + json.dumps(near)
        + ","
        + json.dumps({**NOW_ITEM, "id": "b3", "time": iso(datetime.now(UTC))}).replace(
            '"value": 70', '"value": NaN'
        )
        + ","
        + json.dumps({**NOW_ITEM, "id": "b4", "time": iso(datetime.now(UTC))}).replace(
            '"value": 70', '"value": Infinity'
        )
        + "]}"
    )
    answer = live_server.admin.post(
        "/api/v1/observations",
        content=raw,
        headers={"content-type": "application/json"},
    )
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "stored", "rejected", "rejected"]
    assert "ahead of the clock" in results[0]["reason"]
    assert "finite" in results[2]["reason"]
    assert "finite" in results[3]["reason"]


@pytest.mark.parametrize(
    ("body", "status", "code", "location"),
    [
        (b"{not json", 400, "invalid_json", "body:1:2"),
        (b"[1, 2]", 422, "invalid_request", "body"),
        (b'{"observations": {"id": 1}}', 422, "invalid_request", "observations"),
        (b'{"items": []}', 422, "invalid_request", "items"),
        (b"", 400, "invalid_json", "body:1:1"),
        (b"\xff\xfe\x00garbage", 400, "invalid_json", "body:1:1"),
    ],
)
def test_bad_bodies_get_4xx_and_quarantine(
    live_server: LiveServer, body: bytes, status: int, code: str, location: str
) -> None:
    answer = live_server.admin.post(
        "/api/v1/observations",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == status
    validate(answer.json(), "error")
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["location"] == location
    assert quarantined(live_server)[0].location == location


def test_oversized_body_and_batch(live_server: LiveServer) -> None:
    limit = live_server.context.settings.max_body_bytes
    answer = live_server.admin.post("/api/v1/observations", content=b" " * (limit + 1))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "too_large"
    assert "exceeds" in quarantined(live_server)[0].reason
    live_server.context.settings.max_batch_items = 3
    many = post(live_server, vitals("p8"))
    assert many.status_code == 413
    assert quarantined(live_server)[0].location == "observations"


def test_unknown_patient_is_404(live_server: LiveServer) -> None:
    for path in (
        "/api/v1/twins/ghost",
        "/api/v1/patients/ghost",
        "/api/v1/patients/ghost/observations",
        "/api/v1/twins/ghost/news2",
    ):
        answer = live_server.admin.get(f"{path}")
        assert answer.status_code == 404, path
        validate(answer.json(), "error")


def test_bad_query_times_are_422(live_server: LiveServer) -> None:
    post(live_server, vitals("p9"))
    for params in ({"from": "soon"}, {"to": "2026-01-01T00:00:00"}, {"cursor": "zz"}):
        answer = live_server.admin.get("/api/v1/patients/p9/observations", params=params)
        assert answer.status_code == 422, params
        validate(answer.json(), "error")


def test_news2_history(live_server: LiveServer) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    post(live_server, vitals("p10", when=start))
    post(live_server, vitals("p10", rr=26, when=start + timedelta(minutes=10), tag="-b"))
    series = live_server.admin.get("/api/v1/twins/p10/news2").json()
    assert [(p["score"], p["band"]) for p in series] == [(0, "low"), (3, "low-medium")]


def test_health_ready_metrics_openapi(live_server: LiveServer) -> None:
    assert live_server.admin.get("/healthz").json() == {"status": "ok"}
    assert live_server.admin.get("/readyz").json()["status"] == "ready"
    post(live_server, vitals("p11"))
    post(live_server, [{"id": "bad"}])
    metrics = live_server.admin.get("/metrics").text
    assert 'medtwin_ingest_items_total{channel="api",status="stored"} 8.0' in metrics
    assert 'medtwin_ingest_items_total{channel="api",status="rejected"} 1.0' in metrics
    assert "medtwin_ingest_batch_seconds_count" in metrics
    live_server.admin.post("/api/v1/observations", content=b"{")
    metrics = live_server.admin.get("/metrics").text
    assert 'medtwin_ingest_requests_refused_total{channel="api",code="invalid_json"} 1.0' in metrics
    spec = live_server.admin.get("/openapi.json").json()
    for path in (
        "/api/v1/observations",
        "/api/v1/twins/{patient}",
        "/api/v1/patients/{patient}",
        "/api/v1/patients/{patient}/observations",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/api/v1/observations"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    assert "observations" in body["schema"]["properties"]


def test_readyz_reports_unreachable_store(live_server: LiveServer) -> None:
    live_server.context.store.engine.dispose()
    live_server.context.store.path.unlink()  # type: ignore[attr-defined]
    live_server.context.store.path.mkdir()  # type: ignore[attr-defined]
    answer = httpx.get(f"{live_server.url}/readyz")  # public: no sign-in needed
    assert answer.status_code == 503


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
item_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(max_size=10),
        "source": json_values | st.just("m"),
        "patient": json_values | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True),
        "code": json_values | st.sampled_from(["9279-1", "80288-4", "8310-5", "x"]),
        "value": json_values,
        "unit": json_values | st.sampled_from(["/min", "[degF]", "%", ""]),
        "time": json_values | st.sampled_from(["2026-01-01T10:00:00Z", "2026-13-01T10:00:00Z"]),
        "system": json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(item_like, max_size=5).map(
            lambda items: json.dumps({"observations": items}).encode()
        ),
    )
)
def test_bad_input_never_answers_500(fuzz_client: TestClient, body: bytes) -> None:
    before = fuzz_client.app.state.context.store.count("quarantine")  # type: ignore[attr-defined]
    answer = fuzz_client.post("/api/v1/observations", content=body)
    assert answer.status_code < 500
    store = fuzz_client.app.state.context.store  # type: ignore[attr-defined]
    if answer.status_code >= 400:
        assert store.count("quarantine") == before + 1
    else:
        rejected = answer.json()["summary"]["rejected"] + answer.json()["summary"]["conflict"]
        assert store.count("quarantine") == before + rejected
