"""WebSocket /ws/events: twin events as JSON, as they happen."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from medtwin.apps.api.context import ServiceContext
from medtwin.twins.events import Subscription

router = APIRouter(tags=["events"])


async def _send(websocket: WebSocket, subscription: Subscription) -> None:
    while True:
        await websocket.send_json(await subscription.get())


async def _until_closed(websocket: WebSocket) -> None:
    # Clients send nothing; reading is how a disconnect is noticed without waiting for an event.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/ws/events")
async def events(websocket: WebSocket) -> None:
    context: ServiceContext = websocket.app.state.context
    await websocket.accept()
    subscription = context.bus.subscribe()
    tasks = [
        asyncio.create_task(_send(websocket, subscription)),
        asyncio.create_task(_until_closed(websocket)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        subscription.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
