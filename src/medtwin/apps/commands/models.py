"""``medtwin models``: train, list, promote learned risk models and check their drift.

- ``train``: train a deterioration model on a generated cohort (``--patients``,
  ``--seed``) or on a folder of PhysioNet 2019 ``.psv`` files (``--psv``), and register
  it with its training-data fingerprint, features and test metrics.  A registered
  version does not serve until it is promoted.
- ``list``: every model's versions, metrics, and which version serves.
- ``promote NAME VERSION --reason TEXT``: make a version the serving one; audited as the
  operator (``cli:<OS user>``) with the reason.  A running service loads it at its next
  start (or at once when promoted through the API).
- ``drift NAME``: PSI per feature of a PSV folder (or a generated cohort) against the
  serving version's training data; without data, of the features the service scored
  over the last ``--days`` days (counted in the store, as ``GET
  /api/v1/models/{name}/drift`` reports them).

Exit codes: 0 done, 1 unknown model or version, or drift found (``drift --fail``),
2 configuration, store or input error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medtwin.apps.commands import operator
from medtwin.core.clock import from_us
from medtwin.core.errors import ConfigurationError, MedtwinError, NotFoundError
from medtwin.core.settings import Settings

if TYPE_CHECKING:
    from medtwin.data.model_registry import ModelRegistry
    from medtwin.models.learning.physionet import PatientSeries

app = typer.Typer(
    help="Learned risk models: train, list, promote, check drift.", no_args_is_help=True
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@contextmanager
def _registry() -> Iterator[ModelRegistry]:
    from medtwin.core.clock import SystemClock
    from medtwin.data.audit import AuditLog
    from medtwin.data.model_registry import ModelRegistry
    from medtwin.data.store import store_for

    try:
        settings = Settings()
        store = store_for(settings)
    except (ConfigurationError, ValueError, MedtwinError) as exc:
        raise _fail(f"cannot open the store: {exc}", 2) from exc
    try:
        audit = AuditLog(
            store,
            settings.secret("audit_key"),
            SystemClock(),
            checkpoint_path=settings.audit_checkpoint_path,
        )
        yield ModelRegistry(store, audit, SystemClock())
    finally:
        store.close()


def _patients(psv: Path | None, patients: int, seed: int) -> tuple[list[PatientSeries], str]:
    """The training (or drift) patients and a description of where they came from."""
    from medtwin.models.learning import generate_cohort, read_directory

    if psv is not None:
        try:
            found = read_directory(psv)
        except MedtwinError as exc:
            raise _fail(f"cannot read {psv}: {exc}", 2) from exc
        if not found:
            raise _fail(f"no .psv files in {psv}", 2)
        return found, f"psv:{psv.name}"
    return list(generate_cohort(patients, seed=seed, setting="ward").patients), (
        f"generated:ward:{patients}:{seed}"
    )


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def train(
    name: Annotated[str, typer.Option(help="Registry name of the model")] = "deterioration",
    patients: Annotated[int, typer.Option(min=20, max=100_000, help="Generated cohort size")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the cohort, the split and the trees")] = 0,
    psv: Annotated[
        Path | None,
        typer.Option(help="Train on this folder of PhysioNet 2019 .psv files instead"),
    ] = None,
    trees: Annotated[int, typer.Option(min=1, max=5000, help="Boosting rounds")] = 200,
) -> None:
    """Train on a generated cohort or PSV files and register the model (not promoted)."""
    from medtwin.models.learning import GbmParams
    from medtwin.twins.risk import register_trained

    data, source = _patients(psv, patients, seed)
    started = time.perf_counter()
    with _registry() as registry:
        try:
            version = register_trained(
                registry,
                data,
                name=name,
                seed=seed,
                params=GbmParams(n_estimators=trees),
                by_user=operator(),
                role="admin",
                source=source,
            )
        except ValueError as exc:
            raise _fail(f"cannot train on {source}: {exc}", 2) from exc
    metrics = version.metrics
    typer.echo(
        f"registered {name} version {version.version} ({source}, {len(data)} patients, "
        f"{time.perf_counter() - started:.1f} s): AUROC {_metric(metrics.get('auroc'))}, "
        f"AUPRC {_metric(metrics.get('auprc'))}, Brier {_metric(metrics.get('brier'))}, "
        f"utility {_metric(metrics.get('utility'))}; "
        f"promote it with: medtwin models promote {name} {version.version} --reason ..."
    )


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of lines")] = False,
) -> None:
    """Every model and version: date, who, metrics, which version serves (*)."""
    with _registry() as registry:
        out: list[dict[str, Any]] = []
        for name in registry.names():
            promotions = registry.promotions(name)
            serving = promotions[-1].version if promotions else None
            for v in registry.versions(name):
                out.append(
                    {
                        "name": name,
                        "version": v.version,
                        "serving": v.version == serving,
                        "created": from_us(v.created_us).isoformat(timespec="seconds"),
                        "created_by": v.created_by,
                        "fingerprint": v.fingerprint,
                        "features": len(v.features),
                        "source": v.params.get("source"),
                        "metrics": dict(v.metrics),
                    }
                )
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not out:
        typer.echo("no models registered (medtwin models train)")
    for row in out:
        metrics = row["metrics"]
        typer.echo(
            f"{'*' if row['serving'] else ' '} {row['name']}\tv{row['version']}\t"
            f"{row['created']}\t{row['created_by']}\t{row['fingerprint'][:12]}\t"
            f"AUROC {_metric(metrics.get('auroc'))}\tAUPRC {_metric(metrics.get('auprc'))}\t"
            f"{row['source']}"
        )


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Model name")],
    version: Annotated[int, typer.Argument(help="Version to serve")],
    reason: Annotated[str, typer.Option(help="Why this version serves now (audited)")],
) -> None:
    """Make VERSION the serving version of NAME (audited as the operator)."""
    if not reason.strip():
        raise _fail("a promotion needs a reason", 2)
    with _registry() as registry:
        try:
            promotion = registry.promote(name, version, by_user=operator(), reason=reason)
        except NotFoundError as exc:
            raise _fail(str(exc), 1) from exc
    typer.echo(
        f"{name} version {promotion.version} serves from now on (by {promotion.by_user}); "
        "a running service picks it up at its next start"
    )


@app.command()
def drift(
    name: Annotated[str, typer.Argument(help="Model name")],
    psv: Annotated[Path | None, typer.Option(help="Folder of PhysioNet .psv files")] = None,
    patients: Annotated[
        int | None, typer.Option(min=1, help="Or a generated cohort of this size")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated cohort")] = 1,
    version: Annotated[int | None, typer.Option(help="Default: the serving version")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, help="PSI reported as drift")] = 0.25,
    days: Annotated[int, typer.Option(min=1, help="Served: UTC days looked back")] = 7,
    fail: Annotated[bool, typer.Option("--fail", help="Exit 1 when a feature drifted")] = False,
) -> None:
    """PSI of each feature against the model's training data (JSON): of the given data
    (``--psv`` or ``--patients``), else of what the service scored over ``--days`` days."""
    from medtwin.models.learning.features import FeatureSpec, patient_features

    with _registry() as registry:
        try:
            if version is None:
                serving = registry.promotions(name)
                if not serving:
                    raise _fail(f"model {name!r} has no serving version: pass --version", 1)
                version = serving[-1].version
            found = registry.get(name, version)
            if psv is None and patients is None:
                report = registry.served_drift(name, version, days=days, threshold=threshold)
                source = f"served over the last {days} days"
            else:
                data, source = _patients(psv, patients or 0, seed)
                spec = FeatureSpec.from_json(found.params["spec"])
                rows = patient_features(data, spec).X
                report = registry.drift(name, version, rows, threshold=threshold)
        except NotFoundError as exc:
            raise _fail(str(exc), 1) from exc
    result = {**report.result(), "source": source}
    typer.echo(json.dumps(result, indent=2))
    if fail and report.significant:
        raise typer.Exit(1)
