"""Features of hourly series for learned risk models, the same for training and serving.

Every feature of hour ``t`` reads rows ``<= t`` only (causal), so a model trained on
all hours of past stays sees, at serving time, exactly what it saw in training.
For each *channel* (an hourly series such as HR or lactate; :data:`DEFAULT_CHANNELS`)
and each window of ``w`` hours (:attr:`FeatureSpec.windows_h`, rows ``t-w+1 .. t``):

=====================  ===============================================================
name                   meaning (unit)
=====================  ===============================================================
``{ch}_last``          newest value within the look-back (channel unit), NaN if none
``{ch}_since_h``       hours since that value (h; 0 = measured this hour), NaN if none
``{ch}_mean{w}h``      mean of the window's values (channel unit), NaN if none
``{ch}_min{w}h``       minimum of the window's values
``{ch}_max{w}h``       maximum of the window's values
``{ch}_slope{w}h``     least-squares slope over the window (channel unit /h), NaN below 2
``{ch}_delta{w}h``     ``_last`` minus ``_mean{w}h`` (channel unit)
``{ch}_n{W}h``         number of measured hours in the longest window ``W`` (missingness)
=====================  ===============================================================

followed by the *static* columns (:data:`DEFAULT_STATIC`: age in years, gender 0/1,
hours from hospital to ICU admission, hours since ICU admission) as they are at hour
``t``.  ``_last`` and ``_since_h`` look back at most :attr:`FeatureSpec.lookback_h`
hours: a serving request that passes :attr:`FeatureSpec.history_h` rows of history gets
bit-for-bit the training features (a value older than the look-back counts as missing in both).

Missing values stay NaN (gradient-boosted trees route them; the logistic baseline
imputes).  The functions are vectorized over series and hours: :func:`hourly_features`
is the one computation; :func:`patient_features` (all hours of
:class:`~medtwin.models.learning.physionet.PatientSeries`, for training) and
:func:`latest_features` (the newest hour of many twins, for serving) call it.
:func:`hourly_grid` turns a twin's raw readings (times in µs) into the hourly grid, and
:func:`serving_features` does it for every channel of a module's ``Ragged`` inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from medtwin.models.learning.physionet import PatientSeries

__all__ = [
    "CHANNEL_CODES",
    "DEFAULT_CHANNELS",
    "DEFAULT_SPEC",
    "DEFAULT_STATIC",
    "FeatureSpec",
    "PatientFeatures",
    "Readings",
    "hourly_features",
    "hourly_grid",
    "latest_features",
    "patient_features",
    "serving_features",
]

DEFAULT_CHANNELS: tuple[str, ...] = (
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "GCS",
    "Lactate",
    "Creatinine",
    "Bilirubin_total",
    "Platelets",
    "WBC",
)
"""Hourly series the default model reads (challenge names; ``GCS`` from ``extra``)."""

DEFAULT_STATIC: tuple[str, ...] = ("Age", "Gender", "HospAdmTime", "ICULOS")
"""Per-hour context columns passed through unchanged."""

CHANNEL_CODES: dict[str, tuple[str, str]] = {
    "HR": ("8867-4", "/min"),
    "O2Sat": ("59408-5", "%"),
    "Temp": ("8310-5", "Cel"),
    "SBP": ("8480-6", "mm[Hg]"),
    "MAP": ("8478-0", "mm[Hg]"),
    "DBP": ("8462-4", "mm[Hg]"),
    "Resp": ("9279-1", "/min"),
    "GCS": ("9269-2", "{score}"),
    "Lactate": ("2524-7", "mg/dL"),  # LOINC 2524-7 is mmol/L: x 9.008 to the challenge's mg/dL
    "Creatinine": ("2160-0", "mg/dL"),
    "Bilirubin_total": ("1975-2", "mg/dL"),
    "Platelets": ("777-3", "10*3/uL"),
    "WBC": ("6690-2", "10*3/uL"),
}
"""LOINC code and challenge unit of each default channel (for feeding it from a twin)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which channels, windows (h) and static columns make the features, and their names."""

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    static: tuple[str, ...] = DEFAULT_STATIC
    windows_h: tuple[int, ...] = (6, 24)
    lookback_h: int = 48

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("a feature spec needs at least one channel")
        if not self.windows_h or min(self.windows_h) < 2:
            raise ValueError("windows_h must hold at least one window of 2 h or more")
        if self.lookback_h < max(self.windows_h):
            raise ValueError("lookback_h must be at least the longest window")

    @property
    def history_h(self) -> int:
        """Hours (rows) of history a serving request needs for exact training features."""
        return self.lookback_h + 1  # the current hour and lookback_h hours before it

    @property
    def kinds(self) -> tuple[str, ...]:
        """Per-channel feature kinds, in column order."""
        kinds = ["last", "since_h"]
        for w in self.windows_h:
            kinds += [f"mean{w}h", f"min{w}h", f"max{w}h", f"slope{w}h", f"delta{w}h"]
        kinds.append(f"n{max(self.windows_h)}h")
        return tuple(kinds)

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in column order: channel-major dynamic features, then static."""
        return tuple(f"{c}_{k}" for c in self.channels for k in self.kinds) + self.static

    def to_json(self) -> str:
        """The spec as JSON (stored with a registered model)."""
        return json.dumps(
            {
                "channels": list(self.channels),
                "static": list(self.static),
                "windows_h": list(self.windows_h),
                "lookback_h": self.lookback_h,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> FeatureSpec:
        data = json.loads(text) if isinstance(text, str) else text
        return cls(
            channels=tuple(data["channels"]),
            static=tuple(data["static"]),
            windows_h=tuple(int(w) for w in data["windows_h"]),
            lookback_h=int(data["lookback_h"]),
        )


DEFAULT_SPEC = FeatureSpec()


_CHUNK_ELEMENTS = 4_000_000  # window values materialized at once (bounds memory to ~100 MB)


def hourly_features(
    series: npt.ArrayLike, spec: FeatureSpec = DEFAULT_SPEC, *, last_only: bool = False
) -> NDArray[np.float64]:
    """Dynamic features of every hour: ``series`` (n, hours, channels) -> (n, hours, F_dyn).

    Rows are hours (row 0 the oldest), NaN where not measured; channels in
    ``spec.channels`` order.  Output columns follow ``spec.names`` without the static
    columns.  Pad shorter series with NaN at the end: padding never reaches the
    features of real rows.  ``last_only``: only the newest hour, (n, 1, F_dyn), with
    the same arithmetic (serving).
    """
    v = np.asarray(series, dtype=np.float64)
    if v.ndim != 3 or v.shape[2] != len(spec.channels):
        raise ValueError(f"series must have shape (n, hours, {len(spec.channels)}), got {v.shape}")
    n, hours, channels = v.shape
    rows = 1 if last_only else hours
    out = np.empty((n, rows, channels, len(spec.kinds)))
    per_series = max(rows * channels * max(spec.windows_h), 1)
    step = max(1, _CHUNK_ELEMENTS // per_series)
    for lo in range(0, n, step):
        out[lo : lo + step] = _features(v[lo : lo + step], spec, last_only)
    result: NDArray[np.float64] = out.reshape(n, rows, channels * len(spec.kinds))
    return result


def _features(v: NDArray[np.float64], spec: FeatureSpec, last_only: bool) -> NDArray[np.float64]:
    """(n, hours or 1, channels, kinds) for one chunk of series."""
    n, hours, channels = v.shape
    seen = np.isfinite(v)

    # Newest value within the look-back and its age (h).
    row = np.where(seen, np.arange(hours)[None, :, None], -1)
    last_row = np.maximum.accumulate(row, axis=1)
    since = (np.arange(hours)[None, :, None] - last_row).astype(np.float64)
    fresh = (last_row >= 0) & (since <= spec.lookback_h)
    last = np.take_along_axis(v, np.maximum(last_row, 0), axis=1)
    out: dict[str, NDArray[np.float64]] = {
        "last": np.where(fresh, last, np.nan),
        "since_h": np.where(fresh, since, np.nan),
    }
    if last_only:
        out = {k: a[:, -1:] for k, a in out.items()}

    # Window statistics over explicit windows (not cumulative sums), with times relative
    # to the window and plain sums along the contiguous window axis (no BLAS, whose
    # kernels may sum in another order for another batch size): the same window values
    # give the same bits whatever precedes them and however many twins are scored, so
    # serving reproduces the training features exactly.
    longest = max(spec.windows_h)
    padded = np.concatenate([np.full((n, longest - 1, channels), np.nan), v], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        for w in spec.windows_h:
            view = sliding_window_view(padded[:, longest - w :], w, axis=1)  # (n, h, c, w)
            if last_only:
                view = view[:, -1:]
            ok = np.isfinite(view)
            x = np.where(ok, view, 0.0)
            pos = np.arange(w, dtype=np.float64)
            cnt = ok.sum(axis=-1, dtype=np.float64)
            sx = x.sum(axis=-1)
            st = np.where(ok, pos, 0.0).sum(axis=-1)
            stt = np.where(ok, pos * pos, 0.0).sum(axis=-1)
            stx = (x * pos).sum(axis=-1)
            safe = np.maximum(cnt, 1.0)
            # Least squares: slope = (sum t x - sum t sum x / n) / (sum t^2 - (sum t)^2 / n).
            sxx = stt - st * st / safe
            sxy = stx - st * sx / safe
            none = cnt == 0
            out[f"mean{w}h"] = np.where(none, np.nan, sx / safe)
            out[f"min{w}h"] = np.where(none, np.nan, np.where(ok, view, np.inf).min(axis=-1))
            out[f"max{w}h"] = np.where(none, np.nan, np.where(ok, view, -np.inf).max(axis=-1))
            out[f"slope{w}h"] = np.where(cnt >= 2, sxy / np.where(cnt >= 2, sxx, 1.0), np.nan)
            # Newest value against the window's mean: a change from the patient's own
            # recent level, which trees cannot form from two columns by themselves.
            out[f"delta{w}h"] = out["last"] - out[f"mean{w}h"]
            if w == longest:
                out[f"n{w}h"] = cnt
    return np.stack([out[k] for k in spec.kinds], axis=-1)


@dataclass(frozen=True, eq=False)
class PatientFeatures:
    """Feature rows of many patients' hours.

    ``X``: (N, F) float64 in ``names`` order; ``y``: (N,) int8 labels of the hour;
    ``patient``: (N,) index of the patient in the input sequence; ``hour``: (N,) row
    of the hour in its record.
    """

    X: NDArray[np.float64]
    y: NDArray[np.int8]
    patient: NDArray[np.intp]
    hour: NDArray[np.intp]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def rows_of(self, patients: npt.ArrayLike) -> PatientFeatures:
        """The rows of the given patient indices (a patient-level subset)."""
        keep = np.isin(self.patient, np.asarray(patients))
        return PatientFeatures(
            self.X[keep], self.y[keep], self.patient[keep], self.hour[keep], self.names
        )


def _channel(p: PatientSeries, name: str) -> NDArray[np.float64]:
    try:
        return np.asarray(p.column(name), dtype=np.float64)
    except KeyError:
        return np.full(len(p), np.nan)  # a source without this series: all missing


def patient_features(
    patients: Sequence[PatientSeries], spec: FeatureSpec = DEFAULT_SPEC
) -> PatientFeatures:
    """Features of every hour of every patient (training), from their hourly records."""
    if not patients:
        empty = np.empty(0, np.intp)
        return PatientFeatures(
            np.empty((0, len(spec.names))), np.empty(0, np.int8), empty, empty, spec.names
        )
    lengths = np.array([len(p) for p in patients], dtype=np.intp)
    n, hours = len(patients), int(lengths.max())
    grid = np.full((n, hours, len(spec.channels)), np.nan)
    static = np.full((n, hours, len(spec.static)), np.nan)
    for i, p in enumerate(patients):
        m = len(p)
        for c, name in enumerate(spec.channels):
            grid[i, :m, c] = _channel(p, name)
        for c, name in enumerate(spec.static):
            static[i, :m, c] = _channel(p, name)
    dynamic = hourly_features(grid, spec)
    valid = np.arange(hours)[None, :] < lengths[:, None]
    rows = np.concatenate([dynamic[valid], static[valid]], axis=1)
    y = np.concatenate([np.asarray(p.labels, dtype=np.int8) for p in patients])
    patient = np.repeat(np.arange(n, dtype=np.intp), lengths)
    hour = np.concatenate([np.arange(m, dtype=np.intp) for m in lengths])
    return PatientFeatures(rows, y, patient, hour, spec.names)


def latest_features(
    series: npt.ArrayLike,
    static: npt.ArrayLike | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> NDArray[np.float64]:
    """Features of the newest hour of many twins (serving): (n, F) in ``spec.names`` order.

    ``series``: (n, hours, channels), the last row being the current hour; pass at
    least ``spec.history_h`` hours for exactly the training features (fewer: older
    values count as missing).  ``static``: (n, len(spec.static)) at the current hour,
    NaN (or None for all) where unknown.
    """
    v = np.asarray(series, dtype=np.float64)
    if v.ndim != 3 or v.shape[1] < 1:
        raise ValueError(f"series must have shape (n, hours >= 1, channels), got {v.shape}")
    v = v[:, -spec.history_h :]  # older rows cannot change the newest hour's features
    n = v.shape[0]
    s = (
        np.full((n, len(spec.static)), np.nan)
        if static is None
        else np.asarray(static, dtype=np.float64)
    )
    if s.shape != (n, len(spec.static)):
        raise ValueError(f"static must have shape ({n}, {len(spec.static)}), got {s.shape}")
    dynamic = hourly_features(v, spec, last_only=True)[:, -1]
    out: NDArray[np.float64] = np.concatenate([dynamic, s], axis=1)
    return out


def hourly_grid(
    values: npt.ArrayLike,
    times_us: npt.ArrayLike,
    offsets: npt.ArrayLike,
    *,
    now_us: int,
    hours: int,
) -> NDArray[np.float64]:
    """One channel's readings of many twins as an hourly grid (n, hours), newest hour last.

    Twin ``i`` has ``values[offsets[i]:offsets[i+1]]`` at ``times_us`` (µs since the
    epoch, ascending within a twin; the layout of a module's ``Ragged`` input).  Row
    ``hours - 1`` holds the hour ``(now - 1 h, now]``, row ``hours - 2`` the one before,
    and so on; the newest reading of an hour wins (the challenge's hourly layout).
    Readings after ``now`` or older than the grid are left out; empty hours are NaN.
    """
    vals = np.asarray(values, dtype=np.float64)
    times = np.asarray(times_us, dtype=np.int64)
    offs = np.asarray(offsets, dtype=np.intp)
    n = int(offs.shape[0] - 1)
    grid = np.full((n, hours), np.nan)
    if vals.size == 0:
        return grid
    twin = np.repeat(np.arange(n), np.diff(offs))
    age_h = (now_us - times + 3_600_000_000 - 1) // 3_600_000_000  # ceil: (now-1h, now] -> 1
    row = hours - np.maximum(age_h, 1)
    keep = (times <= now_us) & (row >= 0) & np.isfinite(vals)
    twin, row, vals, times = twin[keep], row[keep], vals[keep], times[keep]
    # Newest reading per (twin, hour): sort by cell then time, keep each cell's last.
    cell = twin * hours + row
    order = np.lexsort((times, cell))
    cell = cell[order]
    last = np.r_[cell[1:] != cell[:-1], True]
    grid.reshape(-1)[cell[last]] = vals[order][last]
    return grid


class Readings(Protocol):
    """Every reading of one channel for many twins (a module's ``Ragged`` input)."""

    @property
    def values(self) -> NDArray[np.float64]: ...

    @property
    def times_us(self) -> NDArray[np.int64]: ...

    @property
    def offsets(self) -> NDArray[np.intp]: ...


def serving_features(
    readings: Mapping[str, Readings],
    *,
    now_us: int,
    static: npt.ArrayLike | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> NDArray[np.float64]:
    """Features of the current hour of many twins from their raw readings: (n, F).

    ``readings``: channel name -> that channel's readings of the twins (values in the
    channel's challenge unit, :data:`CHANNEL_CODES`; a channel left out is all
    missing), as an observation input with aggregate ``all`` and a window of at
    least ``spec.history_h`` hours gives them; ``static`` as in :func:`latest_features`.
    """
    sizes = {len(r.offsets) - 1 for r in readings.values()}
    if len(sizes) > 1:
        raise ValueError("every channel must hold the same twins")
    n = sizes.pop() if sizes else (0 if static is None else len(np.asarray(static)))
    grid = np.full((n, spec.history_h, len(spec.channels)), np.nan)
    for c, name in enumerate(spec.channels):
        r = readings.get(name)
        if r is not None:
            grid[:, :, c] = hourly_grid(
                r.values, r.times_us, r.offsets, now_us=now_us, hours=spec.history_h
            )
    return latest_features(grid, static, spec)
