"""``medtwin quarantine``: list, show and replay what the adapters refused.

Every command is audited as the operator (``cli:<OS user>``): payloads are raw
input and may carry personal data. Exit codes: 0 done, 1 a replay was refused
or the entry does not exist, 2 configuration or store error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from medtwin.apps.api.context import ServiceContext
from medtwin.apps.commands import operator
from medtwin.core.clock import from_us
from medtwin.core.errors import ConfigurationError, MedtwinError, NotFoundError
from medtwin.core.settings import Settings
from medtwin.data.audit import AuditEntry
from medtwin.data.store import QuarantineEntry

app = typer.Typer(help="Input the adapters refused: list, show, replay.", no_args_is_help=True)


@contextmanager
def _context(*, twins: bool = False) -> Iterator[ServiceContext]:
    """The service's parts; the twins are loaded only for a replay, which updates them."""
    try:
        context = ServiceContext.build(Settings(), warm=twins)
    except (ConfigurationError, ValueError, MedtwinError) as exc:
        typer.echo(f"cannot open the store: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        yield context
    finally:
        context.store.close()


def _audit(context: ServiceContext, action: str, detail: dict[str, object]) -> None:
    entry = AuditEntry(
        actor=operator(), role="admin", action=action, outcome="success", detail=detail
    )
    context.audit.append([entry])


def _line(e: QuarantineEntry) -> str:
    state = "resolved" if e.resolved_us is not None else "open"
    when = from_us(e.received_us).isoformat(timespec="seconds")
    return f"{e.row_id}\t{when}\t{e.channel}\t{state}\t{e.location}\t{e.reason}"


@app.command("list")
def list_entries(
    channel: Annotated[str | None, typer.Option(help="Only this channel (api, fhir, ...)")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only entries not replayed")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """Newest first: id, received, channel, state, location, reason (no payloads)."""
    with _context() as context:
        _audit(context, "list-quarantine", {"channel": channel or "", "limit": limit})
        entries = context.store.quarantined(
            limit=limit, channel=channel, resolved=False if open_only else None
        )
        for entry in entries:
            typer.echo(_line(entry))


@app.command()
def show(entry_id: Annotated[int, typer.Argument(help="Quarantine entry id")]) -> None:
    """One entry with its raw payload."""
    with _context() as context:
        _audit(context, "read-quarantine", {"entry": entry_id})
        entry = context.store.quarantine_entry(entry_id)
        if entry is None:
            typer.echo(f"no quarantine entry {entry_id}", err=True)
            raise typer.Exit(1)
        typer.echo(_line(entry))
        typer.echo(entry.payload)


@app.command()
def replay(
    entry_ids: Annotated[list[int], typer.Argument(help="Quarantine entry ids")],
) -> None:
    """Take entries in again through their channel, after the cause was fixed."""
    refused = 0
    with _context(twins=True) as context:
        for entry_id in entry_ids:
            try:
                outcome = context.replayers.replay(entry_id)
            except NotFoundError as exc:
                typer.echo(str(exc), err=True)
                refused += 1
                continue
            _audit(context, "replay-quarantine", {"entry": entry_id, "taken": outcome.taken})
            if outcome.taken:
                typer.echo(f"{entry_id}\ttaken in")
            else:
                refused += 1
                typer.echo(f"{entry_id}\tstill refused\t{outcome.location}\t{outcome.reason}")
    if refused:
        raise typer.Exit(1)
