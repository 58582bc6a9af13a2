"""Processing of FHIR transaction and batch Bundles, PUT, DELETE, read, history and search.

A transaction is all-or-nothing: it is validated first (no lock held), then
ids are assigned, ``urn:uuid:`` full URLs and conditional references resolved,
``ifNoneExist`` honoured, resources mapped into medtwin's records and
everything written in ONE store transaction, together with the observations
the twins take and the Bundle's response (kept by content digest, so that the
same Bundle posted again replays it). Only then are the twins updated.

DELETE (``Type/id``, in a Bundle or alone) writes a new version marked deleted
(no search rows: search no longer finds it; a read answers 410 Gone; the history
shows it) and answers ``204 No Content``, also when there is nothing to delete
(a missing or already deleted resource: no version is written). A deleted
Observation's observations get an ``entered-in-error`` version each (same source
and id, the deletion's version), so that the twins forget them. A Patient is not
deleted through FHIR (405: patients are erased through the vault).

A conditional update (``PUT Type?search``) updates the one resource the search
matches (200), creates one when none matches (201: with the resource's id if it
has one, else a server id) and fails with 412 when several match.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.clock import to_iso
from medtwin.core.errors import ConflictError, InputError
from medtwin.core.records import LOINC, Intervention, Patient, QualityFlag
from medtwin.data import mappings
from medtwin.data.consent import ConsentStore
from medtwin.data.crypto import BlindIndex, DataKeys
from medtwin.data.store import AppendStatus, Origin, QuarantineEntry, SqlStore, schema
from medtwin.data.store.base import _conflict_entry, _dedupe
from medtwin.data.validation import ID_PATTERN as PATIENT_ID
from medtwin.data.vault import PatientVault, Privacy, encode
from medtwin.devices.fhir.body import Body, make_body
from medtwin.devices.fhir.errors import (
    FhirError,
    InvalidResourceError,
    Issue,
    MethodNotAllowedError,
    PreconditionFailedError,
    ResourceGoneError,
    ResourceNotFoundError,
    TooLargeError,
    UnprocessableError,
    operation_outcome,
)
from medtwin.devices.fhir.fastcheck import check_resource
from medtwin.devices.fhir.jsonparse import orjson_value
from medtwin.devices.fhir.mapping import (
    PERSONAL_TYPES,
    SOURCE,
    ObservationValue,
    demographics_of,
    identifier_rows,
    intervention_of,
    items_of,
    observation_items,
    observation_values,
    patient_in,
    patient_of,
    personal_rows,
    public_rows,
    query_values,
    sortable_time,
    subject_row,
    time_range,
)
from medtwin.devices.fhir.repository import (
    NewVersion,
    ResourceRepository,
    StoredResource,
    canonical,
    dump_json,
)
from medtwin.devices.fhir.validation import (
    ID_PATTERN,
    code_issues,
    model_class,
    validate_resource,
)
from medtwin.twins.ingest import Ingestor, PreparedBatch

__all__ = ["BundleReport", "BundleResult", "FhirService", "parse_json"]

CHANNEL = "fhir"
_UNMAPPED = int(QualityFlag.UNMAPPED)
_INTERNAL_PREFIXES = ("urn:uuid:", "urn:oid:")
_SEARCH_PARAMS = {
    "Patient": ("identifier", "name", "birthdate"),
    "Observation": ("subject", "patient", "code", "date", "category"),
}
_DATE_PREFIXES = ("eq", "ge", "le", "gt", "lt")
_PATIENT_DELETE = "a Patient is not deleted through FHIR: patients are erased through the vault"
# Types whose parsed JSON the commit reads (personal index values, demographics, doses,
# consents): no Body. An Observation's items are made of its values, read beside its Body.
_PARSED = PERSONAL_TYPES | {"MedicationAdministration", "Consent"}
_NO_CONTENT = "204 No Content"
# Types whose resources become medtwin records (patients, observations, doses).
_MAPPED = frozenset({"Patient", "Observation", "MedicationAdministration"})


def parse_json(text: str | bytes, *, max_depth: int, nesting: bool = True) -> Any:
    """The JSON document of a request body; InvalidResourceError / TooLargeError otherwise.

    ``nesting``: False leaves the check of ``max_depth`` to the caller (a Bundle's:
    :func:`read_bundle` checks it as it walks the Bundle, without a walk of its own).
    """
    try:
        # orjson's value when it is json.loads' (the errors and their messages are json's).
        found = orjson_value(text)
        document = json.loads(text) if found is None else found[0]
    except RecursionError as exc:
        raise TooLargeError(
            [Issue(f"JSON nested deeper than {max_depth}", "", code="too-costly")]
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidResourceError(
            [Issue(f"body is not JSON: {exc}", "", code="structure")]
        ) from exc
    if nesting and _depth_exceeds(document, max_depth):
        raise TooLargeError([Issue(f"JSON nested deeper than {max_depth}", "", code="too-costly")])
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    # Level by level: the objects and arrays ``depth`` deep (the document is 1 deep).
    level: list[Any] = [document]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                below += [v for v in value.values() if isinstance(v, (dict, list))]
            elif isinstance(value, list):
                below += [v for v in value if isinstance(v, (dict, list))]
        level = below
        depth += 1
    return False


@dataclass(frozen=True)
class BundleReport:
    """What a Bundle did: resources created/updated/reused, observations, what is unmapped."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    reused: int = 0
    deleted: int = 0
    failed: int = 0
    observations: int = 0
    unmapped: dict[str, int] = field(default_factory=dict)  # per code system
    unresolved: list[str] = field(default_factory=list)  # literal references not held
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "reused": self.reused,
            "deleted": self.deleted,
            "failed": self.failed,
            "observations": self.observations,
            "unmapped": dict(self.unmapped),
            "unresolved": list(self.unresolved),
            "replayed": self.replayed,
        }


@dataclass(frozen=True)
class BundleResult:
    """The response Bundle (transaction-response or batch-response) and the report."""

    response: dict[str, Any]
    report: BundleReport


