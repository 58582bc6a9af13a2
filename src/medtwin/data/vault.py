"""Personal data of patients: encrypted at rest, searchable by blind index, erasable.

Demographics (names, identifiers such as SSN, passport and driver's licence
numbers, birth date, address, telecom) are sealed with AES-GCM under the
patient's own data key, which the keyring wraps (:mod:`medtwin.data.crypto`).
Search goes through blind indexes: keyed hashes of identifiers, normalized name
tokens and the birth year. Erasure destroys the patient's data key
(crypto-shredding), deletes the blind-index digests and consents, and replaces
the patient's id by its pseudonym everywhere, so observations and the audit
trail (which records pseudonyms) stay consistent and the chain stays valid.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from medtwin.core.errors import NotFoundError
from medtwin.core.settings import Settings
from medtwin.data.crypto import BlindIndex, DataKeys, Keyring
from medtwin.data.store import SqlStore, schema

# Tables whose ``patient_id`` column follows a patient through erasure.
_PATIENT_TABLES = (
    "observations",
    "interventions",
    "derived",
    "module_results",
    "care_team_patients",
    "device_bindings",
    "waveforms",
)
# Tables of personal data: the patient's rows go.
_PERSONAL_TABLES = ("patient_keys", "blind_index", "consents")


class Identifier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ssn", "passport", "drivers-license", "mrn", "insurance", "other"]
    value: str = Field(min_length=1, max_length=64)


class HumanName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = Field("", max_length=200)
    given: list[str] = Field(default_factory=list, max_length=10)


class Demographics(BaseModel):
    """A patient's personal data, as set through ``PUT /api/v1/patients/{patient}``."""

    model_config = ConfigDict(extra="forbid")

    names: list[HumanName] = Field(default_factory=list, max_length=10)
    identifiers: list[Identifier] = Field(default_factory=list, max_length=20)
    birth_date: date | None = None
    sex: Literal["female", "male", "other", "unknown"] | None = None
    address: list[str] = Field(default_factory=list, max_length=10)
    telecom: list[str] = Field(default_factory=list, max_length=10)


@dataclass(frozen=True)
class Privacy:
    """The keys that protect personal data."""

    keyring: Keyring
    data_keys: DataKeys
    blind_index: BlindIndex
    pseudonym_key: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Privacy:
        keyring = Keyring.from_spec(settings.secret("data_keys").decode())
        blind_key = base64.urlsafe_b64decode(_padded(settings.secret("blind_index_key")))
        return cls(
            keyring, DataKeys(keyring), BlindIndex(blind_key), settings.secret("pseudonym_key")
        )


def _padded(text: bytes) -> bytes:
    return text + b"=" * (-len(text) % 4)


def encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).decode()


def decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode())


@dataclass(frozen=True)
class RotationReport:
    patient_keys: int
    quarantine: int
    consents: int


