"""``medtwin audit``: verify the audit chain and export it as FHIR AuditEvents.

Reads ``MEDTWIN_STORE_URL``, ``MEDTWIN_AUDIT_KEY`` (the HMAC key of the chain, as
UTF-8 text) and ``MEDTWIN_AUDIT_CHECKPOINT_PATH`` (the file of anchors) from the
settings. Exit codes: 0 done (chain intact), 1 chain tampered or export failed,
2 configuration or store error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated

import typer

from medtwin.apps.commands import operator
from medtwin.core.clock import SystemClock, to_us
from medtwin.core.errors import ConfigurationError, MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.audit import AuditEntry, AuditLog
from medtwin.data.store import store_for

app = typer.Typer(
    help="The tamper-evident audit trail: verify its hash chain, export it as FHIR.",
    no_args_is_help=True,
)

_EXPORT_PAGE = 1000


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _audit_key(settings: Settings) -> bytes | None:
    """The audit key, as the server gets it.

    ``Settings.secret`` where there is one (in development a missing key is generated
    once and kept in the secrets file), else the ``audit_key`` setting.
    """
    secret = getattr(settings, "secret", None)
    if callable(secret):
        return bytes(secret("audit_key"))
    value = getattr(settings, "audit_key", None)
    if value is not None and hasattr(value, "get_secret_value"):  # a pydantic SecretStr
        value = value.get_secret_value()
    return None if not value else str(value).encode("utf-8")


@contextmanager
def _audit_log() -> Iterator[AuditLog]:
    try:
        settings = Settings()
    except (ConfigurationError, ValueError) as exc:
        raise _fail(f"configuration error: {exc}", 2) from exc
    try:
        key = _audit_key(settings)
    except MedtwinError as exc:
        raise _fail(f"configuration error: {exc}", 2) from exc
    if not key:
        raise _fail("configuration error: no audit key (set MEDTWIN_AUDIT_KEY)", 2)
    checkpoint = getattr(settings, "audit_checkpoint_path", None)
    try:
        store = store_for(settings, migrate=False)
    except MedtwinError as exc:
        raise _fail(f"store error: {exc}", 2) from exc
    try:
        try:
            audit = AuditLog(
                store,
                key,
                SystemClock(),
                checkpoint_path=None if checkpoint is None else Path(checkpoint),
            )
        except ValueError as exc:
            raise _fail(f"configuration error: {exc}", 2) from exc
        yield audit
    finally:
        store.close()


def _time(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(f"{option}: not an ISO 8601 time: {value!r}", 2) from exc
    if moment.tzinfo is None:
        raise _fail(f"{option}: give a time zone (e.g. 2024-05-01T08:00:00Z)", 2)
    return to_us(moment)


@app.command()
def verify() -> None:
    """Recompute the hash chain and check the checkpoint file; exit 1 if tampered."""
    with _audit_log() as audit:
        try:
            report = audit.verify()
        except MedtwinError as exc:
            raise _fail(f"store error: {exc}", 2) from exc
    if report.ok:
        typer.echo(f"audit chain intact: {report.checked} entries verified")
        return
    where = "" if report.first_bad_seq is None else f" at seq {report.first_bad_seq}"
    typer.echo(f"audit chain TAMPERED{where}: {report.problem}")
    typer.echo(f"{report.checked} entries verified before the first problem")
    raise typer.Exit(1)


@app.command()
def export(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File to write, '-' for standard output")
    ] = Path("-"),
    patient: Annotated[str | None, typer.Option(help="Only this patient's entries")] = None,
    since: Annotated[str | None, typer.Option(help="From this ISO 8601 time (inclusive)")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this ISO 8601 time (inclusive)")] = None,
) -> None:
    """Write the audit entries as a FHIR R4 Bundle (type collection) of AuditEvents.

    The export is itself audited (action "export") before anything is written.
    """
    start_us, end_us = _time(since, "--since"), _time(until, "--until")
    with _audit_log() as audit:
        filters = {
            name: value
            for name, value in (("since", since), ("until", until), ("target", "audit"))
            if value is not None
        }
        try:
            audit.append(
                [
                    AuditEntry(
                        actor=operator(),
                        role="system",
                        action="export",
                        outcome="success",
                        patient=patient,
                        detail=filters,
                    )
                ]
            )
            if str(output) == "-":
                count = _write_bundle(audit, sys.stdout, patient, start_us, end_us)
            else:
                with output.open("w", encoding="utf-8") as stream:
                    count = _write_bundle(audit, stream, patient, start_us, end_us)
        except (MedtwinError, OSError) as exc:
            raise _fail(f"export failed: {exc}", 1) from exc
    if str(output) != "-":
        typer.echo(f"{count} audit events written to {output}")


def _write_bundle(
    audit: AuditLog, stream: IO[str], patient: str | None, start_us: int | None, end_us: int | None
) -> int:
    """Stream the Bundle page by page; return the number of events written."""
    timestamp = SystemClock().now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # FHIR JSON has no empty arrays: "entry" appears with the first event.
    stream.write(
        f'{{"resourceType":"Bundle","type":"collection","timestamp":{json.dumps(timestamp)}'
    )
    count, after = 0, None
    while True:
        page = audit.records(
            patient=patient, start_us=start_us, end_us=end_us, after_seq=after, limit=_EXPORT_PAGE
        )
        for record in page:
            stream.write("," if count else ',"entry":[')
            stream.write(json.dumps({"resource": audit.to_fhir(record)}, separators=(",", ":")))
            count += 1
        if len(page) < _EXPORT_PAGE:
            break
        after = page[-1].seq
    stream.write("]}\n" if count else "}\n")
    return count
