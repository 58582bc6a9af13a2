"""Everything a running service holds, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from medtwin.core.clock import Clock, SystemClock
from medtwin.core.settings import Settings
from medtwin.data.store import SqlStore, open_store
from medtwin.twins import EventBus, Ingestor, TwinRuntime

# Twins start from the newest values of this look-back when the service starts.
WARM_START = timedelta(days=7)


@dataclass
class ServiceContext:
    settings: Settings
    clock: Clock
    store: SqlStore
    runtime: TwinRuntime
    bus: EventBus
    ingestor: Ingestor
    extras: dict[str, object] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: SqlStore | None = None,
    ) -> ServiceContext:
        clock = clock or SystemClock()
        store = store or open_store(
            settings.store_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        runtime = TwinRuntime(clock, news2_window_s=settings.news2_window_s)
        bus = EventBus()
        ingestor = Ingestor(store, runtime, bus, clock, max_future_s=settings.max_future_s)
        context = cls(settings, clock, store, runtime, bus, ingestor)
        context.warm()
        return context

    def warm(self) -> None:
        """Load the twins' state from the store."""
        for patient in self.store.patients():
            self.runtime.add(patient.id, spo2_scale=patient.spo2_scale)
        since = self.clock.now_us() - int(WARM_START.total_seconds() * 1_000_000)
        self.runtime.observe(self.store.latest(codes=self.runtime.codes, since_us=since))
