"""The deterioration risk in headless Chromium: the patient page shows the probability and
its top contributing factors, the ward a risk column, both updated as the twin changes.

Uses the browser fixtures of ``test_browser`` (and its live server).
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin.models.learning import GbmParams, generate_cohort
from medtwin.models.learning.features import CHANNEL_CODES
from medtwin.twins.risk import MODULE_NAME, STATEMENT, TOP_K, register_trained
from tests.apps.conftest import LiveServer
from tests.apps.test_browser import (  # noqa: F401  (fixtures)
    Watched,
    browser,
    wait_live,
    watched,
)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
VITALS = {
    "HR": 118.0,
    "O2Sat": 91.0,
    "Temp": 38.6,
    "SBP": 96.0,
    "MAP": 68.0,
    "DBP": 52.0,
    "Resp": 26.0,
    "GCS": 14.0,
}


def _post(server: LiveServer, patient: str, hours: int, *, prefix: str, shift: float) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    items = [
        {
            "id": f"{prefix}-{patient}-{channel}-{h}",
            "source": "risk-test",
            "patient": patient,
            "code": CHANNEL_CODES[channel][0],
            "value": value if channel == "GCS" else value + shift + (h % 3),
            "unit": CHANNEL_CODES[channel][1],
            "time": (now - timedelta(hours=h)).isoformat(),
        }
        for h in range(hours)
        for channel, value in VITALS.items()
    ]
    answer = server.admin.post("/api/v1/observations", json={"observations": items})
    assert answer.status_code == 200, answer.text


def test_the_patient_page_shows_the_risk_and_its_factors(
    live_server: LiveServer,
    watched: Watched,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context = live_server.context
    # Each refresh pass an hour of the planner's timer later: the risk on every pass.
    context.planner.timer = itertools.count(0.0, 3600.0).__next__
    _post(live_server, "bed-01", 10, prefix="a", shift=0.0)
    page = watched.page
    # No model served: no section, no risk column, and no 404 fetched.
    page.goto(live_server.url + "/patients/bed-01")
    wait_live(page)
    expect(page.locator("#risk")).to_be_hidden()

    patients = generate_cohort(150, seed=2, setting="ward").patients
    version = register_trained(
        context.models, list(patients), seed=1, params=GbmParams(n_estimators=30)
    )
    answer = live_server.admin.post(
        f"/api/v1/models/deterioration/versions/{version.version}/promote",
        json={"reason": "browser test"},
    )
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 20  # the refresh pass scores the twin
    while time.monotonic() < deadline:
        risk = live_server.admin.get("/api/v1/patients/bed-01/risk").json()
        if risk["risk"] is not None:
            break
        time.sleep(0.2)

    page.goto(live_server.url + "/patients/bed-01")
    wait_live(page)
    section = page.locator("#risk")
    expect(section).to_be_visible()
    expect(page.locator("#risk-value")).to_have_text(re.compile(r"^(<1|>99|\d{1,2})%$"))
    rows = page.locator("#risk-factors tbody tr[data-feature]")
    expect(rows).to_have_count(TOP_K)
    served = context.risk
    assert served is not None
    features = rows.evaluate_all("rows => rows.map(r => r.dataset.feature)")
    assert features == [f["feature"] for f in risk["factors"]]
    assert all(f in served.feature_names for f in features)
    first = rows.first
    expect(first.locator("th")).not_to_have_text("")
    expect(first.locator(".risk-bar span")).to_have_count(1)
    width = first.locator(".risk-bar span").evaluate("s => s.getBoundingClientRect().width")
    assert width > 10  # the largest factor fills half the bar
    expect(page.locator("#risk-statement")).to_have_text(STATEMENT)
    expect(page.locator("#risk-model")).to_have_text(f"model deterioration v{version.version}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(SCREENSHOTS / "deterioration-risk.png"))

    # New readings: a new risk result is announced and the section follows, no reload.
    page.evaluate("window.__notReloaded = true")
    before = context.planner.request([MODULE_NAME], ["bed-01"]).fingerprint(MODULE_NAME, "bed-01")
    provenance = page.locator("#risk-provenance")
    expect(provenance).to_have_attribute("href", re.compile(before))
    _post(live_server, "bed-01", 2, prefix="b", shift=15.0)
    expect(provenance).not_to_have_attribute("href", re.compile(before))
    assert page.evaluate("window.__notReloaded") is True

    # The ward: a risk column with the same value.
    page.goto(live_server.url + "/")
    wait_live(page)
    cell = page.locator('tr[data-patient="bed-01"] td[data-field="risk"]')
    expect(cell).to_have_text(re.compile(r"^(<1|>99|\d{1,2})%$"))
    expect(page.locator('th[data-field="risk"]')).to_have_text("Risk")
    watched.check()
