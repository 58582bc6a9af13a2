"""Device and system adapters run by the service, as background tasks of the app.

Each task starts its adapter when the settings turn it on (an MLLP port, an
MQTT host) and stops it when the app shuts down; it feeds the app's own
ingestor, so every channel updates the same twins.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.context import ServiceContext

__all__ = ["serve_mllp", "serve_mqtt"]


async def serve_mllp(context: ServiceContext) -> None:
    """The HL7 v2 MLLP listener, when ``mllp_port`` is set."""
    from medtwin.devices.hl7 import HL7Processor
    from medtwin.devices.hl7.coordinator import MllpCoordinator

    processor = context.extras["hl7"]
    assert isinstance(processor, HL7Processor)
    coordinator = MllpCoordinator.from_settings(context.settings, processor)
    if coordinator is None:
        return
    await coordinator.start()
    context.extras["mllp"] = coordinator
    try:
        await asyncio.Event().wait()  # until the app cancels this task
    finally:
        with contextlib.suppress(Exception):
            await coordinator.stop()


async def serve_mqtt(context: ServiceContext) -> None:
    """The MQTT device subscriber, when ``mqtt_host`` is set."""
    if context.settings.mqtt_host is None:
        return
    from medtwin.devices.mqtt import MqttConfig, MqttSubscriber

    subscriber = MqttSubscriber(MqttConfig.from_settings(context.settings), context.ingestor)
    subscriber.start()
    context.extras["mqtt"] = subscriber
    try:
        await asyncio.Event().wait()  # until the app cancels this task
    finally:
        await run_in_threadpool(subscriber.stop)
