"""Load many Bundle files: a reader process parses and checks, this one commits in groups.

Reading a Bundle (JSON parsing, the R4 checks of every resource, the content
digest) needs no store, so a second process reads the next files while this
one commits (the two cores of a small server both work). Bundles that are
read by the time a commit starts go into one database transaction, each in
its own savepoint: one fsync for the group, and a refused Bundle changes
nothing and is quarantined as :meth:`FhirService.process_bundle` would
quarantine it. The caller gets each file's outcome in order, a
:class:`BundleResult` or the :class:`FhirError` that refused it.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.context import BaseContext
from pathlib import Path

from medtwin.core.collector import tune_collector
from medtwin.devices.fhir.errors import FhirError
from medtwin.devices.fhir.service import (
    BundleResult,
    FhirService,
    ReadBundle,
    parse_json,
    read_bundle,
)

__all__ = ["BundleLoader", "Loaded"]


@dataclass(frozen=True, slots=True)
class Loaded:
    """One file's outcome."""

    path: Path
    outcome: BundleResult | FhirError


def _read(
    path: Path, *, max_entries: int, max_depth: int, source: str | None
) -> ReadBundle | FhirError:
    """A file read and checked (in the reader process), or why it is refused."""
    try:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        # read_bundle checks the nesting as it walks the Bundle (no walk of its own).
        document = parse_json(data, max_depth=max_depth, nesting=False)
        return read_bundle(document, max_entries=max_entries, max_depth=max_depth, source=source)
    except FhirError as exc:
        return exc


class BundleLoader:
    """Loads Bundle files in order through a :class:`FhirService`.

    ``group_entries``: a commit group closes once its Bundles hold this many
    entries; ``ahead``: files the reader may read ahead of the commits (memory
    bound); ``reader``: False reads in this process (no second process). Used
    as a context manager, the reader process lives until the block ends;
    otherwise each :meth:`load` of several files starts its own.
    """

    def __init__(
        self,
        service: FhirService,
        *,
        group_entries: int = 5_000,
        ahead: int = 8,
        reader: bool = True,
    ) -> None:
        self.service = service
        self.group_entries = group_entries
        self.ahead = ahead
        self.reader = reader
        self._pool: ProcessPoolExecutor | None = None

    def load(
        self,
        paths: Sequence[Path],
        *,
        source: str | None = None,
        care_team: str | None = None,
    ) -> Iterator[Loaded]:
        """Each file's outcome, in the order of ``paths``, once its group is committed."""
        read = partial(
            _read,
            max_entries=self.service.max_entries,
            max_depth=self.service.max_depth,
            source=source,
        )
        if self._pool is not None:
            yield from self._pipeline(paths, partial(self._pool.submit, read), source, care_team)
        elif not self.reader or len(paths) < 2:
            yield from self._pipeline(paths, lambda path: _done(read(path)), source, care_team)
        else:
            with self:
                yield from self.load(paths, source=source, care_team=care_team)

    def __enter__(self) -> BundleLoader:
        """Start the reader process (enter before starting threads: it can then fork)."""
        if self.reader and self._pool is None:
            context: BaseContext
            # A fork starts at once and inherits the compiled checkers, but is safe only
            # while this process has no other thread (one could hold a lock the child needs).
            if threading.active_count() == 1:
                context = multiprocessing.get_context("fork")
            else:
                server = multiprocessing.get_context("forkserver")
                server.set_forkserver_preload(["medtwin.devices.fhir.loader"])
                context = server
            self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=tune_collector)
            self._pool.submit(int).result()  # started now, not at the first file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _pipeline(
        self,
        paths: Sequence[Path],
        submit: Callable[[Path], Future[ReadBundle | FhirError]],
        source: str | None,
        care_team: str | None,
    ) -> Iterator[Loaded]:
        waiting = deque(paths)
        pending: deque[tuple[Path, Future[ReadBundle | FhirError]]] = deque()

        def top_up() -> None:
            while waiting and len(pending) < self.ahead:
                path = waiting.popleft()
                pending.append((path, submit(path)))

        top_up()
        while pending:
            path, future = pending.popleft()
            group = [(path, future.result())]
            entries = _size(group[0][1])
            top_up()
            # Whatever else is read already joins this commit.
            while pending and pending[0][1].done() and entries < self.group_entries:
                path, future = pending.popleft()
                group.append((path, future.result()))
                entries += _size(group[-1][1])
                top_up()
            yield from self._commit(group, source, care_team)

    def _commit(
        self,
        group: list[tuple[Path, ReadBundle | FhirError]],
        source: str | None,
        care_team: str | None,
    ) -> Iterator[Loaded]:
        bundles = [read for _, read in group if isinstance(read, ReadBundle)]
        committed = iter(self.service.commit_group(bundles, care_team) if bundles else [])
        for path, read in group:
            outcome = next(committed) if isinstance(read, ReadBundle) else read
            if isinstance(outcome, FhirError):
                raw = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
                self.service._quarantine(outcome, raw, None, source)
            yield Loaded(path, outcome)


def _done(read: ReadBundle | FhirError) -> Future[ReadBundle | FhirError]:
    future: Future[ReadBundle | FhirError] = Future()
    future.set_result(read)
    return future


def _size(read: ReadBundle | FhirError) -> int:
    return len(read.entries) if isinstance(read, ReadBundle) else 0
