"""Authentication, the policy on every route, care teams, break-glass, devices, audit."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from medtwin.apps.api import create_app
from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import policy_of, routes_of
from medtwin.core.settings import Settings
from medtwin.data.accounts import Role
from medtwin.data.store import schema
from medtwin.data.vault import Demographics, HumanName
from tests.apps.conftest import WARD_PASSWORD, add_ward_users

PASSWORD = WARD_PASSWORD
# Routes FastAPI itself serves (the API description) and the static files: no patient data.
FRAMEWORK = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static"}
# /fhir/metadata: FHIR clients read the CapabilityStatement before they authenticate.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/auth/token", "/login", "/logout", "/fhir/metadata"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'sec.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    with TestClient(create_app(settings)) as test_client:
        context = test_client.app.state.context  # type: ignore[attr-defined]
        accounts = context.accounts
        add_ward_users(accounts)
        _, key_a = accounts.add_api_key(
            "monitor-a", sources=["mon-a"], care_team="ward-a", now_us=0
        )
        _, key_b = accounts.add_api_key(
            "monitor-b", sources=["mon-b"], care_team="ward-b", now_us=0
        )
        test_client.keys = {"a": key_a, "b": key_b}  # type: ignore[attr-defined]
        vault = context.vault
        for key, patient, source in ((key_a, "pa", "mon-a"), (key_b, "pb", "mon-b")):
            answer = test_client.post(
                "/api/v1/observations",
                json={"observations": [item(patient, source)]},
                headers={"X-API-Key": key},
            )
            assert answer.json()["summary"]["stored"] == 1, answer.text
            vault.put(patient, Demographics(names=[HumanName(family=f"Name-{patient}")]), now_us=0)
        yield test_client


def item(patient: str, source: str, n: int = 0) -> dict[str, Any]:
    when = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {
        "id": f"{patient}-{n}",
        "source": source,
        "patient": patient,
        "code": "8867-4",
        "value": 70 + n,
        "unit": "/min",
        "time": when,
    }


def sign_in(client: TestClient, user: str, password: str = PASSWORD) -> dict[str, Any]:
    answer = client.post(
        "/auth/token", data={"grant_type": "password", "username": user, "password": password}
    )
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def bearer(client: TestClient, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign_in(client, user)['access_token']}"}


def patient_routes(client: TestClient, role: Role | None = None) -> list[tuple[str, str]]:
    """(method, path) of each patient-scoped HTTP route (that ``role`` may call), {patient} kept.

    Routes that name their patient through another id (a derived value's) are left to
    their own tests; a module name in the path is filled in.
    """
    out = []
    for route in routes_of(client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and "{patient}" in route.path:
            policies = [p for d in route.dependant.dependencies if (p := policy_of(d))]
            if any(p.patient_scoped and (role is None or role in p.roles) for p in policies):
                path = route.path.replace("{name}", "news2")
                out += [(method, path) for method in sorted(route.methods)]
    return out


def test_every_route_declares_a_policy(client: TestClient) -> None:
    public: set[str] = set()
    guarded = 0
    for route in routes_of(client.app.routes):  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path in FRAMEWORK:
            continue
        assert isinstance(route, APIRoute | APIWebSocketRoute), path
        policies = [p for d in route.dependant.dependencies if (p := policy_of(d)) is not None]
        assert len(policies) == 1, f"{path} declares {len(policies)} policies"
        if policies[0].public:
            public.add(path)
        else:
            guarded += 1
            assert policies[0].roles, path
    assert public == PUBLIC
    assert guarded >= 10
    websocket = [r for r in routes_of(client.app.routes) if isinstance(r, APIWebSocketRoute)]  # type: ignore[attr-defined]
    assert websocket, "the WebSocket route is checked too"


def test_every_guarded_route_refuses_anonymous_callers(client: TestClient) -> None:
    for route in routes_of(client.app.routes):  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        path = route.path.replace("{patient}", "pa")
        for method in route.methods:
            answer = client.request(method, path, follow_redirects=False)
            assert answer.status_code in (401, 303), (method, path, answer.status_code)
            if answer.status_code == 303:  # dashboard pages send browsers to the sign-in form
                assert answer.headers["location"].startswith("/login")
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws/events"):
        pass
    assert closed.value.code == 1008


def test_role_matrix(client: TestClient) -> None:
    researcher = bearer(client, "rita")
    device = {"X-API-Key": client.keys["a"]}  # type: ignore[attr-defined]
    for method, path in [
        *patient_routes(client),
        ("GET", "/api/v1/twins"),
        ("GET", "/api/v1/patients"),
    ]:
        concrete = path.replace("{patient}", "pa")
        for headers in (researcher, device):
            answer = client.request(method, concrete, headers=headers, json={"spo2_scale": 2})
            assert answer.status_code == 403, (method, path, answer.status_code)
    answer = client.post("/api/v1/observations", json={"observations": []}, headers=researcher)
    assert answer.status_code == 403
    assert client.get("/api/v1/twins/pa", headers=bearer(client, "ada")).status_code == 200


def test_clinicians_see_their_care_team_only_and_get_404_elsewhere(client: TestClient) -> None:
    alice = bearer(client, "alice")
    scoped = {path for _, path in patient_routes(client)}
    assert {
        "/api/v1/twins/{patient}",
        "/api/v1/patients/{patient}/observations",
        "/patients/{patient}",
        "/patients/{patient}/current",
    } <= scoped
    assert [t["patient"] for t in client.get("/api/v1/twins", headers=alice).json()] == ["pa"]
    assert [p["id"] for p in client.get("/api/v1/patients", headers=alice).json()] == ["pa"]
    for method, path in patient_routes(client, Role.CLINICIAN):
        own = client.request(
            method, path.replace("{patient}", "pa"), headers=alice, json={"spo2_scale": 1}
        )
        other = client.request(
            method, path.replace("{patient}", "pb"), headers=alice, json={"spo2_scale": 2}
        )
        missing = client.request(
            method, path.replace("{patient}", "nobody"), headers=alice, json={"spo2_scale": 2}
        )
        # Allowed through (some routes then refuse this body, which is not the point here;
        # a route may find nothing of its own for the patient, e.g. no glucose twin: a 404
        # that is not the guard's).
        through = own.status_code in (200, 201, 422) or (
            own.status_code == 404 and own.text.replace("'pa'", "'nobody'") != missing.text
        )
        assert through, (method, path, own.text)
        assert other.status_code == missing.status_code == 404, (method, path)
        if path.startswith("/api"):
            assert other.json()["error"]["code"] == missing.json()["error"]["code"]
    assert client.get("/api/v1/twins/pb", headers=bearer(client, "ada")).json()["spo2_scale"] == 1


def test_break_glass_needs_a_reason_and_is_audited_high(client: TestClient) -> None:
    alice = bearer(client, "alice")
    assert (
        client.get("/api/v1/twins/pb", headers={**alice, "X-Break-Glass": "  "}).status_code == 404
    )
    opened = client.get(
        "/api/v1/twins/pb", headers={**alice, "X-Break-Glass": "cardiac arrest, covering bed 4"}
    )
    assert opened.status_code == 200
    context = client.app.state.context  # type: ignore[attr-defined]
    pseudonym = context.store.patient("pb").pseudonym  # the audit trail names patients so
    record = context.audit.records(patient=pseudonym)[-1]
    assert record.entry.actor == "alice"
    assert record.entry.priority == "high"
    assert record.entry.detail["break_glass"] == "cardiac arrest, covering bed 4"
    rita = bearer(client, "rita")
    assert (
        client.get("/api/v1/twins/pb", headers={**rita, "X-Break-Glass": "study"}).status_code
        == 403
    )


def test_devices_write_only_for_their_own_sources(client: TestClient) -> None:
    key_a = {"X-API-Key": client.keys["a"]}  # type: ignore[attr-defined]
    answer = client.post(
        "/api/v1/observations",
        json={"observations": [item("pa", "mon-a", 1), item("pa", "mon-b", 2)]},
        headers=key_a,
    ).json()
    assert [r["status"] for r in answer["results"]] == ["stored", "rejected"]
    assert answer["results"][1]["field"] == "source"
    assert "not a device of this API key" in answer["results"][1]["reason"]
    # A new patient first seen from ward A's monitor joins ward A's care team.
    client.post(
        "/api/v1/observations", json={"observations": [item("pnew", "mon-a")]}, headers=key_a
    )
    alice = bearer(client, "alice")
    assert client.get("/api/v1/twins/pnew", headers=alice).status_code == 200
    assert client.get("/api/v1/twins/pnew", headers=bearer(client, "bob")).status_code == 404
    context = client.app.state.context  # type: ignore[attr-defined]
    key_id = client.keys["a"].split("_")[1]  # type: ignore[attr-defined]
    context.accounts.revoke_api_key(key_id, now_us=1)
    assert (
        client.post("/api/v1/observations", json={"observations": []}, headers=key_a).status_code
        == 401
    )


def forge(client: TestClient, **change: Any) -> str:
    context = client.app.state.context  # type: ignore[attr-defined]
    now = int(time.time())
    claims = {
        "iss": context.settings.jwt_issuer,
        "aud": context.settings.jwt_audience,
        "sub": "ada",
        "role": "admin",
        "typ": "access",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "x",
    }
    key = change.pop("key", context.settings.secret("secret_key"))
    algorithm = change.pop("algorithm", "HS256")
    claims.update(change)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key if algorithm != "none" else None, algorithm=algorithm)


@pytest.mark.parametrize(
    "change",
    [
        {"algorithm": "none"},
        {"key": b"not the server's key but long enough to sign"},
        {"exp": int(time.time()) - 10},
        {"aud": "someone-else"},
        {"iss": "evil"},
        {"typ": "refresh"},
        {"exp": None},
        {"sub": "ghost"},
    ],
    ids=[
        "alg-none",
        "wrong-key",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "refresh-as-access",
        "no-expiry",
        "unknown-user",
    ],
)
def test_forged_and_stale_tokens_are_refused(client: TestClient, change: dict[str, Any]) -> None:
    assert (
        client.get(
            "/api/v1/twins", headers={"Authorization": f"Bearer {forge(client)}"}
        ).status_code
        == 200
    )
    token = forge(client, **change)
    answer = client.get("/api/v1/twins", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_refresh_tokens_rotate_and_replay_fails(client: TestClient) -> None:
    first = sign_in(client, "alice")
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = client.post("/auth/token", data=refresh)
    assert second.status_code == 200
    assert client.post("/auth/token", data=refresh).status_code == 401  # used once already
    headers = {"Authorization": f"Bearer {second.json()['access_token']}"}
    logout = client.post(
        "/auth/logout", data={"refresh_token": second.json()["refresh_token"]}, headers=headers
    )
    assert logout.status_code == 204
    again = {"grant_type": "refresh_token", "refresh_token": second.json()["refresh_token"]}
    assert client.post("/auth/token", data=again).status_code == 401


def test_wrong_password_disabled_user_and_password_reset(client: TestClient) -> None:
    answer = client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "alice", "password": "wrong password!!"},
    )
    assert answer.status_code == 401
    headers = bearer(client, "bob")
    context = client.app.state.context  # type: ignore[attr-defined]
    context.accounts.set_disabled("bob", True)
    assert client.get("/api/v1/twins", headers=headers).status_code == 401
    assert (
        client.post(
            "/auth/token", data={"grant_type": "password", "username": "bob", "password": PASSWORD}
        ).status_code
        == 401
    )
    context.accounts.set_disabled("bob", False)
    headers = bearer(client, "bob")
    time.sleep(1.1)  # token times have one-second resolution
    context.accounts.set_password("bob", "a brand new password", now_us=time.time_ns() // 1000)
    assert client.get("/api/v1/twins", headers=headers).status_code == 401


def test_session_cookie_is_not_accepted_for_writes(client: TestClient) -> None:
    signed_in = client.post(
        "/login", data={"username": "ada", "password": PASSWORD}, follow_redirects=False
    )
    assert signed_in.status_code == 303
    cookie = signed_in.cookies.get("medtwin_session")
    assert cookie
    assert "httponly" in signed_in.headers["set-cookie"].lower()
    assert "samesite=strict" in signed_in.headers["set-cookie"].lower()
    client.cookies.set("medtwin_session", cookie)
    assert client.get("/api/v1/twins").status_code == 200
    # A cross-site form could carry the cookie: writes need a bearer token or an API key.
    assert client.put("/api/v1/patients/pa", json={"spo2_scale": 2}).status_code == 401
    client.post("/logout")
    client.cookies.set("medtwin_session", cookie)
    assert client.get("/api/v1/twins").status_code == 401  # the session was revoked


def test_every_request_is_audited_and_the_chain_verifies(client: TestClient) -> None:
    audit = client.app.state.context.audit  # type: ignore[attr-defined]
    before = len(audit.records(limit=100_000))
    headers = bearer(client, "alice")  # one login entry
    for _ in range(5):
        client.get("/api/v1/twins/pa", headers=headers)
    client.get("/api/v1/twins/pb", headers=headers)  # denied
    client.get("/api/v1/twins")  # anonymous, denied
    records = audit.records(limit=100_000)[before:]
    assert [(r.entry.action, r.entry.outcome) for r in records] == (
        [("login", "success")]
        + [("read", "success")] * 5
        + [("read", "denied"), ("search", "denied")]
    )
    context = client.app.state.context  # type: ignore[attr-defined]
    assert records[1].entry.patient == context.store.patient("pa").pseudonym
    assert records[6].entry.priority == "high"
    assert audit.verify().ok


def test_an_unwritable_audit_fails_the_operation(client: TestClient) -> None:
    headers = bearer(client, "ada")
    context = client.app.state.context  # type: ignore[attr-defined]
    with context.store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit RENAME TO audit_gone")
    answer = client.get("/api/v1/twins/pa", headers=headers)
    assert answer.status_code == 503
    assert "pa" not in answer.text or answer.json()["error"]["code"] == "store_unavailable"
    assert schema.audit.name == "audit"


def test_credentials_never_reach_the_logs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = sign_in(client, "alice")
    client.get("/api/v1/twins", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "alice", "password": "a wrong password 123"},
    )
    text = caplog.text
    for secret in (
        PASSWORD,
        "a wrong password 123",
        tokens["access_token"],
        tokens["refresh_token"],
    ):
        assert secret not in text


def test_policy_constructors() -> None:
    assert Policy.open("health").public
    policy = Policy.allow(Role.CLINICIAN, action="read", patient_scoped=True)
    assert policy.roles == {Role.CLINICIAN}
    assert policy.patient_scoped
