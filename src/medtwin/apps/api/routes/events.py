"""WebSocket /ws/events: twin events as JSON, as they happen."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from medtwin.apps.api.context import ServiceContext

router = APIRouter(tags=["events"])


@router.websocket("/ws/events")
async def events(websocket: WebSocket) -> None:
    context: ServiceContext = websocket.app.state.context
    await websocket.accept()
    subscription = context.bus.subscribe()
    try:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_json(await subscription.get())
    finally:
        subscription.close()
