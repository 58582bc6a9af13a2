"""One HL7 message in, one acknowledgement out: parse, route, commit, log, acknowledge.

Synchronous on purpose (the store is): the MLLP server runs :meth:`HL7Processor.handle`
in a worker thread and sends the acknowledgement it returns only afterwards, so an
``AA``/``CA`` is never sent before the data is committed. Messages are processed one
at a time, in arrival order.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from medtwin.core.clock import Clock, from_us, to_us
from medtwin.core.errors import ConfigurationError, InputError, StoreError
from medtwin.core.records import ObservationStatus, Patient
from medtwin.data.store import QuarantineEntry, SqlStore
from medtwin.data.store import schema as tables
from medtwin.devices.hl7.ack import AckCode, ErrorCode, Fault, build_ack, enhanced_code
from medtwin.devices.hl7.ack import sends_accept_ack as _sends
from medtwin.devices.hl7.adt import ADT_EVENTS, MERGE_NOT_APPLIED, read_adt
from medtwin.devices.hl7.oru import ObxItem, read_oru
from medtwin.devices.hl7.parse import (
    Header,
    ParsedMessage,
    parse_message,
    payload_text,
    salvage_header,
)
from medtwin.twins.ingest import Ingestor

__all__ = ["CHANNEL", "HL7Processor", "Outcome"]

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
    unsupported: Counter[str] = field(default_factory=Counter)


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
    ) -> None:
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

    # -- entry point ------------------------------------------------------------

    def handle(self, raw: bytes | str) -> Outcome:
        """Process one message and answer its acknowledgement; never raises for bad input."""
        with self._lock:
            header: Header | None = None
            try:
                try:
                    parsed = parse_message(raw)
                except InputError as exc:
                    return self._unreadable(raw, exc)
                header = parsed.header
                return self._handle(parsed)
            except StoreError as exc:
                log.error(
                    "hl7: store failed for message %s: %s",
                    _control(header),
                    type(exc.__cause__ or exc).__name__,
                )
                result = _Result(AckCode.AR, committed=False)
                result.faults.append(
                    Fault("MSH", "the store is unavailable: send the message again", 207)
                )
                return self._answer(header, result)
            except Exception as exc:  # one bad message must not take the listener down
                # The exception text may quote the message: log its type only.
                log.error("hl7: internal error on message %s: %s", _control(header), type(exc))
                result = _Result(AckCode.AR, committed=False)
                result.faults.append(Fault("MSH", "internal error", 207))
                return self._answer(header, result)

    # -- steps --------------------------------------------------------------------

    def _handle(self, parsed: ParsedMessage) -> Outcome:
        header = parsed.header
        if self.allowed_senders and header.sender not in self.allowed_senders:
            log.warning("hl7: message %s from a sender not allowed", _control(header))
            result = _Result(AckCode.AR)
            result.faults.append(Fault("MSH-3", "sending application not allowed", 207))
            return self._answer(header, result)
        refusal = _refusal(header)
        if refusal is not None:
            self._quarantine([(refusal, parsed.text)], header.sender)
            result = _Result(AckCode.AR, faults=[refusal])
            self._log_message(parsed, result.code)
            return self._answer(header, result)
        earlier = self._earlier_message(header)
        if parsed.digest in earlier:
            log.info("hl7: message %s is an identical resend", _control(header))
            result = _Result(earlier[parsed.digest], text="duplicate: already processed")
            return dataclasses.replace(self._answer(header, result), duplicate_message=True)
        if earlier:
            # Feeds reuse control ids: processed as a new message, reported as a fault.
            log.warning(
                "hl7: sender fault: control id %s reused with different content",
                _control(header),
            )
        if header.kind == "ORU^R01":
            result = self._oru(parsed)
        elif header.message_type == "ADT" and header.trigger_event in ADT_EVENTS:
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
            self._quarantine([(fault, parsed.text)], header.sender)
            result = _Result(AckCode.AR, faults=[fault])
        self._log_message(parsed, result.code)
        if result.faults:
            log.info(
                "hl7: message %s answered %s with %d fault(s)",
                _control(header),
                result.code,
                len(result.faults),
            )
        return self._answer(header, result)

    def _unreadable(self, raw: bytes | str, exc: InputError) -> Outcome:
        """A message python-hl7 (or the checks before it) cannot take: quarantined whole."""
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        fault = Fault(exc.location or "MSH", exc.reason, ErrorCode.DATA_TYPE_ERROR)
        header = salvage_header(text)
        self._quarantine([(fault, text)], header.sender if header else None)
        log.info("hl7: unreadable message %s (%s)", _control(header), exc.location)
        return self._answer(header, _Result(AckCode.AR, faults=[fault]))

    def _oru(self, parsed: ParsedMessage) -> _Result:
        header = parsed.header
        content = read_oru(parsed, self.zones.get(header.sender, UTC))
        result = _Result(obx_total=content.obx_total, unsupported=content.unsupported)
        faults = list(content.faults)
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
                result.faults.append(outcome)
                items.append(obx)
            else:
                items.append(outcome)
        prepared = self.ingestor.prepare([obx.item for obx in items], channel=CHANNEL)
        entries = [self._entry(fault, payload, header.sender) for fault, payload in faults]
        validation_faults: list[Fault] = []
        for rejection in prepared.rejections:
            obx = items[rejection.index]
            number = _OBX_FIELD.get(rejection.field, 5)
            fault = Fault(f"OBX[{obx.index}]-{number}", rejection.reason, _code_of(rejection.field))
            validation_faults.append(fault)
            entries.append(self._entry(fault, obx.payload, header.sender))
        prepared = dataclasses.replace(prepared, quarantine=entries)
        outcomes = self.ingestor.commit(prepared)
        conflicts: list[Fault] = []
        for ingest_result in outcomes:
            if ingest_result.status == "stored":
                result.stored += 1
            elif ingest_result.status == "duplicate":
                result.duplicates += 1
            elif ingest_result.status == "conflict":
                obx = items[ingest_result.index]
                conflicts.append(
                    Fault(
                        f"OBX[{obx.index}]", "conflict: this result was stored with other content"
                    )
                )
        result.quarantined = len(faults) + len(validation_faults) + len(conflicts)
        errors = [fault for fault, _ in faults] + validation_faults + conflicts
        result.faults = sorted(errors + result.faults, key=_obx_order)
        result.code = AckCode.AE if errors else AckCode.AA
        result.text = (
            f"{content.obx_total} OBX: {result.stored} stored, {result.duplicates} duplicate, "
            f"{result.quarantined} quarantined"
        )
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
        header = parsed.header
        content = read_adt(parsed)
        now = self.clock.now_us()
        self.store.add_patients(
            [Patient(p, "pt-" + secrets.token_hex(8), created_us=now) for p in content.patients]
        )
        faults = list(content.faults)
        for merge in content.merges:
            faults.append(
                (
                    Fault(f"MRG[{merge.index}]-1", MERGE_NOT_APPLIED, ErrorCode.APPLICATION_ERROR),
                    merge.payload,
                )
            )
        self._quarantine(faults, header.sender)
        result = _Result(AckCode.AE if faults else AckCode.AA)
        result.faults = [fault for fault, _ in faults]
        result.quarantined = len(faults)
        result.text = f"{len(content.patients)} patient(s)"
        return result

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

    def _earlier_message(self, header: Header) -> dict[str, str]:
        """Digest -> ack code of the messages already logged under this sender and control id."""
        table = tables.hl7_messages
        with self.store.reading() as conn:
            rows = conn.execute(
                sa.select(table.c.digest, table.c.ack_code).where(
                    table.c.sender == payload_text(header.sender),
                    table.c.control_id == payload_text(header.control_id),
                )
            ).all()
        return {row.digest: row.ack_code for row in rows}

    def _log_message(self, parsed: ParsedMessage, code: str) -> None:
        header = parsed.header
        values = {
            "sender": payload_text(header.sender),
            "control_id": payload_text(header.control_id),
            "digest": parsed.digest,
            "received_us": self.clock.now_us(),
            "ack_code": code,
        }
        with self.store.transaction() as conn:
            conn.execute(_insert_ignoring_duplicates(conn, values))

    # -- answer -------------------------------------------------------------------

    def _answer(self, header: Header | None, result: _Result) -> Outcome:
        code = result.code
        if header is not None and header.enhanced:
            code = enhanced_code(code, committed=result.committed)
        ack = None
        if _sends(header, code):
            ack = build_ack(
                header, code, result.faults, text=result.text, now=from_us(self.clock.now_us())
            )
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
        )


def _insert_ignoring_duplicates(conn: Connection, values: dict[str, Any]) -> Any:
    table = tables.hl7_messages
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing()
    return sqlite.insert(table).values(**values).on_conflict_do_nothing()


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


def _control(header: Header | None) -> str:
    """The control id for logs (never personal data), bounded and printable."""
    if header is None or not header.control_id:
        return "<none>"
    return repr(header.control_id[:64])
