"""The dashboard's pages: the ward list and one page per patient.

Pages are rendered on the server from the twins' current state; ``dashboard.js``
then keeps them live from the ``/ws/events`` WebSocket. What the ward table and
the charts show (columns, codes, units, rounding) is declared here once and sent
to the page as JSON, so the server's rendering and the live updates agree.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from medtwin import __version__
from medtwin.apps.api.auth import SESSION_COOKIE, Policy, Principal, visible
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import guard
from medtwin.data.accounts import Role
from medtwin.data.codes import DEFAULT_REGISTRY
from medtwin.models.scores import ACVPU, INPUT_CODES, PARAMETERS

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

router = APIRouter(include_in_schema=False)

SYSTEM_NAMES: dict[str, str] = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED CT",
    "http://unitsofmeasure.org": "UCUM",
}


def plain_value(value: object) -> str:
    """A stored value as text: whole floats without ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def system_name(system: str) -> str:
    """Short name of a well-known code system, else the system as sent."""
    return SYSTEM_NAMES.get(system, system)


templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.filters["plain"] = plain_value
templates.env.filters["system_name"] = system_name

# Everything is served from this origin: no inline script, no CDN, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

RR, SPO2, FIO2, SYSTOLIC, DIASTOLIC, PULSE, TEMPERATURE, ACVPU_CODE, GLUCOSE = (
    "9279-1",
    "59408-5",
    "3150-0",
    "8480-6",
    "8462-4",
    "8867-4",
    "8310-5",
    "80288-4",
    "2339-0",
)
AIR_FIO2 = 21  # FiO2 (rounded, %) above which the patient is on supplemental oxygen

# Ward columns. kind: "number" (rounded half away from zero, as NEWS2 rounds),
# "o2" (Air, or O2 with its FiO2), "bp" (systolic/diastolic), "text".
WARD_FIELDS: list[dict[str, Any]] = [
    {"field": "rr", "label": "RR", "unit": "/min", "kind": "number", "codes": [RR], "decimals": 0},
    {
        "field": "spo2",
        "label": "SpO₂",
        "unit": "%",
        "kind": "number",
        "codes": [SPO2],
        "decimals": 0,
    },
    {"field": "o2", "label": "O₂", "unit": "", "kind": "o2", "codes": [FIO2], "decimals": 0},
    {
        "field": "bp",
        "label": "BP",
        "unit": "mmHg",
        "kind": "bp",
        "codes": [SYSTOLIC, DIASTOLIC],
        "decimals": 0,
    },
    {
        "field": "hr",
        "label": "HR",
        "unit": "/min",
        "kind": "number",
        "codes": [PULSE],
        "decimals": 0,
    },
    {
        "field": "temp",
        "label": "Temp",
        "unit": "°C",
        "kind": "number",
        "codes": [TEMPERATURE],
        "decimals": 1,
    },
    {
        "field": "acvpu",
        "label": "ACVPU",
        "unit": "",
        "kind": "text",
        "codes": [ACVPU_CODE],
        "decimals": 0,
    },
]

PARAMETER_LABELS: dict[str, str] = {
    "respiration_rate": "Respiration rate",
    "spo2": "SpO₂",
    "air_or_oxygen": "Air or oxygen",
    "systolic_bp": "Systolic BP",
    "pulse": "Pulse",
    "consciousness": "Consciousness",
    "temperature": "Temperature",
}
PARAMETER_CODES: dict[str, str] = {parameter: code for code, parameter in INPUT_CODES.items()}

# Units as people read them (the API speaks UCUM).
UNIT_LABELS: dict[str, str] = {"mm[Hg]": "mmHg", "Cel": "°C", "[degF]": "°F", "/min": "/min"}

CHARTS: list[dict[str, Any]] = [
    {"id": "rr", "title": "Respiration rate", "unit": "breaths/min", "series": [[RR, "RR"]]},
    {"id": "spo2", "title": "SpO₂", "unit": "%", "series": [[SPO2, "SpO₂"]]},
    {"id": "o2", "title": "Inspired oxygen (FiO₂)", "unit": "%", "series": [[FIO2, "FiO₂"]]},
    {
        "id": "bp",
        "title": "Blood pressure",
        "unit": "mmHg",
        "series": [[SYSTOLIC, "Systolic"], [DIASTOLIC, "Diastolic"]],
    },
    {"id": "hr", "title": "Heart rate", "unit": "beats/min", "series": [[PULSE, "HR"]]},
    {"id": "temp", "title": "Temperature", "unit": "°C", "series": [[TEMPERATURE, "Temp"]]},
    {
        "id": "acvpu",
        "title": "Consciousness",
        "unit": "ACVPU",
        "series": [[ACVPU_CODE, "ACVPU"]],
        "coded": True,
    },
    {"id": "glucose", "title": "Blood glucose", "unit": "mg/dL", "series": [[GLUCOSE, "Glucose"]]},
]

