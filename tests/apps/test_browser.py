"""The dashboard in headless Chromium: live ward updates, patient charts, nothing external.

Uses Debian's /usr/bin/chromium through Playwright (Playwright's own browser
download is not used). Skipped when Chromium is absent, except in CI (CI=true),
where that fails the test.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from medtwin.data.accounts import Role
from tests.apps.conftest import NEWS2_ZERO, LiveServer, post_values

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

FULL = NEWS2_ZERO


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        _unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, server: LiveServer) -> None:
    """Sign in through the dashboard's form, as a real user would."""
    password = secrets.token_urlsafe(16)
    server.context.accounts.add_user("ward-admin", password, Role.ADMIN, now_us=0)
    page.goto(server.url + "/")
    assert urlsplit(page.url).path == "/login"  # no session: the ward sends you to sign in
    page.fill("input[name=username]", "ward-admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")


@dataclass
class Watched:
    """A page with every console error, page error and off-host request recorded."""

    page: Page
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign


@pytest.fixture
def watched(browser: Browser, live_server: LiveServer) -> Iterator[Watched]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watched = Watched(page)

    def on_console(message: Any) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text}")

    def on_request(request: Any) -> None:
        if urlsplit(request.url).hostname != "127.0.0.1":
            watched.foreign.append(request.url)

    def on_websocket(socket: Any) -> None:
        if urlsplit(socket.url).hostname != "127.0.0.1":
            watched.foreign.append(socket.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))

    def on_response(response: Any) -> None:
        if response.status >= 400:
            watched.errors.append(f"HTTP {response.status}: {response.url}")

    page.on("websocket", on_websocket)
    context.on("request", on_request)
    context.on("response", on_response)
    sign_in(page, live_server)
    try:
        yield watched
    finally:
        for open_page in context.pages:
            open_page.goto("about:blank")  # closes the page's WebSocket
        context.close()
        _wake_event_handlers(live_server)


def _wake_event_handlers(server: LiveServer, timeout_s: float = 5.0) -> None:
    """Closed pages leave /ws/events at once, with no event needed to notice it."""
    bus = server.context.bus
    deadline = time.monotonic() + timeout_s
    while bus.has_subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not bus.has_subscribers, "a closed page is still subscribed to /ws/events"


def post(
    server: LiveServer, patient: str, values: list[tuple[str, float | str, str]], prefix: str
) -> None:
    # The first set ("a") half an hour back: the changes the tests post next are then
    # real trends, not the jumps signal conditioning would hold back as artifacts.
    ago = timedelta(minutes=30) if prefix == "a" else timedelta(seconds=90)
    moment = datetime.now(UTC) - ago
    post_values(server, patient, values, prefix=prefix, time=moment, source="browser-test")


def news2_cell(page: Page, patient: str) -> Any:
    return page.locator(f'tr[data-patient="{patient}"] td[data-field="news2"]')


def row_texts(page: Page, patient: str) -> list[str]:
    texts: list[str] = page.locator(f'tr[data-patient="{patient}"] [data-field]').all_inner_texts()
    return texts


def wait_live(page: Page) -> None:
    page.wait_for_selector('#live[data-state="open"]')


def test_ward_updates_live_without_reload(live_server: LiveServer, watched: Watched) -> None:
    from playwright.sync_api import expect

    page = watched.page
    post(live_server, "bed-01", FULL, "a")
    post(live_server, "bed-02", [("9279-1", 18, "/min"), ("8867-4", 80, "/min")], "a")

    page.goto(live_server.url + "/")
    wait_live(page)
    expect(page.locator("tr[data-patient]")).to_have_count(2)
    cell = news2_cell(page, "bed-01")
    expect(cell).to_have_text("0")
    expect(cell).to_have_attribute("data-band", "low")
    expect(news2_cell(page, "bed-02")).to_have_text("partial 0")
    expect(news2_cell(page, "bed-02")).to_have_attribute("data-band", "none")
    colour_before = cell.evaluate("el => getComputedStyle(el).backgroundColor")
    page.evaluate("window.__notReloaded = true")

    post(live_server, "bed-01", [("9279-1", 30, "/min")], "b")  # RR 30 scores 3: low-medium

    expect(cell).to_have_text("3")
    expect(cell).to_have_attribute("data-band", "low-medium")
    expect(page.locator('tr[data-patient="bed-01"] td[data-field="rr"]')).to_have_text("30")
    colour_after = cell.evaluate("el => getComputedStyle(el).backgroundColor")
    assert colour_after != colour_before
    assert page.evaluate("window.__notReloaded") is True

    # A new patient appears as a new row, in order, live.
    post(live_server, "bed-00", [("8867-4", 140, "/min")], "c")
    expect(page.locator("tr[data-patient]")).to_have_count(3)
    expect(news2_cell(page, "bed-00")).to_have_text("partial 3")
    order = page.locator("tr[data-patient]").evaluate_all(
        "rows => rows.map(r => r.dataset.patient)"
    )
    assert order == ["bed-00", "bed-01", "bed-02"]
    assert page.evaluate("window.__notReloaded") is True

    # The live rows read exactly as the server renders them.
    live = {p: row_texts(page, p) for p in ("bed-00", "bed-01", "bed-02")}
    fresh = page.context.new_page()
    fresh.goto(live_server.url + "/")
    assert {p: row_texts(fresh, p) for p in live} == live
    fresh.close()

    watched.check()


