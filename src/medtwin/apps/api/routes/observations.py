"""POST /api/v1/observations: batches of observations from devices and systems."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.errors import error_response
from medtwin.apps.api.schemas import ErrorAnswer, IngestAnswer, ObservationBatch
from medtwin.data.accounts import Role
from medtwin.data.store import Origin, QuarantineEntry
from medtwin.twins.ingest import IngestResult

router = APIRouter(prefix="/api/v1/observations", tags=["observations"])
WRITE = Policy.allow(Role.DEVICE, Role.ADMIN, action="write")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Body is not JSON"},
    413: {"model": ErrorAnswer, "description": "Body or batch too large"},
    422: {"model": ErrorAnswer, "description": "Body is not an observation batch"},
}


# A client's own request id is kept only when it is a short, plain token: it is stored
# with every observation of the request and echoed in a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUEST_ID_HEADER = "X-Request-ID"


class _TooLargeError(Exception):
    pass


def request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` when it is a safe token, else a new ``req-<hex>``."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"req-{uuid.uuid4().hex}"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    response_model=IngestAnswer,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ObservationBatch.model_json_schema()}},
        }
    },
)
async def post_observations(
    request: Request, context: Context, principal: Annotated[Principal, guard(WRITE)]
) -> JSONResponse:
    """Validate, store and score a batch; one result per item, answered once durable.

    A device's API key writes only for the sources it owns; patients first seen
    through a key bound to a care team join that team. The request id is answered
    in ``X-Request-ID`` and recorded as the origin of every observation stored.
    """
    request_key = request_id(request)
    items = await read_batch(request, context, principal, "observations")
    if isinstance(items, JSONResponse):
        items.headers[REQUEST_ID_HEADER] = request_key
        return items
    sources = principal.sources if principal.role is Role.DEVICE else None
    # Each item's entry is its JSON path, as a rejection of it would name it.
    origins = [Origin("api", request_key, f"observations[{i}]") for i in range(len(items))]
    results = await run_in_threadpool(
        lambda: context.ingestor.ingest(
            items,
            channel="api",
            sources=sources,
            care_team=principal.care_team,
            origins=origins,
        )
    )
    answer = ingest_answer(results)
    answer.headers[REQUEST_ID_HEADER] = request_key
    return answer


async def read_batch(
    request: Request, context: ServiceContext, principal: Principal, key: str
) -> list[Any] | JSONResponse:
    """The items of a ``{key: [...]}`` body, or the refusal (kept in quarantine) to answer."""
    settings = context.settings
    source = principal.name

    async def refuse(
        status: int, code: str, message: str, location: str, payload: str
    ) -> JSONResponse:
        entry = QuarantineEntry(
            channel="api",
            location=location,
            reason=message,
            payload=payload,
            source=source,
            received_us=context.clock.now_us(),
        )
        await run_in_threadpool(context.store.quarantine, [entry])
        context.ingestor.metrics.refused.labels("api", code).inc()
        return error_response(status, code, message, location)

    try:
        body = await _read_body(request, settings.max_body_bytes)
    except _TooLargeError:
        return await refuse(
            413,
            "too_large",
            f"body exceeds {settings.max_body_bytes} bytes",
            "body",
            f"<body over {settings.max_body_bytes} bytes, content-length "
            f"{request.headers.get('content-length')}>",
        )
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return await refuse(
            400,
            "invalid_json",
            f"body is not JSON: {exc.msg}",
            f"body:{exc.lineno}:{exc.colno}",
            text,
        )
    if not isinstance(document, dict):
        return await refuse(422, "invalid_request", "body must be a JSON object", "body", text)
    unknown = sorted(set(document) - {key})
    if unknown:
        return await refuse(
            422, "invalid_request", f"unknown field {unknown[0]!r}", unknown[0], text
        )
    items = document.get(key)
    if not isinstance(items, list):
        return await refuse(
            422,
            "invalid_request",
            f"{key!r} must be an array of items",
            key,
            text,
        )
    if len(items) > settings.max_batch_items:
        return await refuse(
            413,
            "too_large",
            f"batch of {len(items)} items exceeds {settings.max_batch_items}",
            key,
            text,
        )
    return items


def ingest_answer(results: Sequence[IngestResult]) -> JSONResponse:
    """One result per item and a count per outcome (the ``IngestAnswer`` schema)."""
    summary = {"stored": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    for result in results:
        summary[result.status] += 1
    return JSONResponse({"results": [r.as_json() for r in results], "summary": summary})
