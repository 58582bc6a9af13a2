"""Raw FHIR resources, versioned and sealed, with their search index.

Tables (``medtwin.data.store.schema``): ``fhir_resources`` keeps every version
of every resource as the JSON received (references resolved), sealed with the
keyring (AES-GCM, associated data ``fhir:<type>/<id>/<version>``);
``fhir_search`` holds the current version's search values, personal ones as
blind-index digests; ``fhir_bundles`` the responses of processed Bundles by
content digest.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.clock import to_iso
from medtwin.data.crypto import BlindIndex, Keyring
from medtwin.data.store import SqlStore, schema
from medtwin.devices.fhir.mapping import search_rows

__all__ = ["ResourceRepository", "StoredResource"]

SEALED = "sealed:"
_SEALED = SEALED.encode()
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_CHUNK = 500
_RESOURCES = schema.fhir_resources
_SEARCH = schema.fhir_search


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as served: the stored JSON with ``meta`` set."""

    resource_type: str
    id: str
    version: int
    last_updated_us: int
    patient_id: str | None
    resource: dict[str, Any]
    deleted: bool = False  # a deletion: ``resource`` is only its type and id


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to write: the resource JSON (without server meta).

    ``content`` and ``rows``, when given, are its compact JSON and its search rows
    (made already: ``resource`` is then only its type and id); otherwise both are
    made of ``resource``.
    """

    resource_type: str
    id: str
    version: int
    patient_id: str | None
    resource: dict[str, Any]
    deleted: bool = False  # a deletion: no search rows, ``resource`` only its type and id
    content: bytes | None = None
    rows: Collection[tuple[str, str]] | None = None

    def json(self) -> bytes:
        """The compact JSON stored."""
        return dump_json(self.resource) if self.content is None else self.content


def with_meta(resource: dict[str, Any], version: int, last_updated_us: int) -> dict[str, Any]:
    """``resource`` with the server's meta (versionId, lastUpdated) over the client's."""
    meta = resource.get("meta")
    merged = dict(meta) if isinstance(meta, dict) else {}
    merged["versionId"] = str(version)
    merged["lastUpdated"] = to_iso(last_updated_us)
    return {**resource, "meta": merged}


def dump_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of parsed JSON (orjson; ``json`` for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        text = json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


def canonical(resource: dict[str, Any]) -> bytes:
    """Canonical JSON of a resource without server meta (to detect no-op updates)."""
    meta = resource.get("meta")
    if isinstance(meta, dict):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        resource = (
            {**resource, "meta": rest}
            if rest
            else {k: v for k, v in resource.items() if k != "meta"}
        )
    return dump_json(resource, sort_keys=True)


class ResourceRepository:
    """Reads and writes of FHIR resources over a :class:`SqlStore`."""

    def __init__(self, store: SqlStore, keyring: Keyring | None, index: BlindIndex) -> None:
        self.store = store
        self.keyring = keyring
        self.index = index

    # -- sealing --------------------------------------------------------------

    @staticmethod
    def _aad(resource_type: str, resource_id: str, version: int) -> bytes:
        return f"fhir:{resource_type}/{resource_id}/{version}".encode()

    def seal(self, resource_type: str, resource_id: str, version: int, content: bytes) -> str:
        if self.keyring is None:
            return content.decode()
        blob = self.keyring.encrypt(content, aad=self._aad(resource_type, resource_id, version))
        return SEALED + base64.urlsafe_b64encode(blob).decode()

    def seal_versions(self, versions: Sequence[NewVersion]) -> list[str]:
        """The stored text of each version's JSON (as :meth:`seal` makes it, in one call
        to the keyring for them all)."""
        contents = [v.json() for v in versions]
        if self.keyring is None:
            return [content.decode() for content in contents]
        aad = self._aad
        blobs = self.keyring.encrypt_many(
            contents, [aad(v.resource_type, v.id, v.version) for v in versions]
        )
        # base64.urlsafe_b64encode, without its two Python calls per blob.
        b64, urlsafe = binascii.b2a_base64, _URLSAFE
        return [(_SEALED + b64(blob, newline=False).translate(urlsafe)).decode() for blob in blobs]

    def unseal(self, resource_type: str, resource_id: str, version: int, text: str) -> str:
        if not text.startswith(SEALED):
            return text
        if self.keyring is None:
            raise RuntimeError("sealed FHIR content and no keyring to open it")
        blob = base64.urlsafe_b64decode(text[len(SEALED) :].encode())
        return self.keyring.decrypt(
            blob, aad=self._aad(resource_type, resource_id, version)
        ).decode()

    def _served(self, row: Any) -> StoredResource:
        text = self.unseal(row.resource_type, row.id, row.version, row.content)
        resource = with_meta(json.loads(text), row.version, row.last_updated_us)
        return StoredResource(
            row.resource_type,
            row.id,
            row.version,
            row.last_updated_us,
            row.patient_id,
            resource,
            bool(row.deleted),
        )

    # -- inside a write transaction -------------------------------------------

    def current_versions(
        self, conn: Connection, resource_type: str, ids: Iterable[str]
    ) -> dict[str, int]:
        """Newest version of each of ``ids`` that is held."""
        found = self.held_versions(conn, [(resource_type, i) for i in ids])
        return {resource_id: version for (_, resource_id), version in found.items()}

    def held_versions(
        self, conn: Connection, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        """Newest version of each (type, id) of ``keys`` that is held (one query per
        500 keys, whatever their types)."""
        found: dict[tuple[str, str], int] = {}
        wanted = sorted(set(keys))
        pair = f"({self.store._params(2)})"
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            # The keys as a table joined on the primary key: one seek per key (a row-value
            # IN made SQLite scan the whole index; types IN and ids IN, a seek per type
            # and id). A plain driver query: SQLAlchemy would compile 1,000 parameters.
            rows = conn.exec_driver_sql(
                f"WITH k (t, i) AS (VALUES {', '.join([pair] * len(chunk))}) "
                "SELECT r.resource_type, r.id, max(r.version) FROM k JOIN fhir_resources r "
                "ON r.resource_type = k.t AND r.id = k.i GROUP BY r.resource_type, r.id",
                tuple(value for key in chunk for value in key),
            )
            found.update({(r[0], r[1]): int(r[2]) for r in rows})
        return found

    def deleted_ids(self, conn: Connection, resource_type: str, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` whose newest version is a deletion."""
        gone: set[str] = set()
        wanted = sorted(set(ids))
        newest = (
            sa.select(_RESOURCES.c.id, sa.func.max(_RESOURCES.c.version).label("version"))
            .where(_RESOURCES.c.resource_type == resource_type)
            .group_by(_RESOURCES.c.id)
        )
        for start in range(0, len(wanted), _CHUNK):
            chunk = newest.where(_RESOURCES.c.id.in_(wanted[start : start + _CHUNK])).subquery()
            rows = conn.execute(
                sa.select(_RESOURCES.c.id)
                .join(
                    chunk,
                    sa.and_(
                        _RESOURCES.c.id == chunk.c.id,
                        _RESOURCES.c.version == chunk.c.version,
                    ),
                )
                .where(_RESOURCES.c.resource_type == resource_type, _RESOURCES.c.deleted)
            )
            gone.update(row[0] for row in rows)
        return gone

    def current(
        self, conn: Connection, resource_type: str, resource_id: str
    ) -> StoredResource | None:
        row = conn.execute(
            sa.select(_RESOURCES)
            .where(_RESOURCES.c.resource_type == resource_type, _RESOURCES.c.id == resource_id)
            .order_by(_RESOURCES.c.version.desc())
            .limit(1)
        ).first()
        return None if row is None else self._served(row)

    def find(
        self, conn: Connection, resource_type: str, criteria: Sequence[tuple[str, Sequence[str]]]
    ) -> set[str]:
        """Ids of ``resource_type`` matching every (param, any of values) criterion."""
        found: set[str] | None = None
        for param, values in criteria:
            if not values:
                return set()
            rows = conn.execute(
                sa.select(_SEARCH.c.id).where(
                    _SEARCH.c.resource_type == resource_type,
                    _SEARCH.c.param == param,
                    _SEARCH.c.value.in_(list(values)),
                )
            )
            ids = {row[0] for row in rows}
            found = ids if found is None else found & ids
            if not found:
                return set()
        return found or set()

    def find_values(
        self, conn: Connection, resource_type: str, param: str, values: Iterable[str]
    ) -> dict[str, set[str]]:
        """Ids of ``resource_type`` per index value of ``param`` (chunked IN queries)."""
        found: dict[str, set[str]] = {}
        wanted = sorted(set(values))
        for start in range(0, len(wanted), _CHUNK):
            rows = conn.execute(
                sa.select(_SEARCH.c.value, _SEARCH.c.id).where(
                    _SEARCH.c.resource_type == resource_type,
                    _SEARCH.c.param == param,
                    _SEARCH.c.value.in_(wanted[start : start + _CHUNK]),
                )
            )
            for value, resource_id in rows:
                found.setdefault(value, set()).add(resource_id)
        return found

    def write(self, conn: Connection, versions: Sequence[NewVersion], now_us: int) -> None:
        """Insert the versions and replace the search rows of their resources."""
        if not versions:
            return
        params = self.store._params
        # Plain driver executemany: tens of thousands of rows per Bundle group, where
        # SQLAlchemy's per-row parameter processing would cost more than the inserts.
        conn.exec_driver_sql(
            "INSERT INTO fhir_resources (resource_type, id, version, last_updated_us, "
            f"patient_id, deleted, content) VALUES ({params(7)})",
            [
                (v.resource_type, v.id, v.version, now_us, v.patient_id, v.deleted, sealed)
                for v, sealed in zip(versions, self.seal_versions(versions), strict=True)
            ],
        )
        updated = [v for v in versions if v.version > 1]
        for v in updated:
            conn.execute(
                sa.delete(_SEARCH).where(
                    _SEARCH.c.resource_type == v.resource_type, _SEARCH.c.id == v.id
                )
            )
        index = self.index
        rows = [
            (v.resource_type, param, value, v.id)
            for v in versions
            if not v.deleted
            for param, value in (
                search_rows(v.resource_type, v.resource, index) if v.rows is None else v.rows
            )
        ]
        if rows:
            conn.exec_driver_sql(
                f"INSERT INTO fhir_search (resource_type, param, value, id) VALUES ({params(4)})",
                rows,
            )

    def repoint(self, conn: Connection, prior: str, survivor: str, now_us: int) -> int:
        """A new version of each current resource of patient ``prior`` (its Patient
        resource aside) with its references to ``Patient/<prior>`` made
        ``Patient/<survivor>``, inside ``conn``'s transaction (a merge); how many."""
        rows = conn.execute(
            sa.select(_RESOURCES)
            .where(_RESOURCES.c.patient_id == prior)
            .order_by(_RESOURCES.c.resource_type, _RESOURCES.c.id, _RESOURCES.c.version)
        ).all()
        newest = {(row.resource_type, row.id): row for row in rows}  # the last version wins
        old, new = f"Patient/{prior}", f"Patient/{survivor}"
        versions = []
        for (resource_type, resource_id), row in sorted(newest.items()):
            if row.deleted or resource_type == "Patient":
                continue
            resource = json.loads(self.unseal(resource_type, resource_id, row.version, row.content))
            if _replace_reference(resource, old, new):
                versions.append(
                    NewVersion(resource_type, resource_id, row.version + 1, survivor, resource)
                )
        self.write(conn, versions, now_us)
        return len(versions)

    # -- reads ----------------------------------------------------------------

    def read(
        self, resource_type: str, resource_id: str, version: int | None = None
    ) -> StoredResource | None:
        """The current (or the given) version of a resource, None if not held."""
        query = sa.select(_RESOURCES).where(
            _RESOURCES.c.resource_type == resource_type, _RESOURCES.c.id == resource_id
        )
        if version is not None:
            query = query.where(_RESOURCES.c.version == version)
        query = query.order_by(_RESOURCES.c.version.desc()).limit(1)
        with self.store.reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else self._served(row)

    def history(self, resource_type: str, resource_id: str) -> list[StoredResource]:
        """Every version of a resource, newest first."""
        query = (
            sa.select(_RESOURCES)
            .where(_RESOURCES.c.resource_type == resource_type, _RESOURCES.c.id == resource_id)
            .order_by(_RESOURCES.c.version.desc())
        )
        with self.store.reading() as conn:
            rows = conn.execute(query).all()
        return [self._served(row) for row in rows]

    def count(self, resource_type: str | None = None) -> int:
        """Number of resources held (deleted ones included) of one type or of all."""
        query = sa.select(
            sa.func.count(sa.distinct(_RESOURCES.c.resource_type + "/" + _RESOURCES.c.id))
        )
        if resource_type is not None:
            query = query.where(_RESOURCES.c.resource_type == resource_type)
        with self.store.reading() as conn:
            return int(conn.execute(query).scalar_one())

    def search(
        self,
        resource_type: str,
        criteria: Sequence[tuple[str, Sequence[str]]],
        *,
        dates: Sequence[tuple[str, str]] = (),
        allow: Callable[[set[str]], set[str]] | None = None,
        count: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[StoredResource]]:
        """(total, page) of current resources matching every criterion (deleted ones never).

        ``dates`` are (SQL operator, sortable time text) bounds on the ``date`` param;
        ``allow`` keeps, of a set of patient ids, those the caller may see.
        """
        with self.store.reading() as conn:
            ids: set[str] | None = self.find(conn, resource_type, criteria) if criteria else None
            if dates:
                query = sa.select(_SEARCH.c.id).where(
                    _SEARCH.c.resource_type == resource_type, _SEARCH.c.param == "date"
                )
                for operator, bound in dates:
                    query = query.where(_SEARCH.c.value.op(operator)(bound))
                dated = {row[0] for row in conn.execute(query)}
                ids = dated if ids is None else ids & dated
            newest = (
                sa.select(
                    _RESOURCES.c.id,
                    sa.func.max(_RESOURCES.c.version).label("version"),
                )
                .where(_RESOURCES.c.resource_type == resource_type)
                .group_by(_RESOURCES.c.id)
            )
            rows: list[Any] = []
            if ids is None:
                rows = list(conn.execute(newest))
            else:
                wanted = sorted(ids)
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    rows += conn.execute(newest.where(_RESOURCES.c.id.in_(chunk))).all()
            keys = sorted((row[0], int(row[1])) for row in rows)
            owners, deleted = self._owners(conn, resource_type, keys)
            keys = [k for k in keys if k not in deleted]
            if allow is not None:
                permitted = allow({p for p in owners.values() if p is not None})
                keys = [k for k in keys if owners[k] is None or owners[k] in permitted]
            total = len(keys)
            page = keys[offset : offset + count]
            page_versions = dict(page)
            rows_by_id: dict[str, Any] = {}
            ids_page = sorted(page_versions)
            for start in range(0, len(ids_page), _CHUNK):
                chunk = ids_page[start : start + _CHUNK]
                for row in conn.execute(
                    sa.select(_RESOURCES).where(
                        _RESOURCES.c.resource_type == resource_type, _RESOURCES.c.id.in_(chunk)
                    )
                ):
                    if row.version == page_versions[row.id]:
                        rows_by_id[row.id] = row
        return total, [self._served(rows_by_id[resource_id]) for resource_id, _ in page]

    def _owners(
        self, conn: Connection, resource_type: str, keys: Sequence[tuple[str, int]]
    ) -> tuple[dict[tuple[str, int], str | None], set[tuple[str, int]]]:
        """The patient of each key, and the keys that are deletions."""
        owners: dict[tuple[str, int], str | None] = {}
        deleted: set[tuple[str, int]] = set()
        wanted = sorted({k[0] for k in keys})
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            rows = conn.execute(
                sa.select(
                    _RESOURCES.c.id,
                    _RESOURCES.c.version,
                    _RESOURCES.c.patient_id,
                    _RESOURCES.c.deleted,
                ).where(_RESOURCES.c.resource_type == resource_type, _RESOURCES.c.id.in_(chunk))
            )
            for row in rows:
                owners[(row[0], int(row[1]))] = row[2]
                if row[3]:
                    deleted.add((row[0], int(row[1])))
        return {k: owners.get(k) for k in keys}, deleted

    # -- replay ---------------------------------------------------------------

    @staticmethod
    def replayed(conn: Connection, digest: str) -> dict[str, Any] | None:
        row = conn.execute(
            sa.select(schema.fhir_bundles.c.response).where(schema.fhir_bundles.c.digest == digest)
        ).first()
        if row is None:
            return None
        loaded: dict[str, Any] = json.loads(row[0])
        return loaded

    @staticmethod
    def remember(conn: Connection, digest: str, now_us: int, response: dict[str, Any]) -> None:
        conn.execute(
            sa.insert(schema.fhir_bundles),
            [{"digest": digest, "received_us": now_us, "response": dump_json(response).decode()}],
        )


def _replace_reference(value: Any, old: str, new: str) -> bool:
    """Make every ``reference`` equal to ``old`` ``new``, in place; whether any was."""
    found = False
    if isinstance(value, dict):
        if value.get("reference") == old:
            value["reference"] = new
            found = True
        for child in value.values():
            found = _replace_reference(child, old, new) or found
    elif isinstance(value, list):
        for child in value:
            found = _replace_reference(child, old, new) or found
    return found
