"""Registry of trained models: versions, explicit audited promotion, input drift.

Each :meth:`ModelRegistry.register` stores a new version of a named model (1, 2,
3... per name) with what is needed to trust and serve it:

* the model itself as bytes (for a risk model: LightGBM's ``model_to_string()``
  as UTF-8) and its JSON parameters (calibration, feature spec);
* the *training-data fingerprint*: :func:`data_fingerprint`, the SHA-256 of the
  training matrix and labels (shape, then little-endian float64 values with one
  canonical NaN, then int8 labels), so two registrations can be told to come from
  the same data or not;
* the feature names (column order), the metrics (JSON numbers) and the time;
* the *drift reference*: each feature's training distribution as quantile bins
  (:func:`drift_reference`).

Serving never picks "the newest": :meth:`ModelRegistry.serving` returns the version
of the newest *promotion*, and :meth:`ModelRegistry.promote` is an explicit act by a
named user with a reason, written to the audit chain in the same transaction as
the promotion (commit together or fail together).  Promoting an older version is
how a roll-back is done; the promotion log keeps the history.

Drift: :meth:`ModelRegistry.drift` compares a batch of serving feature rows with
the reference by the population stability index per feature,
``PSI = sum_b (a_b - e_b) ln(a_b / e_b)`` over the training quantile bins plus a
"missing" bin (``e``: training shares, ``a``: serving shares, both floored at
:data:`PSI_FLOOR`).  Usual reading: below 0.1 stable, 0.1-0.2 moderate shift,
:data:`PSI_SIGNIFICANT` (0.2) and above a significant shift that calls for review
or retraining.

Storage: plain (not sealed) bytes and JSON: a registered model and its metrics
hold no personal data (the fingerprint is a one-way hash of the training matrix,
the reference holds only decile cut points of each feature over the whole
training population).  The tables are ``model_versions`` and
``model_promotions`` (migration 0007).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.engine import Connection

from medtwin.core.clock import Clock
from medtwin.core.errors import NotFoundError, StoreError
from medtwin.data.audit import AuditEntry, AuditLog
from medtwin.data.store import SqlStore, schema

__all__ = [
    "PSI_FLOOR",
    "PSI_MODERATE",
    "PSI_SIGNIFICANT",
    "DriftReport",
    "ModelRegistry",
    "ModelVersion",
    "Promotion",
    "data_fingerprint",
    "drift_reference",
    "population_stability",
]

PSI_MODERATE = 0.1
"""PSI from which a feature's serving distribution has moved noticeably."""
PSI_SIGNIFICANT = 0.2
"""PSI from which a shift is significant: the model's inputs no longer look like its
training data (review, recalibrate or retrain)."""
PSI_FLOOR = 1e-4
"""Smallest share a bin counts with, so an empty bin gives a finite PSI."""
DEFAULT_BINS = 10
_DAY_US = 86_400_000_000
MAX_REASON = 500  # characters of a promotion reason kept in the audit chain


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def data_fingerprint(x_in: npt.ArrayLike, y: npt.ArrayLike) -> str:
    """SHA-256 (hex) of a training matrix (n, F) and its labels (n,)."""
    x = np.ascontiguousarray(np.asarray(x_in, dtype="<f8"))
    if x.ndim != 2:
        raise ValueError(f"the training matrix must be 2-D, got shape {x.shape}")
    x = np.where(np.isnan(x), np.nan, x)  # one NaN bit pattern, whatever produced it
    labels = np.ascontiguousarray(np.asarray(y).astype("<i1"))
    if labels.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {labels.shape}")
    digest = hashlib.sha256()
    digest.update(f"{x.shape[0]}x{x.shape[1]}|".encode())
    digest.update(x.tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()


def drift_reference(
    rows: npt.ArrayLike, features: Sequence[str], bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Training distribution of each feature: quantile cut points and bin shares.

    Cut points are the ``1/bins .. (bins-1)/bins`` quantiles of the feature's present
    values (repeated ones merged); bin ``k`` holds values with ``edges[k-1] <= x <
    edges[k]``.  ``missing`` is the share of NaN rows.  JSON-ready:
    ``{"bins", "rows", "features": [{"name", "edges", "shares", "missing"}, ...]}``
    in column order.
    """
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f"rows must have shape (n, {len(features)}), got {x.shape}")
    out: list[dict[str, Any]] = []  # a list: column order survives JSON with sorted keys
    for j, name in enumerate(features):
        column = x[:, j]
        present = column[np.isfinite(column)]
        if present.size:
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
        else:
            edges = np.empty(0)
        counts = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=edges.size + 1
        )
        n = max(column.size, 1)
        out.append(
            {
                "name": str(name),
                "edges": [float(e) for e in edges],
                "shares": [float(c) / n for c in counts],
                "missing": float(column.size - present.size) / n,
            }
        )
    return {"bins": bins, "rows": int(x.shape[0]), "features": out}


def population_stability(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """PSI of two share vectors over the same bins (each floored at :data:`PSI_FLOOR`)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReport:
    """PSI of each feature of a serving batch against the training reference.

    ``drifted``: features at or above ``threshold`` (default :data:`PSI_SIGNIFICANT`),
    largest PSI first.
    """

    name: str
    version: int
    rows: int
    psi: Mapping[str, float]
    threshold: float
    drifted: tuple[str, ...]

    @property
    def max_psi(self) -> float:
        return max(self.psi.values(), default=0.0)

    @property
    def significant(self) -> bool:
        """True when any feature's PSI reaches the threshold."""
        return bool(self.drifted)

    def result(self) -> dict[str, Any]:
        """JSON-ready summary (PSI rounded to 4 decimals)."""
        return {
            "model": self.name,
            "version": self.version,
            "rows": self.rows,
            "threshold": self.threshold,
            "max_psi": round(self.max_psi, 4),
            "drifted": [{"feature": f, "psi": round(self.psi[f], 4)} for f in self.drifted],
        }


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version; ``model`` (the bytes) is None in listings."""

    name: str
    version: int
    created_us: int
    created_by: str
    fingerprint: str
    features: tuple[str, ...]
    metrics: Mapping[str, float | None]  # None: the metric was NaN (undefined)
    params: Mapping[str, Any]
    model: bytes | None = None


@dataclass(frozen=True)
class Promotion:
    """One promotion: from ``promoted_us`` on, ``version`` serves ``name``."""

    name: str
    version: int
    promoted_us: int
    by_user: str
    reason: str


class ModelRegistry:
    """Registered models of one store; promotions go to ``audit``."""

    def __init__(self, store: SqlStore, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        # A version's reference never changes once registered; the served model's is
        # read on every scoring pass (record_served).
        self._references: dict[tuple[str, int], dict[str, Any]] = {}

    # -- writing ----------------------------------------------------------------

    def register(
        self,
        name: str,
        model: bytes,
        *,
        x_train: npt.ArrayLike,
        y_train: npt.ArrayLike,
        features: Sequence[str],
        metrics: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        by_user: str = "system",
        role: str = "system",
        bins: int = DEFAULT_BINS,
    ) -> ModelVersion:
        """Store ``model`` as the next version of ``name`` (not serving until promoted).

        ``x_train``/``y_train``: the training rows, for the fingerprint and the drift
        reference (not stored).  ``metrics``: finite numbers (NaN is stored as null).
        Audited as ``model-register``.  Two registrations of one name racing in
        separate processes: one gets the next version, the other a StoreError (the
        version is the primary key), to be retried.
        """
        if not name or not isinstance(model, bytes | bytearray) or not model:
            raise ValueError("a registration needs a name and non-empty model bytes")
        names = tuple(str(f) for f in features)
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"x_train must have shape (n, {len(names)}), got {x.shape}")
        fingerprint = data_fingerprint(x, y_train)
        clean = {str(k): _number(v) for k, v in metrics.items()}
        created_us = self._clock.now_us()
        row: dict[str, Any] = {
            "name": name,
            "created_us": created_us,
            "created_by": by_user,
            "fingerprint": fingerprint,
            "features": _json(list(names)),
            "metrics": _json(clean),
            "params": _json(dict(params or {})),
            "reference": _json(drift_reference(x, names, bins)),
            "model": bytes(model),
        }
        table = schema.model_versions
        with self._store.transaction() as conn:
            top = conn.execute(
                sa.select(sa.func.max(table.c.version)).where(table.c.name == name)
            ).scalar()
            version = 1 if top is None else int(top) + 1
            row["version"] = version
            conn.execute(sa.insert(table).values(**row))
            self._audit.append_in(
                conn,
                [
                    AuditEntry(
                        actor=by_user,
                        role=role,
                        action="model-register",
                        outcome="success",
                        detail={
                            "model": name,
                            "version": version,
                            "fingerprint": fingerprint,
                        },
                    )
                ],
            )
        return ModelVersion(
            name,
            version,
            created_us,
            by_user,
            fingerprint,
            names,
            clean,
            dict(params or {}),
            bytes(model),
        )

    def promote(
        self, name: str, version: int, *, by_user: str, reason: str, role: str = "admin"
    ) -> Promotion:
        """Make ``version`` the serving version of ``name``, audited as ``model-promote``.

        ``by_user`` and ``reason`` are required (an explicit, attributable act).
        NotFoundError for an unknown version; the audit entry and the promotion
        commit together.
        """
        if not by_user or not reason or not reason.strip():
            raise ValueError("a promotion needs the user and a reason")
        versions, promotions = schema.model_versions, schema.model_promotions
        now = self._clock.now_us()
        with self._store.transaction() as conn:
            exists = conn.execute(
                sa.select(versions.c.version).where(
                    versions.c.name == name, versions.c.version == version
                )
            ).first()
            if exists is None:
                raise NotFoundError(f"no model {name!r} version {version}")
            previous = _serving_version(conn, name)
            conn.execute(
                sa.insert(promotions).values(
                    name=name,
                    version=version,
                    promoted_us=now,
                    by_user=by_user,
                    reason=reason,
                )
            )
            self._audit.append_in(
                conn,
                [
                    AuditEntry(
                        actor=by_user,
                        role=role,
                        action="model-promote",
                        outcome="success",
                        priority="high",
                        detail={
                            "model": name,
                            "version": version,
                            "previous": previous,
                            "reason": reason[:MAX_REASON],
                        },
                    )
                ],
            )
        return Promotion(name, version, now, by_user, reason)

    # -- reading ----------------------------------------------------------------

    def names(self) -> list[str]:
        """Names with at least one registered version, sorted."""
        table = schema.model_versions
        with self._store.reading() as conn:
            rows = conn.execute(sa.select(table.c.name).distinct().order_by(table.c.name))
            return [str(r.name) for r in rows]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first, without the model bytes."""
        table = schema.model_versions
        columns = [c for c in table.c if c.name not in ("model", "reference")]
        with self._store.reading() as conn:
            rows = conn.execute(
                sa.select(*columns).where(table.c.name == name).order_by(table.c.version)
            ).mappings()
            return [_version(r, None) for r in rows]

    def get(self, name: str, version: int) -> ModelVersion:
        """One version with its model bytes; NotFoundError if it does not exist."""
        table = schema.model_versions
        with self._store.reading() as conn:
            row = (
                conn.execute(
                    sa.select(table).where(table.c.name == name, table.c.version == version)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"no model {name!r} version {version}")
        return _version(row, bytes(row["model"]))

    def serving(self, name: str) -> ModelVersion | None:
        """The promoted version of ``name`` (newest promotion), None if never promoted."""
        with self._store.reading() as conn:
            version = _serving_version(conn, name)
        return None if version is None else self.get(name, version)

    def promotions(self, name: str) -> list[Promotion]:
        """The promotion log of ``name``, oldest first."""
        table = schema.model_promotions
        with self._store.reading() as conn:
            rows = conn.execute(
                sa.select(table).where(table.c.name == name).order_by(table.c.row_id)
            ).mappings()
            return [
                Promotion(
                    str(r["name"]),
                    int(r["version"]),
                    int(r["promoted_us"]),
                    str(r["by_user"]),
                    str(r["reason"]),
                )
                for r in rows
            ]

    def reference(self, name: str, version: int) -> dict[str, Any]:
        """The stored drift reference of a version (see :func:`drift_reference`)."""
        held = self._references.get((name, version))
        if held is not None:
            return held
        table = schema.model_versions
        with self._store.reading() as conn:
            text = conn.execute(
                sa.select(table.c.reference).where(table.c.name == name, table.c.version == version)
            ).scalar()
        if text is None:
            raise NotFoundError(f"no model {name!r} version {version}")
        loaded: dict[str, Any] = json.loads(text)
        self._references[(name, version)] = loaded
        return loaded

    def drift(
        self,
        name: str,
        version: int,
        rows: npt.ArrayLike,
        *,
        threshold: float = PSI_SIGNIFICANT,
    ) -> DriftReport:
        """PSI per feature of serving ``rows`` (n, F) against the training reference."""
        reference = self.reference(name, version)
        counts = _bin_counts(reference, rows)
        return _report(name, version, reference, counts, threshold)

    def record_served(self, name: str, version: int, rows: npt.ArrayLike) -> None:
        """Count served feature ``rows`` (n, F) into today's training bins of the version
        (UTC day of the clock), so that :meth:`served_drift` sees them after a restart."""
        reference = self.reference(name, version)
        counts = _bin_counts(reference, rows)
        day = self._clock.now_us() // _DAY_US
        values = [
            (name, version, day, j, -1 if b == len(column) - 1 else b, int(c))
            for j, column in enumerate(counts)
            for b, c in enumerate(column.tolist())
            if c
        ]
        if not values:
            return
        store = self._store
        with store.transaction() as conn:
            conn.exec_driver_sql(
                "INSERT INTO model_serving_bins (name, version, day, feature, bin, served) "
                f"VALUES ({store._params(6)}) "
                "ON CONFLICT (name, version, day, feature, bin) "
                "DO UPDATE SET served = model_serving_bins.served + excluded.served",
                values,
            )

    def served_drift(
        self, name: str, version: int, *, days: int = 7, threshold: float = PSI_SIGNIFICANT
    ) -> DriftReport:
        """PSI per feature of what was served over the last ``days`` UTC days (today
        included, :meth:`record_served`) against the training reference; ``rows`` 0 when
        nothing was served."""
        reference = self.reference(name, version)
        features = reference["features"]
        counts = [np.zeros(len(f["edges"]) + 2, dtype=np.int64) for f in features]
        table = schema.model_serving_bins
        since = self._clock.now_us() // _DAY_US - (days - 1)
        query = (
            sa.select(table.c.feature, table.c.bin, sa.func.sum(table.c.served))
            .where(table.c.name == name, table.c.version == version, table.c.day >= since)
            .group_by(table.c.feature, table.c.bin)
        )
        with self._store.reading() as conn:
            for feature, b, total in conn.execute(query):
                if 0 <= feature < len(counts) and -1 <= b < len(counts[feature]) - 1:
                    counts[feature][b] += int(total)  # bin -1 is the last: missing
        return _report(name, version, reference, counts, threshold)


def _bin_counts(reference: Mapping[str, Any], rows: npt.ArrayLike) -> list[NDArray[np.int64]]:
    """Per feature of ``reference``, how many of ``rows`` (n, F) fall in each training
    bin, then how many are missing (the last element)."""
    features = reference["features"]
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f"rows must have shape (n, {len(features)}), got {x.shape}")
    out: list[NDArray[np.int64]] = []
    for j, ref in enumerate(features):
        column = x[:, j]
        present = column[np.isfinite(column)]
        edges = np.asarray(ref["edges"], dtype=np.float64)
        counts = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=edges.size + 1
        )
        out.append(np.append(counts, column.size - present.size).astype(np.int64))
    return out


def _report(
    name: str,
    version: int,
    reference: Mapping[str, Any],
    counts: Sequence[NDArray[np.int64]],
    threshold: float,
) -> DriftReport:
    """PSI of each feature's served ``counts`` (:func:`_bin_counts`) against its training
    shares."""
    rows = int(counts[0].sum()) if counts else 0
    psi: dict[str, float] = {}
    if rows:
        for ref, column in zip(reference["features"], counts, strict=True):
            expected = np.append(np.asarray(ref["shares"]), ref["missing"])
            psi[str(ref["name"])] = population_stability(expected, column / rows)
    drifted = tuple(sorted((f for f in psi if psi[f] >= threshold), key=lambda f: -psi[f]))
    return DriftReport(name, version, rows, psi, threshold, drifted)


def _number(value: float) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _serving_version(conn: Connection, name: str) -> int | None:
    table = schema.model_promotions
    version = conn.execute(
        sa.select(table.c.version)
        .where(table.c.name == name)
        .order_by(table.c.row_id.desc())
        .limit(1)
    ).scalar()
    return None if version is None else int(version)


def _version(row: Any, model: bytes | None) -> ModelVersion:
    try:
        return ModelVersion(
            name=str(row["name"]),
            version=int(row["version"]),
            created_us=int(row["created_us"]),
            created_by=str(row["created_by"]),
            fingerprint=str(row["fingerprint"]),
            features=tuple(json.loads(row["features"])),
            metrics=json.loads(row["metrics"]),
            params=json.loads(row["params"]),
            model=model,
        )
    except (ValueError, TypeError) as exc:
        raise StoreError(f"model {row['name']!r} version {row['version']} is unreadable") from exc
