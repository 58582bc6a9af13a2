"""``medtwin mappings``: map senders' local codes to registry codes; list what is unmapped.

Exit codes: 0 done, 1 nothing to remove, 2 bad input or store error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medtwin.core.errors import MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.mappings import add_mapping, list_mappings, remove_mapping, unmapped_codes
from medtwin.data.store import SqlStore, store_for

app = typer.Typer(
    help="Local codes of each sender mapped to registry codes (FHIR and HL7 v2).",
    no_args_is_help=True,
)


def _store() -> SqlStore:
    try:
        return store_for(Settings())
    except (MedtwinError, ValueError) as exc:
        typer.echo(f"cannot open the store: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def add(
    source: Annotated[str, typer.Argument(help="Sender (HL7 MSH-3) or code system URI (FHIR)")],
    local_code: Annotated[str, typer.Argument(help="The sender's code")],
    code: Annotated[str, typer.Argument(help="Registry code, e.g. LOINC 8867-4")],
    unit: Annotated[str | None, typer.Option(help="UCUM unit of the sender's values")] = None,
) -> None:
    """Add or replace one mapping; new data uses it, quarantined data after a replay."""
    store = _store()
    try:
        mapping = add_mapping(store, source, local_code, code, unit)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    finally:
        store.close()
    typer.echo(f"{mapping.source_system}\t{mapping.local_code}\t{mapping.code}\t{unit or ''}")


@app.command("list")
def list_command(
    source: Annotated[str | None, typer.Option(help="Only this sender or system")] = None,
) -> None:
    """Every mapping: source, local code, registry code, unit."""
    store = _store()
    try:
        for m in list_mappings(store, source):
            typer.echo(f"{m.source_system}\t{m.local_code}\t{m.code}\t{m.unit or ''}")
    finally:
        store.close()


@app.command()
def remove(
    source: Annotated[str, typer.Argument()], local_code: Annotated[str, typer.Argument()]
) -> None:
    """Remove one mapping."""
    store = _store()
    try:
        found = remove_mapping(store, source, local_code)
    finally:
        store.close()
    if not found:
        typer.echo(f"no mapping of {local_code!r} for {source!r}", err=True)
        raise typer.Exit(1)


@app.command()
def unmapped(
    source: Annotated[str | None, typer.Option(help="Only this sender")] = None,
) -> None:
    """Codes stored but not scored, most frequent first: source, system, code, count."""
    store = _store()
    try:
        for u in unmapped_codes(store, source):
            typer.echo(f"{u.source}\t{u.system}\t{u.code}\t{u.count}")
    finally:
        store.close()
