"""Tamper-evident audit trail (HIPAA audit controls, 45 CFR 164.312(b)).

Every access to patient data, every login and every privileged action appends an
:class:`AuditEntry` to the ``audit`` table through :class:`AuditLog`. Entries form
a keyed hash chain, so that editing, deleting, reordering or forging an entry is
detected by :meth:`AuditLog.verify`.

The chain
---------
Entries are numbered by ``seq``: 1, 2, 3... with no gap. Entry *n* stores the hash
of entry *n-1* (``prev_hash``; 64 zeros for the first entry) and its own hash::

    hash_n = hex(HMAC-SHA256(key, prev_hash_n || canonical_n))

``prev_hash_n`` is the ASCII hex text, and ``canonical_n`` is the UTF-8 text of::

    json.dumps(
        {"seq": ..., "at_us": ..., "actor": ..., "role": ..., "patient": ...,
         "action": ..., "outcome": ..., "address": ..., "priority": ..., "detail": ...},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )

where ``detail`` is the *stored text* of the detail column (itself the canonical
JSON of the entry's detail mapping, made the same way), ``patient`` and
``address`` are ``null`` when absent, and ``seq`` and ``at_us`` are integers.
Every column but the hash itself goes into the HMAC, so a change of any byte of
any column breaks the chain at that entry. Without the key, nobody can compute a
valid hash for a changed or forged entry.

What a database-only attacker can still do is cut entries off the end: the
chain that is left is valid. Against that, :meth:`AuditLog.checkpoint` anchors
the head of the chain *outside* the database: it appends a line to the
checkpoint file, JSON ``{"seq", "hash", "at_us", "mac"}`` with ``at_us`` the
time of the checkpoint and ``mac = hex(HMAC-SHA256(key, f"{seq}|{hash}|{at_us}"))``.
:meth:`AuditLog.verify` checks every line's MAC (so the file cannot be edited
unnoticed) and that the database still holds every anchored entry with the
anchored hash. Checkpoints are taken automatically each time the chain passes
a multiple of ``checkpoint_every`` entries, and whenever ``checkpoint()`` is
called (e.g. on shutdown or from cron). Entries after the last checkpoint are
not protected against truncation; keep the checkpoint file on other storage
than the database (ideally append-only, or shipped off the host), since
removing lines from the end of the file is not detectable from the file alone.

Concurrency
-----------
Appends are serialized across threads and processes: the store's write lock
and, in SQLite, ``BEGIN IMMEDIATE``; in PostgreSQL a transaction-scoped advisory
lock (:data:`PG_LOCK_ID`) taken before the head of the chain is read, in the
same transaction that inserts the entries.

Privacy
-------
An entry holds no personal data beyond the patient id: the actor is a username,
an API key id or ``"anonymous"``, never a name. ``detail`` is small JSON context
(a route, a reason, a count) and must never hold secrets (passwords, tokens,
keys, cookies) nor clinical values; keys that look like secrets are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from medtwin.core.clock import Clock, from_us
from medtwin.core.errors import StoreError
from medtwin.data.store import SqlStore, schema

__all__ = [
    "GENESIS_HASH",
    "PG_LOCK_ID",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "VerifyReport",
]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

PG_LOCK_ID = int.from_bytes(b"medtwinA", "big")
"""Key of the PostgreSQL advisory lock that serializes appends (database-wide)."""

OUTCOMES = frozenset({"success", "denied", "failure"})
PRIORITIES = frozenset({"normal", "high"})
MAX_DETAIL_BYTES = 8192
MIN_KEY_BYTES = 16
# Keys of ``detail`` (at any depth) refused because they would carry secrets.
_SECRET_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "key",
        "passwd",
        "private_key",
        "refresh_token",
        "set-cookie",
        "token",
    }
)
_SECRET_PARTS = ("password", "secret")


class AuditError(StoreError):
    """The audit trail could not be written or read; the audited operation must fail."""


def _canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _secret_keys(value: Any, path: str = "detail") -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key).lower()
            if name in _SECRET_KEYS or any(part in name for part in _SECRET_PARTS):
                yield f"{path}.{key}"
            yield from _secret_keys(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secret_keys(item, f"{path}[{index}]")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited event, as the caller describes it.

    ``detail`` is small JSON-able context (route, reason, counts): never secrets,
    never clinical values, at most :data:`MAX_DETAIL_BYTES` as canonical JSON.
    """

    actor: str  # username, API key id, or "anonymous"
    role: str  # clinician / researcher / device / admin / anonymous / system
    action: str  # e.g. "read", "search", "write", "export", "login", "break-glass", "erase"
    outcome: str  # "success" | "denied" | "failure"
    patient: str | None = None
    address: str | None = None  # client network address
    priority: str = "normal"  # "normal" | "high" (break-glass, denied attempts on patients...)
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("actor", "role", "action"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"audit entry {name} must be a non-empty string, got {value!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(
                f"audit outcome must be one of {sorted(OUTCOMES)}, got {self.outcome!r}"
            )
        if self.priority not in PRIORITIES:
            raise ValueError(
                f"audit priority must be one of {sorted(PRIORITIES)}, got {self.priority!r}"
            )
        if not isinstance(self.detail, Mapping):
            raise ValueError(f"audit detail must be a mapping, got {type(self.detail).__name__}")
        secrets = list(_secret_keys(self.detail))
        if secrets:
            raise ValueError(f"audit detail must not hold secrets: {', '.join(secrets)}")
        try:
            size = len(_canonical_json(dict(self.detail)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audit detail is not JSON-able: {exc}") from exc
        if size > MAX_DETAIL_BYTES:
            raise ValueError(f"audit detail is {size} bytes, more than {MAX_DETAIL_BYTES}")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored entry: its place in the chain, its time (µs since the epoch, UTC), its hashes."""

    seq: int
    at_us: int
    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :meth:`AuditLog.verify`.

    ``checked`` counts the entries found intact before the first problem (all of
    them when ``ok``); ``first_bad_seq`` is the first entry that is missing,
    changed or forged (None when ``ok``, or when only the checkpoint file is bad).
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _Anchor:
    line: int
    seq: int
    hash: str


class AuditLog:
    """The audit chain of one store, keyed by ``key`` (at least 16 bytes; use 32 random ones).

    ``checkpoint_path`` is the file of anchors (None: no checkpoints, so no
    detection of a truncated tail); a checkpoint is written each time the chain
    passes a multiple of ``checkpoint_every`` entries.
    """

    def __init__(
        self,
        store: SqlStore,
        key: bytes,
        clock: Clock,
        *,
        checkpoint_path: Path | None = None,
        checkpoint_every: int = 100,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the audit key must have at least {MIN_KEY_BYTES} bytes")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self._store = store
        self._key = bytes(key)
        self._clock = clock
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        # A checkpoint became due inside a caller's transaction (append_in): taken on
        # the next call, once that transaction is over.
        self._due = False
        self._due_lock = threading.Lock()

    # -- writing --------------------------------------------------------------

    def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append in one transaction; raise AuditError if it cannot be written.

        Callers then fail the operation they were auditing. Not from inside one of
        the store's write transactions (its lock is not reentrant): use
        :meth:`append_in` there.
        """
        if not entries:
            return []
        self._checkpoint_if_due()
        try:
            with self._store._write() as conn:
                before, records = self._insert(conn, entries)
        except AuditError:
            raise
        except (SQLAlchemyError, StoreError) as exc:
            raise AuditError(f"audit entries could not be written: {exc}") from exc
        if self._crossed(before, records[-1].seq):
            try:
                self.checkpoint()
            except AuditError as exc:  # the entries are committed: report, don't undo
                log.error("audit checkpoint failed: %s", exc)
        return records

    def append_in(self, conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append inside a caller's open write transaction.

        The operation and its audit commit or fail together. In SQLite the
        transaction must be a write one (``store._write()``, ``BEGIN IMMEDIATE``);
        in PostgreSQL the advisory lock taken here is held until it ends, so keep
        the rest of the transaction short.
        """
        if not entries:
            return []
        if not conn.in_transaction():
            raise AuditError("append_in needs a connection inside an open write transaction")
        self._checkpoint_if_due()
        try:
            before, records = self._insert(conn, entries)
        except (SQLAlchemyError, StoreError) as exc:
            raise AuditError(f"audit entries could not be written: {exc}") from exc
        if self._crossed(before, records[-1].seq):
            with self._due_lock:
                self._due = True
        return records

    def _insert(
        self, conn: Connection, entries: Sequence[AuditEntry]
    ) -> tuple[int, list[AuditRecord]]:
        """Insert after the head, under the append lock; return the old head seq and the records."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_ID})
        table = schema.audit
        head = conn.execute(
            sa.select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (0, GENESIS_HASH) if head is None else (int(head.seq), str(head.hash))
        before = seq
        at_us = self._clock.now_us()
        rows: list[dict[str, Any]] = []
        records: list[AuditRecord] = []
        for entry in entries:
            seq += 1
            row: dict[str, Any] = {
                "seq": seq,
                "at_us": at_us,
                "actor": entry.actor,
                "role": entry.role,
                "patient": entry.patient,
                "action": entry.action,
                "outcome": entry.outcome,
                "address": entry.address,
                "priority": entry.priority,
                "detail": _canonical_json(dict(entry.detail)),
            }
            digest = self._hash(prev, row)
            row["prev_hash"] = prev
            row["hash"] = digest
            rows.append(row)
            records.append(_record(row))
            prev = digest
        conn.execute(sa.insert(table), rows)
        return before, records

    def _hash(self, prev_hash: str, row: Mapping[Any, Any]) -> str:
        content = {name: row[name] for name in _HASHED}
        message = prev_hash.encode("utf-8") + _canonical_json(content).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _crossed(self, before: int, after: int) -> bool:
        return (
            self.checkpoint_path is not None
            and after // self.checkpoint_every > before // self.checkpoint_every
        )

    # -- checkpoints ----------------------------------------------------------

    def _mac(self, seq: int, digest: str, at_us: int) -> str:
        message = f"{seq}|{digest}|{at_us}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _checkpoint_if_due(self) -> None:
        with self._due_lock:
            due, self._due = self._due, False
        if due:
            try:
                self.checkpoint()
            except AuditError as exc:
                log.error("audit checkpoint failed: %s", exc)

    def checkpoint(self) -> None:
        """Anchor the chain head outside the database (append a line to checkpoint_path).

        Anchors the committed head; does nothing without a checkpoint path or entries.
        """
        if self.checkpoint_path is None:
            return
        table = schema.audit
        try:
            with self._store._read() as conn:
                head = conn.execute(
                    sa.select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)
                ).first()
        except StoreError as exc:
            raise AuditError(f"audit head could not be read: {exc}") from exc
        if head is None:
            return
        seq, digest, at_us = int(head.seq), str(head.hash), self._clock.now_us()
        line = json.dumps(
            {"seq": seq, "hash": digest, "at_us": at_us, "mac": self._mac(seq, digest, at_us)},
            separators=(",", ":"),
        )
        try:
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            # One write() of a short line with O_APPEND: lines from several processes
            # never interleave.
            fd = os.open(self.checkpoint_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(f"audit checkpoint could not be written: {exc}") from exc

    def _anchors(self) -> tuple[list[_Anchor], str | None]:
        """Authentic anchors of the checkpoint file, or the problem with the file."""
        if self.checkpoint_path is None:
            return [], None
        try:
            text = self.checkpoint_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return [], None
        except (OSError, UnicodeDecodeError) as exc:
            return [], f"checkpoint file {self.checkpoint_path} is unreadable: {exc}"
        anchors: list[_Anchor] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            bad = f"checkpoint file line {number} is not authentic (edited, or another key)"
            try:
                item = json.loads(line)
                seq, digest, at_us, mac = item["seq"], item["hash"], item["at_us"], item["mac"]
            except (ValueError, TypeError, KeyError):
                return [], bad
            if not (
                isinstance(seq, int)
                and isinstance(at_us, int)
                and isinstance(digest, str)
                and isinstance(mac, str)
                and hmac.compare_digest(mac, self._mac(seq, digest, at_us))
            ):
                return [], bad
            anchors.append(_Anchor(number, seq, digest))
        return anchors, None

    # -- reading --------------------------------------------------------------

    def records(
        self,
        *,
        patient: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int = 1000,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        """Stored entries in chain order, filtered by patient and time (µs, inclusive)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        table = schema.audit
        query = sa.select(table)
        if patient is not None:
            query = query.where(table.c.patient == patient)
        if start_us is not None:
            query = query.where(table.c.at_us >= start_us)
        if end_us is not None:
            query = query.where(table.c.at_us <= end_us)
        if after_seq is not None:
            query = query.where(table.c.seq > after_seq)
        query = query.order_by(table.c.seq).limit(limit)
        try:
            with self._store._read() as conn:
                rows = conn.execute(query).mappings().all()
        except StoreError as exc:
            raise AuditError(f"audit entries could not be read: {exc}") from exc
        return [_record(row) for row in rows]

    def verify(self, *, page_size: int = 1000) -> VerifyReport:
        """Recompute the whole chain in seq order, page by page, and check the checkpoints."""
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        # Read the anchors first: an anchor written while we stream is then never
        # compared against a database state older than it.
        anchors, file_problem = self._anchors()
        anchored: dict[int, list[_Anchor]] = {}
        for anchor in anchors:
            anchored.setdefault(anchor.seq, []).append(anchor)
        table = schema.audit
        expected, prev = 1, GENESIS_HASH
        last: int | None = None
        try:
            while True:
                query = sa.select(table).order_by(table.c.seq).limit(page_size)
                if last is not None:
                    query = query.where(table.c.seq > last)
                with self._store._read() as conn:
                    rows = conn.execute(query).mappings().all()
                for row in rows:
                    seq = last = int(row["seq"])
                    if seq != expected:
                        if seq < 1:  # reported once the chain itself is checked
                            continue
                        return self._bad(
                            expected,
                            f"entry {expected} is missing (the next stored entry is {seq})",
                        )
                    if row["prev_hash"] != prev:
                        return self._bad(
                            seq, f"entry {seq} does not link to entry {seq - 1} (prev_hash)"
                        )
                    digest = row["hash"]
                    if not (
                        isinstance(digest, str)
                        and hmac.compare_digest(digest, self._hash(prev, row))
                    ):
                        return self._bad(
                            seq,
                            f"entry {seq} does not match its hash "
                            "(changed, or written without the key)",
                        )
                    for anchor in anchored.get(seq, ()):
                        if anchor.hash != digest:
                            return self._bad(
                                seq,
                                f"entry {seq} differs from the one anchored on line "
                                f"{anchor.line} of the checkpoint file",
                            )
                    prev = digest
                    expected += 1
                if len(rows) < page_size:
                    break
            with self._store._read() as conn:
                stray = conn.execute(
                    sa.select(sa.func.min(table.c.seq)).where(table.c.seq < 1)
                ).scalar()
        except StoreError as exc:
            raise AuditError(f"audit entries could not be read: {exc}") from exc
        checked = expected - 1
        if stray is not None:
            return VerifyReport(False, checked, int(stray), f"entry with invalid seq {stray}")
        if file_problem is not None:
            return VerifyReport(False, checked, None, file_problem)
        if anchors:
            top = max(anchors, key=lambda a: a.seq)
            if top.seq > checked:
                return VerifyReport(
                    False,
                    checked,
                    checked + 1,
                    f"the log ends at entry {checked} but line {top.line} of the checkpoint "
                    f"file anchors entry {top.seq}: entries were removed from the end",
                )
        return VerifyReport(True, checked)

    @staticmethod
    def _bad(seq: int, problem: str) -> VerifyReport:
        return VerifyReport(False, seq - 1, seq, problem)

    # -- FHIR -----------------------------------------------------------------

    def to_fhir(self, record: AuditRecord) -> dict[str, Any]:
        """The record as a FHIR R4 AuditEvent resource (JSON)."""
        entry = record.entry
        action = entry.action
        event_type = _TYPE_REST
        if action == "login" or action == "logout":
            event_type = _TYPE_LOGIN
        elif entry.patient and action in _PATIENT_READS:
            event_type = _TYPE_PATIENT_RECORD
        resource: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": f"audit-{record.seq}",
            "type": dict(event_type),
            "subtype": [_subtype(action)],
            "action": _ACTION_CODES.get(action, "E"),
            "recorded": from_us(record.at_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "outcome": _OUTCOME_CODES[entry.outcome],
        }
        if entry.outcome != "success":
            reason = entry.detail.get("reason")
            resource["outcomeDesc"] = (
                reason if isinstance(reason, str) and reason else entry.outcome
            )
        if action == "break-glass":
            resource["purposeOfEvent"] = [{"coding": [dict(_EMERGENCY_TREATMENT)]}]
        agent: dict[str, Any] = {
            "type": {"coding": [_agent_type(entry.role)]},
            "role": [{"text": entry.role}],
            "who": {"display": entry.actor},
            "requestor": True,
        }
        if entry.address:
            agent["network"] = {"address": entry.address, "type": _address_type(entry.address)}
        resource["agent"] = [agent]
        resource["source"] = {
            "observer": {"display": "medtwin"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        }
        # FHIR strings are never empty: empty names and values are left out.
        details = [
            {"type": str(name), "valueString": text}
            for name, value in sorted(entry.detail.items())
            if str(name) and (text := value if isinstance(value, str) else _json(value))
        ]
        if entry.priority != "normal":
            details.append({"type": "priority", "valueString": entry.priority})
        entities: list[dict[str, Any]] = []
        if entry.patient:
            entities.append(
                {
                    "what": {"reference": f"Patient/{entry.patient}"},
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "1",
                        "display": "Person",
                    },
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "1",
                        "display": "Patient",
                    },
                }
            )
        if details:
            if not entities:
                entities.append(
                    {
                        "type": {
                            "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                            "code": "2",
                            "display": "System Object",
                        }
                    }
                )
            entities[0]["detail"] = details
        if entities:
            resource["entity"] = entities
        return resource


_HASHED = (
    "seq",
    "at_us",
    "actor",
    "role",
    "patient",
    "action",
    "outcome",
    "address",
    "priority",
    "detail",
)


def _record(row: Mapping[Any, Any]) -> AuditRecord:
    try:
        detail = json.loads(row["detail"])
        if not isinstance(detail, dict):
            raise TypeError("not an object")
        entry = AuditEntry(
            actor=row["actor"],
            role=row["role"],
            action=row["action"],
            outcome=row["outcome"],
            patient=row["patient"],
            address=row["address"],
            priority=row["priority"],
            detail=detail,
        )
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit entry {row['seq']} is unreadable: {exc}") from exc
    return AuditRecord(int(row["seq"]), int(row["at_us"]), entry, row["prev_hash"], row["hash"])


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_TYPE_PATIENT_RECORD = {"system": _DCM, "code": "110110", "display": "Patient Record"}
_TYPE_LOGIN = {"system": _DCM, "code": "110114", "display": "User Authentication"}
_TYPE_REST = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "Restful Operation",
}
_PATIENT_READS = frozenset({"read", "search"})
# FHIR AuditEventAction: Create, Read, Update, Delete, Execute (log-on, queries, functions).
_ACTION_CODES = {
    "create": "C",
    "write": "C",
    "read": "R",
    "export": "R",
    "update": "U",
    "delete": "D",
    "erase": "D",
    "search": "E",
    "login": "E",
    "logout": "E",
    "break-glass": "E",
}
_OUTCOME_CODES = {"success": "0", "denied": "4", "failure": "8"}
_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_SUBTYPES = {
    "read": {"system": _RESTFUL, "code": "read", "display": "read"},
    "search": {"system": _RESTFUL, "code": "search-type", "display": "search type"},
    "create": {"system": _RESTFUL, "code": "create", "display": "create"},
    "write": {"system": _RESTFUL, "code": "create", "display": "create"},
    "update": {"system": _RESTFUL, "code": "update", "display": "update"},
    "delete": {"system": _RESTFUL, "code": "delete", "display": "delete"},
    "erase": {"system": _RESTFUL, "code": "delete", "display": "delete"},
    "login": {"system": _DCM, "code": "110122", "display": "Login"},
    "logout": {"system": _DCM, "code": "110123", "display": "Logout"},
    "break-glass": {"system": _DCM, "code": "110127", "display": "Emergency Override Started"},
}
_EMERGENCY_TREATMENT = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "ETREAT",
    "display": "Emergency Treatment",
}
_SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"


def _subtype(action: str) -> dict[str, str]:
    known = _SUBTYPES.get(action)
    # Actions without a standard code keep medtwin's own word (a Coding without system).
    return dict(known) if known is not None else {"code": action, "display": action}


def _agent_type(role: str) -> dict[str, str]:
    if role == "device":
        return {"system": _SECURITY_ROLE, "code": "datacollector", "display": "data collector"}
    if role == "system":
        return {"system": _SECURITY_ROLE, "code": "dataprocessor", "display": "data processor"}
    return {"system": _SECURITY_ROLE, "code": "humanuser", "display": "human user"}


def _address_type(address: str) -> str:
    """FHIR network type: "2" an IP address, "1" a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"
