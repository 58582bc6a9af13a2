"""The FastAPI service: REST under /api/v1, WebSocket events, health, dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from medtwin import __version__
from medtwin.apps.api import errors
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.ratelimit import RateLimit
from medtwin.apps.api.routes import (
    alarms,
    auth,
    consents,
    derived,
    devices,
    dosing,
    events,
    fhir,
    glucose,
    health,
    interventions,
    models,
    observations,
    patients,
    quarantine,
    research,
    series,
    twins,
    waveforms,
)
from medtwin.core.clock import Clock
from medtwin.core.errors import MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.store import SqlStore

__all__ = ["BackgroundTask", "ServiceContext", "create_app", "refresh_twins"]

log = logging.getLogger(__name__)

BackgroundTask = Callable[[ServiceContext], Coroutine[Any, Any, None]]


async def refresh_twins(context: ServiceContext) -> None:
    """Every refresh interval: rescore twins as values age out of their windows, bring
    every derived value up to date (stored with its provenance, announced as
    ``derived.updated`` events), and evaluate the alarm rules over them."""
    while True:
        await asyncio.sleep(context.settings.refresh_interval_s)
        try:
            await run_in_threadpool(context.ingestor.refresh)
            events = await run_in_threadpool(context.planner.derive)
            if events and context.bus.has_subscribers:
                context.bus.publish(events)
            # Alarms read the values just derived, and time out escalations (publishes itself).
            await run_in_threadpool(context.alarms.evaluate)
        except Exception:  # keep refreshing: one failed pass must not stop the ward
            log.exception("twin refresh failed")
        # Glucose twins step to now (their forecasts are derived values too); last, and on
        # their own, so their first pass (a rebuild from the store) delays nothing above.
        try:
            forecasts = await run_in_threadpool(context.glucose.refresh)
            if forecasts and context.bus.has_subscribers:
                context.bus.publish(forecasts)
        except Exception:
            log.exception("glucose twin refresh failed")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    store: SqlStore | None = None,
    background: tuple[BackgroundTask, ...] | None = None,
) -> FastAPI:
    """The service. ``background`` tasks run for the life of the app (the demo adds the ward)."""
    settings = settings or Settings()
    if background is None:
        from medtwin.apps.adapters import serve_mllp, serve_mqtt

        background = (refresh_twins, serve_mllp, serve_mqtt)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ServiceContext.build(settings, clock=clock, store=store)
        app.state.context = context
        tasks = [asyncio.create_task(task(context)) for task in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Alarm events still queued for webhooks and MQTT go out before the process ends.
            await run_in_threadpool(context.outbound.close)
            # Anchor the audit chain's head outside the database at every shutdown.
            try:
                await run_in_threadpool(context.audit.checkpoint)
            except MedtwinError:
                log.exception("could not anchor the audit chain at shutdown")
            if store is None:
                context.store.close()

    app = FastAPI(
        title="medtwin",
        version=__version__,
        description="Live, personal digital twins of patients.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(RateLimit, rate=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
    for module in (
        auth,
        observations,
        interventions,
        patients,
        series,
        consents,
        devices,
        twins,
        glucose,  # before derived: it answers /patients/{p}/derived/glucose.forecast
        dosing,
        derived,
        research,
        quarantine,
        health,
        events,
        fhir,
        waveforms,
        alarms,
        models,
    ):
        app.include_router(module.router)
    from medtwin.apps.api import graphql

    graphql.install(app, settings)
    from medtwin.apps import dashboard

    dashboard.install(app)
    return app
