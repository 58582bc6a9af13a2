"""A real medtwin server on a free port, for end-to-end and browser tests."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from medtwin.apps.api import ServiceContext, create_app
from medtwin.core.settings import Settings
from medtwin.data.accounts import Accounts, Role


@dataclass
class LiveServer:
    url: str
    ws_url: str
    app_state: object

    @property
    def context(self) -> ServiceContext:
        context: ServiceContext = self.app_state.context  # type: ignore[attr-defined]
        return context

    def token(self, username: str, role: Role = Role.ADMIN, care_team: str | None = None) -> str:
        """An access token of a user made on first use (no password round trip)."""
        return user_token(self.context, username, role, care_team)

    def client(
        self, username: str, role: Role = Role.ADMIN, care_team: str | None = None
    ) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token(username, role, care_team)}"},
            timeout=10,
        )

    @property
    def admin(self) -> httpx.Client:
        """A client signed in as an admin (sees every patient, may write any source)."""
        if not hasattr(self, "_admin"):
            self._admin = self.client("admin-test")
        return self._admin


def user_token(
    context: ServiceContext, username: str, role: Role = Role.ADMIN, care_team: str | None = None
) -> str:
    user = context.accounts.user(username)
    if user is None:
        user = context.accounts.add_user(
            username, secrets.token_urlsafe(16), role, care_team=care_team, now_us=0
        )
    token, _, _ = context.tokens.issue(user, "access")
    return token


NEWS2_ZERO = [  # every NEWS2 parameter present and normal: NEWS2 0
    ("9279-1", 16, "/min"),
    ("59408-5", 97, "%"),
    ("3150-0", 21, "%"),
    ("8480-6", 120, "mm[Hg]"),
    ("8462-4", 80, "mm[Hg]"),
    ("8867-4", 70, "/min"),
    ("8310-5", 37.0, "Cel"),
    ("80288-4", "A", ""),
]


def post_values(
    server: LiveServer,
    patient: str,
    values: list[tuple[str, float | str, str]],
    *,
    prefix: str = "o",
    time: datetime | None = None,
    source: str = "test",
) -> None:
    """Post one observation per (code, value, unit) for ``patient`` (default: a minute ago)."""
    moment = time or datetime.now(UTC) - timedelta(minutes=1)
    items = [
        {
            "id": f"{prefix}-{patient}-{i}",
            "source": source,
            "patient": patient,
            "code": code,
            "value": value,
            "unit": unit,
            "time": moment.isoformat().replace("+00:00", "Z"),
        }
        for i, (code, value, unit) in enumerate(values)
    ]
    answer = server.admin.post("/api/v1/observations", json={"observations": items})
    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["stored"] == len(items), answer.text


WARD_PASSWORD = "correct horse battery staple"
WARD_USERS = (
    ("alice", Role.CLINICIAN, "ward-a"),
    ("bob", Role.CLINICIAN, "ward-b"),
    ("rita", Role.RESEARCHER, None),
    ("ada", Role.ADMIN, None),
)
"""Two clinicians of two care teams, a researcher and an admin: (name, role, team)."""


def add_ward_users(accounts: Accounts) -> None:
    """The :data:`WARD_USERS`, each with :data:`WARD_PASSWORD`."""
    for name, role, team in WARD_USERS:
        accounts.add_user(name, WARD_PASSWORD, role, care_team=team, now_us=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1:``port`` in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("medtwin server did not become ready in 20 s")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    port = _free_port()
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'live.db'}", port=port, refresh_interval_s=0.5
    )
    app = create_app(settings)
    with serving(app, port) as url:
        yield LiveServer(url, f"ws://127.0.0.1:{port}", app.state)