# Slots: no __dict__ per entry (a reader's Bundles bring thousands, for the collector to
# walk).
@dataclass(slots=True)
class _Entry:
    index: int
    base: str  # element path of the resource
    method: str = ""
    resource_type: str = ""
    # The resource: parsed (``doc``) or, as most arrive from a Bundle's reader, a Body
    # (its JSON with slots), parsed only where needed (:attr:`resource`).
    doc: dict[str, Any] | None = None
    body: Body | None = None
    wanted: Any = None  # the resource's own id, as received
    # Search rows made by the reader (a type not personal): all but the subject's.
    rows: tuple[tuple[str, str], ...] | None = None
    # An Observation's values, read by the reader (None: made of the resource when mapped).
    values: tuple[ObservationValue, ...] | None = None
    full_url: str | None = None
    target_id: str | None = None
    condition: str | None = None  # the search of a conditional update
    prior: StoredResource | None = None  # the version a DELETE deletes
    if_none_exist: str | None = None
    # The resource's objects with a string ``reference`` (a Body's are its holders), and
    # their element paths when known (else found when an issue names one).
    holders: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] | None = None
    # Why the entry failed (none: it did not). A tuple while there is none: the reader's
    # entries bring no empty list each.
    issues: Sequence[Issue] = ()
    id: str = ""
    version: int = 0
    status: str = ""
    write: bool = False
    patient: str | None = None

    def __reduce__(self) -> tuple[type[_Entry], tuple[Any, ...]]:
        # Rebuilt by __init__ from its values: the loader's committing process unpickles
        # thousands, and restoring 25 slots by name takes about half as long again.
        return _Entry, _entry_values(self)

    def fail(self, *issues: Issue) -> None:
        """Add issues: the entry fails."""
        self.issues = [*self.issues, *issues]

    @property
    def has_resource(self) -> bool:
        return self.doc is not None or self.body is not None

    @property
    def resource(self) -> dict[str, Any] | None:
        """The resource as parsed JSON (a Body is parsed now, and is no more: its
        reference holders are the resource's from then on)."""
        if self.doc is None and self.body is not None:
            self.doc, self.body = self.body.materialize(), None
        return self.doc

    @resource.setter
    def resource(self, value: dict[str, Any] | None) -> None:
        self.doc, self.body = value, None

    def set_id(self, resource_id: str) -> None:
        """Give the resource its assigned id."""
        if self.body is not None:
            self.body.id_value = resource_id
        else:
            assert self.doc is not None
            self.doc["id"] = resource_id

    def identifier_values(self, index: BlindIndex) -> list[str]:
        """The resource's ``identifier`` index values (a personal resource's search rows,
        digests that need the key, are made now: the reader made the others')."""
        rows = self.rows
        if rows is None:
            assert self.doc is not None
            if self.resource_type not in PERSONAL_TYPES:
                return identifier_rows(self.resource_type, self.doc, index)
            # No references in them: made before the references are rewritten.
            rows = self.rows = tuple(personal_rows(self.doc, index))
        return [value for param, value in rows if param == "identifier"]

    def recorded(self) -> dict[str, Any]:
        """The resource its medtwin records are made of (a DELETE's: the version it deletes)."""
        resource = self.resource if self.prior is None else self.prior.resource
        assert resource is not None
        return resource

    def reference_path(self, slot: int) -> str:
        """The element path of the reference of ``holders[slot]`` (found only for an
        issue: the fast path does not track paths, and a Body is parsed for it)."""
        if self.paths is not None:
            return self.paths[slot]
        return _locate(self.resource, self.holders[slot], self.base)

    def owner(self) -> str | None:
        """The patient the resource belongs to (once its references are rewritten)."""
        body = self.body
        if body is None:
            assert self.doc is not None
            return patient_of(self.resource_type, self.id, self.doc)
        holders = body.holders
        for slot in body.patient_refs:
            found = patient_in(holders[slot]["reference"])
            if found is not None:
                return found
        return None

    def new_version(self) -> NewVersion:
        """The version the entry writes (its id, version and patient assigned)."""
        body, rows = self.body, self.rows
        if body is None:
            assert self.doc is not None
            if rows is not None:
                subject = self.doc.get("subject")
                reference = subject.get("reference") if isinstance(subject, dict) else None
                if isinstance(reference, str):
                    rows = (*rows, subject_row(reference))
            key = (self.resource_type, self.id, self.version, self.patient)
            return NewVersion(*key, self.doc, rows=rows)
        assert rows is not None  # a Body is of a type not personal
        if body.subject is not None:
            # Never among the reader's rows (it makes no subject row): no duplicate.
            rows = (*rows, subject_row(body.holders[body.subject]["reference"]))
        return NewVersion(
            self.resource_type,
            self.id,
            self.version,
            self.patient,
            {"resourceType": self.resource_type, "id": self.id},
            content=body.content(),
            rows=rows,
        )


@dataclass
class _Plan:
    """What one Bundle writes, built inside the write transaction."""

    versions: list[NewVersion] = field(default_factory=list)
    patients: list[_Entry] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    # Per item: its entry, and which of the entry's items it is.
    item_entries: list[tuple[_Entry, int]] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    # MedicationAdministrations updated or deleted: their earlier doses are withdrawn.
    withdrawn: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    notes: dict[int, list[Issue]] = field(default_factory=dict)  # warnings, per entry index


_entry_values = attrgetter(*(f.name for f in fields(_Entry)))


@dataclass
class ReadBundle:
    """A Bundle parsed and checked, ready to commit: what :func:`read_bundle` gives
    (in the loader's second process too) and :meth:`FhirService.commit_group` takes."""

    kind: str  # transaction or batch
    entries: list[_Entry]
    digest: str | None  # of the content: a Bundle loaded already is replayed, not redone
    message: str  # names the Bundle in the origin of every observation it stores
    source: str | None = None


