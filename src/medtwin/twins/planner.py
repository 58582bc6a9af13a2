"""The planner: asks for module outputs, runs only what is stale, records provenance.

A request names target modules and twins. The planner compiles the modules they
need in dependency order (:meth:`ModuleGraph.plan`) and, module by module,
gathers each twin's inputs, computes its *execution fingerprint*, and looks the
fingerprint up: first in memory, then in the store. Only the twins whose
fingerprint is unknown are computed, in one vectorized call per module; their
results and the inputs they read are stored in one transaction at the end.

The fingerprint hashes the module's name, version and parameters, the twin, and
per input its declaration (window length, aggregation) and the identities of
exactly what was read: observation (source, id, version) keys, upstream
fingerprints, attribute values. The absolute window bounds enter through which
observations fall inside them, so a value ageing out of a window, a new or a
corrected observation, or a new module version each give a new fingerprint, and
a repeated request with nothing changed gives the same one and computes nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medtwin.core.clock import Clock
from medtwin.core.errors import NotFoundError
from medtwin.core.records import QualityFlag
from medtwin.data.provenance import ObservationKey, ProvenanceStore, outputs_json, parameters_json
from medtwin.data.readings import usable_readings
from medtwin.data.store import SqlStore
from medtwin.models.modules import (
    AttributeInput,
    Module,
    ModuleGraph,
    ObservationInput,
    PublishedModule,
    Ragged,
    Recording,
    ResultInput,
    WaveformInput,
)
from medtwin.twins.runtime import TwinRuntime

__all__ = ["Derivation", "ModuleRun", "Planner", "PlannerStats"]

_HIDDEN = int(QualityFlag.ARTIFACT_SUSPECTED)
# Per (code, window): values in use, their keys, keys of suspected artifacts held back.
_Latest = tuple[NDArray[np.float64], NDArray[np.object_], NDArray[np.object_]]


@dataclass(frozen=True)
class ModuleRun:
    """One module's results for the twins of a request, in the request's order."""

    module: str
    version: str
    fingerprints: list[str]
    outputs: dict[str, NDArray[np.float64]]
    computed: NDArray[np.bool_]  # computed by this request (False: found cached)


@dataclass(frozen=True)
class Derivation:
    """The answer to a request: each planned module's run over the requested twins."""

    patients: list[str]
    at_us: int
    runs: dict[str, ModuleRun]

    def value(self, module: str, output: str, patient: str) -> float | None:
        value = float(self.runs[module].outputs[output][self.patients.index(patient)])
        return None if np.isnan(value) else value

    def fingerprint(self, module: str, patient: str) -> str:
        return self.runs[module].fingerprints[self.patients.index(patient)]


@dataclass
class PlannerStats:
    """What requests cost: compute calls and twins computed per module, cache hits."""

    calls: Counter[str] = field(default_factory=Counter)
    computed: Counter[str] = field(default_factory=Counter)
    memory_hits: int = 0
    store_hits: int = 0
    memo_hits: int = 0  # twins answered without reading inputs: nothing changed


@dataclass(frozen=True, slots=True)
class _Batch:
    """The results of one request's computed twins, shared by their memos."""

    fingerprints: dict[str, list[str]]  # module -> per twin
    outputs: dict[str, dict[str, list[float]]]  # module -> output -> per twin


@dataclass(frozen=True, slots=True)
class _Memo:
    """A twin's results for one plan, valid while its revision holds and until ``until``."""

    revision: int
    until: int  # µs: the first of its inputs ages out of its window after this
    batch: _Batch
    index: int  # the twin's place in the batch


def _from_memos(
    order: list[Module], patients: list[str], hits: dict[int, _Memo]
) -> dict[str, ModuleRun]:
    return _merged(order, patients, hits, [], {})


