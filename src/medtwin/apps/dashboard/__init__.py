"""Dashboard: server-rendered ward and patient pages, kept live over ``/ws/events``.

Pages are Jinja2 templates with htmx and uPlot, both vendored under
``static/vendor/`` (nothing is fetched from another host at run time).
"""

from __future__ import annotations

import inspect
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medtwin.apps.api.errors import error_response
from medtwin.apps.dashboard.routes import STATIC_DIR, TEMPLATES_DIR, not_found_page, router
from medtwin.core.errors import NotFoundError

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "install"]


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and static files on ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
    json_http_handler = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    def is_page(request: Request) -> bool:
        return request.url.path == "/" or request.url.path.startswith("/patients/")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # A page asked for without a session goes to the sign-in form; the API answers 401.
        if is_page(request) and isinstance(exc, StarletteHTTPException) and exc.status_code == 401:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        answer = json_http_handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    async def on_not_found(request: Request, exc: Exception) -> Response:
        if is_page(request):
            return not_found_page(request, request.path_params.get("patient", ""))
        return error_response(404, "not_found", str(exc))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(NotFoundError, on_not_found)
