"""The ward page's alarms in headless Chromium: an alarm appears live, in its priority's
colour, and a clinician acknowledges it with a reason.

Uses the browser fixtures of ``test_browser`` (Debian's /usr/bin/chromium through
Playwright; skipped when absent, except in CI).
"""

from __future__ import annotations

import re
from typing import cast

import pytest

from tests.apps.conftest import LiveServer
from tests.apps.test_browser import (  # noqa: F401  (fixtures)
    FULL,
    Watched,
    browser,
    post,
    wait_live,
    watched,
)

pytestmark = pytest.mark.browser

# NEWS2 8 with FULL's other values: RR 26 (3), SpO2 91 (3), HR 115 (2).
HIGH: list[tuple[str, float | str, str]] = [
    ("9279-1", 26, "/min"),
    ("59408-5", 91, "%"),
    ("8867-4", 115, "/min"),
]
# The shared set is inferred as (str, object, str): post() takes (str, float | str, str).
NORMAL = cast(list[tuple[str, float | str, str]], FULL)


def test_an_alarm_appears_live_and_is_acknowledged_with_a_reason(
    live_server: LiveServer,
    watched: Watched,  # noqa: F811  (the fixture imported above)
) -> None:
    from playwright.sync_api import expect

    page = watched.page
    post(live_server, "bed-01", NORMAL, "a")
    page.goto(live_server.url + "/")
    wait_live(page)
    expect(page.locator("#alarm-rows tr.empty")).to_have_count(1)
    expect(page.locator("#alarm-count")).to_have_text("0")
    page.evaluate("window.__notReloaded = true")

    post(live_server, "bed-01", HIGH, "b")  # the next refresh (0.5 s) raises the alarms

    high = page.locator('#alarm-rows tr[data-priority="high"]')
    expect(high).to_have_count(1)
    expect(page.locator("#alarm-count")).to_have_text("2")  # and news2-single-3 (medium)
    expect(high.locator('[data-field="patient"]')).to_have_text("bed-01")
    expect(high.locator('[data-field="title"]')).to_contain_text("NEWS2 7 or more")
    expect(high.locator('[data-field="escalation"]')).to_have_text("level 0 · care-team")
    expect(high.locator('[data-field="status"]')).to_have_text("active")
    expect(high.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT.*Z$"))
    colour = high.locator("td.priority").evaluate("el => getComputedStyle(el).backgroundColor")
    assert colour == "rgb(198, 40, 40)"  # IEC 60601-1-8 high priority: red
    rows = page.locator("#alarm-rows tr[data-alarm]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.priority)") == ["high", "medium"]

    high.locator("button.ack").click()
    dialog = page.locator("#ack-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#ack-what")).to_contain_text("bed-01")
    page.click("#ack-submit")  # no reason: the form does not submit
    expect(dialog).to_be_visible()
    page.fill("#ack-reason", "at the bedside, doctor called")
    page.click("#ack-submit")
    expect(dialog).to_be_hidden()
    expect(high.locator('[data-field="status"]')).to_have_text("acknowledged by ward-admin")
    expect(high.locator("button.ack")).to_have_count(0)

    (alarm,) = live_server.context.alarms.alarms(priority="high")
    assert alarm.status == "acknowledged"
    assert alarm.acknowledged_by == "ward-admin"
    assert alarm.acknowledged_reason == "at the bedside, doctor called"
    # A fresh page shows the same, from the server.
    fresh = page.context.new_page()
    fresh.goto(live_server.url + "/")
    expect(
        fresh.locator('#alarm-rows tr[data-priority="high"] [data-field="status"]')
    ).to_have_text("acknowledged by ward-admin")
    fresh.close()
    assert page.evaluate("window.__notReloaded") is True
    watched.check()
