"""JSON errors: every failure answers ``{"error": {"code", "message", "location"}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medtwin.core.errors import InputError, MedtwinError, NotFoundError, StoreError

log = logging.getLogger(__name__)


def error_response(
    status: int,
    code: str,
    message: str,
    location: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "location": location}},
        headers=dict(headers) if headers else None,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith("/fhir"):
            return _outcome(exc.status_code, str(exc.detail), exc.headers)
        code = {
            401: "unauthenticated",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = ".".join(str(part) for part in first.get("loc", ()))
        if request.url.path.startswith("/fhir"):
            return _outcome(422, f"{location}: {first.get('msg', 'invalid request')}", None)
        return error_response(
            422, "invalid_request", str(first.get("msg", "invalid request")), location
        )

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return error_response(422, "invalid_input", exc.reason, exc.location or None)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store error: %s", type(exc.__cause__).__name__ if exc.__cause__ else exc)
        return error_response(503, "store_unavailable", "the store could not complete the request")

    @app.exception_handler(MedtwinError)
    async def _medtwin(_: Request, exc: MedtwinError) -> JSONResponse:
        return error_response(400, "error", str(exc))


def _outcome(status: int, message: str, headers: Mapping[str, str] | None) -> JSONResponse:
    """FHIR clients get errors as an OperationOutcome, whatever raised them."""
    from medtwin.devices.fhir import Issue, operation_outcome

    code = {401: "login", 403: "forbidden", 404: "not-found", 413: "too-long"}.get(
        status, "processing"
    )
    body = operation_outcome([Issue(code=code, diagnostics=message)])
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/fhir+json"
    )