def _merged(
    order: list[Module],
    patients: list[str],
    hits: dict[int, _Memo],
    misses: list[int],
    runs: dict[str, ModuleRun],
) -> dict[str, ModuleRun]:
    """Runs over every patient from memo hits and the runs computed for the misses."""
    n = len(patients)
    out: dict[str, ModuleRun] = {}
    for module in order:
        name = module.name
        fingerprints = [""] * n
        outputs = {o.name: np.empty(n) for o in module.outputs}
        computed = np.zeros(n, dtype=bool)
        for i, memo in hits.items():
            fingerprints[i] = memo.batch.fingerprints[name][memo.index]
            held = memo.batch.outputs[name]
            for output, column in outputs.items():
                column[i] = held[output][memo.index]
        run = runs.get(name)
        if run is not None and misses:
            index = np.array(misses, dtype=np.intp)
            for j, i in enumerate(misses):
                fingerprints[i] = run.fingerprints[j]
            for output, column in outputs.items():
                column[index] = run.outputs[output]
            computed[index] = run.computed
        out[name] = ModuleRun(name, module.version, fingerprints, outputs, computed)
    return out


@dataclass
class _Fresh:
    """Rows of the results a request computed, stored together at its end."""

    results: list[tuple[Any, ...]] = field(default_factory=list)
    inputs: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class _Inputs:
    """A module's inputs for the twins of a request, and what each twin's value came from."""

    values: dict[str, Any]
    identities: list[list[str]]  # per input, per twin: what the fingerprint hashes
    # Per input: its name, kind, and per twin the observation keys, fingerprint or value.
    reads: list[tuple[str, str, list[Any]]]

    def rows(self, i: int, fingerprint: str, out: list[tuple[Any, ...]]) -> None:
        """Append the ``module_inputs`` rows of twin ``i``: every input it read, in order.

        Built only for the twins computed, straight as rows (thousands per request).
        """
        position = 0
        for name, kind, per_twin in self.reads:
            read = per_twin[i]
            if kind in ("observation", "excluded", "waveform"):
                reason = None if kind == "observation" else "artifact-suspected"
                for source, source_id, version in read:
                    out.append(
                        (
                            fingerprint,
                            position,
                            name,
                            kind,
                            source,
                            source_id,
                            version,
                            None,
                            reason,
                        )
                    )
                    position += 1
                continue
            if kind == "result":
                if read:  # "": a published module without a result for the twin yet
                    out.append((fingerprint, position, name, kind, None, None, None, read, None))
            else:
                out.append((fingerprint, position, name, kind, None, None, None, None, read))
            position += 1