class FhirService:
    """FHIR R4 interactions over a store, feeding the twins through an :class:`Ingestor`."""

    def __init__(
        self,
        store: SqlStore,
        ingestor: Ingestor,
        privacy: Privacy,
        *,
        max_entries: int = 10_000,
        max_depth: int = 64,
        strict_references: bool = False,
        consents: ConsentStore | None = None,
    ) -> None:
        self.store = store
        # Consent resources take effect on access decisions when a consent store is given.
        self.consents = consents
        self.ingestor = ingestor
        self.privacy = privacy
        self.vault = PatientVault(store, privacy)
        self.repository = ResourceRepository(store, privacy.keyring, privacy.blind_index)
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.strict_references = strict_references

    # -- writes ---------------------------------------------------------------

    def process_bundle(
        self,
        document: Any,
        *,
        raw: str | None = None,
        source: str | None = None,
        care_team: str | None = None,
    ) -> BundleResult:
        """Process a transaction or batch Bundle (parsed JSON); see the module docstring.

        A failed transaction raises a :class:`FhirError` after quarantining the Bundle.
        """
        try:
            bundle = read_bundle(
                document, max_entries=self.max_entries, max_depth=self.max_depth, source=source
            )
            [outcome] = self.commit_group([bundle], care_team)
            if isinstance(outcome, FhirError):
                raise outcome
            return outcome
        except FhirError as exc:
            self._quarantine(exc, raw, document, source)
            raise

    def put(
        self,
        resource_type: str,
        resource_id: str,
        document: Any,
        *,
        raw: str | None = None,
        source: str | None = None,
        care_team: str | None = None,
    ) -> tuple[StoredResource, bool]:
        """Create or update ``resource_type/resource_id`` with the client's id.

        Returns the stored version and whether it was created. An update with the
        same content as the current version stores nothing new.
        """
        url = f"{resource_type}/{resource_id}"
        return self._put(resource_type, url, url, document, raw, source, care_team)

    def conditional_put(
        self,
        resource_type: str,
        query: str,
        document: Any,
        *,
        raw: str | None = None,
        source: str | None = None,
        care_team: str | None = None,
    ) -> tuple[StoredResource, bool]:
        """Conditional update ``PUT resource_type?query``: the one match is updated, no
        match creates the resource, several fail (PreconditionFailedError, 412).

        Returns the stored version and whether it was created.
        """
        url, message = f"{resource_type}?{query}", f"{resource_type}?{query[:128]}"
        return self._put(resource_type, url, message, document, raw, source, care_team)

    def _put(
        self,
        resource_type: str,
        url: str,
        message: str,
        document: Any,
        raw: str | None,
        source: str | None,
        care_team: str | None,
    ) -> tuple[StoredResource, bool]:
        """One PUT entry to ``url``: the stored version and whether it was created."""
        entry = self._single(
            resource_type,
            {"resource": document, "request": {"method": "PUT", "url": url}},
            message=message,
            raw=raw,
            source=source,
            care_team=care_team,
        )
        stored = self.repository.read(resource_type, entry.id, entry.version)
        assert stored is not None
        return stored, entry.status.startswith("201")

    def delete(
        self,
        resource_type: str,
        resource_id: str,
        *,
        source: str | None = None,
        care_team: str | None = None,
    ) -> StoredResource | None:
        """Delete ``resource_type/resource_id``: the deletion's version, or None when there
        was nothing to delete (not held, or deleted already). Patient: MethodNotAllowedError."""
        entry = self._single(
            resource_type,
            {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}},
            message=f"{resource_type}/{resource_id}",
            raw=None,
            source=source,
            care_team=care_team,
        )
        if not entry.write:
            return None
        return self.repository.read(resource_type, entry.id, entry.version)

    def _single(
        self,
        resource_type: str,
        request_entry: dict[str, Any],
        *,
        message: str,
        raw: str | None,
        source: str | None,
        care_team: str | None,
    ) -> _Entry:
        """One interaction as a one-entry transaction; its entry once committed."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [request_entry]}
        try:
            _, entries = read_entries(
                bundle,
                lambda _: resource_type,
                max_entries=self.max_entries,
                max_depth=self.max_depth,
            )
            issues = [issue for entry in entries for issue in entry.issues]
            if issues:
                raise _refusal(issues)
            self._commit(
                "transaction",
                entries,
                None,
                message=message,
                care_team=care_team,
                source=source,
            )
        except FhirError as exc:
            if "resource" in request_entry:  # a refused DELETE has nothing to keep
                self._quarantine(exc, raw, request_entry["resource"], source)
            raise
        return entries[0]

    def _quarantine(
        self, exc: FhirError, raw: str | None, document: Any, source: str | None
    ) -> None:
        payload = raw if raw is not None else _dump(document)
        self.store.quarantine(
            [
                QuarantineEntry(
                    channel=CHANNEL,
                    location=exc.issues[0].expression or "body",
                    reason=exc.issues[0].diagnostics[:1000],
                    payload=payload,
                    source=source,
                    received_us=self.ingestor.clock.now_us(),
                )
            ]
        )

    def _commit(
        self,
        kind: str,
        entries: list[_Entry],
        digest: str | None,
        *,
        message: str,
        care_team: str | None,
        source: str | None,
    ) -> BundleResult:
        """Write what the entries carry in one transaction; ``message`` names the input
        in the origin of every observation stored (the Bundle, or ``Type/id`` of a PUT)."""
        [outcome] = self.commit_group(
            [ReadBundle(kind, entries, digest, message, source)], care_team
        )
        if isinstance(outcome, FhirError):
            raise outcome
        return outcome

    def commit_group(
        self, bundles: Sequence[ReadBundle], care_team: str | None = None
    ) -> list[BundleResult | FhirError]:
        """Commit read Bundles in one database transaction (one fsync), each in its own
        savepoint: a refused Bundle changes nothing and leaves the others as they are.

        A refused Bundle's outcome is its FhirError (the caller quarantines it: a
        write beside this transaction would wait for it). The twins see every
        Bundle once the transaction is committed.
        """
        ingestor = self.ingestor
        now = ingestor.clock.now_us()
        outcomes: list[BundleResult | FhirError] = []
        after: list[Callable[[], None]] = []
        # The ingestor's commit lock: the twins see batches in the order the store took them.
        with ingestor._commit_lock:
            if len(bundles) == 1:
                try:  # a refusal rolls the whole transaction back
                    with self.store.transaction() as conn:
                        result, then = self._write_bundle(conn, bundles[0], now, care_team)
                except FhirError as exc:
                    return [exc]
                then()
                return [result]
            with self.store.transaction() as conn:
                for bundle in bundles:
                    try:
                        with conn.begin_nested():  # a refusal rolls back its savepoint
                            result, then = self._write_bundle(conn, bundle, now, care_team)
                    except FhirError as exc:
                        outcomes.append(exc)
                    else:
                        outcomes.append(result)
                        after.append(then)
            for then in after:
                then()
        return outcomes

    def _write_bundle(
        self, conn: Connection, bundle: ReadBundle, now: int, care_team: str | None
    ) -> tuple[BundleResult, Callable[[], None]]:
        """Write one Bundle inside ``conn``'s transaction: its result, and what to do
        once the transaction is committed."""
        kind, entries, digest = bundle.kind, bundle.entries, bundle.digest
        if digest is not None:
            stored = self.repository.replayed(conn, digest)
            if stored is not None:
                report = BundleReport(**{**stored["report"], "replayed": True})
                return BundleResult(stored["response"], report), _nothing
        plan = self._plan(conn, kind, entries)
        # Only a Bundle has entries to name (a PUT has no digest).
        batch = self._prepare(kind, plan, bundle.message, in_bundle=digest is not None)
        failed = [e for e in entries if e.issues]
        if kind == "transaction" and failed:
            raise _failure([i for e in failed for i in e.issues])
        if failed:
            plan.versions = [v for v in plan.versions if not _failed_version(v, entries)]
            self._quarantine_entries(conn, failed, now, bundle.source)
        self.repository.write(conn, plan.versions, now)
        self._apply_consents(conn, plan.versions, now)
        new_patients = self._write_patients(conn, plan, now, care_team)
        statuses = self._append(conn, batch, care_team) if batch is not None else []
        self.store.retract_interventions_in(
            conn, SOURCE, [f"{i}/_history/" for i in plan.withdrawn], at_us=now
        )
        self.store.append_interventions_in(
            conn, plan.interventions, received_us=now, channel=CHANNEL
        )
        result = self._result(kind, entries, plan, batch, statuses, now)
        if digest is not None and not failed:
            self.repository.remember(
                conn,
                digest,
                now,
                {"response": result.response, "report": result.report.as_json()},
            )
        ingestor = self.ingestor

        def then() -> None:
            for patient in new_patients:
                ingestor.runtime.add(patient)
            if batch is not None:
                ingestor._observe_stored(batch, statuses)
                ingestor._finish(batch, statuses)

        return result, then

    # -- planning (inside the write transaction) ------------------------------

    def _apply_consents(self, conn: Connection, versions: Sequence[NewVersion], now: int) -> None:
        """Consents of the Bundle into the consent store, in its transaction.

        A Consent medtwin cannot enforce (no patient, an unknown provision) fails
        the whole Bundle, batch or transaction: stored but not enforced would
        mislead whoever sent it.
        """
        if self.consents is None:
            return
        for version in versions:
            if version.resource_type != "Consent":
                continue
            try:
                self.consents.put_in(conn, {**version.resource, "id": version.id}, now_us=now)
            except (InputError, ConflictError) as exc:
                location = getattr(exc, "location", "") or "Consent"
                raise _failure(
                    [Issue(str(getattr(exc, "reason", exc)), f"Consent/{version.id}: {location}")]
                ) from exc

    def _plan(self, conn: Connection, kind: str, entries: list[_Entry]) -> _Plan:
        plan = _Plan()
        live = [e for e in entries if not e.issues]
        full_urls: dict[str, str] = {}
        pending: dict[tuple[str, str], set[str]] = {}  # (type, identifier value) -> ids
        taken: set[tuple[str, str]] = set()
        # Ids held already, in one query per 500.
        keys: set[tuple[str, str]] = set()
        for entry in live:
            # A DELETE has no resource: its wanted id is None.
            wanted: Any = entry.wanted if entry.target_id is None else entry.target_id
            if isinstance(wanted, str):
                keys.add((entry.resource_type, wanted))
        held = self.repository.held_versions(conn, keys)
        gone: set[tuple[str, str]] = set()  # held, and the newest version is a deletion
        updated: dict[str, list[str]] = {}
        for (resource_type, resource_id), version in held.items():
            if version > 1:
                updated.setdefault(resource_type, []).append(resource_id)
        for resource_type, ids in updated.items():
            gone.update(
                (resource_type, resource_id)
                for resource_id in self.repository.deleted_ids(conn, resource_type, ids)
            )

        def hold(resource_type: str, resource_id: str) -> None:
            """Know the current version of a resource a conditional update matched."""
            if (resource_type, resource_id) not in held:
                versions = self.repository.current_versions(conn, resource_type, [resource_id])
                held.update({(resource_type, i): v for i, v in versions.items()})

        parsed: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}

        def criteria_of(resource_type: str, query: str, where: str) -> list[tuple[str, list[str]]]:
            key = (resource_type, query)
            found = parsed.get(key)
            if found is None:
                found = parsed[key] = self._criteria(resource_type, query, where)
            return found

        conditional = self._prefetch(conn, live, criteria_of)

        def matches(resource_type: str, query: str, where: str) -> set[str]:
            key = (resource_type, query)
            criteria = criteria_of(resource_type, query, where)
            stored = conditional.get(key)
            if stored is None:
                stored = conditional[key] = self.repository.find(conn, resource_type, criteria)
            found = set(stored)
            for param, values in criteria:
                if param == "identifier":
                    for value in values:
                        hits = pending.get((resource_type, value))
                        if hits:
                            found |= hits
            return found

        index = self.privacy.blind_index
        for entry in live:
            if entry.method == "DELETE":
                _assign_delete(entry, held, gone)
                taken.add((entry.resource_type, entry.id))
                continue
            try:
                if entry.condition is not None:
                    self._match(entry, matches, hold)
                self._assign(entry, held, gone, taken, matches)
            except FhirError as exc:
                entry.fail(*exc.issues)
                continue
            taken.add((entry.resource_type, entry.id))
            if entry.full_url:
                full_urls[entry.full_url] = f"{entry.resource_type}/{entry.id}"
            if entry.write:
                for value in entry.identifier_values(index):
                    holding = pending.get((entry.resource_type, value))
                    if holding is None:
                        pending[(entry.resource_type, value)] = {entry.id}
                    else:
                        holding.add(entry.id)
        # Every id is assigned: a search finds the same from now on (Synthea's references
        # name the same Organization?identifier=... again and again).
        settled: dict[tuple[str, str], set[str]] = {}

        def settled_matches(resource_type: str, query: str, where: str) -> set[str]:
            key = (resource_type, query)
            found = settled.get(key)
            if found is None:
                found = settled[key] = matches(resource_type, query, where)
            return found

        exists: dict[str, bool] = {}
        resolved: dict[str, str] = {}
        for entry in live:
            if entry.issues or not entry.write or entry.method == "DELETE":
                continue
            self._resolve(
                conn, entry, full_urls, resolved, taken, held, exists, settled_matches, plan
            )
        current: dict[tuple[str, str], StoredResource | None] = {}
        for entry in live:
            if entry.issues or not entry.write:
                continue
            if entry.method == "DELETE":
                key = (entry.resource_type, entry.id)
                entry.prior = self.repository.current(conn, *key)
                entry.patient = None if entry.prior is None else entry.prior.patient_id
                bare = {"resourceType": entry.resource_type, "id": entry.id}
                plan.versions.append(
                    NewVersion(*key, entry.version, entry.patient, bare, deleted=True)
                )
                continue
            entry.set_id(entry.id)
            if entry.version > 1:
                key = (entry.resource_type, entry.id)
                if key not in current:
                    current[key] = self.repository.current(conn, *key)
                before = current[key]
                if (
                    before is not None
                    and not before.deleted
                    # An update (rare in a load): the resource is parsed to compare.
                    and canonical(before.resource) == canonical(entry.resource or {})
                ):
                    entry.write = False
                    entry.version -= 1
                    entry.status = "200 OK"
                    continue
            entry.patient = entry.owner()
            plan.versions.append(entry.new_version())
        self._map(plan, live, taken, held)
        self._map_codes(conn, plan)
        return plan

    def _map_codes(self, conn: Connection, plan: _Plan) -> None:
        """Codes the registry does not know (of a system other than LOINC, or local codes
        sent as LOINC, as synthea-hiv does) -> registry codes, by the mapping table (per
        source system: the coding's system URI)."""
        registry = self.ingestor.registry
        local: dict[str, set[str]] = {}
        for item in plan.items:
            system = item.get("system", LOINC)
            if isinstance(system, str) and (system != LOINC or registry.get(item["code"]) is None):
                local.setdefault(system, set()).add(item["code"])
        if not local:
            return  # all known LOINC codes: no query
        found = {system: mappings.lookup(conn, system, codes) for system, codes in local.items()}
        for item in plan.items:
            system = item.get("system", LOINC)
            mapping = found.get(system, {}).get(item["code"]) if isinstance(system, str) else None
            if mapping is None:
                continue
            spec = registry.get(mapping.code)
            item["code"] = mapping.code
            if spec is None or spec.system == LOINC:
                item.pop("system", None)
            else:
                item["system"] = spec.system
            if mapping.unit is not None:
                # The mapping knows the unit this system's values of the code are in.
                item["unit"] = mapping.unit

    def _prefetch(
        self,
        conn: Connection,
        entries: list[_Entry],
        criteria_of: Callable[[str, str, str], list[tuple[str, list[str]]]],
    ) -> dict[tuple[str, str], set[str]]:
        """Matches of the Bundle's conditional references and ``ifNoneExist`` searches on
        one identifier (Synthea's ``Practitioner?identifier=...``), one query per type."""
        queries: set[tuple[str, str]] = set()
        for entry in entries:
            if entry.if_none_exist is not None:
                queries.add((entry.resource_type, entry.if_none_exist))
            if entry.condition is not None:
                queries.add((entry.resource_type, entry.condition))
            for holder in entry.holders:
                reference = holder["reference"]
                if "?" in reference and not reference.startswith(("#", *_INTERNAL_PREFIXES)):
                    resource_type, _, query = reference.partition("?")
                    queries.add((resource_type, query))
        wanted: dict[str, dict[tuple[str, str], list[str]]] = {}
        for resource_type, query in queries:
            try:
                criteria = criteria_of(resource_type, query, "")
            except FhirError:
                continue  # reported where it is used
            if len(criteria) == 1 and criteria[0][0] == "identifier":
                wanted.setdefault(resource_type, {})[(resource_type, query)] = criteria[0][1]
        found: dict[tuple[str, str], set[str]] = {}
        for resource_type, by_query in wanted.items():
            values = {v for vs in by_query.values() for v in vs}
            ids = self.repository.find_values(conn, resource_type, "identifier", values)
            for key, vs in by_query.items():
                found[key] = set().union(*(ids.get(v, set()) for v in vs))
        return found

    def _criteria(self, resource_type: str, query: str, where: str) -> list[tuple[str, list[str]]]:
        criteria: list[tuple[str, list[str]]] = []
        pairs = parse_qsl(query, keep_blank_values=True)
        if not pairs or model_class(resource_type) is None:
            raise InvalidResourceError(
                [Issue(f"unsupported search {resource_type[:64]}?{query[:128]}", where)]
            )
        for param, value in pairs:
            values = query_values(resource_type, param, value, self.privacy.blind_index)
            if values is None:
                raise InvalidResourceError(
                    [
                        Issue(
                            f"unsupported search parameter {param[:64]!r}",
                            where,
                            code="not-supported",
                        )
                    ]
                )
            if param == "name":  # every token must match
                criteria += [(param, [v]) for v in values]
            else:
                criteria.append((param, values))
        return criteria

    @staticmethod
    def _match(
        entry: _Entry,
        matches: Callable[[str, str, str], set[str]],
        hold: Callable[[str, str], None],
    ) -> None:
        """The target of a conditional update: the one match, else the resource's own id
        (an update as create), else none (a create with a server id)."""
        assert entry.has_resource
        assert entry.condition is not None
        where = f"Bundle.entry[{entry.index}].request.url"
        found = matches(entry.resource_type, entry.condition, where)
        if len(found) > 1:
            raise PreconditionFailedError(
                [
                    Issue(
                        f"conditional update matches {len(found)} resources",
                        where,
                        code="multiple-matches",
                    )
                ]
            )
        wanted = entry.wanted
        if found:
            target = next(iter(found))
            if wanted not in (None, target):
                raise InvalidResourceError(
                    [Issue(f"resource id differs from the match {target}", f"{entry.base}.id")]
                )
            entry.target_id = target
        elif isinstance(wanted, str) and ID_PATTERN.fullmatch(wanted):
            entry.target_id = wanted
        if entry.target_id is not None:
            hold(entry.resource_type, entry.target_id)

    def _assign(
        self,
        entry: _Entry,
        held: dict[tuple[str, str], int],
        gone: set[tuple[str, str]],
        taken: set[tuple[str, str]],
        matches: Callable[[str, str, str], set[str]],
    ) -> None:
        """Give the entry its id and version (or the resource an ``ifNoneExist`` found)."""
        if entry.method == "PUT" and entry.target_id is not None:
            entry.id = entry.target_id
            key = (entry.resource_type, entry.id)
            previous = held.get(key, 0)
            entry.version = previous + 1
            held[key] = entry.version
            # An update of a deleted resource brings it back: created again.
            entry.status = "200 OK" if previous and key not in gone else "201 Created"
            gone.discard(key)
            entry.write = True
            return
        if entry.if_none_exist is not None:
            where = f"Bundle.entry[{entry.index}].request"
            found = matches(entry.resource_type, entry.if_none_exist, f"{where}.ifNoneExist")
            if len(found) > 1:
                raise PreconditionFailedError(
                    [
                        Issue(
                            f"ifNoneExist matches {len(found)} resources",
                            f"{where}.ifNoneExist",
                            code="multiple-matches",
                        )
                    ]
                )
            if found:
                entry.id = next(iter(found))
                entry.version = held.get((entry.resource_type, entry.id)) or 1
                entry.status = "200 OK"
                entry.write = False
                return
        # The server assigns the id: the client's own when it is free (Synthea's UUIDs
        # stay recognisable), a fresh UUID otherwise.
        wanted = entry.wanted
        key = (entry.resource_type, wanted if isinstance(wanted, str) else "")
        if isinstance(wanted, str) and key not in held and key not in taken:
            entry.id = wanted
        else:
            entry.id = str(uuid.uuid4())
        entry.version = 1
        held[(entry.resource_type, entry.id)] = 1
        entry.status = "201 Created"
        entry.write = True

    def _resolve(
        self,
        conn: Connection,
        entry: _Entry,
        full_urls: dict[str, str],
        resolved: dict[str, str],
        taken: set[tuple[str, str]],
        held: dict[tuple[str, str], int],
        exists: dict[str, bool],
        matches: Callable[[str, str, str], set[str]],
        plan: _Plan,
    ) -> None:
        """Rewrite the entry's references to the ids they resolve to (``resolved``: the
        conditional references resolved already, and their targets)."""
        for slot, holder in enumerate(entry.holders):
            reference = holder["reference"]
            # Most references point into the Bundle: resolved before anything else.
            target = full_urls.get(reference) or resolved.get(reference)
            if target is not None:
                holder["reference"] = target
                continue
            if reference.startswith("#"):
                continue
            if reference.startswith(_INTERNAL_PREFIXES):
                entry.fail(
                    Issue(
                        f"reference {reference[:100]} is not in the Bundle",
                        entry.reference_path(slot),
                        code="not-found",
                    )
                )
                continue
            if "?" in reference:
                resource_type, _, query = reference.partition("?")
                try:
                    found = matches(resource_type, query, "")
                except FhirError as exc:
                    entry.fail(
                        *[
                            issue
                            if issue.expression
                            else replace(issue, expression=entry.reference_path(slot))
                            for issue in exc.issues
                        ]
                    )
                    continue
                if len(found) == 1:
                    target = resolved[reference] = f"{resource_type}/{next(iter(found))}"
                    holder["reference"] = target
                elif not found:
                    entry.fail(
                        Issue(
                            "conditional reference matches nothing",
                            entry.reference_path(slot),
                            code="not-found",
                        )
                    )
                else:
                    entry.fail(
                        Issue(
                            f"conditional reference matches {len(found)} resources",
                            entry.reference_path(slot),
                            code="multiple-matches",
                        )
                    )
                continue
            parts = reference.split("/")
            known = False
            if len(parts) in (2, 4) and ID_PATTERN.fullmatch(parts[1]):
                key = (parts[0], parts[1])
                if key in taken or key in held:
                    known = True
                else:
                    if reference not in exists:
                        exists[reference] = bool(
                            self.repository.current_versions(conn, key[0], [key[1]])
                        )
                    known = exists[reference]
                    if known:
                        held.setdefault(key, 1)
            if not known:
                plan.unresolved.append(reference[:256])
                issue = Issue(
                    f"reference {reference[:100]} is not held by this server",
                    entry.reference_path(slot),
                    code="not-found",
                )
                if self.strict_references:
                    entry.fail(issue)
                else:
                    plan.notes.setdefault(entry.index, []).append(
                        replace(issue, severity="warning")
                    )

    def _map(
        self,
        plan: _Plan,
        entries: list[_Entry],
        taken: set[tuple[str, str]],
        held: dict[tuple[str, str], int],
    ) -> None:
        """Patients, observation items and interventions of the entries to write."""
        runtime = self.ingestor.runtime
        for entry in entries:
            if entry.issues or not entry.write:
                continue
            if entry.resource_type == "MedicationAdministration" and (
                entry.version > 1 or entry.method == "DELETE"
            ):
                plan.withdrawn.append(entry.id)
            if entry.resource_type not in _MAPPED:
                continue
            if entry.method == "DELETE" and (
                entry.prior is None or entry.resource_type != "Observation"
            ):
                continue
            patient = entry.patient
            if entry.resource_type == "Patient":
                if PATIENT_ID.fullmatch(entry.id):
                    plan.patients.append(entry)
                continue
            if patient is None or not PATIENT_ID.fullmatch(patient):
                continue
            if (
                ("Patient", patient) not in taken
                and ("Patient", patient) not in held
                and patient not in runtime
            ):
                continue
            if entry.resource_type == "Observation":
                values = entry.values
                if values is None:
                    values = observation_values(entry.recorded())
                items = items_of(values, entry.id, patient, entry.version)
                for position, item in enumerate(items):
                    if entry.method == "DELETE":
                        # The twins forget what the deleted version told them.
                        item["status"] = "entered-in-error"
                    plan.items.append(item)
                    plan.item_entries.append((entry, position))
                continue
            # One intervention per version: an update withdraws the earlier ones.
            intervention = intervention_of(
                entry.recorded(), f"{entry.id}/_history/{entry.version}", patient
            )
            if intervention is not None:
                plan.interventions.append(intervention)

    def _prepare(
        self, kind: str, plan: _Plan, message: str, *, in_bundle: bool
    ) -> PreparedBatch | None:
        """Validate the observation items; a rejected one fails its entry.

        Each item's origin is ``message`` and, in a Bundle, its entry ``Bundle.entry[i]``.
        """
        if not plan.items:
            return None
        origins = [
            Origin(CHANNEL, message, f"Bundle.entry[{entry.index}]" if in_bundle else None)
            for entry, _ in plan.item_entries
        ]
        batch = self.ingestor.prepare(plan.items, channel=CHANNEL, origins=origins)
        if not batch.rejections:
            return batch
        failed: set[int] = set()
        for rejection in batch.rejections:
            entry, position = plan.item_entries[rejection.index]
            # The element paths of the items are made only for a fault.
            assert entry.patient is not None
            mapped = observation_items(
                entry.recorded(), entry.id, entry.patient, entry.version, entry.base
            )[position]
            path = mapped.paths.get(rejection.field, entry.base)
            entry.fail(Issue(rejection.reason, path, code="value"))
            failed.add(id(entry))
        if kind == "transaction":
            return batch
        # Batch: the failed entries' other items go too; the rest is committed.
        accepted = [
            (i, obs) for i, obs in batch.accepted if id(plan.item_entries[i][0]) not in failed
        ]
        return replace(
            batch,
            accepted=accepted,
            rejections=[],
            observations=[obs for _, obs in accepted],
            quarantine=[],
            origins=[origins[i] for i, _ in accepted],
        )

    # -- writing (inside the write transaction) ------------------------------

    def _write_patients(
        self, conn: Connection, plan: _Plan, now: int, care_team: str | None
    ) -> list[str]:
        """Patients rows with sealed demographics and blind-index digests."""
        entries = [e for e in plan.patients if not e.issues and e.write]
        if not entries:
            return []
        ids = [e.id for e in entries]
        table = schema.patients
        known = {row[0] for row in conn.execute(sa.select(table.c.id).where(table.c.id.in_(ids)))}
        fresh = [
            Patient(p, "pt-" + secrets.token_hex(8), created_us=now) for p in ids if p not in known
        ]
        if fresh:
            self.store._insert_patients(conn, fresh)
        if care_team is not None:
            self.store._join_team(conn, care_team, set(ids))
        vault = self.vault
        sealed_rows: list[dict[str, str]] = []
        digest_rows: list[dict[str, str]] = []
        # A patient written twice: the last version wins, as in one write after the other.
        latest = {entry.id: entry for entry in entries}
        for patient, entry in latest.items():
            assert entry.resource is not None
            demographics = demographics_of(entry.resource)
            key = vault._data_key(conn, patient, now)
            sealed = DataKeys.seal(
                key, demographics.model_dump_json().encode(), aad=vault._aad(patient)
            )
            sealed_rows.append({"patient": patient, "sealed": encode(sealed)})
            digest_rows += [
                {"patient_id": patient, "kind": kind, "digest": digest}
                for kind, digest in sorted(set(vault._digests(demographics)))
            ]
        # One statement each for all the Bundle's patients.
        conn.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("patient"))
            .values(demographics=sa.bindparam("sealed")),
            sealed_rows,
        )
        blind = schema.blind_index
        conn.execute(sa.delete(blind).where(blind.c.patient_id.in_(list(latest))))
        if digest_rows:
            conn.execute(sa.insert(blind), digest_rows)
        return ids

    def _append(
        self, conn: Connection, batch: PreparedBatch, care_team: str | None
    ) -> list[AppendStatus]:
        """``SqlStore.append`` on the caller's connection (one transaction with the resources)."""
        store = self.store
        statuses, unique = _dedupe(batch.observations)
        if batch.new_patients:
            store._insert_patients(conn, batch.new_patients)
        if care_team is not None and batch.observations:
            store._join_team(conn, care_team, {obs.patient for obs in batch.observations})
        fresh = store._insert_observations(conn, unique, batch.received_us)
        if len(fresh) != len(unique):
            store._classify_existing(conn, unique, fresh, statuses)
        if batch.origins is not None and fresh:
            store._insert_origins(conn, unique, fresh, batch.origins)
        conflicts = [
            _conflict_entry(obs, CHANNEL, batch.received_us)
            for obs, status in zip(batch.observations, statuses, strict=True)
            if status is AppendStatus.CONFLICT
        ]
        if batch.quarantine or conflicts:
            store._insert_quarantine(conn, [*batch.quarantine, *conflicts])
        return [AppendStatus.STORED if s is None else s for s in statuses]

    def _quarantine_entries(
        self, conn: Connection, failed: Sequence[_Entry], now: int, source: str | None
    ) -> None:
        self.store._insert_quarantine(
            conn,
            [
                QuarantineEntry(
                    channel=CHANNEL,
                    location=entry.issues[0].expression or f"Bundle.entry[{entry.index}]",
                    reason=entry.issues[0].diagnostics[:1000],
                    payload=_dump(entry.resource),
                    source=source,
                    received_us=now,
                )
                for entry in failed
            ],
        )

    def _result(
        self,
        kind: str,
        entries: list[_Entry],
        plan: _Plan,
        batch: PreparedBatch | None,
        statuses: Sequence[AppendStatus],
        now: int,
    ) -> BundleResult:
        unmapped: dict[str, int] = {}
        unmapped_by_entry: dict[int, set[str]] = {}
        stored = 0
        if batch is not None:
            for (index, obs), status in zip(batch.accepted, statuses, strict=True):
                if status is not AppendStatus.STORED:
                    continue
                stored += 1
                if obs.flags & _UNMAPPED:
                    unmapped[obs.system] = unmapped.get(obs.system, 0) + 1
                    entry = plan.item_entries[index][0]
                    unmapped_by_entry.setdefault(entry.index, set()).add(f"{obs.system}|{obs.code}")
        out: list[dict[str, Any]] = []
        response: dict[str, Any]
        modified = to_iso(now)
        counts = {
            "created": 0,
            "updated": 0,
            "unchanged": 0,
            "reused": 0,
            "deleted": 0,
            "failed": 0,
        }
        for entry in entries:
            if entry.issues:
                counts["failed"] += 1
                failure = {
                    412: "412 Precondition Failed",
                    405: "405 Method Not Allowed",
                }.get(_refusal(entry.issues).status, "400 Bad Request")
                out.append(
                    {"response": {"status": failure, "outcome": operation_outcome(entry.issues)}}
                )
                continue
            if entry.method == "DELETE":
                response = {"status": _NO_CONTENT}
                if entry.write:
                    counts["deleted"] += 1
                    response["etag"] = f'W/"{entry.version}"'
                    response["lastModified"] = modified
                else:
                    counts["unchanged"] += 1
                out.append({"response": response})
                continue
            version = entry.version
            response = {
                "status": entry.status,
                "location": f"{entry.resource_type}/{entry.id}/_history/{version}",
                "etag": f'W/"{version}"',
            }
            if entry.write:
                counts["created" if entry.status.startswith("201") else "updated"] += 1
                response["lastModified"] = modified
            elif entry.method == "PUT":
                counts["unchanged"] += 1
            else:
                counts["reused"] += 1
            if entry.index in plan.notes or entry.index in unmapped_by_entry:
                notes = list(plan.notes.get(entry.index, ()))
                for code in sorted(unmapped_by_entry.get(entry.index, ())):
                    notes.append(
                        Issue(
                            f"code {code} is not in the registry: stored, not scored",
                            entry.base,
                            severity="information",
                            code="code-invalid",
                        )
                    )
                response["outcome"] = operation_outcome(notes)
            out.append({"response": response})
        response_bundle = {
            "resourceType": "Bundle",
            "type": f"{kind}-response",
            "entry": out,
        }
        report = BundleReport(
            created=counts["created"],
            updated=counts["updated"],
            unchanged=counts["unchanged"],
            reused=counts["reused"],
            deleted=counts["deleted"],
            failed=counts["failed"],
            observations=stored,
            unmapped=unmapped,
            unresolved=sorted(set(plan.unresolved)),
        )
        return BundleResult(response_bundle, report)

    # -- reads ----------------------------------------------------------------

    def read(
        self, resource_type: str, resource_id: str, version: int | None = None
    ) -> StoredResource:
        """The current (or given) version; ResourceNotFoundError when not held,
        ResourceGoneError when it (the version) is a deletion."""
        found = None
        if model_class(resource_type) is not None and ID_PATTERN.fullmatch(resource_id):
            found = self.repository.read(resource_type, resource_id, version)
        if found is None:
            raise ResourceNotFoundError(
                [Issue(f"no {resource_type[:64]}/{resource_id[:64]}", code="not-found")]
            )
        if found.deleted:
            raise ResourceGoneError(
                [
                    Issue(
                        f"{resource_type}/{resource_id} was deleted (version {found.version})",
                        code="deleted",
                    )
                ],
                patient=found.patient_id,
            )
        return found

    def history(self, resource_type: str, resource_id: str) -> list[StoredResource]:
        """Every version (deletions included), newest first; ResourceNotFoundError when
        not held."""
        versions: list[StoredResource] = []
        if model_class(resource_type) is not None and ID_PATTERN.fullmatch(resource_id):
            versions = self.repository.history(resource_type, resource_id)
        if not versions:
            raise ResourceNotFoundError(
                [Issue(f"no {resource_type[:64]}/{resource_id[:64]}", code="not-found")]
            )
        return versions

    def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        allow: Callable[[set[str]], set[str]] | None = None,
        count: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[StoredResource]]:
        """(total, page) of a search on Patient or Observation; InvalidResourceError if bad."""
        if resource_type not in _SEARCH_PARAMS:
            raise InvalidResourceError(
                [Issue(f"search on {resource_type[:64]} is not supported", code="not-supported")]
            )
        criteria: list[tuple[str, list[str]]] = []
        dates: list[tuple[str, str]] = []
        for param, value in params:
            where = f"query.{param[:64]}"
            if param not in _SEARCH_PARAMS[resource_type]:
                raise InvalidResourceError(
                    [Issue(f"unknown search parameter {param[:64]!r}", where, code="not-supported")]
                )
            if param == "date":
                dates += _date_bounds(value, where)
                continue
            values = query_values(resource_type, param, value, self.privacy.blind_index)
            assert values is not None
            if param == "name":
                criteria += [(param, [v]) for v in values] or [(param, [])]
            else:
                criteria.append(("subject" if param == "patient" else param, values))
        return self.repository.search(
            resource_type, criteria, dates=dates, allow=allow, count=count, offset=offset
        )


