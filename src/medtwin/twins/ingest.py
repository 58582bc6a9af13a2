"""The ingestion path every adapter shares: validate, store, update twins, publish.

One call handles one batch: bad items are quarantined with their reason and
location in the same transaction that stores the good ones, and the answer
is given only once that transaction has committed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.engine import Connection

from medtwin.core.clock import Clock, to_iso
from medtwin.core.errors import StoreError
from medtwin.core.records import Intervention, Observation, Patient, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry
from medtwin.data.interventions import validate_interventions
from medtwin.data.store import AppendStatus, Origin, QuarantineEntry, Store
from medtwin.data.store.writer import WriterProcess
from medtwin.data.validation import Rejection, Validated, storable, validate_items
from medtwin.devices.conditioning.pipeline import Conditioner
from medtwin.twins.events import EventBus
from medtwin.twins.runtime import TwinRuntime, TwinUpdate


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer for one item: stored (with flags), duplicate, conflict or rejected."""

    index: int
    id: str | None
    status: str
    flags: tuple[str, ...] = ()
    reason: str | None = None
    field: str | None = None
    location: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.flags:
            out["flags"] = list(self.flags)
        if self.reason is not None:
            out["reason"] = self.reason
            out["field"] = self.field
            out["location"] = self.location
        return out


@dataclass
class IngestMetrics:
    """Prometheus metrics of one ingestion path."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.items = Counter(
            "medtwin_ingest_items",
            "Items received, by channel and outcome",
            ["channel", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "medtwin_ingest_batch_seconds",
            "Time to validate, store and score one batch (s)",
            ["channel"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.refused = Counter(
            "medtwin_ingest_requests_refused",
            "Whole requests refused before item validation, by channel and error code",
            ["channel", "code"],
            registry=self.registry,
        )
        self.twins = Gauge("medtwin_twins", "Live twins", registry=self.registry)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated batch, ready to be committed."""

    items: Sequence[Any]
    channel: str
    received_us: int
    accepted: list[tuple[int, Observation]]
    rejections: list[Rejection]
    observations: list[Observation]
    quarantine: list[QuarantineEntry]
    new_patients: list[Patient]
    started: float  # perf_counter() when preparation began (s)
    origins: list[Origin | None] | None = None  # one per observation


