"""The GraphQL schema: patients, twins, observations, derived values, live twin events.

Resolvers are plain functions passed as ``resolver=`` (typed, unlike decorated methods).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated

import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext

from medtwin.apps.api.graphql import limits, resolvers
from medtwin.apps.api.graphql.context import FreshOperation, Info
from medtwin.apps.api.graphql.errors import ErrorCodes, expected
from medtwin.apps.api.graphql.provenance import (
    AttributeNode,
    DerivedValue,
    ObservationNode,
    ResultNode,
    derive,
)
from medtwin.apps.api.graphql.types import (
    Observation,
    ObservationPage,
    Twin,
    observation_of,
    twin_of,
)
from medtwin.core.clock import to_iso
from medtwin.core.records import Patient as PatientRecord

Codes = Annotated[list[str] | None, strawberry.argument(description="LOINC codes; all if absent")]
From = Annotated[
    str | None, strawberry.argument(name="from", description="ISO 8601 with zone, inclusive")
]
To = Annotated[
    str | None, strawberry.argument(name="to", description="ISO 8601 with zone, inclusive")
]
PatientId = Annotated[strawberry.ID, strawberry.argument(description="The patient's id")]
ModuleName = Annotated[str, strawberry.argument(description="The module, e.g. news2")]
First = Annotated[int, strawberry.argument(description=f"Page size, 1 to {resolvers.MAX_PAGE}")]
After = Annotated[str | None, strawberry.argument(description="nextCursor of the previous page")]


# -- fields of a patient ----------------------------------------------------------------


async def _patient_twin(root: strawberry.Parent[Patient], info: Info) -> Twin:
    return await _twin(info, root.id)


async def _patient_observations(
    root: strawberry.Parent[Patient],
    info: Info,
    codes: Codes = None,
    start: From = None,
    end: To = None,
    first: First = 500,
    after: After = None,
) -> ObservationPage:
    return await _observations(info, root.id, codes, start, end, first, after)


async def _patient_latest(
    root: strawberry.Parent[Patient], info: Info, codes: Codes = None
) -> list[Observation]:
    return await _latest(info, root.id, codes)


async def _patient_derived(
    root: strawberry.Parent[Patient], info: Info, name: ModuleName
) -> DerivedValue:
    return await _derived(info, root.id, name)


@strawberry.type(description="A patient (no personal data) and, field by field, their record.")
class Patient:
    id: strawberry.ID
    pseudonym: str
    spo2_scale: int = strawberry.field(description="NEWS2 SpO2 scale, 1 or 2")
    created: str
    twin: Twin = strawberry.field(resolver=_patient_twin, description="The twin now")
    observations: ObservationPage = strawberry.field(
        resolver=_patient_observations, description="Observations in time order, paged"
    )
    latest_observations: list[Observation] = strawberry.field(
        resolver=_patient_latest, description="The stored observation behind each newest value"
    )
    derived: DerivedValue = strawberry.field(
        resolver=_patient_derived, description="A module's output now, with its provenance"
    )


def _patient(record: PatientRecord) -> Patient:
    return Patient(
        id=strawberry.ID(record.id),
        pseudonym=record.pseudonym,
        spo2_scale=1 if record.spo2_scale == 1 else 2,
        created=to_iso(record.created_us),
    )


# -- queries ----------------------------------------------------------------------------


async def _twin(info: Info, patient: str) -> Twin:
    return twin_of(await resolvers.twin(info.context, info.field_name, patient))


async def _observations(
    info: Info,
    patient: str,
    codes: list[str] | None,
    start: str | None,
    end: str | None,
    first: int,
    after: str | None,
) -> ObservationPage:
    items, next_cursor = await resolvers.history(
        info.context,
        info.field_name,
        patient,
        codes=codes or (),
        start=start,
        end=end,
        first=first,
        after=after,
    )
    return ObservationPage(items=[observation_of(s) for s in items], next_cursor=next_cursor)


async def _latest(info: Info, patient: str, codes: list[str] | None) -> list[Observation]:
    found = await resolvers.latest(info.context, info.field_name, patient, codes or ())
    return [observation_of(s) for s in found]


async def _derived(info: Info, patient: str, name: str) -> DerivedValue:
    return await derive(info.context, info.field_name, patient, name)


async def _patients(info: Info) -> list[Patient]:
    return [_patient(p) for p in await resolvers.patient_list(info.context, info.field_name)]


async def _one_patient(info: Info, id: PatientId) -> Patient:
    return _patient(await resolvers.patient(info.context, info.field_name, id))


async def _twins(info: Info) -> list[Twin]:
    return [twin_of(v) for v in await resolvers.twin_list(info.context, info.field_name)]


async def _query_twin(info: Info, patient: PatientId) -> Twin:
    return await _twin(info, patient)


async def _query_observations(
    info: Info,
    patient: PatientId,
    codes: Codes = None,
    start: From = None,
    end: To = None,
    first: First = 500,
    after: After = None,
) -> ObservationPage:
    return await _observations(info, patient, codes, start, end, first, after)


async def _query_latest(info: Info, patient: PatientId, codes: Codes = None) -> list[Observation]:
    return await _latest(info, patient, codes)


async def _query_derived(info: Info, patient: PatientId, name: ModuleName) -> DerivedValue:
    return await _derived(info, patient, name)


@strawberry.type
class Query:
    patients: list[Patient] = strawberry.field(
        resolver=_patients, description="The patients the caller may see"
    )
    patient: Patient = strawberry.field(
        resolver=_one_patient, description="One patient; NOT_FOUND if absent or not visible"
    )
    twins: list[Twin] = strawberry.field(
        resolver=_twins, description="Every twin the caller may see, now"
    )
    twin: Twin = strawberry.field(resolver=_query_twin, description="One patient's twin now")
    observations: ObservationPage = strawberry.field(
        resolver=_query_observations, description="One patient's observations in time order"
    )
    latest_observations: list[Observation] = strawberry.field(
        resolver=_query_latest, description="The stored observation behind each newest value"
    )
    derived: DerivedValue = strawberry.field(
        resolver=_query_derived, description="A module's output now, with its provenance"
    )


# -- subscriptions ----------------------------------------------------------------------


@strawberry.type(description="An event of the twins (the messages of /ws/events).")
class TwinEvent:
    type: str = strawberry.field(description="twin.updated, twin.intervention, events.dropped")
    patient: strawberry.ID | None
    twin: Twin | None = strawberry.field(description="The twin, for twin.updated")
    payload: JSON = strawberry.field(description="The event as /ws/events sends it")


async def _twin_events(
    info: Info,
    patient: Annotated[
        strawberry.ID | None, strawberry.argument(description="Only this patient's events")
    ] = None,
) -> AsyncGenerator[TwinEvent, None]:
    # aclosing: when the client completes, the bus subscription closes at once.
    async with aclosing(resolvers.twin_events(info.context, info.field_name, patient)) as stream:
        async for event in stream:
            yield TwinEvent(
                type=str(event.get("type", "")),
                patient=strawberry.ID(event["patient"]) if "patient" in event else None,
                twin=twin_of(event) if event.get("type") == "twin.updated" else None,
                payload=JSON(event),
            )


@strawberry.type
class Subscription:
    twin_events: AsyncGenerator[TwinEvent, None] = strawberry.subscription(
        resolver=_twin_events, description="Twin events of one patient, or of all visible ones"
    )


class Schema(strawberry.Schema):
    """Logs only the errors that are the service's fault, not refusals or bad documents."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        super().process_errors([e for e in errors if not expected(e)], execution_context)


schema = Schema(
    query=Query,
    subscription=Subscription,
    # Node types reached only through the ProvenanceNode interface.
    types=[ResultNode, ObservationNode, AttributeNode],
    extensions=[FreshOperation, *limits.extensions(), ErrorCodes],
)
