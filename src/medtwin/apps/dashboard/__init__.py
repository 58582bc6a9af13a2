"""Dashboard: server-rendered ward and patient pages, kept live over ``/ws/events``.

Pages are Jinja2 templates with htmx and uPlot, both vendored under
``static/vendor/`` (nothing is fetched from another host at run time).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from medtwin.apps.dashboard.routes import STATIC_DIR, TEMPLATES_DIR, router

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "install"]


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and static files on ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
