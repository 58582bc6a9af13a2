"""GraphQL at /graphql: data, the REST rules, limits, errors and the twin-event subscription."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.websockets import WebSocketDisconnect

from medtwin.apps.api import ServiceContext, create_app
from medtwin.apps.api.graphql import install
from medtwin.apps.api.graphql.limits import MAX_DEPTH, MAX_SELECTIONS
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from tests.apps.conftest import user_token

# The seven NEWS2 inputs, all normal (NEWS2 0); item ids are "<patient>-<code><tag>".
NEWS2_INPUTS = [
    ("9279-1", 16, "/min"),
    ("59408-5", 97, "%"),
    ("3150-0", 21, "%"),
    ("8480-6", 120, "mm[Hg]"),
    ("8867-4", 70, "/min"),
    ("8310-5", 37.0, "Cel"),
    ("80288-4", "A", ""),
]
SOURCE = "monitor-1"
TRANSPORT_WS = "graphql-transport-ws"


def _settings(path: Path) -> Settings:
    return Settings(
        store_url=f"sqlite:///{path / 'graphql.db'}",
        secrets_file=path / "secrets.json",
        audit_checkpoint_path=path / "checkpoints.jsonl",
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # The fuzz sends hundreds of requests at once: out of the rate limiter's way.
    settings = _settings(tmp_path_factory.mktemp("gql-fuzz")).model_copy(
        update={"rate_limit_per_s": 100_000.0, "rate_limit_burst": 100_000}
    )
    with TestClient(create_app(settings)) as test_client:
        token = user_token(context(test_client), "fuzz-admin")
        test_client.headers["Authorization"] = f"Bearer {token}"
        yield test_client


def context(client: TestClient) -> ServiceContext:
    app: Any = client.app
    found: ServiceContext = app.state.context
    return found


def bearer(
    client: TestClient, user: str, role: Role = Role.ADMIN, team: str | None = None
) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(context(client), user, role, team)}"}


def post_news2_inputs(
    client: TestClient, patient: str, *, minutes_ago: float = 1, tag: str = ""
) -> set[str]:
    """Post the seven NEWS2 inputs of ``patient``; their source ids."""
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    items = [
        {
            "id": f"{patient}-{code}{tag}",
            "source": SOURCE,
            "patient": patient,
            "code": code,
            "value": value,
            "unit": unit,
            "time": moment.isoformat().replace("+00:00", "Z"),
        }
        for code, value, unit in NEWS2_INPUTS
    ]
    answer = client.post(
        "/api/v1/observations", json={"observations": items}, headers=bearer(client, "poster")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["stored"] == len(items), answer.text
    return {item["id"] for item in items}


def graphql(
    client: TestClient,
    query: str,
    headers: dict[str, str],
    variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer to ``query``, which must come with HTTP 200."""
    answer = client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


def test_patients_twin_and_observations(client: TestClient) -> None:
    posted = post_news2_inputs(client, "p1")
    admin = bearer(client, "ada")
    body = graphql(
        client,
        """
        query ($p: ID!) {
          patients { id pseudonym spo2Scale }
          twins { patient }
          twin(patient: $p) {
            spo2Scale
            news2 { score partialScore band missing subscores { parameter score } }
            vitals { code value text unit time flags }
          }
          observations(patient: $p, codes: ["8867-4", "80288-4"]) {
            items { source sourceId version code value text unit status }
            nextCursor
          }
          latestObservations(patient: $p) { sourceId code }
          patient(id: $p) { id twin { news2 { score } } observations(first: 2) { nextCursor } }
        }
        """,
        admin,
        {"p": "p1"},
    )
    assert "errors" not in body, body
    data = body["data"]
    assert [p["id"] for p in data["patients"]] == ["p1"]
    assert [t["patient"] for t in data["twins"]] == ["p1"]
    news2 = data["twin"]["news2"]
    assert (news2["score"], news2["band"], news2["missing"]) == (0, "low", [])
    assert len(news2["subscores"]) == 7
    vitals = {v["code"]: v for v in data["twin"]["vitals"]}
    assert vitals["8867-4"]["value"] == 70
    assert (vitals["80288-4"]["value"], vitals["80288-4"]["text"]) == (None, "A")
    items = data["observations"]["items"]
    assert {(i["code"], i["value"], i["text"]) for i in items} == {
        ("8867-4", 70, None),
        ("80288-4", None, "A"),
    }
    assert {(i["source"], i["sourceId"], i["version"]) for i in items} == {
        (SOURCE, "p1-8867-4", 1),
        (SOURCE, "p1-80288-4", 1),
    }
    assert {o["sourceId"] for o in data["latestObservations"]} == posted
    assert data["patient"]["twin"]["news2"]["score"] == 0
    assert data["patient"]["observations"]["nextCursor"] is not None
    # The patient reads are audited as REST's are: once per patient and policy, by pseudonym.
    pseudonym = data["patients"][0]["pseudonym"]
    reads = [
        r.entry
        for r in context(client).audit.records(patient=pseudonym)
        if r.entry.action == "read"
    ]
    assert reads
    assert all(e.actor == "ada" and e.outcome == "success" for e in reads)
    assert all(e.detail["route"] == "/graphql" for e in reads)