class Ingestor:
    """Validate -> quarantine or store -> update twins -> publish events."""

    def __init__(
        self,
        store: Store,
        runtime: TwinRuntime,
        bus: EventBus,
        clock: Clock,
        *,
        registry: CodeRegistry = DEFAULT_REGISTRY,
        max_future_s: float = 300.0,
        max_planned_s: float = 86_400.0,
        metrics: IngestMetrics | None = None,
        conditioner: Conditioner | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.bus = bus
        self.clock = clock
        self.registry = registry
        self.max_future_us = round(max_future_s * 1_000_000)
        # Interventions may be planned (a meal, a bolus, a basal rate ahead): the glucose
        # forecasts count on them. Readings from the future are a clock fault instead.
        self.max_planned_us = round(max_planned_s * 1_000_000)
        self.metrics = metrics or IngestMetrics()
        # Signal conditioning (calibration, artifact flags) of each batch before it is stored.
        self.conditioner = conditioner
        # One batch at a time: the twins see observations in the order the store took them.
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def ingest(
        self,
        items: Sequence[Any],
        *,
        channel: str = "api",
        sources: frozenset[str] | None = None,
        care_team: str | None = None,
        extra: Callable[[Connection], None] | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> list[IngestResult]:
        """Ingest a batch of observation items (API/JSON-lines shape); one result per item.

        ``origins``, one per item, records the message each stored observation came in
        (the provenance of every value derived from it ends there).

        Batches are validated and committed one at a time: while SQLite writes a batch it
        hands the interpreter lock back after every row, and a second thread busy
        validating would hold it for a whole switch interval each time (a lock convoy
        measured at 20% slower than doing both in turn).
        """
        with self._lock:
            prepared = self.prepare(items, channel=channel, sources=sources, origins=origins)
            return self.commit(prepared, care_team=care_team, extra=extra)

    def prepare(
        self,
        items: Sequence[Any],
        *,
        channel: str = "api",
        sources: frozenset[str] | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> PreparedBatch:
        """Validate a batch against the clock and build its quarantine entries.

        ``sources``, when given, are the only senders the caller may write for (a
        device's API key owns its devices); items from any other source are rejected.
        ``origins``, when given, has one entry per item: the message it came in.
        """
        if origins is not None and len(origins) != len(items):
            raise ValueError(f"{len(origins)} origins for {len(items)} items")
        started = time.perf_counter()
        now = self.clock.now_us()
        validated = validate_items(
            items, now_us=now, registry=self.registry, max_future_us=self.max_future_us
        )
        if sources is not None:
            validated = _only_sources(validated, sources)
        rejected = [
            QuarantineEntry(
                channel=channel,
                location=_location(r, None if origins is None else origins[r.index]),
                reason=r.reason,
                payload=_raw_text(r.item),
                source=_source_of(r.item),
                received_us=now,
            )
            for r in validated.rejected
        ]
        accepted = validated.accepted
        observations = [obs for _, obs in accepted]
        kept = None if origins is None else [origins[i] for i, _ in accepted]
        if self.conditioner is not None and observations:
            observations, notes = self.conditioner.condition(observations)
            accepted = [(i, obs) for (i, _), obs in zip(accepted, observations, strict=True)]
            if any(note is not None for note in notes):
                kept = _with_conditioning(kept, notes, channel, now)
        return PreparedBatch(
            items=items,
            channel=channel,
            received_us=now,
            accepted=accepted,
            rejections=validated.rejected,
            observations=observations,
            quarantine=rejected,
            new_patients=self.new_patients(observations, now),
            started=started,
            origins=kept,
        )

    def commit(
        self,
        batch: PreparedBatch,
        *,
        care_team: str | None = None,
        extra: Callable[[Connection], None] | None = None,
    ) -> list[IngestResult]:
        """Store a prepared batch in one transaction, then update the twins and publish.

        With ``care_team``, the batch's patients join that team in the same transaction.
        ``extra`` runs inside that transaction after the inserts (see ``Store.append``);
        if it raises, nothing of the batch is stored and the twins are not touched.
        """
        statuses = self._store(batch, care_team, extra)
        return self._finish(batch, statuses)

    def commit_statuses(
        self,
        batch: PreparedBatch,
        *,
        care_team: str | None = None,
        extra: Callable[[Connection], None] | None = None,
    ) -> list[AppendStatus]:
        """:meth:`commit`, answering the store's status of each accepted item instead
        (in ``batch.accepted`` order; the rejected ones are ``batch.rejections``).

        For adapters that build their own answers (HL7 acknowledgements): the same
        store, twins and metrics, without one :class:`IngestResult` per item.
        """
        statuses = self._store(batch, care_team, extra)
        tally = _tally(statuses, len(batch.rejections))
        self._count(batch.channel, tally, time.perf_counter() - batch.started)
        return statuses

    def _store(
        self,
        batch: PreparedBatch,
        care_team: str | None,
        extra: Callable[[Connection], None] | None,
    ) -> list[AppendStatus]:
        """Append ``batch`` in one transaction and fold what was stored into the twins."""
        with self._commit_lock:
            statuses = self.store.append(
                batch.observations,
                received_us=batch.received_us,
                new_patients=batch.new_patients,
                rejected=batch.quarantine,
                channel=batch.channel,
                care_team=care_team,
                extra=extra,
                origins=batch.origins,
            )
            self._observe_stored(batch, statuses)
        return statuses

    def ingest_interventions(
        self,
        items: Sequence[Any],
        *,
        channel: str = "api",
        sources: frozenset[str] | None = None,
        care_team: str | None = None,
    ) -> list[IngestResult]:
        """Validate and store intervention items; publish ``twin.intervention`` events.

        Interventions are the twins' model inputs (insulin, meals, drug doses);
        refused items are quarantined with their location, like observations.
        """
        now = self.clock.now_us()
        validated = validate_interventions(items, now_us=now, max_future_us=self.max_planned_us)
        rejections = list(validated.rejected)
        accepted = validated.accepted
        if sources is not None:
            kept = [(i, v) for i, v in accepted if v.source in sources]
            rejections += [
                Rejection(i, "source", f"this key may not write for source {v.source!r}", items[i])
                for i, v in accepted
                if v.source not in sources
            ]
            accepted = kept
        quarantine = [
            QuarantineEntry(
                channel=channel,
                location=r.location("interventions"),
                reason=r.reason,
                payload=_raw_text(r.item),
                source=_source_of(r.item),
                received_us=now,
            )
            for r in rejections
        ]
        if quarantine:
            self.store.quarantine(quarantine)
        records = [v for _, v in accepted]
        with self._commit_lock:
            new = self.new_patients(records, now)
            statuses = self.store.append_interventions(
                records, received_us=now, new_patients=new, channel=channel, care_team=care_team
            )
            for patient in new:
                self.runtime.add(patient.id)
        stored = [v for v, st in zip(records, statuses, strict=True) if st is AppendStatus.STORED]
        if stored and self.bus.has_subscribers:
            self.bus.publish([intervention_event(v) for v in stored])
        pairs = zip(accepted, statuses, strict=True)
        results = [IngestResult(i, v.source_id, st.value) for (i, v), st in pairs]
        results += [
            IngestResult(
                r.index,
                _id_of(r.item),
                "rejected",
                (),
                r.reason,
                r.field,
                r.location("interventions"),
            )
            for r in rejections
        ]
        return sorted(results, key=lambda r: r.index)

    def ingest_stream(
        self,
        batches: Iterable[Sequence[Any]],
        *,
        channel: str = "api",
        writer: WriterProcess | None = None,
        origins: Iterable[Sequence[Origin | None]] | None = None,
    ) -> Iterator[list[IngestResult]]:
        """Ingest batches in turn; yield each batch's results, in order, once it is committed.

        ``origins``, when given, yields one sequence per batch: the message of each item.
        Without ``writer`` this is :meth:`ingest` batch after batch. With a
        :class:`WriterProcess` writing to this ingestor's store, the two halves run at
        once on two cores: batch N+1 is validated here (against the clock at that
        moment, as :meth:`ingest` does) and sent to the writer while it stores batch N,
        so the writer goes from one batch to the next without waiting; then N's
        statuses come back and N's twins, events and results are done here. Each
        batch is still one transaction, and the results, store contents and twins
        are those of :meth:`ingest` called batch by batch.

        The ingestion locks are held from the first batch until the stream is
        exhausted or closed, so that the twins see batches in the order the store
        took them: other threads' :meth:`ingest` and :meth:`commit` wait meanwhile,
        and the loop consuming this stream must not call them (it would wait for
        itself).

        Failures: when batch k cannot be stored, the error (StoreError) is raised
        here after the results of batches 0..k-1, which are stored and in the
        twins, with a note naming k; batch k and every later one are not stored
        (the writer does not carry out what was sent after a failed batch) and the
        stream ends. To resume, send the batches from k on again: appends are
        idempotent. (If the writer process itself dies, the outcome of the batches
        in flight is unknown, and sending them again is just as safe.) Ending the
        stream early (``break``) lets the writer finish the batch already sent
        after the last one yielded: it is stored and in the twins, its results are
        not given, and sending it again answers ``duplicate``.
        """
        paired: Iterable[tuple[Sequence[Any], Sequence[Origin | None] | None]] = (
            ((items, None) for items in batches)
            if origins is None
            else zip(batches, origins, strict=True)
        )
        if writer is None:
            for position, (items, batch_origins) in enumerate(paired):
                try:
                    results = self.ingest(items, channel=channel, origins=batch_origins)
                except Exception as exc:
                    exc.add_note(_stream_note(position))
                    raise
                yield results
            return
        writer.check_serves(self.store)
        if writer.pending:
            raise RuntimeError("the writer has requests pending")
        depth = min(2, writer.max_pending)  # batches sent to the writer, not answered yet
        with self._lock, self._commit_lock:
            given = 0
            flying: deque[PreparedBatch] = deque()
            try:
                for items, batch_origins in paired:
                    prepared = self.prepare(items, channel=channel, origins=batch_origins)
                    if len(flying) == depth:
                        yield self._land(writer, flying, given)
                        given += 1
                    # New patients that a batch in flight already brings are left out:
                    # that batch stores them, and if it fails, this one is skipped too.
                    self._send(writer, prepared, flying)
                    flying.append(prepared)
                while flying:
                    yield self._land(writer, flying, given)
                    given += 1
            finally:
                # Ended early (closed, or an error here): what the writer stores must
                # reach the twins too; its results are not given.
                while flying:
                    batch = flying.popleft()
                    try:
                        self._observe_stored(batch, writer.result())
                    except StoreError:
                        # Not stored, and neither are the ones after it: let them go.
                        while flying:
                            flying.popleft()
                            with contextlib.suppress(StoreError):
                                writer.result()

    def _send(
        self, writer: WriterProcess, batch: PreparedBatch, flying: Iterable[PreparedBatch]
    ) -> None:
        """Send ``batch`` to the writer, less the new patients of the batches in ``flying``."""
        patients = batch.new_patients
        known = {patient.id for sent in flying for patient in sent.new_patients}
        if known and patients:
            patients = [patient for patient in patients if patient.id not in known]
        writer.submit(
            batch.observations,
            received_us=batch.received_us,
            new_patients=patients,
            rejected=batch.quarantine,
            channel=batch.channel,
            origins=batch.origins,
        )

    def _land(
        self, writer: WriterProcess, flying: deque[PreparedBatch], position: int
    ) -> list[IngestResult]:
        """Take the oldest batch in flight from the writer: twins, events, its results."""
        batch = flying.popleft()
        try:
            statuses = writer.result()
        except StoreError as exc:
            exc.add_note(_stream_note(position))
            raise
        self._observe_stored(batch, statuses)
        return self._finish(batch, statuses)

    def _observe_stored(self, batch: PreparedBatch, statuses: Sequence[AppendStatus]) -> None:
        """Fold the observations the store took into the twins and publish their updates."""
        stored_status = AppendStatus.STORED
        stored = [
            obs
            for obs, status in zip(batch.observations, statuses, strict=True)
            if status is stored_status
        ]
        update = self.runtime.observe(stored)
        self._publish(update)

    def _finish(self, batch: PreparedBatch, statuses: Sequence[AppendStatus]) -> list[IngestResult]:
        """The batch's results, counted in the metrics."""
        results = self._results(batch.items, batch.accepted, statuses, batch.rejections)
        tally = _tally(statuses, len(batch.rejections))
        self._count(batch.channel, tally, time.perf_counter() - batch.started)
        return results

    def new_patients(
        self, records: Sequence[Observation | Intervention], now: int
    ) -> list[Patient]:
        """Patient records (with fresh pseudonyms) for the patients of ``records`` the
        twins do not know yet; adapters storing in their own transaction use it too."""
        runtime = self.runtime
        # Each patient once, then the twins asked: a batch names few patients, many times.
        fresh = {patient for patient in {r.patient for r in records} if patient not in runtime}
        return [Patient(p, "pt-" + secrets.token_hex(8), created_us=now) for p in sorted(fresh)]

    def publish(self, update: TwinUpdate) -> None:
        """Publish the twins of ``update`` (a change made outside ingestion, e.g. a merge)."""
        self._publish(update)

    def _publish(self, update: TwinUpdate) -> None:
        if len(update.rows) and self.bus.has_subscribers:
            self.bus.publish(self.runtime.events(update))

    def refresh(self) -> int:
        """Rescore every twin at the clock's now; publish the twins whose NEWS2 changed."""
        update = self.runtime.refresh()
        if self.bus.has_subscribers and update.changed.any():
            self.bus.publish(self.runtime.events(update, only_changed=True))
        return int(update.changed.sum())

    @staticmethod
    def _results(
        items: Sequence[Any],
        accepted: Sequence[tuple[int, Observation]],
        statuses: Sequence[AppendStatus],
        rejections: Sequence[Any],
    ) -> list[IngestResult]:
        results: list[IngestResult | None] = [None] * len(items)
        for (index, obs), status in zip(accepted, statuses, strict=True):
            flags = _flag_names(obs.flags) if obs.flags else ()
            results[index] = IngestResult(index, obs.source_id, str(status), flags)
        for rejection in rejections:
            item = rejection.item
            item_id = item.get("id") if isinstance(item, dict) else None
            results[rejection.index] = IngestResult(
                rejection.index,
                item_id if isinstance(item_id, str) else None,
                "rejected",
                reason=rejection.reason,
                field=rejection.field or None,
                location=rejection.location(),
            )
        return [r for r in results if r is not None]

    def _count(self, channel: str, tally: dict[str, int], seconds: float) -> None:
        """Count a batch's items by status (``tally``) and its time ``seconds`` (s)."""
        for status, n in tally.items():
            self.metrics.items.labels(channel, status).inc(n)
        self.metrics.seconds.labels(channel).observe(seconds)
        self.metrics.twins.set(len(self.runtime))


def _tally(statuses: Sequence[AppendStatus], rejected: int) -> dict[str, int]:
    """Items per result status: the store's statuses, and ``rejected`` refused by validation."""
    # list.count per status, not a loop: an enum member's .value and hash are Python calls.
    tally = {value: n for status, value in _STATUS_VALUES if (n := statuses.count(status))}
    if rejected:
        tally["rejected"] = rejected
    return tally


_STATUS_VALUES = tuple((status, status.value) for status in AppendStatus)


@functools.lru_cache(maxsize=64)  # a handful of flag combinations, met item after item
def _flag_names(bits: int) -> tuple[str, ...]:
    return tuple(QualityFlag.names_of(bits))


def _location(rejection: Rejection, origin: Origin | None) -> str:
    """Where a refused item is: ``file.jsonl:17: value`` for a file line, else its path."""
    if origin is not None and origin.channel == "file" and origin.entry:
        return f"{origin.entry}: {rejection.field}" if rejection.field else origin.entry
    return rejection.location()


def _with_conditioning(
    origins: list[Origin | None] | None, notes: list[str | None], channel: str, now: int
) -> list[Origin | None]:
    """Origins with what conditioning did; readings without an origin get one naming the batch."""
    out: list[Origin | None] = []
    for k, note in enumerate(notes):
        origin = None if origins is None else origins[k]
        if note is not None:
            origin = (origin or Origin(channel, f"batch-{now}", f"[{k}]"))._replace(
                conditioning=note
            )
        out.append(origin)
    return out


def _stream_note(position: int) -> str:
    return (
        f"ingest_stream: batch {position} (counted from 0) failed; the {position} "
        "before it were stored and their results given, no later batch was stored"
    )


def _only_sources(validated: Validated, sources: frozenset[str]) -> Validated:
    """Move items from senders outside ``sources`` to the rejections."""
    accepted: list[tuple[int, Observation]] = []
    rejected = list(validated.rejected)
    for index, obs in validated.accepted:
        if obs.source in sources:
            accepted.append((index, obs))
        else:
            rejected.append(
                Rejection(
                    index,
                    "source",
                    f"source {obs.source!r} is not a device of this API key",
                    _item_of(obs),
                )
            )
    rejected.sort(key=lambda r: r.index)
    return Validated(accepted, rejected)


def _item_of(obs: Observation) -> dict[str, Any]:
    return {"id": obs.source_id, "source": obs.source, "patient": obs.patient, "code": obs.code}


def _source_of(item: Any) -> str | None:
    """The item's source, when it is a plain string (it is kept with the quarantined item)."""
    source = item.get("source") if isinstance(item, dict) else None
    return source[:256] if isinstance(source, str) and storable(source) else None


def _raw_text(item: Any) -> str:
    try:
        return json.dumps(item, allow_nan=True, default=repr)[:65_536]
    except (TypeError, ValueError):
        return repr(item)[:65_536]


def intervention_event(item: Intervention) -> dict[str, Any]:
    """The ``twin.intervention`` event of a stored intervention."""
    return {
        "type": "twin.intervention",
        "patient": item.patient,
        "kind": item.kind.value,
        "amount": item.amount,
        "unit": item.unit,
        "time": to_iso(item.start_us),
        "duration_s": item.duration_s,
    }


def _id_of(item: Any) -> str | None:
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None
