"""In-process event bus: the runtime publishes from any thread, async subscribers receive.

A subscriber that falls behind by more than its queue size loses the oldest
events and is told so by a ``{"type": "events.dropped"}`` marker; the store,
not the bus, is the record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

Event = dict[str, Any]


class Subscription:
    """A queue of events for one consumer, bound to the event loop that made it."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)

    def _put(self, events: Sequence[Event]) -> None:
        for event in events:
            if self.queue.full():
                self.queue.get_nowait()
                event = {"type": "events.dropped", "reason": "subscriber too slow"}
            self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Fan-out of twin events to subscribers (WebSocket clients, webhooks)."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._listeners: list[Callable[[Sequence[Event]], None]] = []
        self._lock = threading.Lock()

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscriptions or self._listeners)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """Subscribe from inside a running event loop."""
        subscription = Subscription(self, maxsize)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def listen(self, listener: Callable[[Sequence[Event]], None]) -> None:
        """Call ``listener`` synchronously, in the publishing thread, for every batch."""
        with self._lock:
            self._listeners.append(listener)

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        with self._lock:
            subscriptions = list(self._subscriptions)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(events)
        for subscription in subscriptions:
            if subscription.loop.is_closed():
                self.unsubscribe(subscription)
                continue
            subscription.loop.call_soon_threadsafe(subscription._put, events)