def test_care_team_scoping_and_roles(client: TestClient) -> None:
    post_news2_inputs(client, "p1")
    post_news2_inputs(client, "p2")
    context(client).accounts.assign("ward-a", ["p1"])
    query = '{ patients { id } twins { patient } twin(patient: "p1") { news2 { score } } }'

    alice = graphql(client, query, bearer(client, "alice", Role.CLINICIAN, "ward-a"))
    assert "errors" not in alice, alice
    assert [p["id"] for p in alice["data"]["patients"]] == ["p1"]
    assert [t["patient"] for t in alice["data"]["twins"]] == ["p1"]

    # Outside the care team: the patient is absent, and reading it is NOT_FOUND, exactly
    # like a patient that does not exist (REST answers 404).
    bob_headers = bearer(client, "bob", Role.CLINICIAN, "ward-b")
    bob = graphql(client, query, bob_headers)
    assert bob["data"] is None
    assert codes(bob) == ["NOT_FOUND"]
    for field in ('twin(patient: "p1") { time }', 'patient(id: "p1") { id }'):
        answer = graphql(client, "{ " + field + " }", bob_headers)
        assert codes(answer) == ["NOT_FOUND"], answer
    missing = graphql(client, '{ twin(patient: "nobody") { time } }', bob_headers)
    assert missing["errors"][0]["message"].startswith("no ")
    assert graphql(client, "{ patients { id } }", bob_headers)["data"] == {"patients": []}

    # Breaking the glass opens the patient, as on REST, audited with high priority.
    glass = {**bob_headers, "X-Break-Glass": "cardiac arrest, bay 3"}
    opened = graphql(client, '{ twin(patient: "p1") { news2 { score } } }', glass)
    assert opened["data"]["twin"]["news2"]["score"] == 0, opened
    high = [r.entry for r in context(client).audit.records() if r.entry.priority == "high"]
    assert any(e.actor == "bob" and e.outcome == "success" for e in high)

    # Roles that REST refuses (researchers, devices) get FORBIDDEN on every field.
    rita = graphql(client, query, bearer(client, "rita", Role.RESEARCHER))
    assert set(codes(rita)) == {"FORBIDDEN"}
    assert rita["data"] is None


