"""One HL7 message in, one acknowledgement out: parse, route, commit, log, acknowledge.

Synchronous on purpose (the store is): the MLLP server runs :meth:`HL7Processor.handle`
(or :meth:`HL7Processor.handle_batch` for frames that arrived together on several
connections) in a worker thread and sends the acknowledgements only afterwards, so
an ``AA``/``CA`` is never sent before the data is committed. Messages are processed
in arrival order.

One write transaction per message: the observations, the quarantined parts and the
``hl7_messages`` log row are committed together (the store's ``extra`` hook). The
resend check is inside that transaction too: the hook looks the (sender, control id)
up by primary key and, for an identical resend, raises :class:`_ResendError`, which rolls
the transaction back, so a resend costs nothing and writes nothing.

Group commit: ORU^R01 messages handed over together (from several connections) are
committed in one transaction, one fsync for all of them; each still gets its own
acknowledgement. A group that meets a resend, a correction (which must see the
results committed before it) or any other message kind is done one message at a time.
The log rows of a group are looked up in one query. :meth:`HL7Processor.read_ahead`
reads (parses, maps) an ORU^R01 while it waits for its group, as the MLLP listener
does in its otherwise idle worker; what depends on earlier commits is done at its turn.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPICursor

from medtwin.core.clock import Clock, from_us, to_us
from medtwin.core.errors import ConfigurationError, InputError, StoreError
from medtwin.core.records import LOINC, ObservationStatus, Patient, QualityFlag
from medtwin.data import mappings
from medtwin.data.store import AppendStatus, Origin, QuarantineEntry, SqlStore
from medtwin.data.store import schema as tables
from medtwin.data.vault import Demographics, PatientVault, Privacy
from medtwin.devices.fhir.repository import ResourceRepository
from medtwin.devices.hl7.ack import AckCode, ErrorCode, Fault, build_ack, enhanced_code
from medtwin.devices.hl7.ack import sends_accept_ack as _sends
from medtwin.devices.hl7.adt import ADT_EVENTS, Merge, Person, Visit, read_adt
from medtwin.devices.hl7.encounter import write_encounters
from medtwin.devices.hl7.oru import ObxItem, OruContent, read_oru
from medtwin.devices.hl7.parse import (
    Header,
    ParsedMessage,
    parse_message,
    payload_text,
    salvage_header,
)
from medtwin.twins.ingest import Ingestor

__all__ = ["CHANNEL", "HL7Processor", "Outcome", "ReadMessage", "replayer"]

CHANNEL = "mllp"
log = logging.getLogger("medtwin.devices.hl7")

# Item field (medtwin.data.validation) -> the OBX field it came from.
_OBX_FIELD = {
    "value": 5,
    "unit": 6,
    "time": 14,
    "code": 3,
    "system": 3,
    "status": 11,
    "version": 11,
    "id": 3,
    "source": 3,
}
_SUPPORTED_VERSIONS = "2."
_PROCESSING_IDS = frozenset({"", "P", "T", "D"})
_OBX_INDEX = re.compile(r"OBX\[(\d+)\]")
_UNMAPPED = int(QualityFlag.UNMAPPED)
# Looked up once: reading an enum member off its class is a Python call each time.
_STORED, _DUPLICATE, _CONFLICT = AppendStatus.STORED, AppendStatus.DUPLICATE, AppendStatus.CONFLICT


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message; ``ack`` is None when its MSH-15 asks for none."""

    code: str
    ack: str | None
    control_id: str = ""
    faults: tuple[Fault, ...] = ()
    obx_total: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    duplicate_message: bool = False
    unsupported: Mapping[str, int] = field(default_factory=dict)
    unmapped: Mapping[str, int] = field(default_factory=dict)  # "system|code" -> OBX stored


@dataclass
class _Result:
    """The original-mode answer being built for one message."""

    code: str = AckCode.AA
    faults: list[Fault] = field(default_factory=list)
    text: str = ""
    committed: bool = True
    obx_total: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    # Plain dicts, not Counters: a Counter costs more to make than this whole _Result.
    unsupported: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)


@dataclass
class _OruWork:
    """One ORU^R01 read and checked, waiting for its commit."""

    parsed: ParsedMessage
    content: OruContent
    items: list[ObxItem]  # to validate and store (corrections resolved)
    faults: list[tuple[Fault, str]]  # quarantined before validation: (fault, payload)
    warnings: list[Fault]
    corrections: bool
    reused: bool = False  # the control id was seen before with other content


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """A message as :meth:`HL7Processor.read_ahead` read it, waiting for its commit."""

    raw: bytes | str
    work: _OruWork | None  # None: processed from ``raw`` at its turn


