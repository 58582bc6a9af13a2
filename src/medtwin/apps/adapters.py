"""Device and system adapters run by the service, as background tasks of the app.

Each task starts its adapter when the settings turn it on (an MLLP port, an
MQTT host) and stops it when the app shuts down; it feeds the app's own
ingestor, so every channel updates the same twins.
"""

from __future__ import annotations

import asyncio
import contextlib

from medtwin.apps.api.context import ServiceContext

__all__ = ["serve_mllp"]


async def serve_mllp(context: ServiceContext) -> None:
    """The HL7 v2 MLLP listener, when ``mllp_port`` is set."""
    from medtwin.devices.hl7.coordinator import MllpCoordinator

    coordinator = MllpCoordinator.from_settings(
        context.settings, context.store, context.ingestor, context.clock
    )
    if coordinator is None:
        return
    await coordinator.start()
    context.extras["mllp"] = coordinator
    try:
        await asyncio.Event().wait()  # until the app cancels this task
    finally:
        with contextlib.suppress(Exception):
            await coordinator.stop()
