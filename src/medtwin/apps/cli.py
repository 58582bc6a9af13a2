"""The ``medtwin`` command line. Every command is a thin wrapper over a function call."""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from medtwin import __version__
from medtwin.apps.commands.audit import app as audit_app
from medtwin.apps.commands.mappings import app as mappings_app
from medtwin.apps.commands.models import app as models_app
from medtwin.apps.commands.privacy import keys_app, patients_app
from medtwin.apps.commands.quarantine import app as quarantine_app
from medtwin.apps.commands.users import app as users_app
from medtwin.core.collector import tune_collector
from medtwin.core.errors import ConfigurationError, MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.store import store_for

app = typer.Typer(help="medtwin: live, personal digital twins of patients.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(patients_app, name="patients")
app.add_typer(keys_app, name="keys")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(mappings_app, name="mappings")
app.add_typer(models_app, name="models")
console = Console(stderr=True)


@app.callback()
def _process() -> None:
    """medtwin: live, personal digital twins of patients."""
    tune_collector()


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ConfigurationError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _serve(application: Any, settings: Settings) -> None:
    import uvicorn

    from medtwin.core.tls import ssl_options

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        tls = ssl_options(settings)  # {} when TLS is off; TLS 1.2+ only when on
    except ConfigurationError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # No access log: request paths carry patient ids, which stay out of logs.
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        **tls,
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
) -> None:
    """Run the service (REST, WebSocket, dashboard) on the configured store."""
    from medtwin.apps.api import create_app

    settings = _settings(host=host, port=port)
    console.print(
        f"medtwin {__version__} on http://{settings.host}:{settings.port} "
        f"(store {settings.redacted_store_url()})"
    )
    _serve(create_app(settings), settings)


@app.command()
def demo(
    patients: Annotated[int | None, typer.Option(help="Patients in the virtual ward")] = None,
    acceleration: Annotated[
        float | None, typer.Option(help="Simulated seconds per real second")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
) -> None:
    """Run a live virtual ward on the embedded SQLite store at http://127.0.0.1:8000."""
    from medtwin.apps.demo import create_demo_app

    settings = _settings(demo_patients=patients, demo_acceleration=acceleration, port=port)
    application, (user, password) = create_demo_app(settings)
    console.print(
        f"[bold]medtwin demo[/bold]: {settings.demo_patients} patients, "
        f"time x{settings.demo_acceleration:g}, "
        f"store {settings.redacted_store_url()}\n"
        f"Open [link]http://{settings.host}:{settings.port}/[/link]  (Ctrl+C to stop)\n"
        f"Sign in as [bold]{user}[/bold] with password [bold]{password}[/bold] "
        "(new at every start)",
        markup=True,
        highlight=False,
    )
    _serve(application, settings)


def _ingest(paths: list[Path], settings: Settings, batch: int, read: Any = None) -> dict[str, int]:
    from medtwin.apps.api.context import ServiceContext
    from medtwin.apps.ingest_files import ingest_files

    context = ServiceContext.build(settings)
    # On SQLite a writer process stores each batch while the next one is validated here.
    writer = None
    if settings.store_url.startswith("sqlite:///"):
        from medtwin.data.store.writer import WriterProcess

        writer = WriterProcess(
            settings.store_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            keyring_spec=settings.secret("data_keys").decode(),
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} lines"),
    )
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console) as bar:
            tasks = {
                path: bar.add_task(path.name, total=sum(1 for _ in path.open("rb")))
                for path in paths
            }
            return ingest_files(
                context.ingestor,
                paths,
                batch=batch,
                report=lambda text: console.print(
                    text, soft_wrap=True, markup=False, highlight=False
                ),
                progress=lambda path, n: bar.advance(tasks[path], n),
                writer=writer,
                **({"read": read} if read is not None else {}),
            )
    finally:
        if writer is not None:
            writer.close()
        context.store.close()


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(exists=True, help="Files or folders to ingest")],
    format: Annotated[
        str | None,
        typer.Option("--format", help="fhir, jsonl or csv; detected from the content when omitted"),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option("--map", exists=True, dir_okay=False, help="TOML column mapping (CSV)"),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Items per transaction")] = 1000,
) -> None:
    """Ingest files: FHIR Bundles, JSON lines (one API item per line) or CSV with --map.

    A folder stands for the files in it; FHIR batch Bundles (organizations,
    practitioners) load before the transaction Bundles that refer to them.
    """
    from functools import partial

    from medtwin.devices.csv import load_mapping, read_csv

    files = _expand(files)
    kinds = {_detect(path) for path in files} if format is None else {format}
    if kinds == {"fhir"}:
        _ingest_fhir(files, _settings())
        return
    if len(kinds) != 1 or not kinds <= {"jsonl", "csv"}:
        console.print(
            f"[red]cannot ingest format {', '.join(sorted(kinds))}[/red] here "
            "(supported: fhir, jsonl, csv); give one --format for all files"
        )
        raise typer.Exit(2)
    read = None
    if kinds == {"csv"}:
        if mapping is None:
            console.print("[red]CSV needs --map mapping.toml[/red] (columns, codes, units)")
            raise typer.Exit(2)
        try:
            read = partial(read_csv, mapping=load_mapping(mapping))
        except MedtwinError as exc:
            console.print(f"[red]invalid mapping:[/red] {exc}")
            raise typer.Exit(2) from exc
    totals = _ingest(files, _settings(), batch, read)
    typer.echo(" ".join(f"{k}={v}" for k, v in totals.items()))
    if totals["rejected"] or totals["conflict"]:
        raise typer.Exit(1)


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders as their files (sorted; no hidden files, licences or notes)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() != ".md"
                and p.name != "LICENSE"
            )
        else:
            out.append(path)
    return out