class _ResendError(Exception):
    """An identical resend found inside the transaction: roll back, answer the earlier code."""

    def __init__(self, work: int, code: str) -> None:
        super().__init__(code)
        self.work = work
        self.code = code


class HL7Processor:
    """Turns messages into stored observations, patients and quarantine entries."""

    def __init__(
        self,
        store: SqlStore,
        ingestor: Ingestor,
        clock: Clock,
        *,
        allowed_senders: Iterable[str] = (),
        time_zones: Mapping[str, str] | None = None,
        privacy: Privacy | None = None,
    ) -> None:
        """``privacy``: the keys of personal data; without them ADT demographics and
        encounters are not kept (the patients still are)."""
        self.store = store
        self.ingestor = ingestor
        self.clock = clock
        self.allowed_senders = frozenset(allowed_senders)
        self.zones: dict[str, tzinfo] = {}
        for sender, name in (time_zones or {}).items():
            try:
                self.zones[sender] = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigurationError(
                    f"MEDTWIN_HL7_TIME_ZONES: unknown time zone {name!r} for sender {sender!r}"
                ) from exc
        self._lock = threading.Lock()
        self.vault = PatientVault(store, privacy) if privacy is not None else None
        self.encounters = (
            ResourceRepository(store, privacy.keyring, privacy.blind_index)
            if privacy is not None
            else None
        )

    @classmethod
    def from_settings(
        cls, settings: Any, store: SqlStore, ingestor: Ingestor, clock: Clock
    ) -> HL7Processor:
        """The processor the ``mllp_allowed_senders`` and ``hl7_time_zones`` settings describe.

        The privacy keys (vault, sealed FHIR resources) come from the settings' secrets,
        as the API context builds them (``Privacy.from_settings``).
        """
        return cls(
            store,
            ingestor,
            clock,
            allowed_senders=settings.mllp_allowed_senders,
            time_zones=settings.hl7_time_zones,
            privacy=Privacy.from_settings(settings),
        )

    # -- entry points -------------------------------------------------------------

    def handle(self, raw: bytes | str) -> Outcome:
        """Process one message and answer its acknowledgement; never raises for bad input."""
        with self._lock:
            return self._guarded(raw, None)

    def handle_batch(self, raws: Sequence[bytes | str | ReadMessage]) -> list[Outcome]:
        """Process messages that arrived together, in order, committing ORU groups at once.

        The outcomes are those :meth:`handle` would give message by message. A message
        may come as :meth:`read_ahead` read it, earlier, while it waited for its turn.
        """
        with self._lock:
            outcomes: list[Outcome | None] = [None] * len(raws)
            group: list[tuple[int, _OruWork]] = []
            for position, given in enumerate(raws):
                if isinstance(given, ReadMessage):
                    raw, work = given.raw, given.work
                else:
                    raw, work = given, self._groupable(given)
                if work is not None:
                    group.append((position, work))
                    continue
                self._flush(group, outcomes)
                group = []
                outcomes[position] = self._guarded(raw, None)
            self._flush(group, outcomes)
            return [o for o in outcomes if o is not None]

    def read_ahead(self, raw: bytes | str) -> ReadMessage:
        """``raw`` read (parsed, OBX mapped) for :meth:`handle_batch`, before its turn.

        Only what needs nothing committed before it is done here: a correction, which
        must see the results committed before it, and anything but an ORU^R01 are read
        again at their turn. Never raises.
        """
        with self._lock:
            try:
                return ReadMessage(raw, self._groupable(raw))
            except Exception:  # read again, guarded, at its turn
                return ReadMessage(raw, None)

    def replay(self, entry: QuarantineEntry) -> tuple[str, str] | None:
        """Take a quarantined payload in again; None when taken, else (reason, location).

        Nothing is written unless every part of the payload can be taken in; replays
        are not logged in ``hl7_messages`` (the payload is a part of a message).
        """
        with self._lock:
            try:
                parsed = parse_message(entry.payload)
            except InputError as exc:
                return exc.reason, exc.location or "MSH"
            header = parsed.header
            if self.allowed_senders and header.sender not in self.allowed_senders:
                return "sending application not allowed", "MSH-3"
            refusal = _refusal(header)
            if refusal is not None:
                return refusal.reason, refusal.location
            if header.kind != "ORU^R01":
                return f"{header.kind[:16]} messages are not replayed", entry.location
            # The payload holds one OBX: give it its place in the original message, so
            # that it gets the id it would have had (a replay twice is a duplicate).
            match = _OBX_INDEX.match(entry.location)
            offset = int(match[1]) - 1 if match and parsed.text.count("\rOBX") == 1 else 0
            work = self._read_oru(parsed, index_offset=offset)
            if work.faults:
                fault = work.faults[0][0]
                return fault.reason, fault.location
            # The origin is the quarantined part; its OBX keeps its place in the message.
            message = f"quarantine/{entry.row_id}"
            origins = [Origin(CHANNEL, message, f"OBX[{obx.index}]") for obx in work.items]
            prepared = self.ingestor.prepare(
                [obx.item for obx in work.items],
                channel=CHANNEL,
                origins=origins if entry.row_id is not None else None,
            )
            if prepared.rejections:
                rejection = prepared.rejections[0]
                obx = work.items[rejection.index]
                number = _OBX_FIELD.get(rejection.field, 5)
                return rejection.reason, f"OBX[{obx.index}]-{number}"
            self.ingestor.commit(prepared)
            return None

    # -- steps --------------------------------------------------------------------

    def _guarded(self, raw: bytes | str, parsed: ParsedMessage | None) -> Outcome:
        header: Header | None = None
        try:
            if parsed is None:
                try:
                    parsed = parse_message(raw)
                except InputError as exc:
                    return self._unreadable(raw, exc)
            header = parsed.header
            return self._handle(parsed)
        except StoreError as exc:
            return self._store_failed(header, exc)
        except Exception as exc:  # one bad message must not take the listener down
            # The exception text may quote the message: log its type only.
            log.error("hl7: internal error on message %s: %s", _control(header), type(exc))
            result = _Result(AckCode.AR, committed=False)
            result.faults.append(Fault("MSH", "internal error", 207))
            return self._answer(header, result)

    def _store_failed(self, header: Header | None, exc: StoreError) -> Outcome:
        log.error(
            "hl7: store failed for message %s: %s",
            _control(header),
            type(exc.__cause__ or exc).__name__,
        )
        result = _Result(AckCode.AR, committed=False)
        result.faults.append(Fault("MSH", "the store is unavailable: send the message again", 207))
        return self._answer(header, result)

    def _handle(self, parsed: ParsedMessage) -> Outcome:
        header = parsed.header
        if self.allowed_senders and header.sender not in self.allowed_senders:
            log.warning("hl7: message %s from a sender not allowed", _control(header))
            result = _Result(AckCode.AR)
            result.faults.append(Fault("MSH-3", "sending application not allowed", 207))
            return self._answer(header, result)
        refusal = _refusal(header)
        if refusal is not None:
            # Refused from its header alone: kept and logged, no resend check (as before).
            self._write([(refusal, parsed.text)], parsed, AckCode.AR, check=False)
            return self._answer(header, _Result(AckCode.AR, faults=[refusal]))
        if header.kind == "ORU^R01":
            return self._commit_oru([self._read_oru(parsed)])[0]
        try:
            if header.message_type == "ADT" and header.trigger_event in ADT_EVENTS:
                result = self._adt(parsed)
            else:
                is_known_type = header.message_type in ("ADT", "ORU")
                fault = Fault(
                    "MSH-9",
                    f"unsupported message type {header.kind[:16]}",
                    ErrorCode.UNSUPPORTED_EVENT
                    if is_known_type
                    else ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
                )
                self._write([(fault, parsed.text)], parsed, AckCode.AR)
                result = _Result(AckCode.AR, faults=[fault])
        except _ResendError as resend:
            return self._duplicate(header, resend.code)
        self._report(header, result)
        return self._answer(header, result)

    def _groupable(self, raw: bytes | str) -> _OruWork | None:
        """The read ORU^R01 when ``raw`` may be committed with others, else None."""
        try:
            parsed = parse_message(raw)
        except InputError:
            return None
        header = parsed.header
        if header.kind != "ORU^R01" or _refusal(header) is not None:
            return None
        if self.allowed_senders and header.sender not in self.allowed_senders:
            return None
        try:
            work = self._read_oru(parsed)
        except Exception:  # done again, guarded, on the single path
            return None
        # A correction must see the results committed before it: alone.
        return None if work.corrections else work

    def _flush(self, group: list[tuple[int, _OruWork]], outcomes: list[Outcome | None]) -> None:
        if not group:
            return
        works = [work for _, work in group]
        try:
            try:
                answers = self._commit_oru(works, grouped=len(works) > 1)
            except _ResendError:
                # A resend among them (or one message twice): one at a time, each checked.
                answers = [self._commit_oru([work])[0] for work in works]
        except StoreError as exc:
            answers = [self._store_failed(work.parsed.header, exc) for work in works]
        except Exception as exc:  # as in _guarded: answer, never take the listener down
            log.error("hl7: internal error on a group of %d messages: %s", len(works), type(exc))
            answers = []
            for work in works:
                result = _Result(AckCode.AR, committed=False)
                result.faults.append(Fault("MSH", "internal error", 207))
                answers.append(self._answer(work.parsed.header, result))
        for (position, _), outcome in zip(group, answers, strict=True):
            outcomes[position] = outcome

    def _unreadable(self, raw: bytes | str, exc: InputError) -> Outcome:
        """A message that cannot be parsed (or fails the checks before it): quarantined whole."""
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        fault = Fault(exc.location or "MSH", exc.reason, ErrorCode.DATA_TYPE_ERROR)
        header = salvage_header(text)
        self._quarantine([(fault, text)], header.sender if header else None)
        log.info("hl7: unreadable message %s (%s)", _control(header), exc.location)
        return self._answer(header, _Result(AckCode.AR, faults=[fault]))

    def _read_oru(self, parsed: ParsedMessage, *, index_offset: int = 0) -> _OruWork:
        """Read the OBX, map local codes, point corrections at the results they change."""
        header = parsed.header
        content = read_oru(parsed, self.zones.get(header.sender, UTC), index_offset=index_offset)
        self._map_codes(header.sender, content.items)
        faults = list(content.faults)
        warnings: list[Fault] = []
        items: list[ObxItem] = []
        corrections = [item for item in content.items if item.correction is not None]
        resolved = self._resolve_corrections(corrections) if corrections else {}
        for obx in content.items:
            if obx.correction is None:
                items.append(obx)
                continue
            outcome = resolved[obx.index]
            if isinstance(outcome, Fault):
                if outcome.severity == "E":
                    faults.append((outcome, obx.payload))
                    continue
                warnings.append(outcome)
                items.append(obx)
            else:
                items.append(outcome)
        return _OruWork(parsed, content, items, faults, warnings, bool(corrections))

    def _map_codes(self, sender: str, items: Sequence[ObxItem]) -> None:
        """Local codes (system not LOINC) -> registry codes, by this sender's mapping table."""
        local = {obx.item["code"] for obx in items if obx.item["system"] != LOINC}
        if not local:
            return  # the usual LOINC-coded message: no query
        with self.store.reading() as conn:
            found = mappings.lookup(conn, sender, local)
        if not found:
            return
        registry = self.ingestor.registry
        for obx in items:
            item = obx.item
            mapping = found.get(item["code"]) if item["system"] != LOINC else None
            if mapping is None:
                continue
            spec = registry.get(mapping.code)
            item["code"] = mapping.code
            item["system"] = spec.system if spec is not None else LOINC
            if mapping.unit is not None:
                # The mapping knows the unit the sender's values of this code are in.
                item["unit"] = mapping.unit

    def _commit_oru(self, works: Sequence[_OruWork], *, grouped: bool = False) -> list[Outcome]:
        """Validate and commit ORU messages in ONE transaction with their log rows.

        Alone (``grouped`` False) an identical resend is answered as such; in a group it
        raises :class:`_ResendError` (rolled back) and the caller goes one by one.
        """
        items: list[Any] = []
        origins: list[Origin | None] = []
        offsets: list[int] = []
        for work in works:
            offsets.append(len(items))
            items += [obx.item for obx in work.items]
            message = _message_of(work.parsed.header)
            origins += [Origin(CHANNEL, message, _obx_entry(obx.index)) for obx in work.items]
        prepared = self.ingestor.prepare(items, channel=CHANNEL, origins=origins)
        rejected: list[list[Fault]] = [[] for _ in works]
        entries: list[QuarantineEntry] = []
        for work in works:
            sender = work.parsed.header.sender
            entries.extend(self._entry(fault, payload, sender) for fault, payload in work.faults)
        owner = _owners(offsets, len(items))
        for rejection in prepared.rejections:
            number = owner[rejection.index]
            work = works[number]
            obx = work.items[rejection.index - offsets[number]]
            column = _OBX_FIELD.get(rejection.field, 5)
            fault = Fault(f"OBX[{obx.index}]-{column}", rejection.reason, _code_of(rejection.field))
            rejected[number].append(fault)
            entries.append(self._entry(fault, obx.payload, work.parsed.header.sender))
        prepared = dataclasses.replace(prepared, quarantine=entries)
        codes = [
            AckCode.AE if work.faults or rejected[n] else AckCode.AA for n, work in enumerate(works)
        ]
        hook = self._log_hook([work.parsed for work in works], codes, works)
        try:
            statuses = self.ingestor.commit_statuses(prepared, extra=hook)
        except _ResendError as resend:
            if grouped:
                raise
            return [self._duplicate(works[0].parsed.header, resend.code)]
        # Per message, (position of the item in the message, store status, quality flags).
        by_message: list[list[tuple[int, AppendStatus, int]]] = [[] for _ in works]
        for (index, observation), status in zip(prepared.accepted, statuses, strict=True):
            number = owner[index]
            by_message[number].append((index - offsets[number], status, observation.flags))
        outcomes: list[Outcome] = []
        late: list[tuple[ParsedMessage, str]] = []
        for number, work in enumerate(works):
            result = self._oru_result(work, rejected[number], by_message[number])
            if result.code != codes[number]:
                late.append((work.parsed, result.code))  # a conflict found by the store
            header = work.parsed.header
            if work.reused:
                # Feeds reuse control ids: processed as a new message, reported as a fault.
                log.warning(
                    "hl7: sender fault: control id %s reused with different content",
                    _control(header),
                )
            self._report(header, result)
            outcomes.append(self._answer(header, result))
        if late:
            self._relog(late)
        return outcomes

    def _oru_result(
        self,
        work: _OruWork,
        rejected: list[Fault],
        accepted: list[tuple[int, AppendStatus, int]],
    ) -> _Result:
        """The answer to one committed message; ``accepted`` as :meth:`_commit_oru` gives it."""
        content = work.content
        result = _Result(obx_total=content.obx_total, unsupported=content.unsupported)
        conflicts: list[Fault] = []
        for position, status, flags in accepted:
            if status is _STORED:
                result.stored += 1
                if flags & _UNMAPPED:
                    item = work.items[position].item
                    key = f"{item['system']}|{item['code']}"
                    result.unmapped[key] = result.unmapped.get(key, 0) + 1
            elif status is _DUPLICATE:
                result.duplicates += 1
            elif status is _CONFLICT:
                obx = work.items[position]
                conflicts.append(
                    Fault(
                        f"OBX[{obx.index}]", "conflict: this result was stored with other content"
                    )
                )
        result.quarantined = len(work.faults) + len(rejected) + len(conflicts)
        errors = [fault for fault, _ in work.faults] + rejected + conflicts
        result.faults = sorted(errors + work.warnings, key=_obx_order)
        result.code = AckCode.AE if errors else AckCode.AA
        result.text = (
            f"{content.obx_total} OBX: {result.stored} stored, {result.duplicates} duplicate, "
            f"{result.quarantined} quarantined"
        )
        unmapped = sum(result.unmapped.values())
        if unmapped:
            result.text += f", {unmapped} unmapped"
        return result

    def _resolve_corrections(self, corrections: Sequence[ObxItem]) -> dict[int, ObxItem | Fault]:
        """Point each correction at the earlier result it changes (same id, next version)."""
        table = tables.observations
        resolved: dict[int, ObxItem | Fault] = {}
        with self.store.reading() as conn:
            for obx in corrections:
                item = obx.item
                effective_us = to_us(datetime.fromisoformat(item["time"]))
                row = conn.execute(
                    sa.select(table.c.source_id)
                    .where(
                        table.c.source == item["source"],
                        table.c.patient_id == item["patient"],
                        table.c.code == item["code"],
                        table.c.system == item["system"],
                        table.c.effective_us == effective_us,
                    )
                    .order_by(table.c.row_id.desc())
                    .limit(1)
                ).first()
                if row is None:
                    resolved[obx.index] = _no_earlier(obx)
                    continue
                latest = conn.execute(
                    sa.select(table)
                    .where(table.c.source == item["source"], table.c.source_id == row.source_id)
                    .order_by(table.c.version.desc())
                    .limit(1)
                ).one()
                changed = {**item, "id": latest.source_id, "version": latest.version + 1}
                if changed["value"] is None:  # a deletion that does not repeat the value
                    changed["value"] = (
                        latest.value_num if latest.value_num is not None else latest.value_text
                    )
                    changed["unit"] = latest.unit
                resolved[obx.index] = dataclasses.replace(obx, item=changed)
        return resolved

    def _adt(self, parsed: ParsedMessage) -> _Result:
        content = read_adt(parsed)
        now = self.clock.now_us()
        patients = [
            Patient(p, "pt-" + secrets.token_hex(8), created_us=now) for p in content.patients
        ]
        faults = list(content.faults)
        merges = []
        for merge in content.merges:
            if self.store.patient(merge.prior) is None:
                faults.append(
                    (
                        Fault(
                            f"MRG[{merge.index}]-1",
                            "the prior patient of this merge is not known",
                            ErrorCode.UNKNOWN_KEY_IDENTIFIER,
                        ),
                        merge.payload,
                    )
                )
            else:
                merges.append(merge)
        code = AckCode.AE if faults else AckCode.AA
        try:
            self._write(
                faults,
                parsed,
                code,
                patients=patients,
                more=self._visits_hook(parsed, content.visits),
            )
        except _ResendError:
            # Identical resend: nothing written. The demographics are set again (the
            # same values: idempotent), in case the first time failed after its commit.
            self._demographics(content.people)
            raise
        for merge in merges:
            # After the message's commit: the surviving patient exists by then.
            self.store.merge_patients(
                merge.prior, merge.surviving, at_us=now, extra=self._repoint(merge, now)
            )
            self.ingestor.publish(self.ingestor.runtime.merge(merge.prior, merge.surviving))
        # After the message's commit, before the ACK: the patients exist by then.
        self._demographics(content.people)
        result = _Result(code)
        result.faults = [fault for fault, _ in faults]
        result.quarantined = len(faults)
        result.text = f"{len(content.patients)} patient(s)"
        return result

    def _visits_hook(
        self, parsed: ParsedMessage, visits: Sequence[Visit]
    ) -> Callable[[Connection], None] | None:
        """Writes the encounters of ``visits`` inside the message's transaction."""
        repository = self.encounters
        if repository is None or not visits:
            return None
        header = parsed.header
        sender = payload_text(header.sender)
        zone = self.zones.get(header.sender, UTC)
        now = self.clock.now_us()

        def hook(conn: Connection) -> None:
            write_encounters(
                conn,
                repository,
                list(visits),
                event=header.trigger_event,
                sender=sender,
                zone=zone,
                now_us=now,
            )

        return hook

    def _repoint(self, merge: Merge, now: int) -> Callable[[Connection], None] | None:
        """In the merge's transaction: the prior patient's FHIR resources (encounters,
        ...) get a new version referring to the surviving patient."""
        repository = self.encounters
        if repository is None:
            return None

        def repoint(conn: Connection) -> None:
            repository.repoint(conn, merge.prior, merge.surviving, now)

        return repoint

    def _demographics(self, people: Sequence[Person]) -> None:
        """Set the demographics of ``people`` in the vault (never logged: personal data).

        What the message does not carry (an empty PID-11, -13, -14, ...) is kept;
        identifiers of a kind the message does not carry are kept too.
        """
        vault = self.vault
        if vault is None:
            return
        now = self.clock.now_us()
        for person in people:
            fresh = person.demographics
            current = vault.get(person.patient)
            merged = _merged(current, fresh)
            if merged != current:
                vault.put(person.patient, merged, now_us=now)

    # -- store --------------------------------------------------------------------

    def _entry(self, fault: Fault, payload: str, sender: str | None) -> QuarantineEntry:
        return QuarantineEntry(
            channel=CHANNEL,
            location=fault.location,
            reason=fault.reason,
            payload=payload_text(payload),
            source=(sender or None) and payload_text(sender)[:256],
            received_us=self.clock.now_us(),
        )

    def _quarantine(self, faults: Sequence[tuple[Fault, str]], sender: str | None) -> None:
        self.store.quarantine([self._entry(fault, payload, sender) for fault, payload in faults])

    def _write(
        self,
        faults: Sequence[tuple[Fault, str]],
        parsed: ParsedMessage,
        code: str,
        *,
        patients: Sequence[Patient] = (),
        check: bool = True,
        more: Callable[[Connection], None] | None = None,
    ) -> None:
        """Quarantine, new patients and the log row of a message without observations.

        One transaction; with ``check`` an identical resend raises :class:`_ResendError`.
        ``more`` runs in that transaction after the log row (not for a resend).
        """
        sender = parsed.header.sender
        log_hook = self._log_hook([parsed], [code], None, check=check)
        hook = log_hook
        if more is not None:
            extra = more

            def hook(conn: Connection) -> None:
                log_hook(conn)
                extra(conn)

        self.store.append(
            [],
            received_us=self.clock.now_us(),
            new_patients=patients,
            rejected=[self._entry(fault, payload, sender) for fault, payload in faults],
            channel=CHANNEL,
            extra=hook,
        )

    def _log_hook(
        self,
        messages: Sequence[ParsedMessage],
        codes: Sequence[str],
        works: Sequence[_OruWork] | None,
        *,
        check: bool = True,
    ) -> Callable[[Connection], None]:
        """The hook that, inside the commit, checks for resends and logs the messages."""
        received = self.clock.now_us()

        def hook(conn: Connection) -> None:
            sql = _sql(conn)
            keys = [
                (payload_text(p.header.sender), payload_text(p.header.control_id)) for p in messages
            ]
            # The driver's cursor: through SQLAlchemy each statement costs more than it runs.
            cursor = conn.connection.cursor()
            try:
                earlier_of = _logged(cursor, sql, keys) if check else {}
                seen: set[tuple[str, str, str]] = set()
                rows = []
                for number, parsed in enumerate(messages):
                    sender, control = keys[number]
                    key = (sender, control, parsed.digest)
                    if check:
                        if key in seen:
                            raise _ResendError(number, codes[number])
                        earlier = earlier_of.get(keys[number], ())
                        for digest, ack_code in earlier:
                            if digest == parsed.digest:
                                raise _ResendError(number, ack_code)
                        if earlier and works is not None:
                            works[number].reused = True
                        elif earlier:
                            log.warning(
                                "hl7: sender fault: control id %s reused with different content",
                                _control(parsed.header),
                            )
                    seen.add(key)
                    rows.append((sender, control, parsed.digest, received, codes[number]))
                cursor.executemany(sql.insert, rows)
            finally:
                cursor.close()

        return hook

    def _relog(self, changed: Sequence[tuple[ParsedMessage, str]]) -> None:
        """Correct the logged code of messages whose answer the commit changed (conflicts)."""
        with self.store.transaction() as conn:
            sql = _sql(conn)
            conn.exec_driver_sql(
                sql.update,
                [
                    (
                        code,
                        payload_text(p.header.sender),
                        payload_text(p.header.control_id),
                        p.digest,
                    )
                    for p, code in changed
                ],
            )

    def _duplicate(self, header: Header, code: str) -> Outcome:
        log.info("hl7: message %s is an identical resend", _control(header))
        result = _Result(code, text="duplicate: already processed")
        return dataclasses.replace(self._answer(header, result), duplicate_message=True)

    def _report(self, header: Header, result: _Result) -> None:
        if result.faults:
            log.info(
                "hl7: message %s answered %s with %d fault(s)",
                _control(header),
                result.code,
                len(result.faults),
            )
        if result.unmapped:
            # Codes and counts only: what an operator needs to add a mapping.
            log.info(
                "hl7: message %s: %d OBX with codes not in the registry (%s)",
                _control(header),
                sum(result.unmapped.values()),
                ", ".join(sorted(result.unmapped))[:200],
            )

    # -- answer -------------------------------------------------------------------

    def _answer(self, header: Header | None, result: _Result) -> Outcome:
        code = result.code
        if header is not None and header.enhanced:
            code = enhanced_code(code, committed=result.committed)
        ack = None
        if _sends(header, code):
            # MSH-7 is to the second: the second's datetime, made once per second.
            now = _second(self.clock.now_us() // 1_000_000)
            ack = build_ack(header, code, result.faults, text=result.text, now=now)
        return Outcome(
            code=code,
            ack=ack,
            control_id=header.control_id if header else "",
            faults=tuple(result.faults),
            obx_total=result.obx_total,
            stored=result.stored,
            duplicates=result.duplicates,
            quarantined=result.quarantined,
            unsupported=dict(result.unsupported),
            unmapped=dict(result.unmapped),
        )


@dataclass(frozen=True, slots=True)
class _Sql:
    """The message-log statements in one driver's parameter style."""

    mark: str
    insert: str
    update: str

    def select(self, count: int) -> str:
        """The logged rows of ``count`` (sender, control id) pairs: one query for a group."""
        mark = self.mark
        pair = f"(sender = {mark} AND control_id = {mark})"
        return "SELECT sender, control_id, digest, ack_code FROM hl7_messages WHERE " + " OR ".join(
            [pair] * count
        )


def _statements(mark: str) -> _Sql:
    return _Sql(
        mark=mark,
        insert=(
            "INSERT INTO hl7_messages (sender, control_id, digest, received_us, ack_code) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) ON CONFLICT DO NOTHING"
        ),
        update=(
            f"UPDATE hl7_messages SET ack_code = {mark} WHERE sender = {mark} "
            f"AND control_id = {mark} AND digest = {mark}"
        ),
    )


_SQL = {"qmark": _statements("?"), "format": _statements("%s"), "pyformat": _statements("%s")}


def _sql(conn: Connection) -> _Sql:
    """Plain SQL, not SQLAlchemy constructs: compiling a statement costs more than running it."""
    return _SQL[conn.dialect.paramstyle]


_LOOKUP_PAIRS = 256  # pairs per query: well within both drivers' parameter limits


def _logged(
    cursor: DBAPICursor, sql: _Sql, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(digest, ack code) of each logged message, by (sender, control id), among ``keys``."""
    wanted = list(dict.fromkeys(keys))
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for start in range(0, len(wanted), _LOOKUP_PAIRS):
        chunk = wanted[start : start + _LOOKUP_PAIRS]
        cursor.execute(sql.select(len(chunk)), [value for pair in chunk for value in pair])
        for sender, control, digest, ack_code in cursor.fetchall():
            found.setdefault((sender, control), []).append((digest, ack_code))
    return found


@functools.lru_cache(maxsize=1024)
def _obx_entry(index: int) -> str:
    """The origin entry of OBX number ``index``: ``OBX[3]``."""
    return f"OBX[{index}]"


@functools.lru_cache(maxsize=8)
def _second(seconds: int) -> datetime:
    """The datetime (UTC) of ``seconds`` since the epoch."""
    return from_us(seconds * 1_000_000)


def _owners(offsets: Sequence[int], total: int) -> list[int]:
    """For each item position, the number of the message it came from."""
    owner = [0] * total
    for number, start in enumerate(offsets):
        end = offsets[number + 1] if number + 1 < len(offsets) else total
        owner[start:end] = [number] * (end - start)
    return owner


def replayer(processor: HL7Processor) -> Callable[[QuarantineEntry], tuple[str, str] | None]:
    """The ``mllp`` replayer for :class:`medtwin.twins.replay.Replayers`.

    Register it with ``replayers.register("mllp", replayer(processor))``.
    """
    return processor.replay


def _merged(current: Demographics | None, fresh: Demographics) -> Demographics:
    """``fresh`` over ``current``: what the message leaves out is kept."""
    if current is None:
        return fresh
    kinds = {identifier.kind for identifier in fresh.identifiers}
    kept = [i for i in current.identifiers if i.kind not in kinds]
    return current.model_copy(
        update={
            "names": fresh.names or current.names,
            "identifiers": (list(fresh.identifiers) + kept)[:20],
            "birth_date": fresh.birth_date or current.birth_date,
            "sex": fresh.sex or current.sex,
            "address": fresh.address or current.address,
            "telecom": fresh.telecom or current.telecom,
        }
    )


def _refusal(header: Header) -> Fault | None:
    """Why a message is refused as a whole from its header alone, if it is."""
    if not header.version.startswith(_SUPPORTED_VERSIONS):
        return Fault(
            "MSH-12", f"unsupported version {header.version[:16]!r}", ErrorCode.UNSUPPORTED_VERSION
        )
    if header.processing_id not in _PROCESSING_IDS:
        return Fault(
            "MSH-11",
            f"unsupported processing id {header.processing_id[:8]!r}",
            ErrorCode.UNSUPPORTED_PROCESSING_ID,
        )
    if not header.sender:
        return Fault("MSH-3", "no sending application", ErrorCode.REQUIRED_FIELD_MISSING)
    if not header.control_id:
        return Fault("MSH-10", "no message control id", ErrorCode.REQUIRED_FIELD_MISSING)
    if not header.message_type:
        return Fault("MSH-9", "no message type", ErrorCode.REQUIRED_FIELD_MISSING)
    return None


def _no_earlier(obx: ObxItem) -> Fault:
    location = f"OBX[{obx.index}]-11"
    if obx.correction == ObservationStatus.CORRECTED.value and obx.item["value"] is not None:
        return Fault(location, "correction of an unknown result: stored as a new result", 207, "W")
    return Fault(location, "no earlier result of this code and time to mark in error", 207)


def _code_of(item_field: str) -> int:
    if item_field in ("unit", "code", "system", "status"):
        return ErrorCode.TABLE_VALUE_NOT_FOUND
    if item_field in ("value", "time", "version"):
        return ErrorCode.DATA_TYPE_ERROR
    return ErrorCode.APPLICATION_ERROR


def _obx_order(fault: Fault) -> tuple[int, str]:
    digits = "".join(c for c in fault.location.split("]")[0] if c.isdigit())
    return (int(digits) if digits else 0, fault.location)


def _message_of(header: Header) -> str:
    """The origin's message: ``sender|control id``, as a store can keep them."""
    return f"{payload_text(header.sender)}|{payload_text(header.control_id)}"


def _control(header: Header | None) -> str:
    """The control id for logs (never personal data), bounded and printable."""
    if header is None or not header.control_id:
        return "<none>"
    return repr(header.control_id[:64])
