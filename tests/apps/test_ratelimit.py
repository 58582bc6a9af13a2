"""Rate limiting: token buckets per client, 429 with Retry-After, exempt paths, bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.types import Message

from medtwin.apps.api import create_app
from medtwin.apps.api.auth import SESSION_COOKIE
from medtwin.apps.api.ratelimit import RateLimit, client_keys
from medtwin.core.settings import Settings


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/thing")
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/static/app.js")
    def static() -> dict[str, str]:
        return {"static": "yes"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _client(limiter: RateLimit, address: str = "10.0.0.1") -> TestClient:
    return TestClient(limiter, client=(address, 50000))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_burst_beyond_the_limit_gets_429_with_retry_after(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=0.25, burst=3, clock=clock)
    client = _client(limiter)
    assert [client.get("/api/v1/thing").status_code for _ in range(3)] == [200, 200, 200]
    answer = client.get("/api/v1/thing")
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert answer.json() == {"error": error}
    assert (error["code"], error["location"]) == ("rate_limited", None)
    assert "retry" in error["message"]
    assert answer.headers["Retry-After"] == "4"  # one token at 0.25/s
    assert answer.headers["content-type"] == "application/json"
    assert limiter.rejected == 1


def test_retry_after_is_a_whole_number_of_seconds_at_least_one(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1000.0, burst=1, clock=clock)
    client = _client(limiter)
    assert client.get("/api/v1/thing").status_code == 200
    answer = client.get("/api/v1/thing")
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"  # 1 ms away, still a whole second
    clock.advance(0.3)
    limiter = RateLimit(_app(), rate=0.4, burst=1, clock=clock)
    client = _client(limiter)
    client.get("/api/v1/thing")
    assert client.get("/api/v1/thing").headers["Retry-After"] == "3"  # 2.5 s, rounded up


def test_tokens_refill_over_time(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=2.0, burst=4, clock=clock)
    client = _client(limiter)
    assert all(client.get("/api/v1/thing").status_code == 200 for _ in range(4))
    assert client.get("/api/v1/thing").status_code == 429
    clock.advance(0.25)  # half a token
    assert client.get("/api/v1/thing").status_code == 429
    clock.advance(0.25)  # one token
    assert client.get("/api/v1/thing").status_code == 200
    assert client.get("/api/v1/thing").status_code == 429
    clock.advance(3600)  # refills to the burst, no further
    assert [client.get("/api/v1/thing").status_code for _ in range(5)] == [200] * 4 + [429]


def test_refill_with_the_real_monotonic_clock() -> None:
    limiter = RateLimit(_app(), rate=20.0, burst=1)  # one token every 50 ms
    client = _client(limiter)
    assert client.get("/api/v1/thing").status_code == 200
    answer = client.get("/api/v1/thing")
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"
    time.sleep(0.1)
    assert client.get("/api/v1/thing").status_code == 200


def test_different_credentials_have_separate_buckets(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=2, clock=clock)
    client = _client(limiter)
    for _ in range(2):
        assert client.get("/api/v1/thing", headers=_bearer("token-a")).status_code == 200
    assert client.get("/api/v1/thing", headers=_bearer("token-a")).status_code == 429
    # Same address, other credentials: their own buckets.
    assert client.get("/api/v1/thing", headers=_bearer("token-b")).status_code == 200
    assert client.get("/api/v1/thing", headers={"X-API-Key": "mtk_device"}).status_code == 200
    client.cookies.set(SESSION_COOKIE, "session-c")
    assert client.get("/api/v1/thing").status_code == 200
    client.cookies.clear()
    assert client.get("/api/v1/thing").status_code == 200  # the address itself
    assert client.get("/api/v1/thing", headers=_bearer("token-a")).status_code == 429


def test_anonymous_clients_are_keyed_by_address(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=1, clock=clock)
    first, second = _client(limiter, "10.0.0.1"), _client(limiter, "10.0.0.2")
    assert first.get("/api/v1/thing").status_code == 200
    assert first.get("/api/v1/thing").status_code == 429
    assert second.get("/api/v1/thing").status_code == 200


def test_exempt_paths_are_never_limited(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=0.001, burst=1, clock=clock)
    client = _client(limiter)
    assert client.get("/api/v1/thing").status_code == 200
    assert client.get("/api/v1/thing").status_code == 429
    for _ in range(300):
        for path in ("/healthz", "/readyz", "/static/app.js"):
            assert client.get(path).status_code == 200, path
    assert client.get("/api/v1/thing").status_code == 429
    assert limiter.rejected == 2


def test_invented_credentials_cannot_escape_the_address_ceiling(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=2, address_factor=3.0, clock=clock)
    client = _client(limiter, "10.6.6.6")
    codes = [
        client.get("/api/v1/thing", headers=_bearer(f"forged-{n}")).status_code for n in range(20)
    ]
    assert codes == [200] * 6 + [429] * 14  # 3 x burst for the whole address
    # Another address is not affected.
    assert _client(limiter, "10.0.0.9").get("/api/v1/thing").status_code == 200


def test_the_bucket_table_stays_bounded(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=5, max_clients=100, clock=clock)
    for n in range(5000):
        client, address = client_keys(
            {"type": "http", "headers": [], "client": (f"10.{n // 256 % 256}.{n % 256}.1", 1)}
        )
        assert limiter.acquire(client, address) == 0.0
        assert limiter.tracked <= 200  # clients and addresses, 100 each at most
    credentials = [(f"c:{n}", "a:10.0.0.1") for n in range(5000)]
    for client, address in credentials:
        limiter.acquire(client, address)
    assert limiter.tracked <= 200
    # Idle buckets (full again after burst / rate = 5 s) are dropped at the next request.
    clock.advance(5.0)
    limiter.acquire("a:10.9.9.9", "a:10.9.9.9")
    assert limiter.tracked == 2


def test_a_refused_request_leaves_no_bucket(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=1, address_factor=1.0, clock=clock)
    assert limiter.acquire("c:one", "a:x") == 0.0
    tracked = limiter.tracked
    for n in range(1000):
        assert limiter.acquire(f"c:forged-{n}", "a:x") > 0
    assert limiter.tracked == tracked


def test_thread_safe_under_concurrent_requests(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=50, address_factor=0, clock=clock)
    allowed: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = sum(1 for _ in range(200) if limiter.acquire("c:shared") == 0.0)
        allowed.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 50
    assert limiter.rejected == 8 * 200 - 50


def test_websocket_handshakes_are_limited(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=1, clock=clock)
    client = _client(limiter)
    with client.websocket_connect("/ws?access_token=abc") as socket:
        assert socket.receive_text() == "hello"
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("/ws?access_token=abc"),
    ):
        pass
    assert denied.value.status_code == 429
    assert denied.value.headers["Retry-After"] == "1"
    # Another token has its own bucket.
    with client.websocket_connect("/ws?access_token=other") as socket:
        assert socket.receive_text() == "hello"


def test_websocket_without_http_answers_is_closed_try_again_later(clock: FakeClock) -> None:
    limiter = RateLimit(_app(), rate=1.0, burst=1, clock=clock)
    limiter.acquire("a:10.0.0.1", "a:10.0.0.1")
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("10.0.0.1", 1)}
    asyncio.run(limiter(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1013}]


def test_client_keys() -> None:
    def keys(headers: dict[str, str], kind: str = "http", query: str = "") -> tuple[str, str]:
        return client_keys(
            {
                "type": kind,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                "query_string": query.encode(),
                "client": ("192.0.2.7", 1234),
            }
        )

    assert keys({}) == ("a:192.0.2.7", "a:192.0.2.7")
    bearer, address = keys({"Authorization": "Bearer secret-token"})
    assert address == "a:192.0.2.7"
    assert bearer.startswith("c:")
    assert "secret-token" not in bearer  # hashed, never kept
    assert keys({"Authorization": "bearer  secret-token "})[0] == bearer
    assert keys({"X-API-Key": "secret-token"})[0] == bearer  # the same credential string
    assert keys({"Cookie": f"theme=dark; {SESSION_COOKIE}=secret-token"})[0] == bearer
    assert keys({}, "websocket", "access_token=secret-token")[0] == bearer
    assert keys({}, "http", "access_token=secret-token")[0] == "a:192.0.2.7"
    assert keys({"Authorization": "Basic abc"})[0] == "a:192.0.2.7"
    assert keys({"Authorization": "Bearer other"})[0] != bearer
    assert client_keys({"type": "http", "headers": []}) == ("a:unknown", "a:unknown")


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimit(_app(), rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(_app(), rate=1, burst=0)
    with pytest.raises(ValueError, match="max_clients"):
        RateLimit(_app(), max_clients=0)


@pytest.fixture
def service(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    """The real service, with the middleware added the way create_app will add it."""
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'rate.db'}",
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "checkpoints.jsonl",
    )
    app = create_app(settings, background=())
    app.add_middleware(RateLimit, rate=1.0, burst=2, clock=clock)
    with TestClient(app) as client:
        yield client


def test_the_service_answers_429_in_its_error_shape(service: TestClient) -> None:
    for _ in range(50):
        assert service.get("/healthz").status_code == 200
    codes = [service.get("/api/v1/patients").status_code for _ in range(3)]
    assert codes[:2] != [429, 429]
    assert codes[2] == 429
    answer = service.get("/api/v1/patients")
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "rate_limited"
    assert answer.json()["error"]["location"] is None
    assert int(answer.headers["Retry-After"]) >= 1
    assert service.get("/readyz").status_code == 200
