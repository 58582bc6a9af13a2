"""One patient's vital signs on a common time grid, every imputed value flagged.

For model inputs and learned features: each code's stored readings are resampled
onto the grid ``start, start + step, ...`` (up to ``end``) with
:func:`~medtwin.devices.conditioning.align_streams`. At each grid time ``g`` a code
gives the last reading at or before ``g`` that is at most ``max_age_s`` old
(``method="last"``), or the line between it and the next reading when that one is
also within ``max_age_s`` (``method="linear"``), with the age of the reading before.

Never silent: a value counts as *measured* only when taken as it is from a
reading within the step before its grid time (``g - step < t <= g``); every other
value (carried forward from an older reading, or interpolated) carries the
``imputed`` flag, and every value its age. Beyond ``max_age_s`` the value is null.
With ``fill="none"`` nothing is imputed: only measured values, null elsewhere.

Readings count as :meth:`Store.latest` counts them: the newest version of each
(source, id), none of a result entered in error (as far as its versions lie in the
range read). Readings flagged ``artifact-suspected`` are skipped, and counted per
code; so are readings without a numeric value. The flags of the reading a value
comes from travel with it (``out-of-range``, ``calibrated``...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from medtwin.core.clock import to_iso
from medtwin.core.errors import InputError
from medtwin.core.records import LOINC, ObservationStatus, QualityFlag
from medtwin.data.store import Store
from medtwin.devices.conditioning.alignment import AlignMode, align_streams, make_grid
from medtwin.devices.conditioning.gaps import find_gaps
from medtwin.devices.conditioning.kalman import kalman_smooth
from medtwin.devices.conditioning.streams import pad_streams

__all__ = ["MAX_POINTS", "FillMode", "aligned_series", "grid_points"]

FillMode = Literal["carry", "none"]
SmoothMode = Literal["none", "kalman"]
_SMOOTHED = int(QualityFlag.SMOOTHED)
_DRIFT_S = 300.0  # seconds over which a level may drift by one measurement SD

#: Most grid times one call may ask for.
MAX_POINTS = 10_000
#: Most codes one call may ask for.
MAX_CODES = 50

_US = 1_000_000
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value
_ARTIFACT = int(QualityFlag.ARTIFACT_SUSPECTED)
_IMPUTED = int(QualityFlag.IMPUTED)
_PAGE = 10_000


def grid_points(start_us: int, end_us: int, step_s: float) -> int:
    """How many grid times ``[start_us, end_us]`` every ``step_s`` seconds holds."""
    step_us = round(step_s * _US)
    if step_us <= 0 or end_us < start_us:
        return 0
    return (end_us - start_us) // step_us + 1


def aligned_series(
    store: Store,
    patient: str,
    codes: Sequence[str] = (),
    *,
    start_us: int,
    end_us: int,
    step_s: float = 60.0,
    max_age_s: float = 900.0,
    method: AlignMode = "last",
    fill: FillMode = "carry",
    min_gap_s: float | None = None,
    system: str = LOINC,
    max_points: int = MAX_POINTS,
    smooth: SmoothMode = "none",
) -> dict[str, Any]:
    """``patient``'s ``codes`` on the grid (see the module doc); JSON-ready.

    ``codes`` empty: every code with a numeric reading in the range read, sorted.
    The gap report of each code lists the stretches without a usable reading longer
    than ``min_gap_s`` (default ``max_age_s``) that overlap ``[start_us, end_us]``;
    a gap runs from the reading before it (or the window start) to the reading after
    it (or the window end).

    Returns ``{"patient", "start", "end", "step_s", "max_age_s", "method", "fill",
    "times": [ISO 8601], "series": {code: {"unit", "values", "age_s", "flags",
    "counts", "skipped", "gaps"}}}``; ``values``, ``age_s`` and ``flags`` have one
    entry per grid time.
    """
    if method not in ("last", "linear"):
        raise InputError(f"unknown method {method!r} (last or linear)", "method")
    if fill not in ("carry", "none"):
        raise InputError(f"unknown fill {fill!r} (carry or none)", "fill")
    if smooth not in ("none", "kalman"):
        raise InputError(f"unknown smoothing {smooth!r} (none or kalman)", "smooth")
    if not max_age_s >= 0:
        raise InputError("must be >= 0", "max_age_s")
    if min_gap_s is not None and not min_gap_s >= 0:
        raise InputError("must be >= 0", "min_gap_s")
    points = grid_points(start_us, end_us, step_s)
    if points > max_points:
        raise InputError(
            f"{points:,} grid times asked for, at most {max_points:,}: "
            "shorten the range or lengthen step_s",
            "step_s",
        )
    wanted = list(dict.fromkeys(codes))
    if len(wanted) > MAX_CODES:
        raise InputError(f"{len(wanted)} codes asked for, at most {MAX_CODES}", "code")
    grid = make_grid(start_us, end_us, step_s)
    step_us = round(step_s * _US)
    max_age_us = round(max_age_s * _US)
    gap_us = max_age_us if min_gap_s is None else round(min_gap_s * _US)

    read_end = end_us + max_age_us if method == "linear" and fill == "carry" else end_us
    readings = _readings(store, patient, wanted, start_us - max_age_us, read_end, system)
    if not wanted:
        wanted = sorted(code for code, r in readings.items() if r.times)
    for code in wanted:
        readings.setdefault(code, _Readings())

    series: dict[str, Any] = {}
    if wanted:
        arrays = {code: readings[code].arrays() for code in wanted}
        if smooth == "kalman":
            arrays = _kalman(arrays)
        aligned = align_streams(
            grid,
            {code: (t, v) for code, (t, v, _) in arrays.items()},
            max_age_s,
            method=method if fill == "carry" else "last",
        )
        for row, code in enumerate(wanted):
            times, values, flags = arrays[code]
            series[code] = _one_code(
                grid,
                times,
                values,
                flags,
                aligned.values[row],
                aligned.age_s[row],
                aligned.source_index[row],
                aligned.interpolated[row],
                step_us=step_us,
                fill=fill,
                gap_us=gap_us,
                window=(start_us, end_us),
                readings=readings[code],
            )
    return {
        "patient": patient,
        "start": to_iso(start_us),
        "end": to_iso(end_us),
        "step_s": float(step_s),
        "max_age_s": float(max_age_s),
        "method": method,
        "fill": fill,
        "smooth": smooth,
        "times": [to_iso(int(t)) for t in grid],
        "series": series,
    }


class _Readings:
    """Usable readings of one code, in time order, and what was skipped."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[float] = []
        self.flags: list[int] = []
        self.unit: str | None = None
        self.artifacts = 0
        self.non_numeric = 0

    def arrays(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        return (
            np.array(self.times, dtype=np.int64),
            np.array(self.values, dtype=np.float64),
            np.array(self.flags, dtype=np.int64),
        )


def _readings(
    store: Store, patient: str, codes: list[str], start_us: int, end_us: int, system: str
) -> dict[str, _Readings]:
    """The readings that count, per code (see the module doc)."""
    # (source, source_id) -> (version, row_id, observation) of the newest version
    newest: dict[tuple[str, str], tuple[int, int, Any]] = {}
    withdrawn: set[tuple[str, str]] = set()
    cursor: str | None = None
    while True:
        page = store.history(
            patient, codes=codes, start_us=start_us, end_us=end_us, limit=_PAGE, cursor=cursor
        )
        for stored in page.items:
            obs = stored.observation
            if obs.system != system:
                continue
            key = (obs.source, obs.source_id)
            if obs.status == _ENTERED_IN_ERROR:
                withdrawn.add(key)
            held = newest.get(key)
            if held is None or (obs.version, stored.row_id) > held[:2]:
                newest[key] = (obs.version, stored.row_id, obs)
        cursor = page.next_cursor
        if cursor is None:
            break
    out: dict[str, _Readings] = {}
    ordered = sorted(
        (v for k, v in newest.items() if k not in withdrawn),
        key=lambda held: (held[2].effective_us, held[1]),
    )
    for _, _, obs in ordered:
        readings = out.setdefault(obs.code, _Readings())
        if obs.flags & _ARTIFACT:
            readings.artifacts += 1
        elif obs.value_num is None:
            readings.non_numeric += 1
        else:
            readings.times.append(obs.effective_us)
            readings.values.append(float(obs.value_num))
            readings.flags.append(obs.flags)
            readings.unit = obs.unit
    return out


def _one_code(
    grid: np.ndarray[Any, Any],
    times: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any],
    flags: np.ndarray[Any, Any],
    aligned_values: np.ndarray[Any, Any],
    age_s: np.ndarray[Any, Any],
    source: np.ndarray[Any, Any],
    interpolated: np.ndarray[Any, Any],
    *,
    step_us: int,
    fill: FillMode,
    gap_us: int,
    window: tuple[int, int],
    readings: _Readings,
) -> dict[str, Any]:
    taken = source >= 0
    age_us = np.where(taken, np.round(np.nan_to_num(age_s) * _US), 0).astype(np.int64)
    measured = taken & ~interpolated & (age_us < step_us)
    imputed = taken & ~measured
    if fill == "none":
        imputed = np.zeros_like(taken)
        taken = measured
    # the flags of the reading(s) a value comes from, plus IMPUTED where imputed
    bits = np.zeros(grid.size, dtype=np.int64)
    if times.size:
        bits = np.where(taken, flags[np.maximum(source, 0)], 0)
        after = np.minimum(np.searchsorted(times, grid, side="left"), times.size - 1)
        bits = bits | np.where(interpolated & imputed, flags[after], 0)
    bits = bits | np.where(imputed, _IMPUTED, 0)
    names = {int(b): QualityFlag.names_of(int(b)) for b in np.unique(bits[taken])}
    start_us, end_us = window
    upto = times <= end_us  # the same report whatever the method (linear reads ahead)
    gaps = find_gaps(
        times[upto], values[upto], gap_us / _US, window_start_us=start_us, window_end_us=end_us
    )
    inside = (gaps.end_us > start_us) & (gaps.start_us < end_us)
    return {
        "unit": readings.unit,
        "values": [float(v) if ok else None for v, ok in zip(aligned_values, taken, strict=True)],
        "age_s": [float(a) / _US if ok else None for a, ok in zip(age_us, taken, strict=True)],
        "flags": [list(names[int(b)]) if ok else [] for b, ok in zip(bits, taken, strict=True)],
        "counts": {
            "measured": int(np.sum(measured)),
            "imputed": int(np.sum(imputed)),
            "missing": int(np.sum(~taken)),
        },
        "skipped": {"artifact_suspected": readings.artifacts, "non_numeric": readings.non_numeric},
        "gaps": [
            {"start": to_iso(int(s)), "end": to_iso(int(e)), "length_s": float(n)}
            for s, e, n in zip(
                gaps.start_us[inside], gaps.end_us[inside], gaps.length_s[inside], strict=True
            )
        ],
    }


def _kalman(
    arrays: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]],
) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """Every code's readings replaced by the Kalman smoother's estimate (flag ``smoothed``).

    One smoother run over all codes (a local-level model): the measurement noise of a
    code is estimated from its readings (robust SD of successive differences / √2),
    its level may drift by that much in five minutes.
    """
    codes = [code for code, (times, _, _) in arrays.items() if times.size >= 3]
    if not codes:
        return arrays
    batch = pad_streams([arrays[c][0] for c in codes], [arrays[c][1] for c in codes])
    r = np.array([_noise_variance(arrays[c][1]) for c in codes])
    smoothed = kalman_smooth(batch.times_us, batch.values, q=r / _DRIFT_S, r=r).smoothed_mean
    out = dict(arrays)
    for row, code in enumerate(codes):
        times, _, flags = arrays[code]
        out[code] = (times, smoothed[row, : times.size], flags | _SMOOTHED)
    return out


def _noise_variance(values: np.ndarray[Any, Any]) -> float:
    steps = np.diff(values)
    scale = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / np.sqrt(2)
    return float(max(scale, 1e-3) ** 2)  # a floor: constant readings still need some noise