_BUNDLE_ELEMENTS = frozenset(
    {"resourceType", "id", "meta", "implicitRules", "language", "identifier", "type",
     "timestamp", "total", "link", "entry", "signature"}
)  # fmt: skip


def _refusal(issues: Sequence[Issue]) -> FhirError:
    """The error of entries refused before any lookup (a Patient DELETE: 405)."""
    if any(issue.diagnostics == _PATIENT_DELETE for issue in issues):
        return MethodNotAllowedError(issues)
    if any(issue.code == "multiple-matches" for issue in issues):
        return PreconditionFailedError(issues)
    return InvalidResourceError(issues)


def _assign_delete(
    entry: _Entry, held: dict[tuple[str, str], int], gone: set[tuple[str, str]]
) -> None:
    """A DELETE's version: the next one, or none when there is nothing to delete."""
    assert entry.target_id is not None
    entry.id = entry.target_id
    key = (entry.resource_type, entry.id)
    previous = held.get(key, 0)
    entry.status = _NO_CONTENT
    if not previous or key in gone:
        entry.version = previous
        entry.write = False
        return
    entry.version = previous + 1
    held[key] = entry.version
    gone.add(key)
    entry.write = True


def _failure(issues: Sequence[Issue]) -> FhirError:
    """The error of a failed transaction, by its worst issue."""
    codes = {issue.code for issue in issues}
    if any(issue.diagnostics == _PATIENT_DELETE for issue in issues):
        return MethodNotAllowedError(issues)
    if "multiple-matches" in codes:
        return PreconditionFailedError(issues)
    if codes & {"not-supported", "structure", "required"}:
        return InvalidResourceError(issues)
    return UnprocessableError(issues)


