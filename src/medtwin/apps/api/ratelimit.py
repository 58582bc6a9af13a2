"""Rate limiting: a token bucket per client, answering 429 with ``Retry-After``.

A client is its credential when the request carries one (bearer token, API key, the
WebSocket's ``access_token``, the dashboard's session cookie), keyed by the SHA-256 of the
credential string, which is not verified here (that is the routes' job, and too costly to do
twice); otherwise it is the client address. Since an unverified credential costs an
attacker nothing, every request also draws from a wider bucket of its address
(``address_factor`` times the rate and burst): inventing credentials cannot get one address
past that ceiling, while the users of a ward behind one NAT address keep their own buckets.

Liveness, readiness and static files are never limited. The bucket tables are bounded:
buckets idle long enough to be full again are dropped (a full bucket is the same as none),
and past ``max_clients`` the least recently used bucket goes.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from medtwin.apps.api.auth import SESSION_COOKIE
from medtwin.apps.api.errors import error_response

__all__ = ["EXEMPT_PATHS", "EXEMPT_PREFIXES", "RateLimit", "client_keys"]

EXEMPT_PATHS: Final = frozenset({"/healthz", "/readyz"})
EXEMPT_PREFIXES: Final = ("/static/",)
WS_TRY_AGAIN_LATER: Final = 1013


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float  # when ``tokens`` was counted


class _Table:
    """Token buckets of one kind, least recently used first. Not locked: RateLimit locks."""

    def __init__(self, rate: float, burst: float, max_size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_size = max_size
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # After this long untouched, a bucket is full again: dropping it changes nothing.
        self.idle_s = burst / rate

    def tokens(self, key: str, now: float) -> float:
        """The tokens of ``key`` now (a client without a bucket has a full one)."""
        bucket = self.buckets.get(key)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)

    def take(self, key: str, tokens: float, now: float) -> None:
        """Leave ``key`` with ``tokens - 1`` tokens, counted at ``now``."""
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = _Bucket(tokens - 1, now)
            while len(self.buckets) > self.max_size:
                self.buckets.popitem(last=False)
        else:
            bucket.tokens, bucket.stamp = tokens - 1, now
            self.buckets.move_to_end(key)

    def wait(self, tokens: float) -> float:
        """Seconds until a bucket holding ``tokens`` has one token (rounding forgiven)."""
        missing = 1.0 - tokens
        return missing / self.rate if missing > 1e-9 else 0.0

    def sweep(self, now: float) -> None:
        """Drop the buckets idle long enough to be full (amortized O(1) per request)."""
        buckets = self.buckets
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if now - oldest.stamp < self.idle_s:
                break
            del buckets[key]


def _credential(scope: Scope) -> bytes | None:
    """The credential of a request, as ``authenticate`` would pick it, unverified."""
    bearer: bytes | None = None
    api_key: bytes | None = None
    cookie: bytes | None = None
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                bearer = rest.strip()
        elif name == b"x-api-key" and value:
            api_key = value
        elif name == b"cookie":
            for part in value.split(b";"):
                cookie_name, _, cookie_value = part.strip().partition(b"=")
                if cookie_name == SESSION_COOKIE.encode() and cookie_value:
                    cookie = cookie_value
    if bearer or api_key:
        return bearer or api_key
    if scope["type"] == "websocket":
        query: bytes = scope.get("query_string", b"")
        for parameter, argument in parse_qsl(query.decode("latin-1")):
            if parameter == "access_token" and argument:
                return argument.encode("latin-1")
    return cookie


def client_keys(scope: Scope) -> tuple[str, str]:
    """(client key, address key) of a request.

    The client key is ``c:`` and the SHA-256 of the credential when there is one, else the
    address key, ``a:`` and the client's address.
    """
    client = scope.get("client")
    address = f"a:{client[0] if client else 'unknown'}"
    credential = _credential(scope)
    if credential is None:
        return address, address
    return f"c:{hashlib.sha256(credential).hexdigest()}", address


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class RateLimit:
    """Pure ASGI middleware: a token bucket per client; 429 and ``Retry-After`` when empty.

    ``rate`` is the sustained requests per second of one client and ``burst`` how many it
    may make at once. Each address may make ``address_factor`` times as many, all its
    clients together (``address_factor=0`` turns that ceiling off). ``clock`` is a
    monotonic time function in seconds (injectable for tests). Thread-safe.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float = 50.0,
        burst: int = 200,
        address_factor: float = 10.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        if max_clients < 1 or address_factor < 0:
            raise ValueError("max_clients must be at least 1, address_factor not negative")
        self.app = app
        self.clock = clock
        self._lock = threading.Lock()
        self._clients = _Table(rate, float(burst), max_clients)
        self._addresses = (
            _Table(rate * address_factor, max(1.0, burst * address_factor), max_clients)
            if address_factor > 0
            else None
        )
        self.rejected = 0  # requests answered 429 so far

    @property
    def tracked(self) -> int:
        """How many buckets are kept (clients and addresses)."""
        with self._lock:
            addresses = len(self._addresses.buckets) if self._addresses else 0
            return len(self._clients.buckets) + addresses

    def acquire(self, client: str, address: str | None = None) -> float:
        """Take a token for ``client`` (and its ``address``): 0.0, or the seconds to wait."""
        now = self.clock()
        with self._lock:
            clients = self._clients
            addresses = self._addresses if address is not None else None
            clients.sweep(now)
            tokens = clients.tokens(client, now)
            wait = clients.wait(tokens)
            if addresses is not None and address is not None:
                addresses.sweep(now)
                address_tokens = addresses.tokens(address, now)
                wait = max(wait, addresses.wait(address_tokens))
            if wait > 0:
                self.rejected += 1
                return wait
            clients.take(client, tokens, now)
            if addresses is not None and address is not None:
                addresses.take(address, address_tokens, now)
            return 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        client, address = client_keys(scope)
        wait = self.acquire(client, address)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
            "extensions", {}
        ):
            # No HTTP answer possible: refuse the handshake ("try again later").
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER})
            return
        response = error_response(
            429,
            "rate_limited",
            f"too many requests; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
