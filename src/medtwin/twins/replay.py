"""Replay quarantined input once its cause is fixed (a mapping added, a device bound).

Each channel has a replayer that takes a quarantined entry's raw payload back
through that channel's own path. A replay either takes the whole payload in
(the entry is marked resolved, and keeps its payload for audit) or changes
nothing: a payload still at fault is reported, not quarantined again.
Adapters register their replayers for their channels (``fhir``, ``mllp``,
``mqtt``); observation items (``api``, ``cli``, ``replay``) are built in.
What a replay stores has the quarantine entry as its origin (``quarantine/<row id>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medtwin.core.clock import Clock
from medtwin.core.errors import NotFoundError
from medtwin.data.store import Origin, QuarantineEntry, Store
from medtwin.twins.ingest import Ingestor

__all__ = ["ReplayOutcome", "Replayer", "Replayers"]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """``taken``: the payload is in; otherwise ``reason`` and ``location`` say why not."""

    row_id: int
    taken: bool
    reason: str | None = None
    location: str | None = None


# Takes the entry's payload through its channel; returns None when taken in, else the
# (reason, location) of the first fault. Must not write anything when it refuses.
Replayer = Callable[[QuarantineEntry], tuple[str, str] | None]

_ITEM_CHANNELS = ("api", "cli", "replay")
# Quarantine channel -> the origin channel of what its replay stores (a file ingested
# from the command line is quarantined as "cli:<file name>").
_ORIGIN_CHANNELS = {"cli": "file"}


class Replayers:
    """The replayer of each channel, and replay of stored entries by id."""

    def __init__(self, store: Store, ingestor: Ingestor, clock: Clock) -> None:
        self.store = store
        self.ingestor = ingestor
        self.clock = clock
        self._by_channel: dict[str, Replayer] = dict.fromkeys(_ITEM_CHANNELS, self._items)

    def register(self, channel: str, replayer: Replayer) -> None:
        self._by_channel[channel] = replayer

    def replay(self, row_id: int) -> ReplayOutcome:
        entry = self.store.quarantine_entry(row_id)
        if entry is None:
            raise NotFoundError(f"no quarantine entry {row_id}")
        if entry.resolved_us is not None:
            return ReplayOutcome(row_id, True, "already taken in by an earlier replay")
        # A file ingested from the command line is channel "cli:<file name>".
        replayer = self._by_channel.get(entry.channel.split(":", 1)[0])
        if replayer is None:
            return ReplayOutcome(
                row_id, False, f"no replay for channel {entry.channel!r}", "channel"
            )
        fault = replayer(entry)
        if fault is not None:
            return ReplayOutcome(row_id, False, fault[0], fault[1])
        self.store.resolve_quarantine([row_id], self.clock.now_us())
        return ReplayOutcome(row_id, True)

    def _items(self, entry: QuarantineEntry) -> tuple[str, str] | None:
        """Observation items: one item, a list, or an ``{"observations": [...]}`` body."""
        try:
            document: Any = json.loads(entry.payload)
        except json.JSONDecodeError as exc:
            return f"payload is not JSON: {exc.msg}", f"payload:{exc.lineno}:{exc.colno}"
        paths: list[str | None]  # of each item in the payload, for its origin
        if isinstance(document, dict) and isinstance(document.get("observations"), list):
            items = document["observations"]
            paths = [f"observations[{i}]" for i in range(len(items))]
        elif isinstance(document, list):
            items = document
            paths = [f"[{i}]" for i in range(len(items))]
        else:
            items = [document]
            paths = [None]
        origins = None
        if entry.row_id is not None:
            kind = entry.channel.split(":", 1)[0]
            channel = _ORIGIN_CHANNELS.get(kind, kind)
            message = f"quarantine/{entry.row_id}"
            origins = [Origin(channel, message, path) for path in paths]
        prepared = self.ingestor.prepare(items, channel="replay", origins=origins)
        if prepared.rejections:
            first = prepared.rejections[0]
            return first.reason, first.location()
        self.ingestor.commit(prepared)
        return None