def test_ward_reconnects_after_the_socket_drops(live_server: LiveServer, watched: Watched) -> None:
    from playwright.sync_api import WebSocketRoute, expect

    page = watched.page
    sockets: list[WebSocketRoute] = []

    def through(socket: WebSocketRoute) -> None:
        sockets.append(socket)
        socket.connect_to_server()

    page.route_web_socket(re.compile(r"/ws/events$"), through)
    post(live_server, "bed-01", FULL, "a")
    page.goto(live_server.url + "/")
    wait_live(page)
    assert len(sockets) == 1
    page.evaluate("window.__notReloaded = true")

    sockets[0].close(code=1012, reason="service restart")
    expect(page.locator("#live")).to_have_attribute("data-state", "closed")
    post(live_server, "bed-01", [("59408-5", 91, "%")], "b")  # SpO2 91 scores 3, while offline

    wait_live(page)  # reconnected (after about a second) and resynced
    expect(news2_cell(page, "bed-01")).to_have_text("3")
    assert len(sockets) == 2
    post(live_server, "bed-01", [("8867-4", 135, "/min")], "c")  # and events flow again: 3 + 3
    expect(news2_cell(page, "bed-01")).to_have_text("6")
    assert page.evaluate("window.__notReloaded") is True
    watched.check()


def test_patient_page_charts_and_live_subscores(live_server: LiveServer, watched: Watched) -> None:
    from playwright.sync_api import expect

    page = watched.page
    post(live_server, "bed-01", FULL, "a")
    post(live_server, "bed-01", [("99999-9", 3, "mg")], "u")

    page.goto(live_server.url + "/patients/bed-01")
    wait_live(page)
    charts = page.locator("figure.chart")
    expect(charts).to_have_count(9)
    for name in ("news2", "rr", "spo2", "o2", "bp", "hr", "temp", "acvpu", "glucose"):
        expect(page.locator(f'figure[data-chart="{name}"] canvas')).to_have_count(1)
    expect(page.locator('figure[data-chart="rr"]')).to_have_attribute("data-points", "1")
    expect(page.locator('figure[data-chart="bp"]')).to_have_attribute("data-points", "2")
    expect(page.locator('figure[data-chart="news2"]')).to_have_attribute("data-points", "1")
    expect(page.locator('figure[data-chart="rr"] .u-axis')).not_to_have_count(0)
    assert "breaths/min" in page.locator('figure[data-chart="rr"]').inner_text()

    subscore = page.locator(
        '#subscores tr[data-param="respiration_rate"] td[data-field="subscore"]'
    )
    expect(subscore).to_have_text("0")
    expect(page.locator("#spo2-scale")).to_have_text("1")
    expect(page.locator('#other tr[data-code="99999-9"]')).to_contain_text("unmapped")
    page.evaluate("window.__notReloaded = true")

    post(live_server, "bed-01", [("9279-1", 30, "/min")], "b")

    expect(subscore).to_have_text("3")
    expect(page.locator("#news2-score")).to_have_text("3")
    expect(page.locator("#news2-score")).to_have_attribute("data-band", "low-medium")
    expect(page.locator('figure[data-chart="rr"]')).to_have_attribute("data-points", "2")
    expect(page.locator('figure[data-chart="news2"]')).to_have_attribute("data-points", "2")
    assert page.evaluate("window.__notReloaded") is True
    times = page.locator("#vitals time").all_inner_texts()
    assert times
    assert not any(re.search(r"\d{4}-\d\d-\d\dT", t) for t in times)

    watched.check()


def test_unknown_patient_page(live_server: LiveServer, watched: Watched) -> None:
    answer = watched.page.goto(live_server.url + "/patients/nobody")
    assert answer is not None
    assert answer.status == 404
    assert "Patient not found" in watched.page.locator("h1").inner_text()
    errors = [e for e in watched.errors if "404" not in e]
    assert errors == [], watched.errors
    assert watched.foreign == []