def _failed_version(version: NewVersion, entries: list[_Entry]) -> bool:
    return any(
        e.issues and e.resource_type == version.resource_type and e.id == version.id
        for e in entries
    )


def _date_bounds(value: str, where: str) -> list[tuple[str, str]]:
    prefix = value[:2] if value[:2] in _DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in _DATE_PREFIXES else value
    found = time_range(text)
    if found is None:
        raise InvalidResourceError(
            [Issue("date must be a FHIR date or dateTime with a zone", where)]
        )
    start, end = sortable_time(found[0]), sortable_time(found[1])
    return {
        "eq": [(">=", start), ("<", end)],
        "ge": [(">=", start)],
        "gt": [(">=", end)],
        "le": [("<", end)],
        "lt": [("<", start)],
    }[prefix]


def _scan(
    resource: dict[str, Any], base: str, limit: int
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], str]], bool]:
    """A copy of ``resource``, its objects with a string ``reference`` (with their element
    paths), and whether it nests deeper than ``limit``."""
    holders: list[tuple[dict[str, Any], str]] = []
    trail: list[str] = [base]
    deep = False

    def copy(value: Any, depth: int) -> Any:
        nonlocal deep
        if depth > limit:
            deep = True
            return None
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, child in value.items():
                if isinstance(child, (dict, list)):
                    trail.append(f".{key}")
                    out[key] = copy(child, depth + 1)
                    trail.pop()
                else:
                    out[key] = child
            if isinstance(out.get("reference"), str):
                holders.append((out, "".join(trail) + ".reference"))
            return out
        items: list[Any] = []
        for index, child in enumerate(value):
            if isinstance(child, (dict, list)):
                trail.append(f"[{index}]")
                items.append(copy(child, depth + 1))
                trail.pop()
            else:
                items.append(child)
        return items

    copied: dict[str, Any] = copy(resource, 1)
    return copied, holders, deep