class PatientVault:
    """Encrypted demographics, blind-index search and erasure, over the store."""

    def __init__(self, store: SqlStore, privacy: Privacy) -> None:
        self.store = store
        self.privacy = privacy

    @staticmethod
    def _aad(patient: str) -> bytes:
        return f"patients:{patient}:demographics".encode()

    def _data_key(self, conn: sa.Connection, patient: str, now_us: int) -> bytes:
        table = schema.patient_keys
        row = conn.execute(
            sa.select(table.c.wrapped_key).where(table.c.patient_id == patient)
        ).first()
        if row is not None:
            return self.privacy.data_keys.unwrap(patient, decode(row.wrapped_key))
        key, wrapped = self.privacy.data_keys.new_key(patient)
        conn.execute(
            sa.insert(table),
            [{"patient_id": patient, "wrapped_key": encode(wrapped), "created_us": now_us}],
        )
        return key

    def put(self, patient: str, demographics: Demographics, *, now_us: int) -> None:
        """Replace the patient's demographics (sealed) and their blind-index digests."""
        plaintext = demographics.model_dump_json().encode()
        with self.store._write() as conn:
            exists = conn.execute(
                sa.select(schema.patients.c.id).where(schema.patients.c.id == patient)
            ).first()
            if exists is None:
                raise NotFoundError(f"no patient {patient!r}")
            key = self._data_key(conn, patient, now_us)
            sealed = DataKeys.seal(key, plaintext, aad=self._aad(patient))
            conn.execute(
                sa.update(schema.patients)
                .where(schema.patients.c.id == patient)
                .values(demographics=encode(sealed))
            )
            conn.execute(
                sa.delete(schema.blind_index).where(schema.blind_index.c.patient_id == patient)
            )
            digests = sorted(set(self._digests(demographics)))
            if digests:
                conn.execute(
                    sa.insert(schema.blind_index),
                    [{"patient_id": patient, "kind": k, "digest": d} for k, d in digests],
                )

    def _digests(self, demographics: Demographics) -> Iterator[tuple[str, str]]:
        index = self.privacy.blind_index
        for identifier in demographics.identifiers:
            yield (
                "identifier",
                index.identifier(identifier.kind.replace("-", "_"), identifier.value),
            )
        for name in demographics.names:
            for token in index.name_tokens(" ".join([*name.given, name.family])):
                yield "name", token
        if demographics.birth_date is not None:
            yield "birth_year", index.birth_year(demographics.birth_date.year)

    def get(self, patient: str) -> Demographics | None:
        """The patient's demographics, or None if none were set (or they were erased)."""
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(schema.patients.c.demographics).where(schema.patients.c.id == patient)
            ).first()
            if row is None or row.demographics is None:
                return None
            wrapped = conn.execute(
                sa.select(schema.patient_keys.c.wrapped_key).where(
                    schema.patient_keys.c.patient_id == patient
                )
            ).first()
        if wrapped is None:
            return None  # shredded
        key = self.privacy.data_keys.unwrap(patient, decode(wrapped.wrapped_key))
        plaintext = DataKeys.open(key, decode(row.demographics), aad=self._aad(patient))
        return Demographics.model_validate_json(plaintext)

    def find(
        self,
        *,
        identifier: tuple[str, str] | None = None,
        name: str | None = None,
        birth_year: int | None = None,
    ) -> set[str]:
        """Patients matching every criterion given (all name tokens must match)."""
        index = self.privacy.blind_index
        wanted: list[tuple[str, str]] = []
        if identifier is not None:
            kind, value = identifier
            wanted.append(("identifier", index.identifier(kind.replace("-", "_"), value)))
        if name:
            wanted += [("name", token) for token in index.name_tokens(name)]
        if birth_year is not None:
            wanted.append(("birth_year", index.birth_year(birth_year)))
        if not wanted:
            return set()
        table = schema.blind_index
        found: set[str] | None = None
        with self.store._read() as conn:
            for kind, digest in wanted:
                rows = conn.execute(
                    sa.select(table.c.patient_id).where(
                        table.c.kind == kind, table.c.digest == digest
                    )
                )
                matches = {r.patient_id for r in rows}
                found = matches if found is None else found & matches
        return found or set()

    def erase(self, patient: str, *, now_us: int) -> str:
        """Erase the patient's personal data; returns the pseudonym that replaces the id."""
        with self.store._write() as conn:
            row = conn.execute(
                sa.select(schema.patients).where(schema.patients.c.id == patient)
            ).first()
            if row is None:
                raise NotFoundError(f"no patient {patient!r}")
            pseudonym = str(row.pseudonym)
            # Raw FHIR resources carry names and identifiers: they go, with their index.
            _erase_fhir_resources(conn, patient)
            for name in _PERSONAL_TABLES:
                table = schema.metadata.tables[name]
                conn.execute(sa.delete(table).where(table.c.patient_id == patient))
            for name in _PATIENT_TABLES:
                table = schema.metadata.tables[name]
                conn.execute(
                    sa.update(table)
                    .where(table.c.patient_id == patient)
                    .values(patient_id=pseudonym)
                )
            conn.execute(
                sa.update(schema.patients)
                .where(schema.patients.c.id == patient)
                .values(id=pseudonym, demographics=None, erased_us=now_us)
            )
        return pseudonym

    def rotate(self) -> RotationReport:
        """Re-encrypt under the active key what an older key still protects, row by row.

        Each row is its own short transaction, so the service keeps running; old keys
        keep decrypting until they are removed from the keyring.
        """
        keyring = self.privacy.keyring
        counts = {"patient_keys": 0, "quarantine": 0, "consents": 0}
        with self.store._read() as conn:
            keys = conn.execute(sa.select(schema.patient_keys)).all()
            quarantined = conn.execute(
                sa.select(schema.quarantine.c.row_id, schema.quarantine.c.payload)
            ).all()
            consents = conn.execute(
                sa.select(schema.consents.c.id, schema.consents.c.resource)
            ).all()
        for key_row in keys:
            wrapped = decode(key_row.wrapped_key)
            if keyring.needs_rotation(wrapped):
                fresh = self.privacy.data_keys.rewrap(key_row.patient_id, wrapped)
                self._update(
                    schema.patient_keys,
                    schema.patient_keys.c.patient_id,
                    key_row.patient_id,
                    wrapped_key=encode(fresh),
                )
                counts["patient_keys"] += 1
        for q_row in quarantined:
            blob = self.store.sealed_payload(q_row.payload)
            if blob is not None and keyring.needs_rotation(blob):
                fresh = keyring.rotate(blob, aad=b"quarantine")
                self._update(
                    schema.quarantine,
                    schema.quarantine.c.row_id,
                    q_row.row_id,
                    payload=self.store.SEALED_PREFIX + encode(fresh),
                )
                counts["quarantine"] += 1
        for c_row in consents:
            blob = decode(c_row.resource)
            if keyring.needs_rotation(blob):
                fresh = keyring.rotate(blob, aad=f"consents:{c_row.id}".encode())
                self._update(
                    schema.consents, schema.consents.c.id, c_row.id, resource=encode(fresh)
                )
                counts["consents"] += 1
        return RotationReport(counts["patient_keys"], counts["quarantine"], counts["consents"])

    def _update(
        self, table: sa.Table, key: sa.Column[object], value: object, **values: str
    ) -> None:
        with self.store._write() as conn:
            conn.execute(sa.update(table).where(key == value).values(**values))


def demographics_json(demographics: Demographics) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(demographics.model_dump_json())
    return loaded


def _erase_fhir_resources(conn: sa.Connection, patient: str) -> None:
    """Delete the patient's FHIR resources (every version) and their search rows."""
    resources, search = schema.fhir_resources, schema.fhir_search
    owned = conn.execute(
        sa.select(resources.c.resource_type, resources.c.id)
        .where(resources.c.patient_id == patient)
        .distinct()
    ).all()
    for resource_type, resource_id in owned:
        conn.execute(
            sa.delete(search).where(
                search.c.resource_type == resource_type, search.c.id == resource_id
            )
        )
    conn.execute(sa.delete(resources).where(resources.c.patient_id == patient))
