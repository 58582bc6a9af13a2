"""Quarantine: what every adapter refused, with its raw payload, and replay after a fix."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.schemas import ErrorAnswer, QuarantineOut, ReplayAnswer
from medtwin.core.clock import to_iso
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role
from medtwin.data.store import QuarantineEntry

router = APIRouter(prefix="/api/v1/quarantine", tags=["quarantine"])
# Raw payloads can carry anything a sender put in them: administrators only, audited.
READ = Policy.allow(Role.ADMIN, action="read-quarantine")
REPLAY = Policy.allow(Role.ADMIN, action="replay-quarantine")
_404: dict[int | str, dict[str, object]] = {404: {"model": ErrorAnswer}}


def _out(entry: QuarantineEntry) -> QuarantineOut:
    assert entry.row_id is not None
    return QuarantineOut(
        id=entry.row_id,
        received=to_iso(entry.received_us),
        channel=entry.channel,
        source=entry.source,
        location=entry.location,
        reason=entry.reason,
        payload=entry.payload,
        resolved=None if entry.resolved_us is None else to_iso(entry.resolved_us),
    )


@router.get("", response_model=list[QuarantineOut], dependencies=[guard(READ)])
async def list_quarantine(
    context: Context,
    channel: Annotated[str | None, Query(max_length=32)] = None,
    resolved: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[QuarantineOut]:
    """Newest first; ``resolved=false`` lists what still waits for a fix."""
    entries = await run_in_threadpool(
        context.store.quarantined, limit=limit, offset=offset, channel=channel, resolved=resolved
    )
    return [_out(e) for e in entries]


@router.get("/{entry_id}", response_model=QuarantineOut, responses=_404, dependencies=[guard(READ)])
async def get_quarantine(context: Context, entry_id: int) -> QuarantineOut:
    entry = await run_in_threadpool(context.store.quarantine_entry, entry_id)
    if entry is None:
        raise NotFoundError(f"no quarantine entry {entry_id}")
    return _out(entry)


@router.post(
    "/{entry_id}/replay",
    response_model=ReplayAnswer,
    responses=_404,
    dependencies=[guard(REPLAY)],
)
async def replay_quarantine(context: Context, entry_id: int) -> ReplayAnswer:
    """Take the payload in again through its channel; nothing changes if it is still at fault."""
    outcome = await run_in_threadpool(context.replayers.replay, entry_id)
    return ReplayAnswer(
        id=outcome.row_id, taken=outcome.taken, reason=outcome.reason, location=outcome.location
    )
