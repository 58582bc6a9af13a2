"""The :class:`Store` protocol, its records, and the SQL implementation both backends share."""

from __future__ import annotations

import base64
import enum
import json
import operator
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from medtwin.core.errors import NotFoundError, StoreError
from medtwin.core.records import LOINC, Intervention, InterventionKind, Observation, Patient
from medtwin.data.crypto import Keyring
from medtwin.data.store import schema


class AppendStatus(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Input refused with its reason and the location of the fault, kept raw."""

    channel: str  # api, cli, mqtt, mllp, fhir...
    location: str  # JSON path, HL7 segment-field, file:line
    reason: str
    payload: str  # the raw input as received (text)
    source: str | None = None
    received_us: int = 0
    row_id: int | None = None
    resolved_us: int | None = None


class Origin(NamedTuple):
    """The message an observation came in: its channel, the message and the item in it.

    ``message`` is the request id (api), the file name (file), the bundle (fhir),
    ``sender|control id`` (mllp) or the topic (mqtt); ``entry`` the item in it
    (``items[3]``, ``Bundle.entry[2]``, ``OBX[4]``, ``file.jsonl:17``).
    ``conditioning`` says, as JSON, what signal conditioning did to the value on the
    way in (the raw value, the calibration applied, the detectors that flagged it).
    """

    channel: str
    message: str
    entry: str | None = None
    conditioning: str | None = None


@dataclass(frozen=True, slots=True)
class DerivedValue:
    """A value a twin derived (e.g. NEWS2), with its JSON payload."""

    patient: str
    name: str
    computed_us: int
    value_num: float | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredObservation:
    row_id: int
    received_us: int
    observation: Observation


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[StoredObservation]
    next_cursor: str | None


@runtime_checkable
class Store(Protocol):
    """Persistent storage of patients, observations, derived values and quarantine.

    Every write is one transaction; ``append`` is idempotent on (source, id, version).
    """

    url: str

    def migrate(self) -> None:
        """Bring the schema to the newest version (idempotent)."""
        ...

    def schema_version(self) -> str | None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...

    def append(
        self,
        observations: Sequence[Observation],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        rejected: Sequence[QuarantineEntry] = (),
        channel: str = "api",
        care_team: str | None = None,
        extra: Callable[[Connection], None] | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> list[AppendStatus]:
        """Store a batch in one transaction; one status per observation.

        Conflicts (same key, other content) are quarantined in the same transaction.
        ``extra`` is called inside that transaction after the inserts (an adapter's own
        rows, committed with the batch); an exception from it rolls the batch back.
        ``origins``, one per observation, records the message each stored one came in.
        """
        ...

    def origins_of(
        self, keys: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], Origin]:
        """The origin of each stored observation among ``keys`` (source, source_id, version)."""
        ...

    def quarantine(self, entries: Sequence[QuarantineEntry]) -> None: ...

    def quarantined(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        channel: str | None = None,
        resolved: bool | None = None,
    ) -> list[QuarantineEntry]: ...

    def quarantine_entry(self, row_id: int) -> QuarantineEntry | None: ...

    def append_interventions(
        self,
        interventions: Sequence[Intervention],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        channel: str = "api",
        care_team: str | None = None,
    ) -> list[AppendStatus]: ...

    def interventions_of(
        self,
        patient: str,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        retracted: bool = False,
    ) -> list[Intervention]: ...

    def resolve_quarantine(self, row_ids: Sequence[int], at_us: int) -> None: ...

    def add_patients(self, patients: Sequence[Patient]) -> None:
        """Insert patients not yet known (existing ids are left as they are)."""
        ...

    def patient(self, patient_id: str) -> Patient | None: ...

    def patients(self) -> list[Patient]: ...

    def set_spo2_scale(self, patient_id: str, scale: int) -> Patient: ...

    def history(
        self,
        patient_id: str,
        *,
        codes: Sequence[str] = (),
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int = 500,
        cursor: str | None = None,
    ) -> HistoryPage:
        """Observations of one patient ordered by time, paged by an opaque cursor."""
        ...

    def latest(
        self, *, codes: Sequence[str], since_us: int, system: str = LOINC
    ) -> list[Observation]:
        """The newest observation per (patient, code of ``system``) at or after ``since_us``."""
        ...

    def newest_time(self) -> int | None:
        """Effective time (µs) of the newest observation, None when there is none."""
        ...

    def append_derived(self, values: Sequence[DerivedValue]) -> None: ...

    def derived_history(
        self,
        patient_id: str,
        name: str,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int = 2000,
    ) -> list[DerivedValue]: ...

    def count(self, table: str) -> int: ...

    def backup(self, path: Path) -> None:
        """Write a consistent copy of the whole store to ``path`` (a SQLite file)."""
        ...

    def restore(self, path: Path) -> None:
        """Replace the store's content with the backup at ``path``."""
        ...


_TABLES = tuple(table.name for table in schema.metadata.sorted_tables)
# Tables whose rows follow a patient merged into another.
_MERGED_TABLES = (
    "observations",
    "interventions",
    "derived",
    "module_results",
    "device_bindings",
    "fhir_resources",
    "consents",
    "waveforms",
    "alarms",
    "alarm_suppressions",
)


class SqlStore:
    """SQL implementation shared by the SQLite and PostgreSQL stores.

    Subclasses provide the engine and the bulk insert of observations.
    """

    url: str
    engine: Engine

    # Quarantined payloads are raw input and may carry names: with a keyring they are
    # stored as this prefix + base64 of an AES-GCM blob.
    SEALED_PREFIX = "sealed:"
    # Errors of the raw driver calls on the bulk path, translated like SQLAlchemy's.
    driver_errors: tuple[type[Exception], ...] = ()
    # Keep one connection for the writes instead of taking one from the pool for each
    # transaction: the checkout, the check-in and their events cost more than a small
    # group commit's inserts (SQLite, a local file; a server connection can go away).
    hold_writer = False

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._keyring: Keyring | None = None
        # Serializes writers inside one process; the database serializes the rest.
        self._write_lock = threading.Lock()
        self._writer: Connection | None = None  # held under _write_lock (hold_writer)

    # -- schema ---------------------------------------------------------------

    def migrate(self) -> None:
        from alembic import command

        config = _alembic_config()
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"migration failed: {exc}") from exc

    def schema_version(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        except SQLAlchemyError:
            return None
        return None if row is None else str(row[0])

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        with self._write_lock:
            self._drop_writer()
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        errors: tuple[type[Exception], ...] = (SQLAlchemyError, *self.driver_errors)
        with self._write_lock:
            try:
                with self._write_connection() as conn, conn.begin():
                    yield conn
            except errors as exc:
                self._drop_writer()  # a fresh one next time, whatever state this one is in
                raise StoreError(f"write failed: {type(exc).__name__}: {exc}") from exc

    def _write_connection(self) -> AbstractContextManager[Connection]:
        """The held writer (``hold_writer``), or a connection from the pool for this
        transaction (closed after it)."""
        if not self.hold_writer:
            return self.engine.connect().execution_options(write=True)
        writer = self._writer
        if writer is None or writer.closed or writer.invalidated:
            writer = self._writer = self.engine.connect().execution_options(write=True)
        return nullcontext(writer)

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with suppress(SQLAlchemyError, *self.driver_errors):
                writer.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"read failed: {type(exc).__name__}: {exc}") from exc

    def transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction, serialized with the store's other writers.

        For adapters that keep their own tables (FHIR resources, HL7 message
        log, device bindings); errors come out as ``StoreError``.
        """
        return self._write()

    def reading(self) -> AbstractContextManager[Connection]:
        """A read connection; errors come out as ``StoreError``."""
        return self._read()

    # -- observations ---------------------------------------------------------

    def append(
        self,
        observations: Sequence[Observation],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        rejected: Sequence[QuarantineEntry] = (),
        channel: str = "api",
        care_team: str | None = None,
        extra: Callable[[Connection], None] | None = None,
        origins: Sequence[Origin | None] | None = None,
    ) -> list[AppendStatus]:
        if origins is not None and len(origins) != len(observations):
            raise ValueError(f"{len(origins)} origins for {len(observations)} observations")
        statuses, unique = _dedupe(observations)
        with self._write() as conn:
            if new_patients:
                self._insert_patients(conn, new_patients)
            if care_team is not None and observations:
                self._join_team(conn, care_team, {obs.patient for obs in observations})
            fresh = self._insert_observations(conn, unique, received_us)
            if len(fresh) != len(unique):
                self._classify_existing(conn, unique, fresh, statuses)
            if origins is not None and fresh:
                self._insert_origins(conn, unique, fresh, origins)
            conflicts = (
                [
                    _conflict_entry(obs, channel, received_us)
                    for obs, status in zip(observations, statuses, strict=True)
                    if status is AppendStatus.CONFLICT
                ]
                if AppendStatus.CONFLICT in statuses
                else []
            )
            entries = [_stamped(e, received_us) for e in rejected] + conflicts
            if entries:
                self._insert_quarantine(conn, entries)
            if extra is not None:
                extra(conn)
        return [AppendStatus.STORED if s is None else s for s in statuses]

    def _insert_observations(
        self, conn: Connection, rows: Sequence[tuple[int, Observation]], received_us: int
    ) -> dict[int, int]:
        """Insert, skipping keys already stored; return {position in ``rows``: row id} of
        the rows inserted."""
        raise NotImplementedError

    def _insert_origins(
        self,
        conn: Connection,
        rows: Sequence[tuple[int, Observation]],
        fresh: dict[int, int],
        origins: Sequence[Origin | None],
    ) -> None:
        """Origins of the rows inserted (``fresh`` as :meth:`_insert_observations` gives it)."""
        values = [
            (row_id, *origin)
            for position, row_id in fresh.items()
            if (origin := origins[rows[position][0]]) is not None
        ]
        if values:
            # The driver's cursor: through SQLAlchemy the call costs more than the insert.
            cursor = conn.connection.cursor()
            try:
                cursor.executemany(
                    "INSERT INTO observation_origins "
                    "(observation_id, channel, message, entry, conditioning) "
                    f"VALUES ({self._params(5)})",
                    values,
                )
            finally:
                cursor.close()

    def origins_of(
        self, keys: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], Origin]:
        table, observed = schema.observation_origins, schema.observations
        wanted = sorted(set(keys))
        key = sa.tuple_(observed.c.source, observed.c.source_id, observed.c.version)
        columns = (table.c.channel, table.c.message, table.c.entry, table.c.conditioning)
        joined = sa.select(
            observed.c.source, observed.c.source_id, observed.c.version, *columns
        ).join_from(observed, table, table.c.observation_id == observed.c.row_id)
        out: dict[tuple[str, str, int], Origin] = {}
        with self._read() as conn:
            for start in range(0, len(wanted), 300):
                query = joined.where(key.in_(wanted[start : start + 300]))
                for r in conn.execute(query):
                    out[(r.source, r.source_id, r.version)] = Origin(
                        r.channel, r.message, r.entry, r.conditioning
                    )
        return out

    def _classify_existing(
        self,
        conn: Connection,
        rows: Sequence[tuple[int, Observation]],
        fresh: dict[int, int],
        statuses: list[AppendStatus | None],
    ) -> None:
        """Mark rows that were not inserted as duplicate or conflict against what is stored."""
        table = schema.observations
        query = sa.select(table).where(
            table.c.source == sa.bindparam("s"),
            table.c.source_id == sa.bindparam("i"),
            table.c.version == sa.bindparam("v"),
        )
        for position, (index, obs) in enumerate(rows):
            if position in fresh:
                continue
            row = conn.execute(query, {"s": obs.source, "i": obs.source_id, "v": obs.version}).one()
            stored = _stored(row).observation
            statuses[index] = (
                AppendStatus.DUPLICATE if obs.same_content(stored) else AppendStatus.CONFLICT
            )

    def history(
        self,
        patient_id: str,
        *,
        codes: Sequence[str] = (),
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int = 500,
        cursor: str | None = None,
    ) -> HistoryPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        table = schema.observations
        query = sa.select(table).where(table.c.patient_id == patient_id)
        if codes:
            query = query.where(table.c.code.in_(list(codes)))
        if start_us is not None:
            query = query.where(table.c.effective_us >= start_us)
        if end_us is not None:
            query = query.where(table.c.effective_us <= end_us)
        if cursor:
            after_time, after_row = _parse_cursor(cursor)
            query = query.where(
                sa.or_(
                    table.c.effective_us > after_time,
                    sa.and_(table.c.effective_us == after_time, table.c.row_id > after_row),
                )
            )
        query = query.order_by(table.c.effective_us, table.c.row_id).limit(limit + 1)
        with self._read() as conn:
            rows = conn.execute(query).all()
        items = [_stored(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = f"{last.observation.effective_us}.{last.row_id}"
        return HistoryPage(items, next_cursor)

    def latest(
        self, *, codes: Sequence[str], since_us: int, system: str = LOINC
    ) -> list[Observation]:
        table = schema.observations
        # Exactly one row per (patient, code): of several at the newest time (an amended
        # version, two sources) the highest version, then the one stored last.
        rank = (
            sa.func.row_number()
            .over(
                partition_by=(table.c.patient_id, table.c.code),
                order_by=(
                    table.c.effective_us.desc(),
                    table.c.version.desc(),
                    table.c.row_id.desc(),
                ),
            )
            .label("newest_rank")
        )
        # A result entered in error no longer counts, in any of its versions.
        retracted = schema.observations.alias("retracted")
        withdrawn = sa.exists().where(
            retracted.c.source == table.c.source,
            retracted.c.source_id == table.c.source_id,
            retracted.c.status == "entered-in-error",
        )
        ranked = (
            sa.select(table, rank)
            .where(
                table.c.system == system,
                table.c.code.in_(list(codes)),
                table.c.effective_us >= since_us,
                ~withdrawn,
            )
            .subquery()
        )
        query = (
            sa.select(*(ranked.c[column.name] for column in table.columns))
            .where(ranked.c.newest_rank == 1)
            .order_by(ranked.c.patient_id, ranked.c.code)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [_stored(r).observation for r in rows]

    def newest_time(self) -> int | None:
        with self._read() as conn:
            value = conn.execute(
                sa.select(sa.func.max(schema.observations.c.effective_us))
            ).scalar()
        return None if value is None else int(value)

    # -- patients -------------------------------------------------------------

    def _insert_patients(self, conn: Connection, patients: Sequence[Patient]) -> None:
        conn.exec_driver_sql(
            "INSERT INTO patients (id, pseudonym, spo2_scale, created_us) "
            f"VALUES ({self._params(4)}) ON CONFLICT (id) DO NOTHING",
            [(p.id, p.pseudonym, p.spo2_scale, p.created_us) for p in patients],
        )

    def _join_team(self, conn: Connection, team: str, patients: set[str]) -> None:
        conn.exec_driver_sql(
            "INSERT INTO care_team_patients (team, patient_id) "
            f"VALUES ({self._params(2)}) ON CONFLICT DO NOTHING",
            [(team, p) for p in sorted(patients)],
        )

    def add_patients(self, patients: Sequence[Patient]) -> None:
        if not patients:  # an empty executemany is an error for both drivers
            return
        with self._write() as conn:
            self._insert_patients(conn, patients)

    def patient(self, patient_id: str) -> Patient | None:
        table = schema.patients
        with self._read() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == patient_id)).first()
        return (
            None if row is None else Patient(row.id, row.pseudonym, row.spo2_scale, row.created_us)
        )

    def patients(self) -> list[Patient]:
        """Every patient, but those merged into another."""
        table = schema.patients
        query = sa.select(table).where(table.c.merged_into.is_(None)).order_by(table.c.id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [Patient(r.id, r.pseudonym, r.spo2_scale, r.created_us) for r in rows]

    def merge_patients(
        self,
        prior: str,
        survivor: str,
        *,
        at_us: int,
        extra: Callable[[Connection], None] | None = None,
    ) -> int:
        """Move everything recorded under ``prior`` to ``survivor`` in one transaction.

        Observations, interventions, derived values, device bindings, FHIR
        resources, consents and care-team memberships follow; the prior patient
        stays, marked ``merged_into`` (its encrypted demographics are kept under
        its own key). Returns the rows moved; a survivor not yet known is created.
        ``extra`` runs in the same transaction once both patients exist, before
        anything moves (an adapter's own rows, such as FHIR references).
        """
        patients = schema.patients
        with self._write() as conn:
            known = {
                r.id: r
                for r in conn.execute(
                    sa.select(patients).where(patients.c.id.in_([prior, survivor]))
                )
            }
            if prior not in known:
                raise NotFoundError(f"no patient {prior!r} to merge")
            if survivor not in known:
                self._insert_patients(
                    conn, [Patient(survivor, "pt-" + secrets.token_hex(8), created_us=at_us)]
                )
            if extra is not None:
                extra(conn)
            moved = 0
            for name in _MERGED_TABLES:
                table = schema.metadata.tables[name]
                moved += conn.execute(
                    sa.update(table).where(table.c.patient_id == prior).values(patient_id=survivor)
                ).rowcount
            teams = schema.care_team_patients
            have = {
                r.team
                for r in conn.execute(sa.select(teams.c.team).where(teams.c.patient_id == survivor))
            }
            for row in conn.execute(sa.select(teams).where(teams.c.patient_id == prior)).all():
                if row.team not in have:
                    conn.execute(sa.insert(teams).values(team=row.team, patient_id=survivor))
            conn.execute(sa.delete(teams).where(teams.c.patient_id == prior))
            conn.execute(
                sa.update(patients).where(patients.c.id == prior).values(merged_into=survivor)
            )
        return moved

    def set_spo2_scale(self, patient_id: str, scale: int) -> Patient:
        if scale not in (1, 2):
            raise ValueError(f"SpO2 scale must be 1 or 2, got {scale}")
        table = schema.patients
        with self._write() as conn:
            result = conn.execute(
                sa.update(table).where(table.c.id == patient_id).values(spo2_scale=scale)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no patient {patient_id!r}")
        found = self.patient(patient_id)
        assert found is not None
        return found

    # -- quarantine -----------------------------------------------------------

    def seal_payloads(self, keyring: Keyring) -> None:
        """Encrypt quarantined payloads from now on (and decrypt sealed ones on read)."""
        self._keyring = keyring

    def sealed_payload(self, text: str) -> bytes | None:
        """The AES-GCM blob of a sealed payload, None for a plaintext one."""
        if not text.startswith(self.SEALED_PREFIX):
            return None
        return base64.urlsafe_b64decode(text[len(self.SEALED_PREFIX) :].encode())

    def _seal(self, payload: str) -> str:
        if self._keyring is None:
            return payload
        blob = self._keyring.encrypt(payload.encode(), aad=b"quarantine")
        return self.SEALED_PREFIX + base64.urlsafe_b64encode(blob).decode()

    def _unseal(self, payload: str) -> str:
        blob = self.sealed_payload(payload)
        if blob is None:
            return payload
        if self._keyring is None:
            return "<sealed>"
        return self._keyring.decrypt(blob, aad=b"quarantine").decode()

    def _insert_quarantine(self, conn: Connection, entries: Sequence[QuarantineEntry]) -> None:
        conn.execute(
            sa.insert(schema.quarantine),
            [
                {
                    "received_us": e.received_us,
                    "channel": e.channel,
                    "source": e.source,
                    "location": e.location,
                    "reason": e.reason,
                    "payload": self._seal(e.payload),
                }
                for e in entries
            ],
        )

    def quarantine(self, entries: Sequence[QuarantineEntry]) -> None:
        if entries:
            with self._write() as conn:
                self._insert_quarantine(conn, entries)

    def quarantined(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        channel: str | None = None,
        resolved: bool | None = None,
    ) -> list[QuarantineEntry]:
        """Newest first; ``resolved`` False keeps only what no replay has taken in yet."""
        table = schema.quarantine
        query = sa.select(table).order_by(table.c.row_id.desc()).limit(limit).offset(offset)
        if channel is not None:
            query = query.where(table.c.channel == channel)
        if resolved is not None:
            column = table.c.resolved_us
            query = query.where(column.is_not(None) if resolved else column.is_(None))
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [self._quarantine_entry(r) for r in rows]

    def quarantine_entry(self, row_id: int) -> QuarantineEntry | None:
        table = schema.quarantine
        with self._read() as conn:
            row = conn.execute(sa.select(table).where(table.c.row_id == row_id)).first()
        return None if row is None else self._quarantine_entry(row)

    def resolve_quarantine(self, row_ids: Sequence[int], at_us: int) -> None:
        """Mark entries as taken in by a replay; they stay, with their payload, for audit."""
        if row_ids:
            table = schema.quarantine
            with self._write() as conn:
                conn.execute(
                    sa.update(table)
                    .where(table.c.row_id.in_(list(row_ids)))
                    .values(resolved_us=at_us)
                )

    def _quarantine_entry(self, r: Any) -> QuarantineEntry:
        return QuarantineEntry(
            channel=r.channel,
            location=r.location,
            reason=r.reason,
            payload=self._unseal(r.payload),
            source=r.source,
            received_us=r.received_us,
            row_id=r.row_id,
            resolved_us=r.resolved_us,
        )

    # -- interventions ----------------------------------------------------------

    def append_interventions(
        self,
        interventions: Sequence[Intervention],
        *,
        received_us: int,
        new_patients: Sequence[Patient] = (),
        channel: str = "api",
        care_team: str | None = None,
    ) -> list[AppendStatus]:
        """Store in one transaction; idempotent on (source, id) like observations.

        A resend with the same content is a duplicate; different content under the
        same id is a conflict, quarantined with both versions.
        """
        with self._write() as conn:
            if new_patients:
                self._insert_patients(conn, new_patients)
            if care_team is not None and interventions:
                self._join_team(conn, care_team, {i.patient for i in interventions})
            return self.append_interventions_in(
                conn, interventions, received_us=received_us, channel=channel
            )

    def append_interventions_in(
        self,
        conn: Connection,
        interventions: Sequence[Intervention],
        *,
        received_us: int,
        channel: str = "api",
    ) -> list[AppendStatus]:
        """``append_interventions`` inside the caller's transaction (an adapter's own writes)."""
        table = schema.interventions
        statuses: list[AppendStatus] = []
        conflicts: list[QuarantineEntry] = []
        for item in interventions:
            row = _intervention_row(item)
            existing = conn.execute(
                sa.select(table).where(
                    table.c.source == item.source, table.c.source_id == item.source_id
                )
            ).first()
            if existing is None:
                conn.execute(sa.insert(table), [{**row, "received_us": received_us}])
                statuses.append(AppendStatus.STORED)
            elif all(getattr(existing, k) == v for k, v in row.items()):
                statuses.append(AppendStatus.DUPLICATE)
            else:
                statuses.append(AppendStatus.CONFLICT)
                conflicts.append(
                    QuarantineEntry(
                        channel=channel,
                        location=f"interventions[{item.source}/{item.source_id}]",
                        reason="id already stored with different content",
                        payload=json.dumps(row, default=str),
                        source=item.source,
                        received_us=received_us,
                    )
                )
        if conflicts:
            self._insert_quarantine(conn, conflicts)
        return statuses

    def retract_interventions_in(
        self, conn: Connection, source: str, prefixes: Sequence[str], *, at_us: int
    ) -> int:
        """Withdraw the interventions of ``source`` whose id starts with one of
        ``prefixes`` (every version of a FHIR resource), inside the caller's transaction;
        how many were withdrawn now."""
        table = schema.interventions
        withdrawn = 0
        for prefix in prefixes:
            result = conn.execute(
                sa.update(table)
                .where(
                    table.c.source == source,
                    table.c.source_id.startswith(prefix, autoescape=True),
                    table.c.retracted_us.is_(None),
                )
                .values(retracted_us=at_us)
            )
            withdrawn += result.rowcount
        return withdrawn

    def interventions_of(
        self,
        patient: str,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        retracted: bool = False,
    ) -> list[Intervention]:
        """A patient's interventions in start order; withdrawn ones only with ``retracted``."""
        table = schema.interventions
        query = sa.select(table).where(table.c.patient_id == patient).order_by(table.c.start_us)
        if not retracted:
            query = query.where(table.c.retracted_us.is_(None))
        if since_us is not None:
            query = query.where(table.c.start_us >= since_us)
        if until_us is not None:
            query = query.where(table.c.start_us < until_us)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            Intervention(
                source=r.source,
                source_id=r.source_id,
                patient=r.patient_id,
                kind=InterventionKind(r.kind),
                amount=r.amount,
                unit=r.unit,
                start_us=r.start_us,
                duration_s=r.duration_s,
                drug=r.drug,
                route=r.route,
            )
            for r in rows
        ]

    # -- derived values -------------------------------------------------------

    def append_derived(self, values: Sequence[DerivedValue]) -> None:
        if not values:
            return
        rows = [
            (
                v.patient,
                v.name,
                v.computed_us,
                v.value_num,
                json.dumps(v.payload, separators=(",", ":")),
            )
            for v in values
        ]
        sql = (
            "INSERT INTO derived (patient_id, name, computed_us, value_num, payload) "
            f"VALUES ({self._params(5)})"
        )
        with self._write() as conn:
            conn.exec_driver_sql(sql, rows)

    def derived_history(
        self,
        patient_id: str,
        name: str,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int = 2000,
    ) -> list[DerivedValue]:
        table = schema.derived
        query = sa.select(table).where(table.c.patient_id == patient_id, table.c.name == name)
        if start_us is not None:
            query = query.where(table.c.computed_us >= start_us)
        if end_us is not None:
            query = query.where(table.c.computed_us <= end_us)
        # The newest ``limit`` values, returned oldest first.
        query = query.order_by(table.c.computed_us.desc(), table.c.row_id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            DerivedValue(r.patient_id, r.name, r.computed_us, r.value_num, json.loads(r.payload))
            for r in reversed(rows)
        ]

    # -- whole store ----------------------------------------------------------

    def count(self, table: str) -> int:
        if table not in _TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(schema.metadata.tables[table])
                ).scalar_one()
            )

    def _params(self, n: int) -> str:
        """Driver placeholders for ``n`` values."""
        raise NotImplementedError

    def backup(self, path: Path) -> None:
        from medtwin.data.store.sqlite import SQLiteStore

        target = SQLiteStore(path)
        try:
            target.migrate()
            with self._snapshot() as source, target.engine.begin() as dest:
                _copy_tables(source, dest)
        finally:
            target.close()

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A connection that reads one consistent state of every table."""
        with self._read() as conn, conn.begin():
            yield conn

    def restore(self, path: Path) -> None:
        from medtwin.data.store.sqlite import SQLiteStore

        if not Path(path).is_file():
            raise StoreError(f"no backup at {path}")
        source_store = SQLiteStore(path)
        try:
            if source_store.schema_version() != self.schema_version():
                raise StoreError(
                    f"backup schema {source_store.schema_version()} differs from "
                    f"store schema {self.schema_version()}"
                )
            with source_store.engine.connect() as source, self._write() as dest:
                for name in reversed(_TABLES):
                    dest.execute(sa.delete(schema.metadata.tables[name]))
                _copy_tables(source, dest)
                self._after_restore(dest)
        finally:
            source_store.close()

    def _after_restore(self, conn: Connection) -> None:
        """Backend fix-ups after rows were copied in with their ids (sequences)."""


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("medtwin.data.store") / "migrations")
    )
    return config


def schema_head() -> str:
    """The newest schema version the migrations know."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _copy_tables(source: Connection, dest: Connection, chunk: int = 20_000) -> None:
    for name in _TABLES:
        table = schema.metadata.tables[name]
        result = source.execute(sa.select(table)).mappings()
        while rows := result.fetchmany(chunk):
            dest.execute(sa.insert(table), [dict(r) for r in rows])