def _locate(root: Any, target: dict[str, Any], base: str) -> str:
    """Element path of the ``reference`` of ``target`` (an object inside ``root``)."""
    stack: list[tuple[Any, str]] = [(root, base)]
    while stack:
        value, path = stack.pop()
        if value is target:
            return f"{path}.reference"
        if isinstance(value, dict):
            stack.extend(
                (v, f"{path}.{k}") for k, v in value.items() if isinstance(v, (dict, list))
            )
        elif isinstance(value, list):
            stack.extend(
                (v, f"{path}[{i}]") for i, v in enumerate(value) if isinstance(v, (dict, list))
            )
    return f"{base}.reference"


def read_bundle(
    document: Any, *, max_entries: int, max_depth: int, source: str | None = None
) -> ReadBundle:
    """Check a Bundle's shape and every entry (no store needed): FhirError when a
    transaction is refused as a whole."""
    kind, entries = read_entries(
        document,
        lambda i: f"Bundle.entry[{i}].resource",
        max_entries=max_entries,
        max_depth=max_depth,
    )
    if kind == "transaction":
        issues = [issue for entry in entries for issue in entry.issues]
        if issues:
            raise _refusal(issues)
    digest = hashlib.sha256(dump_json(document, sort_keys=True)).hexdigest()
    bundle_id = document.get("id")
    message = (
        bundle_id
        if isinstance(bundle_id, str) and ID_PATTERN.fullmatch(bundle_id)
        else f"bundle-{digest[:16]}"
    )
    return ReadBundle(kind, entries, digest, message, source)