def test_unauthenticated_requests_get_a_graphql_error(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"X-API-Key": "mtk_wrong"}):
        answer = client.post("/graphql", json={"query": "{ patients { id } }"}, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"
        assert codes(answer.json()) == ["UNAUTHENTICATED"]
    answer = client.get("/graphql", params={"query": "{ patients { id } }"})
    assert answer.status_code == 401
    assert codes(answer.json()) == ["UNAUTHENTICATED"]


def test_get_queries_and_graphiql_in_development_only(client: TestClient) -> None:
    admin = bearer(client, "ada")
    answer = client.get("/graphql", params={"query": "{ patients { id } }"}, headers=admin)
    assert answer.json() == {"data": {"patients": []}}
    page = client.get("/graphql", headers={**admin, "Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    production = Settings.model_construct(environment="production")
    assert install(FastAPI(), production).graphql_ide is None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ patients { id }", "GRAPHQL_PARSE_FAILED"),
        ("query {", "GRAPHQL_PARSE_FAILED"),
        ("{ nothing }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ twin(patient: true) { time } }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ twin { time } }", "GRAPHQL_VALIDATION_FAILED"),
        ('{ observations(patient: "p1", from: "yesterday") { nextCursor } }', "BAD_USER_INPUT"),
        ('{ observations(patient: "p1", first: 0) { nextCursor } }', "BAD_USER_INPUT"),
        ('{ observations(patient: "p1", after: "x") { nextCursor } }', "BAD_USER_INPUT"),
        ('{ derived(patient: "p1", name: "no-such-module") { id } }', "NOT_FOUND"),
    ],
)
def test_malformed_queries_get_graphql_errors_not_500(
    client: TestClient, query: str, code: str
) -> None:
    post_news2_inputs(client, "p1")
    body = graphql(client, query, bearer(client, "ada"))
    assert codes(body) == [code], body
    assert body.get("data") is None


def test_malformed_requests_get_graphql_errors(client: TestClient) -> None:
    admin = bearer(client, "ada")
    for content in (b"{not json", b"[1, 2]", b'{"query": 3}', b"{}"):
        answer = client.post(
            "/graphql", content=content, headers={**admin, "Content-Type": "application/json"}
        )
        assert answer.status_code in (200, 400), (content, answer.status_code)
        assert answer.json()["errors"][0]["message"], content
    answer = client.put("/graphql", json={"query": "{ patients { id } }"}, headers=admin)
    assert answer.status_code == 405


def nested(depth: int) -> str:
    """A derived value's provenance, ``depth`` levels of inputs below the result node."""
    inner = "id"
    for _ in range(depth):
        inner = f"id inputs {{ {inner} }}"
    return f'{{ derived(patient: "p1", name: "news2") {{ provenance {{ {inner} }} }} }}'


def test_depth_and_cost_limits(client: TestClient) -> None:
    post_news2_inputs(client, "p1")
    admin = bearer(client, "ada")
    # derived and provenance take two levels: MAX_DEPTH - 2 levels of inputs are allowed.
    assert "errors" not in graphql(client, nested(MAX_DEPTH - 2), admin)
    for depth in (MAX_DEPTH - 1, MAX_DEPTH + 20):
        too_deep = graphql(client, nested(depth), admin)
        assert set(codes(too_deep)) == {"GRAPHQL_VALIDATION_FAILED"}
        assert "depth" in too_deep["errors"][0]["message"]
        assert too_deep["data"] is None
    # Fragments cannot hide depth either.
    fragments = "fragment F on ProvenanceNode { inputs { inputs { inputs { id } } } }"
    chained = nested(MAX_DEPTH - 4).replace("id inputs { id }", "id inputs { ...F }")
    assert set(codes(graphql(client, chained + fragments, admin))) == {"GRAPHQL_VALIDATION_FAILED"}

    # Cost: fragments spread many times multiply the selections (3 x 10 x 10 x 10 here).
    bomb = "fragment A on Twin { patient time spo2Scale } " + " ".join(
        f"fragment {b} on Twin {{ {' '.join([f'...{a}'] * 10)} }}" for a, b in ("AB", "BC", "CD")
    )
    costly = graphql(client, '{ twin(patient: "p1") { ...D } } ' + bomb, admin)
    assert codes(costly) == ["QUERY_TOO_COSTLY"], costly
    assert str(MAX_SELECTIONS) in costly["errors"][0]["message"]
    aliases = " ".join(f"a{i}: patients {{ id }}" for i in range(40))
    assert codes(graphql(client, "{ " + aliases + " }", admin)) == ["GRAPHQL_VALIDATION_FAILED"]


def observation_ids(node: dict[str, Any]) -> set[str]:
    """Source ids of every observation node under ``node``."""
    found = {node["sourceId"]} if node.get("type") == "observation" else set()
    for child in node.get("inputs") or ():
        found |= observation_ids(child)
    return found


def test_news2_provenance_returns_the_posted_observation_ids(client: TestClient) -> None:
    posted = post_news2_inputs(client, "p1")
    body = graphql(
        client,
        """
        fragment Leaf on ProvenanceNode {
          id type input missing
          ... on ObservationNode { source sourceId version code time origin { channel entry } }
          ... on AttributeNode { value text }
        }
        query ($p: ID!) {
          derived(patient: $p, name: "news2") {
            id module version cached
            outputs { name value unit }
            provenance {
              id type module moduleVersion
              inputs {
                ...Leaf
                ... on ResultNode { module outputs { name value } }
                inputs { ...Leaf inputs { ...Leaf } }
              }
            }
          }
          patient(id: $p) { derived(name: "news2") { id cached } }
        }
        """,
        bearer(client, "ada"),
        {"p": "p1"},
    )
    assert "errors" not in body, body
    derived = body["data"]["derived"]
    assert derived["module"] == "news2"
    assert {o["name"]: o["value"] for o in derived["outputs"]}["score"] == 0
    root = derived["provenance"]
    assert root["id"] == derived["id"]
    assert (root["type"], root["module"]) == ("result", "news2")
    assert {child["type"] for child in root["inputs"]} == {"result"}
    assert observation_ids(root) == posted
    leaves = [leaf for child in root["inputs"] for leaf in child["inputs"]]
    observations = [leaf for leaf in leaves if leaf["type"] == "observation"]
    assert all(o["source"] == SOURCE and o["version"] == 1 for o in observations)
    assert all(o["origin"]["channel"] == "api" and not o["missing"] for o in observations)
    # The same inputs again: the same fingerprint, found rather than computed.
    again = body["data"]["patient"]["derived"]
    assert again == {"id": derived["id"], "cached": True}


def test_derived_follows_the_patient_rules(client: TestClient) -> None:
    post_news2_inputs(client, "p1")
    query = '{ derived(patient: "p1", name: "news2") { id } }'
    bob = graphql(client, query, bearer(client, "bob", Role.CLINICIAN, "ward-b"))
    assert codes(bob) == ["NOT_FOUND"]
    rita = graphql(client, query, bearer(client, "rita", Role.RESEARCHER))
    assert codes(rita) == ["FORBIDDEN"]


def wait_for_subscriber(client: TestClient, timeout_s: float = 10) -> None:
    """Until the subscription is on the bus (it starts in a task of its own)."""
    deadline = time.monotonic() + timeout_s
    while not context(client).bus.has_subscribers:
        assert time.monotonic() < deadline, "the subscription never subscribed"
        time.sleep(0.01)


SUBSCRIBE = {
    "id": "1",
    "type": "subscribe",
    "payload": {
        "query": "subscription ($p: ID) { twinEvents(patient: $p) "
        "{ type patient twin { news2 { score band } } payload } }",
        "variables": {"p": "p1"},
    },
}


def test_subscription_receives_twin_updates(client: TestClient) -> None:
    token = bearer(client, "ada")["Authorization"]
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"Authorization": token}})
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json(SUBSCRIBE)
        wait_for_subscriber(client)
        post_news2_inputs(client, "p2")  # someone else's: filtered out
        post_news2_inputs(client, "p1")
        message = ws.receive_json()
        assert message["type"] == "next", message
        event = message["payload"]["data"]["twinEvents"]
        assert (event["type"], event["patient"]) == ("twin.updated", "p1")
        assert event["twin"]["news2"] == {"score": 0, "band": "low"}
        assert event["payload"]["vitals"]["8867-4"]["value"] == 70
        ws.send_json({"id": "1", "type": "complete"})
    deadline = time.monotonic() + 10
    while context(client).bus.has_subscribers:  # completing closes the bus subscription
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_subscription_follows_care_teams(client: TestClient) -> None:
    post_news2_inputs(client, "p1")
    context(client).accounts.assign("ward-a", ["p1"])
    headers = bearer(client, "alice", Role.CLINICIAN, "ward-a")
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS], headers=headers) as ws:
        ws.send_json({"type": "connection_init"})  # signed in by the handshake's header
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json({**SUBSCRIBE, "payload": {**SUBSCRIBE["payload"], "variables": {}}})
        wait_for_subscriber(client)
        post_news2_inputs(client, "p2", minutes_ago=2)  # not alice's patient
        post_news2_inputs(client, "p1", minutes_ago=0.5, tag="-later")
        event = ws.receive_json()["payload"]["data"]["twinEvents"]
        assert event["patient"] == "p1"

    bob = bearer(client, "bob", Role.CLINICIAN, "ward-b")["Authorization"]
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        ws.send_json({"type": "connection_init", "payload": {"Authorization": bob}})
        assert ws.receive_json() == {"type": "connection_ack"}
        ws.send_json(SUBSCRIBE)
        message = ws.receive_json()
        assert message["type"] in ("next", "error"), message
        errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
        assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"]


def test_subscription_needs_valid_credentials(client: TestClient) -> None:
    for payload in ({}, {"Authorization": "Bearer forged"}, {"X-API-Key": "mtk_nope"}):
        with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
            ws.send_json({"type": "connection_init", "payload": payload})
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4403
    # Subscribing before connection_init is refused by the protocol.
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        ws.send_json(SUBSCRIBE)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401
    assert not context(client).bus.has_subscribers


GRAPHQL_CHARACTERS = "{}()[]:$@!.,=|&\"' \n#querysubscriptionfragmentonpatientstwin...123"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200),
        st.text(
            alphabet="{}()[]:$@!.,=|&\"' \nquerysubscriptionfragmentonpatientstwin", max_size=200
        ),
    )
)
def test_random_queries_never_answer_500(fuzz_client: TestClient, query: str) -> None:
    answer = fuzz_client.post("/graphql", json={"query": query})
    assert answer.status_code in (200, 400), (query, answer.status_code, answer.text)
    assert "errors" in answer.json() or "data" in answer.json()
    answer = fuzz_client.get("/graphql", params={"query": query})
    assert answer.status_code in (200, 400, 405), (query, answer.status_code, answer.text)
