"""Vancomycin dosing on the patient page in headless Chromium: the section appears for a
patient with a vancomycin course, a recommendation draws the predicted curve with its
band and the measured levels, and a stored one is drawn again on the next visit.

Uses the browser fixtures of ``test_browser`` and the live server of the app tests.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin.data.vault import Demographics
from tests.apps.conftest import LiveServer
from tests.apps.test_browser import (  # noqa: F401  (fixtures)
    Watched,
    browser,
    wait_live,
    watched,
)
from tests.twins.test_dosing import AGE, simulated_patient

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def _feed(server: LiveServer, patient: str) -> None:
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=50)
    items = simulated_patient(patient, start=start)
    admin = server.admin
    answer = admin.post("/api/v1/observations", json={"observations": items["observations"]})
    assert answer.status_code == 200, answer.text
    answer = admin.post("/api/v1/interventions", json={"interventions": items["interventions"]})
    assert answer.status_code == 200, answer.text
    born = start.date().replace(year=start.year - AGE, month=1, day=1)
    context = server.context
    context.vault.put(
        patient, Demographics(birth_date=born, sex="female"), now_us=context.clock.now_us()
    )


def test_the_curve_band_and_levels_are_drawn(
    live_server: LiveServer,
    watched: Watched,  # noqa: F811  (the fixture imported above)
) -> None:
    from playwright.sync_api import expect

    _feed(live_server, "vanc-b")
    page = watched.page
    page.goto(live_server.url + "/patients/vanc-b")
    wait_live(page)
    section = page.locator("#dosing")
    expect(section).to_be_visible()
    expect(page.locator("#dosing-levels tbody tr")).to_have_count(3)
    expect(page.locator("#dosing-result")).to_be_hidden()

    # A trough target: the recommendation and its chart.
    page.select_option("#dosing-kind", "trough")
    expect(page.locator("#dosing-low")).to_have_value("10")
    page.fill("#dosing-high", "20")
    page.click("#dosing-submit")
    chart = page.locator("#dosing-chart")
    expect(chart).to_have_attribute("data-result", re.compile(r"^[0-9a-f]{32}$"))
    expect(chart).to_have_attribute("data-curve-points", "145")
    expect(chart).to_have_attribute("data-levels", "3")
    assert int(chart.get_attribute("data-band90-px") or 0) > 3, "the band has no height"
    expect(page.locator("#dosing-dose")).to_contain_text("mg every 12 h")
    expect(page.locator("#dosing-parameters tbody tr")).to_have_count(4)
    expect(page.locator("#dosing-statement")).to_have_text(
        "Supports, does not replace, clinical judgement."
    )
    expect(page.locator("#dosing-error")).to_have_text("")
    # The band's translucent blue and the levels' orange are on the canvas.
    counts = chart.locator("canvas").evaluate(
        """c => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let blue = 0, orange = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] === 0) continue;
                if (d[i + 2] > d[i] + 40 && d[i + 2] > 150) blue++;
                if (d[i] > 150 && d[i] > d[i + 2] + 80 && d[i + 1] < 120) orange++;
            }
            return [blue, orange];
        }"""
    )
    assert counts[0] > 50, counts
    assert counts[1] > 10, counts
    result = chart.get_attribute("data-result")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(SCREENSHOTS / "vancomycin-dosing.png"))

    # A slip is named at once, and the drawn recommendation stays.
    page.fill("#dosing-high", "5")
    page.click("#dosing-submit")
    expect(page.locator("#dosing-error")).to_contain_text("0 < from < to")
    expect(chart).to_have_attribute("data-result", result or "")

    # The next visit draws the stored recommendation again: the same result.
    page.reload()
    wait_live(page)
    expect(page.locator("#dosing-kind")).to_have_value("trough")
    expect(page.locator("#dosing-chart")).to_have_attribute("data-result", result or "")

    # What if a dose of one's own: predicted as asked, and said to miss the target.
    page.fill("#dosing-high", "20")
    page.fill("#dosing-what-if", "4000")
    page.click("#dosing-submit")
    expect(chart).not_to_have_attribute("data-result", result or "")
    expect(page.locator("#dosing-dose")).to_contain_text("4000 mg every 12 h")
    expect(page.locator("#dosing-predicted")).to_contain_text("this dose misses it")
    page.fill("#dosing-what-if", "-3")
    page.click("#dosing-submit")
    expect(page.locator("#dosing-error")).to_contain_text("A dose to try")
    watched.check()


def test_no_section_without_a_course(
    live_server: LiveServer,
    watched: Watched,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    from tests.apps.conftest import post_values

    post_values(live_server, "plain", [("8867-4", 70, "/min")])
    page = watched.page
    page.goto(live_server.url + "/patients/plain")
    wait_live(page)
    expect(page.locator("#current")).to_be_visible()
    page.wait_for_timeout(500)
    expect(page.locator("#dosing")).to_be_hidden()
    watched.check()
