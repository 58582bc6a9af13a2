"""WebSocket /ws/events: twin events as JSON as they happen, for the patients a caller may see."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import guard
from medtwin.data.accounts import Role
from medtwin.twins.events import Subscription

router = APIRouter(tags=["events"])
SUBSCRIBE = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="subscribe")
# How long a clinician's care-team membership is trusted before it is read again (s).
TEAM_REFRESH_S = 5.0


class _Visibility:
    """Which patients' events a subscriber may receive, re-read every few seconds."""

    def __init__(self, principal: Principal, context: ServiceContext) -> None:
        self.principal = principal
        self.context = context
        self.patients: set[str] = set()
        self.read_at = -TEAM_REFRESH_S

    async def allows(self, patient: object) -> bool:
        if self.principal.role is Role.ADMIN:
            return True
        team = self.principal.care_team
        if team is None or not isinstance(patient, str):
            return False
        if time.monotonic() - self.read_at > TEAM_REFRESH_S:
            self.patients = await run_in_threadpool(self.context.accounts.team_patients, team)
            self.read_at = time.monotonic()
        return patient in self.patients


async def _send(websocket: WebSocket, subscription: Subscription, visibility: _Visibility) -> None:
    while True:
        event = await subscription.get()
        if "patient" not in event or await visibility.allows(event["patient"]):
            await websocket.send_json(event)


async def _until_closed(websocket: WebSocket) -> None:
    # Clients send nothing; reading is how a disconnect is noticed without waiting for an event.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/ws/events")
async def events(websocket: WebSocket, principal: Annotated[Principal, guard(SUBSCRIBE)]) -> None:
    context: ServiceContext = websocket.app.state.context
    await websocket.accept()
    subscription = context.bus.subscribe()
    tasks = [
        asyncio.create_task(_send(websocket, subscription, _Visibility(principal, context))),
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