class Planner:
    """Plans, runs and caches module requests over the twins of a runtime."""

    def __init__(
        self,
        graph: ModuleGraph,
        runtime: TwinRuntime,
        store: SqlStore,
        *,
        clock: Clock | None = None,
        cache_size: int = 200_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph = graph
        self.runtime = runtime
        self.store = store
        self.provenance = ProvenanceStore(store)
        self.clock = clock or runtime.clock
        self.cache_size = cache_size
        self.stats = PlannerStats()
        self._cache: OrderedDict[str, dict[str, float | None]] = OrderedDict()
        self._plans: dict[tuple[int, tuple[str, ...]], list[Module]] = {}
        self._memo: dict[tuple[str, tuple[int, tuple[str, ...]]], _Memo] = {}
        self._encoded: dict[int, tuple[Module, str]] = {}
        self._lock = threading.Lock()
        self.timer = timer
        # Per module: the graph generation and the time a refresh pass last ran it.
        self._refreshed: dict[str, tuple[int, float]] = {}

    def request(
        self, targets: Sequence[str], patients: Sequence[str] | None = None, *, persist: bool = True
    ) -> Derivation:
        """Outputs of ``targets`` (module names) for ``patients`` (default: every twin).

        NotFoundError for an unknown module or a patient without a twin. With
        ``persist`` the new results and their inputs are stored (one transaction).
        """
        order = self._plan(targets)
        runtime = self.runtime
        if patients is None:
            patients = list(runtime.patient_ids)
        else:
            patients = list(patients)
            unknown = [p for p in patients if p not in runtime]
            if unknown:
                raise NotFoundError(f"no twin for patient {unknown[0]!r}")
        published = {m.name: m for m in order if isinstance(m, PublishedModule)}
        if published and not any(
            isinstance(i, ResultInput) and i.module in published for m in order for i in m.inputs
        ):
            # Published results read by nothing here: the rest is planned (and memoized)
            # on its own, and their latest results are looked up beside it.
            rest = [t for t in targets if t not in published]
            inner = self.request(rest, patients, persist=persist) if rest else None
            found = {} if inner is None else dict(inner.runs)
            for name, item in published.items():
                found[name] = _published(item, patients)
            at_us = self.clock.now_us() if inner is None else inner.at_us
            return Derivation(patients, at_us, found)
        with self._lock:
            now = self.clock.now_us()
            plan_key = (self.graph.generation, tuple(targets))
            # Twins whose state has not changed since their last request, and none of whose
            # inputs has aged out of its window since, read the same inputs: same results.
            # Runtime revisions see observations only: windows read from the store and
            # waveforms are looked up each time.
            # Published results change with their service, not with the twin's revision.
            memoable = not published and all(
                (isinstance(item, ObservationInput) and item.aggregate == "latest")
                or isinstance(item, ResultInput | AttributeInput)
                for module in order
                for item in module.inputs
            )
            revisions = runtime.revisions(patients) if memoable else []
            hits: dict[int, _Memo] = {}
            if memoable:
                memo = self._memo
                for i, patient in enumerate(patients):
                    held = memo.get((patient, plan_key))
                    if held is not None and held.revision == revisions[i] and now <= held.until:
                        hits[i] = held
                self.stats.memo_hits += len(hits)
            if len(hits) == len(patients) and patients:
                return Derivation(patients, now, _from_memos(order, patients, hits))
            misses = [i for i in range(len(patients)) if i not in hits]
            computing = [patients[i] for i in misses]
            rows = runtime.rows_of(computing)
            wanted = list(
                dict.fromkeys(
                    (item.code, round(item.window_s * 1_000_000))
                    for module in order
                    for item in module.inputs
                    if isinstance(item, ObservationInput) and item.aggregate == "latest"
                )
            )
            table, until = runtime.latest_cells(rows, wanted, now)
            latest = dict(zip(wanted, table, strict=True))
            runs: dict[str, ModuleRun] = {}
            fresh = _Fresh()
            for module in order:
                runs[module.name] = self._run(module, computing, rows, now, runs, fresh, latest)
            if persist and fresh.results:
                self.provenance.save_rows(fresh.results, fresh.inputs)
            if memoable and persist:  # a memo answers with ids whose rows must exist
                batch = _Batch(
                    {name: run.fingerprints for name, run in runs.items()},
                    {
                        name: {output: column.tolist() for output, column in run.outputs.items()}
                        for name, run in runs.items()
                    },
                )
                memo = self._memo
                for j, (patient, moment) in enumerate(zip(computing, until.tolist(), strict=True)):
                    memo[(patient, plan_key)] = _Memo(revisions[misses[j]], moment, batch, j)
            if hits:
                runs = _merged(order, patients, hits, misses, runs)
        return Derivation(patients, now, runs)

    def derive(self, targets: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """A refresh pass: bring ``targets`` (default: modules nothing reads, bar those
        that read waveforms) up to date for every twin.

        A target with a refresh interval (:attr:`Module.refresh_s`) is left out while
        its last pass is younger than that (real seconds, ``timer``); a new version of
        it is brought up to date on the next pass.  Returns a ``derived.updated`` event
        for each target result computed now (the twins whose inputs changed, or aged
        out of a window, since the last pass).
        """
        if targets is None:
            read = {i.module for m in self.graph for i in m.inputs if isinstance(i, ResultInput)}
            targets = [
                m.name
                for m in self.graph
                if m.name not in read
                and not isinstance(m, PublishedModule)  # its service brings it up to date
                # Waveform modules decode recordings: they run when asked for, not each pass.
                and not any(
                    isinstance(i, WaveformInput) for d in self._plan([m.name]) for i in d.inputs
                )
            ]
        targets = self._due(targets)
        if not targets:
            return []
        derivation = self.request(targets)
        events: list[dict[str, Any]] = []
        for name in targets:
            run = derivation.runs[name]
            units = {out.name: out.unit for out in self.graph[name].outputs}
            for i in np.flatnonzero(run.computed).tolist():
                events.append(
                    {
                        "type": "derived.updated",
                        "patient": derivation.patients[i],
                        "module": name,
                        "version": run.version,
                        "id": run.fingerprints[i],
                        "outputs": {
                            output: {
                                "value": derivation.value(name, output, derivation.patients[i]),
                                "unit": unit,
                            }
                            for output, unit in units.items()
                        },
                    }
                )
        return events

    def _due(self, targets: Sequence[str]) -> list[str]:
        """``targets`` without the modules whose refresh interval has not passed; the
        ones kept count as refreshed now."""
        now, generation = self.timer(), self.graph.generation
        due: list[str] = []
        for name in targets:
            interval = self.graph[name].refresh_s
            if interval > 0:
                held = self._refreshed.get(name)
                # A registration (a new version, a promoted model) makes it due at once.
                if held is not None and held[0] == generation and now - held[1] < interval:
                    continue
                self._refreshed[name] = (generation, now)
            due.append(name)
        return due

    def _plan(self, targets: Sequence[str]) -> list[Module]:
        key = (self.graph.generation, tuple(targets))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.graph.plan(targets)
        return plan

    def _parameters(self, module: Module) -> str:
        """The module's parameters as canonical JSON, encoded once per module object."""
        held = self._encoded.get(id(module))
        if held is None or held[0] is not module:
            held = self._encoded[id(module)] = (module, parameters_json(dict(module.parameters)))
        return held[1]

    def _run(
        self,
        module: Module,
        patients: list[str],
        rows: NDArray[np.intp],
        now: int,
        runs: dict[str, ModuleRun],
        fresh: _Fresh,
        latest: dict[tuple[str, int], _Latest],
    ) -> ModuleRun:
        n = len(patients)
        if isinstance(module, PublishedModule):
            return _published(module, patients)
        inputs = self._inputs(module, patients, rows, now, runs, latest)
        parameters = self._parameters(module)
        head = f"{module.name}\x1f{module.version}\x1f{parameters}\x1f"
        fingerprints = [
            hashlib.blake2b(
                (
                    head + patient + "\x1e" + "\x1e".join(ids[i] for ids in inputs.identities)
                ).encode(),
                digest_size=16,
            ).hexdigest()
            for i, patient in enumerate(patients)
        ]
        names = [out.name for out in module.outputs]
        cache = self._cache
        held: list[dict[str, float | None] | None] = [cache.get(fp) for fp in fingerprints]
        unknown = [i for i, values in enumerate(held) if values is None]
        self.stats.memory_hits += n - len(unknown)
        if unknown:
            stored = self.provenance.load([fingerprints[i] for i in unknown])
            for j in unknown:
                record = stored.get(fingerprints[j])
                if record is not None:
                    held[j] = record.outputs
                    self._remember(fingerprints[j], record.outputs)
                    self.stats.store_hits += 1
            unknown = [i for i in unknown if held[i] is None]
        for i, values in enumerate(held):
            if values is not None:
                cache.move_to_end(fingerprints[i])
        outputs = {
            name: np.array(
                [np.nan if v is None or (got := v.get(name)) is None else got for v in held],
                dtype=np.float64,
            )
            for name in names
        }
        computed = np.zeros(n, dtype=bool)
        todo = np.array(unknown, dtype=np.intp)
        computed[todo] = True
        if unknown:
            subset = {name: _take(value, todo) for name, value in inputs.values.items()}
            result = module.compute(subset)
            self.stats.calls[module.name] += 1
            self.stats.computed[module.name] += len(todo)
            for name in names:
                column = np.asarray(result[name], dtype=np.float64)
                if column.shape != (len(todo),):
                    raise ValueError(
                        f"module {module.name!r} output {name!r} has shape {column.shape}, "
                        f"expected ({len(todo)},)"
                    )
                outputs[name][todo] = column
            columns = [outputs[name].tolist() for name in names]
            for k in todo.tolist():
                values = {
                    name: None if column[k] != column[k] else column[k]  # NaN is null
                    for name, column in zip(names, columns, strict=True)
                }
                fingerprint = fingerprints[k]
                self._remember(fingerprint, values)
                fresh.results.append(
                    (
                        fingerprint,
                        module.name,
                        module.version,
                        patients[k],
                        now,
                        outputs_json(values),
                        parameters,
                    )
                )
                inputs.rows(k, fingerprint, fresh.inputs)
        return ModuleRun(module.name, module.version, fingerprints, outputs, computed)

    def _remember(self, fingerprint: str, values: dict[str, float | None]) -> None:
        cache = self._cache
        cache[fingerprint] = values
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _inputs(
        self,
        module: Module,
        patients: list[str],
        rows: NDArray[np.intp],
        now: int,
        runs: dict[str, ModuleRun],
        latest: dict[tuple[str, int], _Latest],
    ) -> _Inputs:
        values: dict[str, Any] = {}
        identities: list[list[str]] = []
        reads: list[tuple[str, str, list[Any]]] = []
        for item in module.inputs:
            name = item.name
            if isinstance(item, ObservationInput):
                window_us = round(item.window_s * 1_000_000)
                declared = f"{name}\x1fobs\x1f{item.code}\x1f{item.window_s!r}\x1f{item.aggregate}"
                if item.aggregate == "latest":
                    value, keys, excluded = latest[(item.code, window_us)]
                    values[name] = value
                    # A suspected artifact held back is part of what the result says.
                    identities.append(
                        [
                            declared
                            + (f"\x1f{_key_text(k)}" if k else "")
                            + (f"\x1fx{_key_text(x)}" if x else "")
                            for k, x in zip(keys, excluded, strict=True)
                        ]
                    )
                    reads.append((name, "observation", [[k] if k else [] for k in keys]))
                    if any(x is not None for x in excluded):
                        reads.append((name, "excluded", [[x] if x else [] for x in excluded]))
                else:
                    found = self._window(patients, item.code, now - window_us, now)
                    values[name] = _aggregate(found, item.aggregate)
                    identities.append(
                        [
                            declared + "".join(f"\x1f{_key_text(k)}" for k, _, _ in readings)
                            for readings in found
                        ]
                    )
                    reads.append((name, "observation", [[k for k, _, _ in r] for r in found]))
            elif isinstance(item, ResultInput):
                upstream = runs[item.module]
                values[name] = upstream.outputs[item.output]
                declared = f"{name}\x1fresult\x1f{item.module}\x1f{item.output}"
                identities.append([f"{declared}\x1f{fp}" for fp in upstream.fingerprints])
                reads.append((name, "result", upstream.fingerprints))
            elif isinstance(item, WaveformInput):
                recordings, chunk_keys = self._recordings(patients, item, now)
                values[name] = recordings
                declared = f"{name}\x1fwaveform\x1f{item.kind}\x1f{item.window_s!r}"
                identities.append(
                    [declared + "".join(f"\x1f{s}\x1d{i}" for s, i in keys) for keys in chunk_keys]
                )
                reads.append(
                    (name, "waveform", [[(s, i, 0) for s, i in keys] for keys in chunk_keys])
                )
            elif isinstance(item, AttributeInput):
                value = self.runtime.attribute(rows, item.attribute)
                values[name] = value
                texts = [_number_text(v) for v in value]
                declared = f"{name}\x1fattribute\x1f{item.attribute}"
                identities.append([f"{declared}\x1f{t}" for t in texts])
                reads.append((name, "attribute", texts))
        return _Inputs(values, identities, reads)

    def _recordings(
        self, patients: list[str], item: WaveformInput, now: int
    ) -> tuple[list[Recording | None], list[list[tuple[str, str]]]]:
        """Per twin, its ``item.kind`` recording of the window (the longest when several
        devices recorded) and the keys of the chunks it is made of."""
        # Imported here: the waveform codec loads SciPy's signal package, which requests
        # without waveform inputs (and the CLI) need not pay for.
        from medtwin.data.waveforms import WaveformStore
        from medtwin.devices.conditioning.waveforms import join as join_waveform

        start = now - round(item.window_s * 1_000_000)
        found = WaveformStore(self.store).window(
            patients, kind=item.kind, start_us=start, end_us=now
        )
        recordings: list[Recording | None] = []
        keys: list[list[tuple[str, str]]] = []
        for patient in patients:
            series: dict[tuple[str, str, float], list[tuple[tuple[str, str], Any]]] = {}
            for key, chunk in found[patient]:
                series.setdefault((chunk.source, chunk.code, chunk.rate_hz), []).append(
                    (key, chunk)
                )
            if not series:
                recordings.append(None)
                keys.append([])
                continue
            chosen = max(series.values(), key=lambda chunks: sum(c.n_samples for _, c in chunks))
            joined = join_waveform([chunk for _, chunk in chosen]).segment
            recordings.append(Recording(joined.samples, joined.rate_hz, joined.start_us))
            keys.append(sorted(key for key, _ in chosen))
        return recordings, keys

    def _window(
        self, patients: list[str], code: str, start_us: int, end_us: int
    ) -> list[list[tuple[ObservationKey, int, float]]]:
        """Per twin, the usable readings of ``code`` in (start, end], oldest first
        (suspected artifacts left out)."""
        return usable_readings(self.store, patients, code, start_us, end_us, exclude_flags=_HIDDEN)


def _published(module: PublishedModule, patients: list[str]) -> ModuleRun:
    """The latest results ``module``'s service stored for ``patients``."""
    names = [out.name for out in module.outputs]
    fingerprints, found = module.latest(patients, names)
    outputs = {name: np.asarray(found[name], dtype=np.float64) for name in names}
    n = len(patients)
    if len(fingerprints) != n or any(column.shape != (n,) for column in outputs.values()):
        raise ValueError(f"published module {module.name!r} answered for other twins")
    return ModuleRun(module.name, module.version, list(fingerprints), outputs, np.zeros(n, bool))


def _aggregate(found: list[list[tuple[ObservationKey, int, float]]], how: str) -> Any:
    if how == "all":
        counts = np.array([len(r) for r in found], dtype=np.intp)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
        return Ragged(
            np.array([v for r in found for _, _, v in r], dtype=np.float64),
            np.array([t for r in found for _, t, _ in r], dtype=np.int64),
            offsets,
        )
    out = np.full(len(found), np.nan)
    for i, readings in enumerate(found):
        values = np.array([v for _, _, v in readings if not np.isnan(v)])
        if how == "count":
            out[i] = len(values)
        elif len(values) == 0:
            continue
        elif how == "latest":
            out[i] = values[-1]
        elif how == "mean":
            out[i] = values.mean()
        elif how == "min":
            out[i] = values.min()
        elif how == "max":
            out[i] = values.max()
    return out


def _take(value: Any, index: NDArray[np.intp]) -> Any:
    if isinstance(value, list):  # recordings
        return [value[i] for i in index.tolist()]
    if isinstance(value, Ragged):
        counts = np.diff(value.offsets)[index]
        parts = [np.arange(value.offsets[i], value.offsets[i + 1]) for i in index]
        picked = np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)
        return Ragged(
            value.values[picked],
            value.times_us[picked],
            np.concatenate([[0], np.cumsum(counts)]).astype(np.intp),
        )
    return value[index]


def _number_text(value: float) -> str:
    if np.isnan(value):
        return "null"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _key_text(key: ObservationKey) -> str:
    return f"{key[0]}\x1d{key[1]}\x1d{key[2]}"