RANGES: list[tuple[int, str]] = [
    (3600, "1 h"),
    (6 * 3600, "6 h"),
    (86_400, "24 h"),
    (3 * 86_400, "3 d"),
]
DEFAULT_RANGE_S = 86_400


# -- formatting (mirrored by dashboard.js) -------------------------------------


def round_half_away(value: float, decimals: int) -> str:
    """``value`` rounded half away from zero, as NEWS2 rounds before scoring."""
    scaled = round(value * 10**decimals, 9)
    whole = math.copysign(math.floor(abs(scaled) + 0.5), scaled)
    return f"{whole / 10**decimals + 0.0:.{decimals}f}"


def _is_stale(vital: dict[str, Any] | None, twin_time: str, window_s: float) -> bool:
    if vital is None:
        return False
    age = datetime.fromisoformat(twin_time) - datetime.fromisoformat(vital["time"])
    return age.total_seconds() > window_s


def _number(vital: dict[str, Any] | None, decimals: int) -> str:
    if vital is None:
        return "–"
    value = vital["value"]
    if isinstance(value, int | float):
        return round_half_away(float(value), decimals)
    return str(value)


def _cell(field: dict[str, Any], twin: dict[str, Any], window_s: float) -> dict[str, Any]:
    vitals: dict[str, dict[str, Any]] = twin["vitals"]
    first = vitals.get(field["codes"][0])
    kind = field["kind"]
    if kind == "bp":
        second = vitals.get(field["codes"][1])
        text = (
            "–" if first is None and second is None else f"{_number(first, 0)}/{_number(second, 0)}"
        )
    elif kind == "o2":
        if first is None or not isinstance(first["value"], int | float):
            text = "–"
        else:
            fio2 = round_half_away(float(first["value"]), 0)
            text = f"O2 {fio2}%" if float(fio2) > AIR_FIO2 else "Air"
    elif kind == "text":
        text = "–" if first is None else str(first["value"])
    else:
        text = _number(first, field["decimals"])
    measured = [vitals[c] for c in field["codes"] if c in vitals]
    title_parts = [f"measured {v['time']}" for v in measured[:1]]
    flags = sorted({f for v in measured for f in v["flags"]})
    if flags:
        title_parts.append("flags: " + ", ".join(flags))
    stale = _is_stale(first, twin["time"], window_s)
    if stale:
        title_parts.append("older than the NEWS2 window")
    return {
        "field": field["field"],
        "text": text,
        "title": "; ".join(title_parts),
        "stale": stale,
        "flagged": bool(flags),
    }


def news2_cell(news2: dict[str, Any]) -> dict[str, Any]:
    """Text, band and tooltip of a NEWS2 value (``partial N`` when the score is null)."""
    band = news2["band"] or "none"
    if news2["score"] is None:
        text = f"partial {news2['partial_score']}"
        missing = [PARAMETER_LABELS.get(p, p) for p in news2["missing"]]
        title = "Missing: " + ", ".join(missing) if missing else "Not determinable"
    else:
        text = str(news2["score"])
        title = f"NEWS2 {news2['score']}, {band} risk"
    return {"text": text, "band": band, "title": title}


def ward_row(twin: dict[str, Any], window_s: float) -> dict[str, Any]:
    """Everything one ward row shows, from a twin view (or a ``twin.updated`` event)."""
    return {
        "patient": twin["patient"],
        "time": twin["time"],
        "href": "/patients/" + quote(twin["patient"], safe=""),
        "cells": [_cell(field, twin, window_s) for field in WARD_FIELDS],
        "news2": news2_cell(twin["news2"]),
    }