def positions_of(
    rows: Sequence[tuple[int, Observation]], inserted: dict[tuple[str, str, int], int]
) -> dict[int, int]:
    """{position in ``rows``: row id} of the rows whose key ``inserted`` maps to a row id."""
    found = ((position, inserted.get(_KEY(obs))) for position, (_, obs) in enumerate(rows))
    return {position: row_id for position, row_id in found if row_id is not None}


# The idempotency key of an Observation: (source, source_id, version).
_KEY = operator.itemgetter(
    *(Observation._fields.index(name) for name in ("source", "source_id", "version"))
)


def _dedupe(
    observations: Sequence[Observation],
) -> tuple[list[AppendStatus | None], list[tuple[int, Observation]]]:
    """Statuses for repeats inside the batch, and the first occurrence of each key."""
    statuses: list[AppendStatus | None] = [None] * len(observations)
    if len(set(map(_KEY, observations))) == len(observations):
        return statuses, list(enumerate(observations))  # the usual batch: each key once
    first: dict[tuple[str, str, int], Observation] = {}
    unique: list[tuple[int, Observation]] = []
    for index, obs in enumerate(observations):
        key = (obs.source, obs.source_id, obs.version)
        seen = first.get(key)
        if seen is None:
            first[key] = obs
            unique.append((index, obs))
        else:
            statuses[index] = (
                AppendStatus.DUPLICATE if obs.same_content(seen) else AppendStatus.CONFLICT
            )
    return statuses, unique