def _ingest_fhir(paths: list[Path], settings: Settings) -> None:
    """Load FHIR Bundles: batches first, then transactions; totals, faults by file."""
    from medtwin.apps.api.context import ServiceContext
    from medtwin.apps.api.routes.fhir import service_of
    from medtwin.devices.fhir import FhirError
    from medtwin.devices.fhir.loader import BundleLoader

    def is_batch(path: Path) -> bool:
        with path.open("rb") as handle:
            return b'"batch"' in handle.read(4096)

    ordered = sorted(paths, key=lambda p: (not is_batch(p), str(p)))
    context = ServiceContext.build(settings)
    service = service_of(context)
    totals = {"bundles": 0, "replayed": 0, "failed": 0, "created": 0, "updated": 0,
              "observations": 0}  # fmt: skip
    unmapped: dict[str, int] = {}
    try:
        # The loader's reader process starts before the progress bar's thread.
        with BundleLoader(service) as loader, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} files"),
            console=console,
        ) as bar:  # fmt: skip
            task = bar.add_task("FHIR bundles", total=len(ordered))
            for loaded in loader.load(ordered, source="cli"):
                if isinstance(loaded.outcome, FhirError):
                    totals["failed"] += 1
                    console.print(f"{loaded.path}: {loaded.outcome}", markup=False, highlight=False)
                else:
                    report = loaded.outcome.report
                    totals["bundles"] += 1
                    totals["replayed"] += int(report.replayed)
                    totals["created"] += report.created
                    totals["updated"] += report.updated
                    totals["observations"] += report.observations
                    for system, count in report.unmapped.items():
                        unmapped[system] = unmapped.get(system, 0) + count
                bar.advance(task)
    finally:
        context.store.close()
    typer.echo(" ".join(f"{k}={v}" for k, v in totals.items()))
    for system, count in sorted(unmapped.items()):
        typer.echo(f"unmapped codes: {count} of {system}")
    if totals["failed"]:
        raise typer.Exit(1)


def _detect(path: Path) -> str:
    """The format of a file from its first bytes: jsonl, csv, fhir (a Bundle) or hl7."""
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if head.startswith(b"MSH|"):
        return "hl7"
    if head.startswith(b"{"):
        return "fhir" if b'"resourceType"' in head and b'"Bundle"' in head else "jsonl"
    return "csv"


def _on_store(action: str, run: Any) -> None:
    """Run ``run(store)`` on the configured store; a failure exits 1 naming ``action``."""
    store = store_for(_settings())
    try:
        run(store)
    except MedtwinError as exc:
        console.print(f"[red]{action} failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        store.close()


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="Backup file to write (SQLite format)")],
) -> None:
    """Write a consistent copy of the store, safe while the server runs."""
    if path.exists():
        console.print(f"[red]{path} exists[/red]; refusing to overwrite a backup")
        raise typer.Exit(2)
    _on_store("backup", lambda store: store.backup(path))
    typer.echo(f"backup written to {path}")


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Backup file")],
) -> None:
    """Replace the store's content with a backup made by ``medtwin backup``."""
    _on_store("restore", lambda store: store.restore(path))
    typer.echo(f"store restored from {path}")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schema files")] = Path(
        "docs/schemas"
    ),
) -> None:
    """Write the published JSON Schemas of the API's requests, answers and events."""
    from medtwin.apps.api.schemas import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(
            json.dumps(schema, indent=2, sort_keys=True) + "\n"
        )
    typer.echo(f"wrote {len(json_schemas())} schemas to {out}")


@app.command()
def simulate(
    scenario: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Scenario JSON file")
    ],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write")],
    solver: Annotated[str, typer.Option(help="rk4 (fixed step) or dopri5 (adaptive)")] = "rk4",
) -> None:
    """Simulate a scenario (UVA/Padova or PK/PD) and write one CSV row per patient-minute."""
    from medtwin.models.physiology import RK4, Dopri5, Solver
    from medtwin.models.physiology.scenario import load_scenario, run_scenario, write_csv

    solvers: dict[str, Solver] = {"rk4": RK4(), "dopri5": Dopri5()}  # dopri5: adaptive steps
    if solver not in solvers:
        console.print(f"[red]unknown solver {solver!r}[/red] (rk4 or dopri5)")
        raise typer.Exit(2)
    try:
        checked = load_scenario(scenario)
    except MedtwinError as exc:
        console.print(f"[red]invalid scenario:[/red] {exc}")
        raise typer.Exit(2) from exc
    result = run_scenario(checked, solver=solvers[solver])
    with out.open("w", encoding="utf-8", newline="") as fh:
        rows = write_csv(result, fh)
    failed = [p for p, s in zip(checked.patients, result.solution.status, strict=True) if s]
    typer.echo(f"wrote {rows} rows for {len(checked.patients)} patients to {out}")
    if failed:
        console.print(f"[yellow]simulation failed for:[/yellow] {', '.join(failed)}")
        raise typer.Exit(1)


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark in bench/ (file stem), or 'all'")] = "all",
    quick: Annotated[bool, typer.Option(help="Smaller workload, for a smoke run")] = False,
) -> None:
    """Run the benchmarks in the checkout's bench/ folder."""
    folder = Path.cwd() / "bench"
    if not folder.is_dir():
        console.print("[red]no bench/ folder here[/red]: run from a medtwin checkout")
        raise typer.Exit(2)
    scripts = sorted(folder.glob("*.py")) if name == "all" else [folder / f"{name}.py"]
    for script in scripts:
        if not script.is_file():
            console.print(f"[red]no benchmark {script.name}[/red]")
            raise typer.Exit(2)
        if script.name.startswith("_"):
            continue
        sys.argv = [str(script), *(["--quick"] if quick else [])]
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    app()