def read_entries(
    document: Any, base_of: Callable[[int], str], *, max_entries: int, max_depth: int
) -> tuple[str, list[_Entry]]:
    """Check the Bundle's shape and every entry's request and resource (no lock held)."""
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        if _depth_exceeds(document, max_depth):
            raise TooLargeError(
                [Issue(f"JSON nested deeper than {max_depth}", "", code="too-costly")]
            )
        raise InvalidResourceError([Issue("the body must be a Bundle", "Bundle", code="structure")])
    # Everything but the resources here; each resource while it is checked or copied.
    shallow = {k: v for k, v in document.items() if k != "entry"}
    entries_value = document.get("entry")
    outside = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in (entries_value if isinstance(entries_value, list) else ())
    ]
    if _depth_exceeds([shallow, outside], max_depth - 1) or (
        not isinstance(entries_value, list) and _depth_exceeds(entries_value, max_depth - 1)
    ):
        raise TooLargeError(
            [Issue(f"JSON nested deeper than {max_depth}", "Bundle", code="too-costly")]
        )
    kind = document.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidResourceError(
            [
                Issue(
                    "only transaction and batch Bundles are processed",
                    "Bundle.type",
                    code="not-supported",
                )
            ]
        )
    raw_entries = document.get("entry", [])
    if not isinstance(raw_entries, list):
        raise InvalidResourceError(
            [Issue("entry must be an array", "Bundle.entry", code="structure")]
        )
    if len(raw_entries) > max_entries:
        raise TooLargeError(
            [
                Issue(
                    f"{len(raw_entries)} entries exceed {max_entries}",
                    "Bundle.entry",
                    code="too-costly",
                )
            ]
        )
    bundle_issues = [
        Issue(f"unknown element {name[:64]!r}", f"Bundle.{name[:64]}", code="structure")
        for name in document
        if name not in _BUNDLE_ELEMENTS
    ]
    if bundle_issues:
        raise InvalidResourceError(bundle_issues)
    entries = [_read_entry(i, raw, base_of(i), max_depth) for i, raw in enumerate(raw_entries)]
    return kind, entries


