"""POST /api/v1/observations records each stored observation's origin: the request id
and the item's JSON path, as a rejection would name it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from medtwin.data.store import Origin
from tests.apps.conftest import LiveServer

TIME = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")


def _items(prefix: str) -> list[dict[str, Any]]:
    good = {"source": "bedside", "patient": "origin-1", "code": "8867-4", "unit": "/min"}
    return [
        {**good, "id": f"{prefix}-0", "value": 70, "time": TIME},
        {**good, "id": f"{prefix}-1", "value": "fast", "time": TIME},  # rejected
        {**good, "id": f"{prefix}-2", "value": 72, "time": TIME},
    ]


def test_the_request_id_and_item_path_are_the_origin(live_server: LiveServer) -> None:
    store = live_server.context.store
    answer = live_server.admin.post(
        "/api/v1/observations",
        json={"observations": _items("o")},
        headers={"X-Request-ID": "ward-7.batch_12"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Request-ID"] == "ward-7.batch_12"
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["stored", "rejected", "stored"]
    assert results[1]["location"] == "observations[1].value"
    keys = [("bedside", f"o-{n}", 1) for n in range(3)]
    assert store.origins_of(keys) == {
        keys[0]: Origin("api", "ward-7.batch_12", "observations[0]"),
        keys[2]: Origin("api", "ward-7.batch_12", "observations[2]"),
    }
    # A resend is a duplicate: the origin stays that of the first request.
    again = live_server.admin.post(
        "/api/v1/observations",
        json={"observations": _items("o")},
        headers={"X-Request-ID": "resend-1"},
    )
    assert again.json()["summary"] == {"stored": 0, "duplicate": 2, "conflict": 0, "rejected": 1}
    assert again.headers["X-Request-ID"] == "resend-1"
    assert store.origins_of(keys)[keys[0]].message == "ward-7.batch_12"


def test_an_unsafe_or_missing_request_id_is_replaced(live_server: LiveServer) -> None:
    store = live_server.context.store
    generated = re.compile(r"req-[0-9a-f]{32}")
    for n, header in enumerate([None, "x" * 65, "has space", "semi;colon", ""]):
        headers = {} if header is None else {"X-Request-ID": header}
        answer = live_server.admin.post(
            "/api/v1/observations", json={"observations": _items(f"u{n}")}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        request_id = answer.headers["X-Request-ID"]
        assert generated.fullmatch(request_id), request_id
        origin = store.origins_of([("bedside", f"u{n}-0", 1)])[("bedside", f"u{n}-0", 1)]
        assert origin == Origin("api", request_id, "observations[0]")
    # The longest id kept as given: 64 characters.
    answer = live_server.admin.post(
        "/api/v1/observations",
        json={"observations": _items("l")},
        headers={"X-Request-ID": "y" * 64},
    )
    assert answer.headers["X-Request-ID"] == "y" * 64


def test_a_refused_body_answers_its_request_id(live_server: LiveServer) -> None:
    answer = live_server.admin.post(
        "/api/v1/observations",
        content=b"{not json",
        headers={"X-Request-ID": "broken-1", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.headers["X-Request-ID"] == "broken-1"
