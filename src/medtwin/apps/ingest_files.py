"""Ingest line-oriented files (JSON lines, mapped CSV) through the API's path, in batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medtwin.data.store import Origin, QuarantineEntry
from medtwin.data.store.writer import WriterProcess
from medtwin.devices.jsonl import Line, read_jsonl
from medtwin.twins import Ingestor

Report = Callable[[str], None]


def ingest_files(
    ingestor: Ingestor,
    paths: list[Path],
    *,
    batch: int = 1000,
    report: Report | None = None,
    progress: Callable[[Path, int], None] | None = None,
    writer: WriterProcess | None = None,
    read: Callable[[Path], Iterator[Line]] = read_jsonl,
) -> dict[str, int]:
    """Ingest every line of ``paths``; counts by outcome. Faults go to quarantine and ``report``.

    ``read`` turns a file into lines, each an item or a fault with its place
    (``read_jsonl``; ``functools.partial(read_csv, mapping=...)`` for CSV).

    Every stored observation records its origin: channel ``file``, the file's name
    and ``name:line``.

    With ``writer`` (a :class:`WriterProcess` on the ingestor's store), batches are
    stored by the writer while the next ones are read and validated here
    (:meth:`Ingestor.ingest_stream`): same outcome, about half again as fast for
    big files on two cores.
    """
    totals = {"stored": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    for path in paths:
        channel = f"cli:{path.name}"
        name = _storable(path.name)
        line_numbers: deque[list[int]] = deque()  # of the batches read, not yet answered
        origins: deque[list[Origin | None]] = deque()  # taken by ingest_stream as it reads

        def batches(
            path: Path,
            channel: str,
            name: str,
            line_numbers: deque[list[int]],
            origins: deque[list[Origin | None]],
        ) -> Iterator[list[Any]]:
            items: list[Any] = []
            numbers: list[int] = []
            for line in read(path):
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
                    line_numbers.append(numbers)
                    origins.append(_origins(name, numbers))
                    yield items
                    items, numbers = [], []
            if items:
                line_numbers.append(numbers)
                origins.append(_origins(name, numbers))
                yield items

        for results in ingestor.ingest_stream(
            batches(path, channel, name, line_numbers, origins),
            channel=channel,
            writer=writer,
            origins=_drain(origins),
        ):
            numbers = line_numbers.popleft()
            for result in results:
                totals[result.status] += 1
                if result.status == "rejected" and report:
                    report(f"{path}:{numbers[result.index]}: {result.field}: {result.reason}")
            if progress:
                progress(path, len(results))
    return totals


def _origins(name: str, numbers: list[int]) -> list[Origin | None]:
    return [Origin("file", name, f"{name}:{number}") for number in numbers]


def _drain(origins: deque[list[Origin | None]]) -> Iterator[list[Origin | None]]:
    """The origins of each batch, taken once reading that batch has put them there.

    ``ingest_stream`` zips this with the batches, asking for a batch first.
    """
    while origins:
        yield origins.popleft()


def _storable(name: str) -> str:
    """A file name every store can keep: undecodable bytes of it become ``?``."""
    return name.encode("utf-8", "replace").decode("utf-8")
