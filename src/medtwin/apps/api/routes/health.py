"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard

router = APIRouter(tags=["health"])


@router.get("/healthz", dependencies=[guard(Policy.open("health"))])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", dependencies=[guard(Policy.open("health"))])
async def readyz(context: Context) -> JSONResponse:
    """The store is reachable."""
    if await run_in_threadpool(context.store.ping):
        return JSONResponse({"status": "ready", "store": context.store.url.split("://")[0]})
    return JSONResponse({"status": "unavailable", "store": "unreachable"}, status_code=503)


# Counts and latencies only: no patient or user appears in any label.
@router.get("/metrics", dependencies=[guard(Policy.open("metrics"))])
async def metrics(context: Context) -> Response:
    """Prometheus metrics: ingest counts by outcome, batch latencies, twins."""
    return Response(
        generate_latest(context.ingestor.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