def _read_entry(index: int, raw: Any, base: str, max_depth: int) -> _Entry:
    """One entry checked; TooLargeError when its resource nests deeper than allowed
    (the document's depth is checked here: :func:`parse_json` may leave it)."""
    entry = _check_entry(index, raw, base, max_depth)
    if not entry.has_resource and isinstance(raw, dict):
        # Not walked (the entry failed first): its depth is checked alone.
        resource = raw.get("resource")
        if isinstance(resource, (dict, list)) and _depth_exceeds(resource, max_depth - 3):
            raise TooLargeError(
                [Issue(f"JSON nested deeper than {max_depth}", base, code="too-costly")]
            )
    return entry


def _check_entry(index: int, raw: Any, base: str, max_depth: int) -> _Entry:
    entry = _Entry(index, base)
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        entry.fail(Issue("an entry must be an object", where, code="structure"))
        return entry
    request = raw.get("request")
    resource = raw.get("resource")
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        entry.fail(Issue("fullUrl must be a string", f"{where}.fullUrl"))
    entry.full_url = full_url if isinstance(full_url, str) else None
    if not isinstance(request, dict):
        entry.fail(Issue("request is required", f"{where}.request", code="required"))
        return entry
    method = request.get("method")
    url = request.get("url")
    if method not in ("POST", "PUT", "DELETE"):
        entry.fail(
            Issue(
                "only POST, PUT and DELETE are supported",
                f"{where}.request.method",
                code="not-supported",
            )
        )
        return entry
    if not isinstance(url, str) or not url:
        entry.fail(Issue("request.url is required", f"{where}.request.url", code="required"))
        return entry
    if method == "DELETE":
        _delete_entry(entry, url, resource, where)
        return entry
    if not isinstance(resource, dict):
        entry.fail(Issue("resource is required", f"{where}.resource", code="required"))
        return entry
    entry.method = method
    entry.wanted = resource.get("id")
    # A copy: references are rewritten in it, the caller's document stays as it was.
    fast = check_resource(resource, max_depth - 3)
    if fast is not None and not code_issues(resource, base):
        copied, holders = fast
        kind = copied["resourceType"]
        # What the commit needs of most resources is made here (in a Bundle reader's
        # process): their JSON with slots, and their search rows.
        if kind not in PERSONAL_TYPES:
            entry.rows = tuple(public_rows(kind, copied))
        if kind == "Observation":
            entry.values = observation_values(copied)
        body = None if kind in _PARSED else make_body(copied, holders)
        if body is not None:
            entry.body, holders = body, body.holders
        else:
            entry.resource = copied
        # Their paths are found when needed (an issue names one).
        entry.holders = holders
        issues: list[Issue] = []
    else:
        # The models decide, and name the element path of each fault.
        copied, refs, too_deep = _scan(resource, base, max_depth - 3)
        if too_deep:
            raise TooLargeError(
                [Issue(f"JSON nested deeper than {max_depth}", base, code="too-costly")]
            )
        entry.resource = copied
        entry.holders = [holder for holder, _ in refs]
        entry.paths = [path for _, path in refs]
        issues = validate_resource(resource, base)
    resource_type = resource.get("resourceType")
    entry.resource_type = resource_type if isinstance(resource_type, str) else ""
    if issues:
        entry.fail(*issues)
        return entry
    path = url.split("?", 1)[0].strip("/")
    if method == "POST":
        if path != entry.resource_type:
            entry.fail(Issue(f"POST url must be {entry.resource_type}", f"{where}.request.url"))
        if_none = request.get("ifNoneExist")
        if if_none is not None and not isinstance(if_none, str):
            entry.fail(Issue("ifNoneExist must be a string", f"{where}.request.ifNoneExist"))
        entry.if_none_exist = if_none if isinstance(if_none, str) and if_none else None
    elif "?" in url:
        query = url.split("?", 1)[1]
        if path != entry.resource_type or not query:
            entry.fail(
                Issue(
                    f"conditional PUT url must be {entry.resource_type}?<search>",
                    f"{where}.request.url",
                    code="not-supported",
                )
            )
        else:
            entry.condition = query
    else:
        parts = path.split("/")
        if len(parts) != 2 or parts[0] != entry.resource_type:
            entry.fail(
                Issue(
                    f"PUT url must be {entry.resource_type}/<id>",
                    f"{where}.request.url",
                    code="not-supported",
                )
            )
        elif not ID_PATTERN.fullmatch(parts[1]):
            entry.fail(Issue("invalid resource id", f"{where}.request.url"))
        elif resource.get("id") not in (None, parts[1]):
            entry.fail(Issue("resource id differs from the url", f"{base}.id"))
        else:
            entry.target_id = parts[1]
    return entry


def _delete_entry(entry: _Entry, url: str, resource: Any, where: str) -> None:
    """A DELETE entry: ``Type/id`` only (no conditional delete), never a Patient."""
    entry.method = "DELETE"
    parts = url.strip("/").split("/")
    if resource is not None:
        entry.fail(Issue("a DELETE entry has no resource", f"{where}.resource", code="structure"))
    elif "?" in url:
        entry.fail(
            Issue(
                "conditional delete is not supported",
                f"{where}.request.url",
                code="not-supported",
            )
        )
    elif len(parts) != 2 or model_class(parts[0]) is None:
        entry.fail(
            Issue("DELETE url must be <type>/<id>", f"{where}.request.url", code="not-supported")
        )
    elif not ID_PATTERN.fullmatch(parts[1]):
        entry.fail(Issue("invalid resource id", f"{where}.request.url"))
    elif parts[0] == "Patient":
        entry.fail(Issue(_PATIENT_DELETE, f"{where}.request.method", code="not-supported"))
    else:
        entry.resource_type, entry.target_id = parts[0], parts[1]


def _nothing() -> None:
    """Nothing to do after the commit (a replayed Bundle)."""


def _dump(value: Any) -> str:
    try:
        return dump_json(value).decode()
    except (TypeError, ValueError):
        return repr(value)
