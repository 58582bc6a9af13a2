"""The glucose twin on the patient page in headless Chromium: the forecast band is drawn
and follows the live forecast, and a what-if draws its branches beside "no change".

The server runs on a fixed clock set to now, so the test moves time on by a CGM step
when it wants a new forecast. Uses the browser fixtures of ``test_browser``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin.apps.api import create_app
from medtwin.core.clock import FixedClock
from medtwin.core.settings import Settings
from medtwin.devices.simulated.diabetes import DiabetesConfig, DiabetesWard
from tests.apps.conftest import LiveServer, _free_port, serving
from tests.apps.test_browser import (  # noqa: F401  (fixtures)
    Watched,
    browser,
    wait_live,
    watched,
)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


class Fed:
    """The server's clock and the simulated CGM and pump feeding it."""

    def __init__(self, server: LiveServer, clock: FixedClock) -> None:
        self.server = server
        self.clock = clock
        self.ward = DiabetesWard(DiabetesConfig(("adult#001",), ("t1d-a",), days=1))
        self.ward.advance(clock.now() - timedelta(hours=3))  # origin: three hours ago
        self.send()

    def send(self) -> None:
        observations, interventions = self.ward.advance(self.clock.now())
        admin = self.server.admin
        if observations:
            answer = admin.post("/api/v1/observations", json={"observations": observations})
            assert answer.status_code == 200, answer.text
        if interventions:
            answer = admin.post("/api/v1/interventions", json={"interventions": interventions})
            assert answer.status_code == 200, answer.text


@pytest.fixture
def clock() -> FixedClock:
    now = datetime.now(UTC).replace(microsecond=0)
    # A minute past a CGM step: the twin reaches that step on the first pass.
    return FixedClock(now - timedelta(minutes=now.minute % 5 - 1, seconds=now.second))


@pytest.fixture
def live_server(tmp_path: Path, clock: FixedClock) -> Iterator[LiveServer]:
    """The live server of ``tests.apps.conftest`` on a fixed clock (``watched`` uses it)."""
    port = _free_port()
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'live.db'}", port=port, refresh_interval_s=0.5
    )
    app = create_app(settings, clock=clock)
    with serving(app, port) as url:
        yield LiveServer(url, f"ws://127.0.0.1:{port}", app.state)


def test_the_band_is_drawn_updated_live_and_a_whatif_draws_branches(
    live_server: LiveServer,
    clock: FixedClock,
    watched: Watched,  # noqa: F811  (the fixture imported above)
) -> None:
    from playwright.sync_api import expect

    fed = Fed(live_server, clock)
    deadline = time.monotonic() + 60  # the first pass learns from 3 h of data
    while "t1d-a" not in live_server.context.glucose and time.monotonic() < deadline:
        time.sleep(0.1)
    page = watched.page
    page.goto(live_server.url + "/patients/t1d-a")
    wait_live(page)
    section = page.locator("#glucose")
    expect(section).to_be_visible()
    chart = page.locator("#glucose-chart")
    expect(chart).to_have_attribute("data-forecast", re.compile(r"^[0-9a-f]{32}$"))
    band = int(chart.get_attribute("data-band90-px") or 0)
    assert band > 3, "the 90% band has no height on the canvas"
    assert int(chart.get_attribute("data-points") or 0) >= 30
    expect(page.locator("#glucose-forecast tbody tr")).to_have_count(3)
    expect(page.locator("#glucose-parameters tbody tr")).to_have_count(2)
    expect(page.locator('#glucose-parameters tr[data-parameter="Vmx"]')).to_be_visible()
    expect(page.locator("#glucose-statement")).to_have_text(
        "Supports, does not replace, clinical judgement."
    )
    # The 90 % band is painted: the canvas holds the band's translucent blue.
    painted = chart.locator("canvas").evaluate(
        """c => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0 && d[i + 2] > d[i] + 40 && d[i + 2] > 150) n++;
            }
            return n;
        }"""
    )
    assert painted > 50, painted
    page.evaluate("window.__notReloaded = true")

    # Five minutes on, the next reading: a new forecast arrives over the socket.
    first = chart.get_attribute("data-forecast")
    clock.advance(300)
    fed.send()
    expect(chart).not_to_have_attribute("data-forecast", first or "")
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("#glucose-planned-block")).to_be_hidden()

    # A meal recorded for 40 minutes ahead: the next forecast counts on it and lists it.
    meal = {
        "id": "lunch-plan",
        "source": "meal-app",
        "patient": "t1d-a",
        "kind": "meal",
        "amount": 45,
        "unit": "g",
        "time": (clock.now() + timedelta(minutes=40)).isoformat(),
    }
    answer = live_server.admin.post("/api/v1/interventions", json={"interventions": [meal]})
    assert answer.status_code == 200, answer.text
    second = chart.get_attribute("data-forecast")
    clock.advance(300)
    fed.send()
    expect(chart).not_to_have_attribute("data-forecast", second or "")
    planned = page.locator("#glucose-planned li")
    expect(planned).to_have_count(1)
    expect(planned).to_contain_text("meal 45 g at")

    # What if: a meal now, then a bolus in 15 minutes.
    page.fill("#whatif-meal", "60")
    page.click("#whatif-add")
    whatif = page.locator("#whatif-chart")
    expect(whatif).to_be_visible()
    expect(whatif).to_have_attribute("data-branches", "2")
    page.fill("#whatif-meal", "0")
    page.fill("#whatif-bolus", "3")
    page.fill("#whatif-start", "15")
    page.click("#whatif-add")
    expect(whatif).to_have_attribute("data-branches", "3")
    legend = page.locator("#whatif-legend li")
    expect(legend).to_have_text(["no change", "meal 60 g", "bolus 3 U in 15 min"])
    expect(page.locator("#whatif-error")).to_have_text("")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(SCREENSHOTS / "glucose-twin.png"))

    # A bad entry is refused with the field named, and the branches stay.
    page.fill("#whatif-bolus", "-1")
    page.fill("#whatif-start", "0")
    page.click("#whatif-add")
    expect(page.locator("#whatif-error")).to_contain_text("Bolus must be")
    expect(whatif).to_have_attribute("data-branches", "3")
    page.click("#whatif-clear")
    expect(whatif).to_be_hidden()
    watched.check()