def subscore_rows(twin: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per NEWS2 parameter: value used, sub-score, missing or undeterminable."""
    news2 = twin["news2"]
    vitals: dict[str, dict[str, Any]] = twin["vitals"]
    rows = []
    for parameter in PARAMETERS:
        vital = vitals.get(PARAMETER_CODES[parameter])
        subscore = news2["subscores"].get(parameter)
        if vital is None:
            value = "–"
        elif parameter == "air_or_oxygen" and isinstance(vital["value"], int | float):
            fio2 = round_half_away(float(vital["value"]), 0)
            value = f"Oxygen (FiO₂ {fio2} %)" if float(fio2) > AIR_FIO2 else f"Air (FiO₂ {fio2} %)"
        else:
            decimals = 1 if parameter == "temperature" else 0
            unit = UNIT_LABELS.get(vital["unit"], vital["unit"])
            value = f"{_number(vital, decimals)} {unit}".strip()
        if subscore is not None:
            status = "scored"
        elif parameter in news2["missing"]:
            status = "missing"
        else:
            status = "undeterminable"
        rows.append(
            {
                "parameter": parameter,
                "label": PARAMETER_LABELS[parameter],
                "value": value,
                "subscore": subscore,
                "status": status,
            }
        )
    return rows


def vital_rows(twin: dict[str, Any], window_s: float) -> list[dict[str, Any]]:
    """Every registered code with its newest value (or none yet)."""
    rows = []
    for spec in DEFAULT_REGISTRY:
        vital = twin["vitals"].get(spec.code)
        decimals = 1 if spec.code == TEMPERATURE else 0
        rows.append(
            {
                "code": spec.code,
                "display": spec.display,
                "value": None if vital is None else _number(vital, decimals),
                "unit": UNIT_LABELS.get(spec.unit, spec.unit),
                "time": None if vital is None else vital["time"],
                "flags": [] if vital is None else vital["flags"],
                "stale": _is_stale(vital, twin["time"], window_s),
            }
        )
    return rows


# -- the ward's risk column (issue 9; mirrored by dashboard.js) -------------------

RISK_MODULE = "risk.deterioration"


def risk_percent(p: float | None) -> str:
    """A probability as the ward shows it: whole percent, ``<1%`` and ``>99%`` at the ends."""
    if p is None or math.isnan(p):
        return "–"
    pct = 100 * p
    if pct < 1:
        return "<1%"
    if pct > 99:
        return ">99%"
    return f"{math.floor(pct + 0.5)}%"


def ward_risks(context: ServiceContext, patients: list[str]) -> dict[str, dict[str, str]] | None:
    """The risk cell of each patient; None when no risk model is served (no column)."""
    served = context.risk
    if served is None or RISK_MODULE not in context.planner.graph:
        return None
    values: list[float] = [math.nan] * len(patients)
    if patients:
        run = context.planner.request([RISK_MODULE], patients).runs[RISK_MODULE]
        values = run.outputs["risk"].tolist()
    title = (
        f"Deterioration risk, model {served.name} v{served.version}: "
        "supports, does not replace, clinical judgement"
    )
    cells = {}
    for patient, p in zip(patients, values, strict=True):
        level = "none" if math.isnan(p) else "low"
        if level == "low" and served.threshold is not None and p >= served.threshold:
            level = "high"
        cells[patient] = {"text": risk_percent(p), "level": level, "title": title}
    return cells


# -- pages ----------------------------------------------------------------------


WARD = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
PATIENT = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)


def _context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    data: dict[str, Any],
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``name``; ``data`` goes to dashboard.js as JSON (never into inline script)."""
    root = _root(request)
    return templates.TemplateResponse(
        request,
        name,
        {"root": root, "version": __version__, "data": {"root": root, **data}, **context},
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def _window_s(context: ServiceContext) -> float:
    return context.runtime.window_us / 1_000_000


@router.get("/", response_class=HTMLResponse)
async def ward(request: Request, principal: Annotated[Principal, guard(WARD)]) -> HTMLResponse:
    """Every patient the signed-in clinician may see: newest vitals and NEWS2, live."""
    context = _context(request)
    window_s = _window_s(context)
    summaries = context.runtime.summaries()
    allowed = set(
        await run_in_threadpool(
            visible, principal, [t["patient"] for t in summaries], context.accounts
        )
    )
    twins = sorted(
        (t for t in summaries if t["patient"] in allowed), key=lambda twin: twin["patient"]
    )
    risks = await run_in_threadpool(ward_risks, context, [t["patient"] for t in twins])
    served = context.risk
    return _page(
        request,
        "ward.html",
        {
            "page": "ward",
            "title": "Ward",
            "fields": WARD_FIELDS,
            "rows": [
                {**ward_row(twin, window_s), "risk": (risks or {}).get(twin["patient"])}
                for twin in twins
            ],
            "risk_served": risks is not None,
            "user": principal.name,
        },
        {
            "page": "ward",
            "fields": WARD_FIELDS,
            "parameter_labels": PARAMETER_LABELS,
            "window_s": window_s,
            "air_fio2": AIR_FIO2,
            "risk": None
            if risks is None or served is None
            else {"version": served.version, "threshold": served.threshold},
        },
    )


def _patient_state(context: ServiceContext, patient: str) -> dict[str, Any]:
    twin = context.runtime.view(patient)
    window_s = _window_s(context)
    return {
        "twin": twin,
        "news2": news2_cell(twin["news2"]),
        "subscores": subscore_rows(twin),
        "vitals": vital_rows(twin, window_s),
        "other": twin["other"],
    }


def not_found_page(request: Request, patient: str) -> HTMLResponse:
    return _page(
        request,
        "not_found.html",
        {"page": "not-found", "title": "Patient not found", "patient": patient},
        {"page": "not-found"},
        status_code=404,
    )


@router.get("/patients/{patient}", response_class=HTMLResponse, dependencies=[guard(PATIENT)])
async def patient_page(request: Request, patient: str) -> HTMLResponse:
    """One patient: NEWS2 with its sub-scores, newest vitals, charts over time."""
    context = _context(request)
    if patient not in context.runtime:
        return not_found_page(request, patient)
    root = _root(request)
    quoted = quote(patient, safe="")
    state = _patient_state(context, patient)
    return _page(
        request,
        "patient.html",
        {
            "page": "patient",
            "title": f"Patient {patient}",
            "patient": patient,
            "charts": CHARTS,
            "ranges": RANGES,
            "default_range_s": DEFAULT_RANGE_S,
            "current_url": f"{root}/patients/{quoted}/current",
            "glucose_twin": patient in context.glucose,
            **state,
        },
        {
            "page": "patient",
            "patient": patient,
            "now": state["twin"]["time"],
            "window_s": _window_s(context),
            "charts": CHARTS,
            "acvpu": list(ACVPU),
            "default_range_s": DEFAULT_RANGE_S,
            "observations_url": f"{root}/api/v1/patients/{quoted}/observations",
            "news2_url": f"{root}/api/v1/twins/{quoted}/news2",
        },
    )


@router.get(
    "/patients/{patient}/current", response_class=HTMLResponse, dependencies=[guard(PATIENT)]
)
async def patient_current(request: Request, patient: str) -> HTMLResponse:
    """The patient page's live panel (NEWS2, sub-scores, vitals, unmapped codes), for htmx."""
    context = _context(request)
    if patient not in context.runtime:
        return not_found_page(request, patient)
    return templates.TemplateResponse(
        request,
        "_current.html",
        {"patient": patient, **_patient_state(context, patient)},
        headers=PAGE_HEADERS,
    )


# -- sign-in ----------------------------------------------------------------------


def _login_page(request: Request, error: str | None, status_code: int = 200) -> HTMLResponse:
    return _page(
        request,
        "login.html",
        {"page": "login", "title": "Sign in", "error": error},
        {"page": "login"},
        status_code=status_code,
    )


@router.get("/login", response_class=HTMLResponse, dependencies=[guard(Policy.open("login"))])
async def login_form(request: Request) -> HTMLResponse:
    return _login_page(request, None)


@router.post("/login", response_model=None, dependencies=[guard(Policy.open("login"))])
async def login(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> HTMLResponse | RedirectResponse:
    """Sign in with a password; the session lives in an HttpOnly, SameSite=Strict cookie."""
    context = _context(request)
    address = request.client.host if request.client else None

    def check() -> str | None:
        user = context.accounts.authenticate(username, password)
        if user is None:
            context.record(
                username[:64],
                "anonymous",
                "login",
                "denied",
                address=address,
                detail={"grant": "dashboard"},
            )
            return None
        token, jti, expires_us = context.tokens.issue(user, "session")
        context.accounts.remember_refresh(jti, user.username, expires_us)
        context.record(
            user.username,
            user.role,
            "login",
            "success",
            address=address,
            detail={"grant": "dashboard"},
        )
        return token

    token = await run_in_threadpool(check)
    if token is None:
        return _login_page(request, "Wrong user name or password.", status_code=401)
    response = RedirectResponse(f"{_root(request)}/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=context.settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", dependencies=[guard(Policy.open("logout"))])
async def logout(request: Request) -> RedirectResponse:
    """End the dashboard session (the cookie's token is revoked, not just forgotten)."""
    context = _context(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        with contextlib.suppress(HTTPException):
            claims = context.tokens.decode(cookie, "session")
            await run_in_threadpool(
                lambda: context.accounts.revoke_refresh(
                    str(claims["jti"]), now_us=time.time_ns() // 1000
                )
            )
    response = RedirectResponse(f"{_root(request)}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
