"""Module results, the inputs each one read, and the provenance tree back to source messages.

A result is stored under its execution fingerprint with the module's name,
version and parameters; its inputs are observations (by source, id and version),
other results (by fingerprint) or twin attributes. Observations lead to the
message they came in (:class:`~medtwin.data.store.Origin`), so a tree walked
from any derived value ends at FHIR bundles, HL7 messages, MQTT topics and
HTTP requests.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa

from medtwin.core.clock import to_iso
from medtwin.core.errors import NotFoundError
from medtwin.data.store import Origin, SqlStore, schema

__all__ = ["InputRecord", "ObservationKey", "ProvenanceStore", "ResultRecord", "observation_id"]

ObservationKey = tuple[str, str, int]  # (source, source_id, version)
_NO_KEY = (None, None, None)
_CHUNK = 2000  # ids per IN list: well under SQLite's and PostgreSQL's parameter limits
InputKind = Literal["observation", "excluded", "waveform", "result", "attribute"]


class ResultRecord(NamedTuple):
    """One module result: outputs (None = null) of one twin, under its fingerprint.

    A tuple: the planner makes thousands per request.
    """

    fingerprint: str
    module: str
    version: str
    patient: str
    computed_us: int
    outputs: dict[str, float | None]
    parameters: dict[str, Any]


class InputRecord(NamedTuple):
    """One input a result read: an observation key, an upstream fingerprint or a value."""

    input: str
    kind: InputKind
    key: ObservationKey | None = None
    upstream: str | None = None
    value: str | None = None


def outputs_json(outputs: dict[str, float | None]) -> str:
    """``outputs`` as compact JSON; non-finite numbers as null (JSON has no NaN)."""
    return (
        "{"
        + ",".join(
            _json_key(name)
            + ("null" if value is None or not math.isfinite(value) else repr(float(value)))
            for name, value in outputs.items()
        )
        + "}"
    )


@functools.lru_cache(maxsize=4096)
def _json_key(name: str) -> str:
    return json.dumps(name) + ":"


def parameters_json(parameters: dict[str, Any]) -> str:
    """Module parameters as canonical JSON (sorted keys): they are part of the fingerprint."""
    return json.dumps(parameters, separators=(",", ":"), sort_keys=True)


def observation_id(key: ObservationKey) -> str:
    """The provenance id of a stored observation: ``source|source_id|version``."""
    return f"{key[0]}|{key[1]}|{key[2]}"


class ProvenanceStore:
    """Module results and their inputs in the store's ``module_results``/``module_inputs``."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- writing --------------------------------------------------------------

    def save(self, results: Sequence[tuple[ResultRecord, Sequence[InputRecord]]]) -> None:
        """Store results with their inputs in one transaction; known fingerprints are kept."""
        encoded: dict[int, str] = {}  # the results of one module share their parameters
        result_rows = [
            (
                *r[:5],
                outputs_json(r.outputs),
                encoded.get(id(r.parameters))
                or encoded.setdefault(id(r.parameters), parameters_json(r.parameters)),
            )
            for r, _ in results
        ]
        input_rows = [
            (r.fingerprint, position, i.input, i.kind, *(i.key or _NO_KEY), i.upstream, i.value)
            for r, inputs in results
            for position, i in enumerate(inputs)
        ]
        self.save_rows(result_rows, input_rows)

    def save_rows(
        self, results: Sequence[tuple[Any, ...]], inputs: Sequence[tuple[Any, ...]]
    ) -> None:
        """:meth:`save` for rows already in column order (the planner's bulk path).

        ``results``: (fingerprint, module, version, patient, computed_us, outputs JSON,
        parameters JSON); ``inputs``: (fingerprint, position, input, kind, source,
        source_id, version, upstream, value).
        """
        if not results:
            return
        params = self.store._params
        with self.store.transaction() as conn:
            conn.exec_driver_sql(
                "INSERT INTO module_results (fingerprint, module, version, patient_id, "
                f"computed_us, outputs, parameters) VALUES ({params(7)}) "
                "ON CONFLICT (fingerprint) DO NOTHING",
                list(results),
            )
            if inputs:
                conn.exec_driver_sql(
                    "INSERT INTO module_inputs (fingerprint, position, input, kind, source, "
                    f"source_id, version, upstream, value) VALUES ({params(9)}) "
                    "ON CONFLICT (fingerprint, position) DO NOTHING",
                    list(inputs),
                )

    # -- reading --------------------------------------------------------------

    def load(self, fingerprints: Sequence[str]) -> dict[str, ResultRecord]:
        """The stored results among ``fingerprints``."""
        table = schema.module_results
        wanted = sorted(set(fingerprints))
        out: dict[str, ResultRecord] = {}
        with self.store.reading() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = sa.select(table).where(table.c.fingerprint.in_(chunk))
                for row in conn.execute(query):
                    out[row.fingerprint] = _result(row)
        return out

    def result(self, fingerprint: str) -> ResultRecord:
        """One result; NotFoundError if no result has that fingerprint."""
        found = self.load([fingerprint]).get(fingerprint)
        if found is None:
            raise NotFoundError(f"no derived value {fingerprint!r}")
        return found

    def latest(self, patient: str, module: str) -> ResultRecord | None:
        """The newest stored result of ``module`` for ``patient``."""
        table = schema.module_results
        query = (
            sa.select(table)
            .where(table.c.patient_id == patient, table.c.module == module)
            .order_by(table.c.computed_us.desc())
            .limit(1)
        )
        with self.store.reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else _result(row)

    def history(
        self, patient: str, module: str, *, start_us: int, end_us: int, limit: int = 2000
    ) -> list[ResultRecord]:
        """Results of ``module`` for ``patient`` computed in [start, end], oldest first."""
        table = schema.module_results
        query = (
            sa.select(table)
            .where(
                table.c.patient_id == patient,
                table.c.module == module,
                table.c.computed_us >= start_us,
                table.c.computed_us <= end_us,
            )
            .order_by(table.c.computed_us.desc())
            .limit(limit)
        )
        with self.store.reading() as conn:
            rows = conn.execute(query).all()
        return [_result(row) for row in reversed(rows)]

    def inputs_of(self, fingerprints: Sequence[str]) -> dict[str, list[InputRecord]]:
        """The inputs each result read, in declaration order."""
        table = schema.module_inputs
        wanted = sorted(set(fingerprints))
        out: dict[str, list[InputRecord]] = {fp: [] for fp in wanted}
        with self.store.reading() as conn:
            for start in range(0, len(wanted), _CHUNK):
                query = (
                    sa.select(table)
                    .where(table.c.fingerprint.in_(wanted[start : start + _CHUNK]))
                    .order_by(table.c.fingerprint, table.c.position)
                )
                for row in conn.execute(query):
                    key = None if row.source is None else (row.source, row.source_id, row.version)
                    out[row.fingerprint].append(
                        InputRecord(row.input, row.kind, key, row.upstream, row.value)
                    )
        return out

    def observations(self, keys: Sequence[ObservationKey]) -> dict[ObservationKey, dict[str, Any]]:
        """Stored observations by key, as provenance nodes with their origin."""
        table = schema.observations
        wanted = sorted(set(keys))
        column = sa.tuple_(table.c.source, table.c.source_id, table.c.version)
        found: dict[ObservationKey, dict[str, Any]] = {}
        with self.store.reading() as conn:
            for start in range(0, len(wanted), 300):
                query = sa.select(table).where(column.in_(wanted[start : start + 300]))
                for row in conn.execute(query):
                    key = (row.source, row.source_id, row.version)
                    found[key] = {
                        "id": observation_id(key),
                        "type": "observation",
                        "source": row.source,
                        "source_id": row.source_id,
                        "version": row.version,
                        "patient": row.patient_id,
                        "system": row.system,
                        "code": row.code,
                        "value": row.value_num if row.value_num is not None else row.value_text,
                        "unit": row.unit,
                        "time": to_iso(row.effective_us),
                        "status": row.status,
                        "received": to_iso(row.received_us),
                    }
        origins = self.store.origins_of(list(found))
        for key, node in found.items():
            origin = origins.get(key)
            node["origin"] = None if origin is None else _origin(origin)
        return found

    def waveforms(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored waveform chunks by (source, source_id), as provenance nodes (no samples)."""
        table = schema.waveforms
        wanted = sorted(set(keys))
        column = sa.tuple_(table.c.source, table.c.source_id)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        columns = [c for c in table.c if c.name != "samples"]
        with self.store.reading() as conn:
            for start in range(0, len(wanted), 300):
                query = sa.select(*columns).where(column.in_(wanted[start : start + 300]))
                for row in conn.execute(query):
                    found[(row.source, row.source_id)] = {
                        "id": f"{row.source}|{row.source_id}",
                        "type": "waveform",
                        "source": row.source,
                        "source_id": row.source_id,
                        "patient": row.patient_id,
                        "kind": row.kind,
                        "system": row.system,
                        "code": row.code,
                        "unit": row.unit,
                        "start": to_iso(row.start_us),
                        "end": to_iso(row.end_us),
                        "rate_hz": row.rate_hz,
                        "n_samples": row.n_samples,
                        "received": to_iso(row.received_us),
                    }
        return found

    def tree(self, fingerprint: str, *, depth: int | None = None) -> dict[str, Any]:
        """The provenance of a result, ``depth`` result levels deep (None: to the sources).

        Each result node lists its inputs: results (nested), observations (with the
        message they came in), waveform chunks and attributes. A node past ``depth`` carries
        ``"truncated": true`` instead of its inputs; an input whose record is gone
        (erased, or never stored) carries ``"missing": true``.
        """
        root_record = self.result(fingerprint)
        root = _result_node(root_record)
        level: dict[str, list[dict[str, Any]]] = {fingerprint: [root]}
        remaining = depth
        while level:
            if remaining is not None and remaining <= 0:
                for nodes in level.values():
                    for node in nodes:
                        node["truncated"] = True
                break
            inputs = self.inputs_of(list(level))
            keys = [
                i.key
                for records in inputs.values()
                for i in records
                if i.key is not None and i.kind != "waveform"
            ]
            observations = self.observations(keys) if keys else {}
            chunks = [
                (i.key[0], i.key[1])
                for records in inputs.values()
                for i in records
                if i.key is not None and i.kind == "waveform"
            ]
            if chunks:
                observations |= {
                    (source, source_id, 0): node
                    for (source, source_id), node in self.waveforms(chunks).items()
                }
            upstream = [i.upstream for rs in inputs.values() for i in rs if i.upstream is not None]
            results = self.load(upstream) if upstream else {}
            following: dict[str, list[dict[str, Any]]] = {}
            for fp, nodes in level.items():
                for node in nodes:
                    node["inputs"] = children = []
                    for record in inputs[fp]:
                        child = _input_node(record, observations, results)
                        children.append(child)
                        if record.upstream is not None and not child.get("missing"):
                            following.setdefault(record.upstream, []).append(child)
            level = following
            remaining = None if remaining is None else remaining - 1
        return root


def _input_node(
    record: InputRecord,
    observations: dict[ObservationKey, dict[str, Any]],
    results: dict[str, ResultRecord],
) -> dict[str, Any]:
    if record.kind in ("observation", "excluded", "waveform") and record.key is not None:
        found = observations.get(record.key)
        node: dict[str, Any] = (
            {
                "id": observation_id(record.key)
                if record.kind != "waveform"
                else f"{record.key[0]}|{record.key[1]}",
                "type": "waveform" if record.kind == "waveform" else "observation",
                "missing": True,
            }
            if found is None
            else dict(found)
        )
        if record.kind == "excluded":
            # Read and held back: the reading was suspected to be an artifact.
            node["excluded"] = record.value or "excluded"
        return {"input": record.input, **node}
    if record.kind == "result" and record.upstream is not None:
        upstream = results.get(record.upstream)
        if upstream is None:
            return {"input": record.input, "id": record.upstream, "type": "result", "missing": True}
        return {"input": record.input, **_result_node(upstream)}
    return {"input": record.input, "type": "attribute", "value": record.value}


def _result_node(record: ResultRecord) -> dict[str, Any]:
    return {
        "id": record.fingerprint,
        "type": "result",
        "module": record.module,
        "version": record.version,
        "fingerprint": record.fingerprint,
        "patient": record.patient,
        "computed": to_iso(record.computed_us),
        "outputs": record.outputs,
        "parameters": record.parameters,
    }


def _result(row: Any) -> ResultRecord:
    return ResultRecord(
        row.fingerprint,
        row.module,
        row.version,
        row.patient_id,
        row.computed_us,
        json.loads(row.outputs),
        json.loads(row.parameters),
    )


def _origin(origin: Origin) -> dict[str, Any]:
    out: dict[str, Any] = {
        "channel": origin.channel,
        "message": origin.message,
        "entry": origin.entry,
    }
    if origin.conditioning is not None:
        out["conditioning"] = json.loads(origin.conditioning)
    return out
