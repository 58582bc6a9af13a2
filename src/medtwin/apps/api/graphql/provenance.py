"""Derived values (module results) and their provenance, nested as deep as a query asks.

A result node's ``inputs`` are loaded only when selected, through one loader per
operation: every result node of a level is expanded with one batch of queries,
however wide the level (as ``ProvenanceStore.tree`` does, but lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import strawberry
from starlette.concurrency import run_in_threadpool
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from medtwin.apps.api.graphql.context import Info, RequestContext
from medtwin.apps.api.graphql.permissions import authorize
from medtwin.apps.api.graphql.types import split_value
from medtwin.apps.api.routes import derived
from medtwin.core.clock import to_iso
from medtwin.core.errors import NotFoundError
from medtwin.data.provenance import (
    InputRecord,
    ObservationKey,
    ProvenanceStore,
    ResultRecord,
    observation_id,
)


@strawberry.type
class OutputValue:
    name: str
    value: float | None
    unit: str | None = None
    code: str | None = None


@strawberry.type(description="The message an observation came in.")
class Origin:
    channel: str
    message: str | None
    entry: str | None
    conditioning: JSON | None = strawberry.field(
        default=None, description="What signal conditioning did to the value on the way in"
    )


async def _inputs(root: strawberry.Parent[ProvenanceNode], info: Info) -> list[ProvenanceNode]:
    if not isinstance(root, ResultNode) or root.missing:
        return []  # observations and attributes are leaves
    loader = info.context.operation.loader("provenance", lambda: _loader(info.context))
    found: list[ProvenanceNode] = await loader.load(str(root.id))
    return found


@strawberry.interface(description="Something a derived value was computed from.")
class ProvenanceNode:
    id: strawberry.ID
    type: str = strawberry.field(description="result, observation or attribute")
    input: str | None = strawberry.field(description="The input name the parent read it as")
    missing: bool = strawberry.field(description="Its record is gone (erased, never stored)")
    inputs: list[ProvenanceNode] = strawberry.field(
        resolver=_inputs, description="What a result read, in declaration order; [] for leaves"
    )


@strawberry.type(description="A module result.")
class ResultNode(ProvenanceNode):
    module: str | None
    module_version: str | None
    patient: str | None
    computed: str | None
    outputs: list[OutputValue]
    parameters: JSON | None


@strawberry.type(description="A stored observation (a version of a sender's result).")
class ObservationNode(ProvenanceNode):
    source: str
    source_id: str
    version: int
    patient: str | None
    system: str | None
    code: str | None
    value: float | None
    text: str | None
    unit: str | None
    time: str | None
    status: str | None
    received: str | None
    origin: Origin | None


@strawberry.type(description="A twin attribute (e.g. the SpO2 scale) as it was read.")
class AttributeNode(ProvenanceNode):
    value: float | None
    text: str | None


def result_node(record: ResultRecord, name: str | None = None) -> ResultNode:
    return ResultNode(
        id=strawberry.ID(record.fingerprint),
        type="result",
        input=name,
        missing=False,
        module=record.module,
        module_version=record.version,
        patient=record.patient,
        computed=to_iso(record.computed_us),
        outputs=[OutputValue(name=k, value=v) for k, v in record.outputs.items()],
        parameters=JSON(record.parameters),
    )


def _observation_node(
    name: str, key: ObservationKey, found: dict[str, Any] | None
) -> ObservationNode:
    row = found or {}
    value, text = split_value(row.get("value"))
    origin = row.get("origin")
    return ObservationNode(
        id=strawberry.ID(observation_id(key)),
        type="observation",
        input=name,
        missing=found is None,
        source=key[0],
        source_id=key[1],
        version=key[2],
        patient=row.get("patient"),
        system=row.get("system"),
        code=row.get("code"),
        value=value,
        text=text,
        unit=row.get("unit"),
        time=row.get("time"),
        status=row.get("status"),
        received=row.get("received"),
        origin=None if origin is None else Origin(**origin),
    )


def _node(
    parent: str,
    record: InputRecord,
    observations: dict[ObservationKey, dict[str, Any]],
    results: dict[str, ResultRecord],
) -> ProvenanceNode:
    if record.kind == "observation" and record.key is not None:
        return _observation_node(record.input, record.key, observations.get(record.key))
    if record.kind == "result" and record.upstream is not None:
        upstream = results.get(record.upstream)
        if upstream is not None:
            return result_node(upstream, record.input)
        return ResultNode(
            id=strawberry.ID(record.upstream),
            type="result",
            input=record.input,
            missing=True,
            module=None,
            module_version=None,
            patient=None,
            computed=None,
            outputs=[],
            parameters=None,
        )
    value, text = split_value(_number(record.value))
    return AttributeNode(
        # Unique per reading: the same attribute read by two results may differ.
        id=strawberry.ID(f"{parent}|{record.input}"),
        type="attribute",
        input=record.input,
        missing=False,
        value=value,
        text=record.value if text is None else text,
    )


def _number(text: str | None) -> float | str | None:
    """An attribute as the planner recorded it: a number, ``null`` or other text."""
    if text is None or text == "null":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def children(
    provenance: ProvenanceStore, fingerprints: Sequence[str]
) -> list[list[ProvenanceNode]]:
    """The input nodes of each result, one batch of queries for all of them (blocking)."""
    inputs = provenance.inputs_of(fingerprints)
    keys = [i.key for records in inputs.values() for i in records if i.key is not None]
    observations = provenance.observations(keys) if keys else {}
    upstream = [i.upstream for records in inputs.values() for i in records if i.upstream]
    results = provenance.load(upstream) if upstream else {}
    return [
        [_node(fp, r, observations, results) for r in inputs.get(fp, [])] for fp in fingerprints
    ]


def _loader(context: RequestContext) -> DataLoader[str, list[ProvenanceNode]]:
    async def load(fingerprints: list[str]) -> list[list[ProvenanceNode]]:
        return await run_in_threadpool(children, context.service.provenance, fingerprints)

    return DataLoader(load_fn=load)


async def _provenance(root: strawberry.Parent[DerivedValue]) -> ResultNode:
    return root.node


@strawberry.type(description="A module's output for a patient now, and what it came from.")
class DerivedValue:
    id: strawberry.ID = strawberry.field(description="The execution fingerprint")
    module: str
    version: str
    patient: strawberry.ID
    computed: str
    cached: bool = strawberry.field(description="Found, not computed, by this request")
    outputs: list[OutputValue]
    node: strawberry.Private[ResultNode]
    provenance: ResultNode = strawberry.field(
        resolver=_provenance, description="The result node; select `inputs` to go deeper"
    )


async def derive(context: RequestContext, field: str, patient: str, name: str) -> DerivedValue:
    """Module ``name``'s result for ``patient`` now (GET /api/v1/patients/{p}/derived/{name})."""
    await authorize(context, derived.READ, field, patient)
    service = context.service
    planner = service.planner
    if name not in planner.graph:
        raise NotFoundError(f"no module {name!r}")
    if patient not in service.runtime:
        raise NotFoundError(f"no twin for patient {patient!r}")
    derivation = await run_in_threadpool(planner.request, [name], [patient])
    run = derivation.runs[name]
    if not run.fingerprints[0]:  # a published module its service has not run for the twin
        raise NotFoundError(f"module {name!r} has no result for patient {patient!r} yet")
    record = await run_in_threadpool(service.provenance.result, run.fingerprints[0])
    module = planner.graph[record.module]
    units = {out.name: (out.unit, out.code) for out in module.outputs}
    return DerivedValue(
        id=strawberry.ID(record.fingerprint),
        module=record.module,
        version=record.version,
        patient=strawberry.ID(record.patient),
        computed=to_iso(record.computed_us),
        cached=not bool(run.computed[0]),
        outputs=[
            OutputValue(
                name=k,
                value=v,
                unit=units.get(k, (None, None))[0],
                code=units.get(k, (None, None))[1],
            )
            for k, v in record.outputs.items()
        ],
        node=result_node(record),
    )