def _conflict_entry(obs: Observation, channel: str, received_us: int) -> QuarantineEntry:
    payload = json.dumps(obs._asdict(), separators=(",", ":"))
    return QuarantineEntry(
        channel=channel,
        location=f"source={obs.source} id={obs.source_id}",
        reason="conflict: this (source, id) was already stored with different content",
        payload=payload,
        source=obs.source,
        received_us=received_us,
    )


def _stamped(entry: QuarantineEntry, received_us: int) -> QuarantineEntry:
    if entry.received_us:
        return entry
    return QuarantineEntry(
        entry.channel, entry.location, entry.reason, entry.payload, entry.source, received_us
    )


def _stored(row: Any) -> StoredObservation:
    return StoredObservation(
        row.row_id,
        row.received_us,
        Observation(
            row.source,
            row.source_id,
            row.patient_id,
            row.system,
            row.code,
            row.value_num,
            row.value_text,
            row.unit,
            row.effective_us,
            row.status,
            row.version,
            row.flags,
        ),
    )


def _parse_cursor(cursor: str) -> tuple[int, int]:
    try:
        time_part, row_part = cursor.split(".")
        return int(time_part), int(row_part)
    except ValueError as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc


def _intervention_row(item: Intervention) -> dict[str, Any]:
    return {
        "source": item.source,
        "source_id": item.source_id,
        "patient_id": item.patient,
        "kind": item.kind.value,
        "amount": item.amount,
        "unit": item.unit,
        "start_us": item.start_us,
        "duration_s": item.duration_s,
        "drug": item.drug,
        "route": item.route,
    }
