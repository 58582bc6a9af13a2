"""The injected clock.

Every "now" in medtwin comes from one :class:`Clock`: validation of future
times, NEWS2 look-back windows and the demo's accelerated time all agree.
Times are timezone-aware UTC; ``now_us`` is microseconds since the Unix epoch.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Aware UTC datetime of microseconds since the Unix epoch."""
    # Integer arithmetic: ``us / 1e6`` as a float loses microseconds far from 1970.
    return _EPOCH + timedelta(microseconds=int(us))


def to_iso(us: int) -> str:
    """ISO 8601 of microseconds since the Unix epoch, UTC written as ``Z``."""
    return from_us(us).isoformat().replace("+00:00", "Z")


@runtime_checkable
class Clock(Protocol):
    """Source of the current time."""

    def now_us(self) -> int:
        """Current time, microseconds since the Unix epoch (UTC)."""
        ...

    def now(self) -> datetime:
        """Current time, aware UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now_us(self) -> int:
        return time.time_ns() // 1_000

    def now(self) -> datetime:
        return from_us(self.now_us())


class FixedClock:
    """A clock that moves only when told to (tests, replays)."""

    def __init__(self, start: datetime) -> None:
        self._us = to_us(start)
        self._lock = threading.Lock()

    def now_us(self) -> int:
        return self._us

    def now(self) -> datetime:
        return from_us(self._us)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (s)."""
        with self._lock:
            self._us += round(seconds * 1_000_000)

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._us = to_us(moment)


class AcceleratedClock:
    """Simulated time running ``factor`` times faster than the wall clock.

    Simulated time starts at ``start`` (default: now) when the clock is made.
    """

    def __init__(self, factor: float, start: datetime | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"acceleration factor must be positive, got {factor}")
        self.factor = factor
        self._real0 = time.monotonic_ns() // 1_000
        self._sim0 = to_us(start) if start is not None else SystemClock().now_us()

    def now_us(self) -> int:
        elapsed = time.monotonic_ns() // 1_000 - self._real0
        return self._sim0 + round(elapsed * self.factor)

    def now(self) -> datetime:
        return from_us(self.now_us())
