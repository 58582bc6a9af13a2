"""Fixtures of the HL7 tests: the reference messages, an ingestor, a processor, a live listener."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medtwin.core.clock import FixedClock
from medtwin.data.store import SqlStore
from medtwin.devices.hl7 import HL7Processor, MllpCoordinator
from medtwin.twins.events import EventBus
from medtwin.twins.ingest import Ingestor
from medtwin.twins.runtime import TwinRuntime

HL7_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "hl7v2"
# Far enough ahead that no reference message is "in the future".
NOW = datetime(2031, 1, 1, tzinfo=UTC)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def hl7_files() -> list[Path]:
    """The 139 reference messages; missing: fails in CI, skips elsewhere."""
    files = sorted(HL7_DIR.glob("*.hl7")) if HL7_DIR.is_dir() else []
    if not files:
        message = f"HL7 reference messages not found in {HL7_DIR}"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: they must be there)", pytrace=False)
        pytest.skip(message)
    return files


def make_processor(store: SqlStore, **options: Any) -> HL7Processor:
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    return HL7Processor(store, ingestor, clock, **options)


@pytest.fixture
def processor(store: SqlStore) -> HL7Processor:
    return make_processor(store)


class RunningServer:
    """A coordinator listening on 127.0.0.1 from an event loop in a background thread."""

    def __init__(self, coordinator: MllpCoordinator) -> None:
        self.coordinator = coordinator
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.coordinator.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.coordinator.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.coordinator.port


def serve(processor: HL7Processor, **options: Any) -> RunningServer:
    """A listener for ``processor`` on a free loopback port (use as a context manager)."""
    return RunningServer(MllpCoordinator(processor, host="127.0.0.1", port=0, **options))


@pytest.fixture
def server(processor: HL7Processor) -> Iterator[RunningServer]:
    with serve(processor) as running:
        yield running
