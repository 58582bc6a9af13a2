"""Ingest JSON-lines files through the same path as the API, in batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtwin.data.store import QuarantineEntry
from medtwin.devices.jsonl import read_jsonl
from medtwin.twins import Ingestor

Report = Callable[[str], None]


def ingest_files(
    ingestor: Ingestor,
    paths: list[Path],
    *,
    batch: int = 1000,
    report: Report | None = None,
    progress: Callable[[Path, int], None] | None = None,
) -> dict[str, int]:
    """Ingest every line of ``paths``; counts by outcome. Faults go to quarantine and ``report``."""
    totals = {"stored": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    for path in paths:
        channel = f"cli:{path.name}"
        items: list[Any] = []
        numbers: list[int] = []

        def flush(items: list[Any], numbers: list[int], path: Path, channel: str) -> None:
            for result in ingestor.ingest(items, channel=channel):
                totals[result.status] += 1
                if result.status == "rejected" and report:
                    report(f"{path}:{numbers[result.index]}: {result.field}: {result.reason}")
            if progress:
                progress(path, len(items))
            items.clear()
            numbers.clear()

        for line in read_jsonl(path):
            if line.error is not None:
                ingestor.store.quarantine(
                    [
                        QuarantineEntry(
                            channel=channel,
                            location=f"{path.name}:{line.number}:{line.column}",
                            reason=line.error,
                            payload=line.text,
                            received_us=ingestor.clock.now_us(),
                        )
                    ]
                )
                totals["rejected"] += 1
                if report:
                    report(f"{path}:{line.number}: {line.error}")
                if progress:
                    progress(path, 1)
                continue
            items.append(line.item)
            numbers.append(line.number)
            if len(items) >= batch:
                flush(items, numbers, path, channel)
        if items:
            flush(items, numbers, path, channel)
    return totals
