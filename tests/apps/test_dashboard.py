"""The dashboard over HTTP: pages render, static files are served, nothing comes from elsewhere."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from medtwin.apps.dashboard import STATIC_DIR, TEMPLATES_DIR
from medtwin.apps.dashboard.routes import news2_cell, round_half_away
from tests.apps.conftest import NEWS2_ZERO, LiveServer, post_values

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = STATIC_DIR.parent
VENDOR = ("vendor/htmx.min.js", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css")
OURS = ("dashboard.js", "dashboard.css")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

FULL = NEWS2_ZERO


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def post(
    server: LiveServer, patient: str, values: list[tuple[str, float | str, str]], **kw: Any
) -> None:
    """Post one observation per (code, value, unit) for ``patient``, a minute ago."""
    post_values(server, patient, values, prefix=kw.get("prefix", "o"), time=kw.get("time"))


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


class _Parser(HTMLParser):
    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "source", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.root


def get_page(server: LiveServer, path: str, status: int = 200) -> tuple[httpx.Response, Node]:
    answer = server.admin.get(path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return answer, parse(answer.text)


def page_data(document: Node) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(document.find("script", id="page-data").text)
    return data


def cells(document: Node, patient: str) -> dict[str, Node]:
    row = document.find("tr", data_patient=patient)
    return {str(n.attrs["data-field"]): n for n in row.iter() if "data-field" in n.attrs}


# -- pages ---------------------------------------------------------------------


def test_ward_lists_every_patient_with_vitals_and_news2(live_server: LiveServer) -> None:
    post(live_server, "bed-01", FULL)
    post(live_server, "bed-02", [("9279-1", 18, "/min"), ("8867-4", 80, "/min")])
    post(
        live_server,
        "bed-03",
        [(c, v, u) for c, v, u in FULL if c != "3150-0"] + [("3150-0", 28, "%")],
    )

    _, document = get_page(live_server, "/")
    rows = [n.attrs["data-patient"] for n in document.find_all("tr") if "data-patient" in n.attrs]
    assert rows == ["bed-01", "bed-02", "bed-03"]

    full = cells(document, "bed-01")
    assert {k: v.text.strip() for k, v in full.items()} == {
        "patient": "bed-01",
        "rr": "16",
        "spo2": "97",
        "o2": "Air",
        "bp": "120/80",
        "hr": "70",
        "temp": "37.0",
        "acvpu": "A",
        "news2": "0",
    }
    assert full["news2"].attrs["data-band"] == "low"
    assert "band-low" in str(full["news2"].attrs["class"])
    assert document.find("a", href="/patients/bed-01").text == "bed-01"

    partial = cells(document, "bed-02")
    assert partial["news2"].text == "partial 0"
    assert partial["news2"].attrs["data-band"] == "none"
    title = str(partial["news2"].attrs["title"])
    assert title.startswith("Missing: ")
    assert "Systolic BP" in title
    assert "Respiration rate" not in title
    assert partial["bp"].text == "–"

    oxygen = cells(document, "bed-03")
    assert oxygen["o2"].text == "O2 28%"
    assert oxygen["news2"].text == "2"  # supplemental oxygen scores 2


def test_ward_marks_bands_and_stale_values(live_server: LiveServer) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)  # beyond the one-hour NEWS2 window
    post(live_server, "bed-01", FULL, time=old, prefix="old")
    post(live_server, "bed-01", [("8867-4", 135, "/min")], prefix="new")
    post(live_server, "bed-02", [*FULL[:7], ("80288-4", "V", "")])
    post(live_server, "bed-02", [("9279-1", 26, "/min"), ("59408-5", 90, "%")], prefix="x")

    _, document = get_page(live_server, "/")
    stale = cells(document, "bed-01")
    assert "stale" in str(stale["rr"].attrs["class"])
    assert "older than the NEWS2 window" in str(stale["rr"].attrs["title"])
    assert "stale" not in str(stale["hr"].attrs.get("class") or "")
    assert stale["news2"].text == "partial 3"

    high = cells(document, "bed-02")
    assert high["news2"].text == "9"  # RR 3 + SpO2 3 + voice 3
    assert high["news2"].attrs["data-band"] == "high"


def test_empty_ward(live_server: LiveServer) -> None:
    _, document = get_page(live_server, "/")
    assert "No patients yet." in document.find("tbody", id="ward-rows").text
    assert page_data(document)["page"] == "ward"


def test_patient_page_shows_news2_subscores_scale_vitals_and_unmapped(
    live_server: LiveServer,
) -> None:
    post(live_server, "bed-01", [*FULL[:6], ("80288-4", "C", "")])
    post(live_server, "bed-01", [("99999-9", 3, "mg"), ("12345-6", "yes", "")], prefix="u")

    _, document = get_page(live_server, "/patients/bed-01")
    assert document.find("span", id="patient-id").text == "bed-01"
    score = document.find("span", id="news2-score")
    assert score.text == "partial 3"  # temperature missing, new confusion scores 3
    assert document.find(id="spo2-scale").text == "1"
    assert "Temperature" in document.find("p", id="news2-missing").text

    subscores = {
        str(row.attrs["data-param"]): row.find("td", data_field="subscore").text
        for row in document.find("table", id="subscores").find_all("tr")
        if "data-param" in row.attrs
    }
    assert subscores == {
        "respiration_rate": "0",
        "spo2": "0",
        "air_or_oxygen": "0",
        "systolic_bp": "0",
        "pulse": "0",
        "consciousness": "3",
        "temperature": "missing",
    }
    vitals = document.find("table", id="vitals")
    assert "120" in vitals.find("tr", data_code="8480-6").text
    assert "mmHg" in vitals.find("tr", data_code="8480-6").text

    unmapped = document.find("table", id="other").find_all("tr", data_code="99999-9")
    assert len(unmapped) == 1
    assert "unmapped" in unmapped[0].text
    assert "3" in unmapped[0].text
    assert "LOINC" in unmapped[0].text
    assert "yes" in document.find("table", id="other").find("tr", data_code="12345-6").text

    charts = {str(n.attrs["data-chart"]): n for n in document.find_all("figure")}
    assert set(charts) == {"news2", "rr", "spo2", "o2", "bp", "hr", "temp", "acvpu", "glucose"}
    assert "breaths/min" in charts["rr"].find("figcaption").text
    assert "°C" in charts["temp"].find("figcaption").text

    data = page_data(document)
    assert data["patient"] == "bed-01"
    assert data["observations_url"] == "/api/v1/patients/bed-01/observations"
    assert data["news2_url"] == "/api/v1/twins/bed-01/news2"
    assert live_server.admin.get(data["observations_url"]).status_code == 200
    assert live_server.admin.get(data["news2_url"]).status_code == 200


def test_patient_page_shows_spo2_scale_2(live_server: LiveServer) -> None:
    post(live_server, "bed-07", FULL)
    answer = live_server.admin.put("/api/v1/patients/bed-07", json={"spo2_scale": 2})
    assert answer.status_code == 200, answer.text
    _, document = get_page(live_server, "/patients/bed-07")
    assert document.find(id="spo2-scale").text == "2"


def test_current_fragment_for_htmx(live_server: LiveServer) -> None:
    post(live_server, "bed-01", FULL)
    answer, fragment = get_page(live_server, "/patients/bed-01/current")
    assert "<html" not in answer.text
    assert fragment.find("span", id="news2-score").text == "0"
    get_page(live_server, "/patients/nobody/current", status=404)


def test_unknown_patient_is_a_404_page(live_server: LiveServer) -> None:
    _, document = get_page(live_server, "/patients/nobody", status=404)
    assert "Patient not found" in document.find("h1").text
    assert "nobody" in document.find("strong").text


def test_patient_ids_are_escaped(live_server: LiveServer) -> None:
    hostile = "<img src=x onerror=alert(1)>\"'&amp;"
    live_server.context.runtime.add(hostile)

    answer, document = get_page(live_server, "/")
    assert hostile not in answer.text
    assert "<img" not in answer.text
    assert document.find("tr", data_patient=hostile).find("a").text == hostile
    assert document.find("a", href="/patients/" + quote(hostile, safe="")).text == hostile

    answer, document = get_page(live_server, "/patients/" + quote(hostile, safe=""))
    assert "<img" not in answer.text
    assert document.find("span", id="patient-id").text == hostile
    raw_json = document.find("script", id="page-data").text
    assert "<" not in raw_json
    assert "&" not in raw_json
    data = page_data(document)
    assert data["patient"] == hostile
    assert (
        data["observations_url"] == "/api/v1/patients/" + quote(hostile, safe="") + "/observations"
    )

    _, document = get_page(live_server, "/patients/" + quote(hostile, safe="") + "x", status=404)
    assert document.find("strong").text == hostile + "x"


def test_pages_send_a_strict_content_security_policy(live_server: LiveServer) -> None:
    post(live_server, "bed-01", FULL)
    for path in ("/", "/patients/bed-01"):
        answer, _ = get_page(live_server, path)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"


# -- static files and external URLs --------------------------------------------


def test_static_files_are_served(live_server: LiveServer) -> None:
    types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in (*VENDOR, *OURS, "favicon.svg"):
        answer = httpx.get(f"{live_server.url}/static/{name}", timeout=10)
        assert answer.status_code == 200, name
        assert types[Path(name).suffix] in answer.headers["content-type"], name
        assert answer.content == (STATIC_DIR / name).read_bytes()
    assert httpx.get(f"{live_server.url}/static/nothing.js", timeout=10).status_code == 404


def test_vendored_files_match_their_recorded_checksums() -> None:
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    recorded = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", readme, re.M)
    )
    assert set(recorded) == {Path(name).name for name in VENDOR}
    for name in VENDOR:
        digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()
        assert recorded[Path(name).name] == digest, name
    for license_file in ("htmx.LICENSE", "uPlot.LICENSE"):
        assert (STATIC_DIR / "vendor" / license_file).stat().st_size > 0


def _external_urls(text: str) -> list[str]:
    return [
        url
        for url in re.findall(r"""https?://[^\s"'<>()]+""", text)
        if urlsplit(url).hostname not in LOCAL_HOSTS
    ]


