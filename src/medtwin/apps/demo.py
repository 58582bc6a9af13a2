"""``medtwin demo``: a live virtual ward on the embedded store.

Simulated bedside monitors feed the same ingestion path a real device uses,
in accelerated time driven by the injected clock (so accelerated timestamps
are never taken for future times).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api import BackgroundTask, ServiceContext, create_app, refresh_twins
from medtwin.core.clock import AcceleratedClock, from_us
from medtwin.core.settings import Settings
from medtwin.data.store import open_store
from medtwin.devices.simulated import VirtualWard, WardConfig

log = logging.getLogger(__name__)

BATCH = 1000
TICK_S = 1.0  # real seconds between simulator steps


def run_ward(ward: VirtualWard) -> BackgroundTask:
    """A background task that feeds the ward's readings into the service."""

    async def run(context: ServiceContext) -> None:
        while True:
            items = ward.advance(context.clock.now())
            for start in range(0, len(items), BATCH):
                try:
                    await run_in_threadpool(
                        context.ingestor.ingest, items[start : start + BATCH], channel="simulator"
                    )
                except Exception:  # the ward keeps running; the failure is logged
                    log.exception("simulated ward batch failed")
            await asyncio.sleep(TICK_S)

    return run


def create_demo_app(settings: Settings) -> FastAPI:
    """The service with a virtual ward, its clock starting after anything already stored."""
    store = open_store(settings.store_url, sqlite_synchronous=settings.sqlite_synchronous)
    newest = store.newest_time()
    start = None
    if newest is not None:
        start = max(from_us(newest) + timedelta(seconds=1), AcceleratedClock(1.0).now())
    clock = AcceleratedClock(settings.demo_acceleration, start=start)
    ward = VirtualWard(WardConfig(patients=settings.demo_patients, seed=settings.demo_seed))
    return create_app(
        settings,
        clock=clock,
        store=store,
        background=(refresh_twins, run_ward(ward)),
    )
