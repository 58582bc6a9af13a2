"""``medtwin patients erase`` and ``medtwin keys``: erasure and key management."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from medtwin.apps.api.context import ServiceContext
from medtwin.apps.commands import operator
from medtwin.core.errors import MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.crypto import generate_key

patients_app = typer.Typer(help="Patients' personal data.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)


@contextmanager
def _context() -> Iterator[ServiceContext]:
    try:
        context = ServiceContext.build(Settings())
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        yield context
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        context.store.close()


@patients_app.command()
def erase(patient: str) -> None:
    """Erase a patient's personal data by destroying their data key; audited."""
    with _context() as context:
        context.record(operator(), "system", "erase", "success", patient=patient)
        pseudonym = context.vault.erase(patient, now_us=time.time_ns() // 1000)
    typer.echo(f"patient erased; now known as {pseudonym}")


@keys_app.command()
def generate() -> None:
    """Print a new random 256-bit key (for MEDTWIN_DATA_KEYS or MEDTWIN_BLIND_INDEX_KEY)."""
    typer.echo(generate_key())


@keys_app.command()
def rotate() -> None:
    """Re-encrypt under the active data key whatever an older key protects, online."""
    with _context() as context:
        report = context.vault.rotate()
        context.record(
            operator(),
            "system",
            "rotate-keys",
            "success",
            detail={
                "patient_keys": report.patient_keys,
                "quarantine": report.quarantine,
                "consents": report.consents,
            },
        )
    typer.echo(
        f"re-encrypted {report.patient_keys} patient keys, {report.quarantine} quarantined "
        f"payloads, {report.consents} consents under the active key"
    )