def test_no_external_urls_in_served_pages_and_our_assets(live_server: LiveServer) -> None:
    post(live_server, "bed-01", FULL)
    post(live_server, "bed-01", [("99999-9", 3, "mg")], prefix="u")
    for path in ("/", "/patients/bed-01", "/patients/bed-01/current", "/patients/nobody"):
        answer = live_server.admin.get(path)
        assert _external_urls(answer.text) == [], path
        document = parse(answer.text)
        for node in document.iter():
            for attribute in ("src", "href", "action", "hx-get", "hx-post"):
                target = node.attrs.get(attribute)
                if target is None:
                    continue
                assert target.startswith("/"), (path, target)
                assert not target.startswith("//"), (path, target)
                if attribute in ("src", "href") and node.tag in ("script", "link"):
                    fetched = live_server.admin.get(target)
                    assert fetched.status_code == 200, target
    for name in OURS:
        text = httpx.get(f"{live_server.url}/static/{name}", timeout=10).text
        assert _external_urls(text) == [], name
        assert "//cdn" not in text
    for template in TEMPLATES_DIR.glob("*.html"):
        assert _external_urls(template.read_text()) == [], template.name


def test_rounding_and_news2_text() -> None:
    assert round_half_away(37.25, 1) == "37.3"
    assert round_half_away(38.05, 1) == "38.1"
    assert round_half_away(21.5, 0) == "22"
    assert round_half_away(21.4, 0) == "21"
    assert round_half_away(-0.2, 0) == "0"
    partial = {"score": None, "partial_score": 4, "band": None, "missing": ["spo2", "pulse"]}
    assert news2_cell(partial) == {
        "text": "partial 4",
        "band": "none",
        "title": "Missing: SpO₂, Pulse",
    }
    full = {"score": 7, "partial_score": 7, "band": "high", "missing": []}
    assert news2_cell(full)["text"] == "7"
    assert news2_cell(full)["band"] == "high"


def test_package_data_ships_templates_and_static_files() -> None:
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not running from a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["medtwin"]
    package = DASHBOARD_DIR.parents[1]  # src/medtwin
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    needed = [
        path
        for path in DASHBOARD_DIR.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert needed
    missing = sorted(str(path.relative_to(package)) for path in needed if path not in shipped)
    assert missing == []
