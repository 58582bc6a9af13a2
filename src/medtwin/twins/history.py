"""NEWS2 over time, recomputed from stored observations.

The score at each observation time uses, for every parameter, the newest
reading at or before that time and no older than the window, exactly as the
live twin does; so the chart and the live value can never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtwin.core.clock import to_iso
from medtwin.core.records import ObservationStatus, QualityFlag
from medtwin.data.store import Store
from medtwin.models.scores import ACVPU, BANDS, INPUT_CODES, news2

_ARGUMENT = {"air_or_oxygen": "fio2"}
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value
_UNMAPPED = int(QualityFlag.UNMAPPED)
_HIDDEN = int(QualityFlag.ARTIFACT_SUSPECTED)


def news2_series(
    store: Store,
    patient: str,
    *,
    start_us: int,
    end_us: int,
    window_us: int,
    spo2_scale: int = 1,
    max_points: int = 5000,
) -> list[dict[str, Any]]:
    """NEWS2 at every NEWS2-input observation time of ``patient`` in [start_us, end_us]."""
    times: dict[str, list[int]] = {code: [] for code in INPUT_CODES}
    values: dict[str, list[float]] = {code: [] for code in INPUT_CODES}
    hidden: list[int] = []  # times of suspected artifacts: points where nothing changed
    cursor: str | None = None
    while True:
        page = store.history(
            patient,
            codes=list(INPUT_CODES),
            start_us=start_us - window_us,
            end_us=end_us,
            limit=10_000,
            cursor=cursor,
        )
        for stored in page.items:
            obs = stored.observation
            # Skipped, or held but not scored, exactly as TwinRuntime.observe/_score do.
            if obs.status == _ENTERED_IN_ERROR or obs.flags & _UNMAPPED:
                continue  # an unmapped code (another system) is not this NEWS2 input
            value = obs.value_num
            if value is None:
                value = float(ACVPU.index(obs.value_text)) if obs.value_text in ACVPU else np.nan
            if obs.flags & _HIDDEN:
                # A suspected artifact is not scored: the last good reading stays in use.
                hidden.append(obs.effective_us)
                continue
            times[obs.code].append(obs.effective_us)
            values[obs.code].append(value)
        cursor = page.next_cursor
        if cursor is None:
            break
    every = np.unique(
        np.concatenate([np.array(t, dtype=np.int64) for t in (*times.values(), hidden)])
    )
    at = every[(every >= start_us) & (every <= end_us)][-max_points:]
    if at.size == 0:
        return []
    arguments: dict[str, Any] = {}
    for code, parameter in INPUT_CODES.items():
        t = np.array(times[code], dtype=np.int64)
        v = np.array(values[code], dtype=np.float64)
        index = np.searchsorted(t, at, side="right") - 1
        present = index >= 0
        safe = np.where(present, index, 0)
        fresh = present & (at - t[safe] <= window_us) if t.size else present
        arguments[_ARGUMENT.get(parameter, parameter)] = (
            np.where(fresh, v[safe], np.nan) if t.size else np.full(at.size, np.nan)
        )
    result = news2(**arguments, spo2_scale=spo2_scale)
    return [
        {
            "time": to_iso(int(t)),
            "score": None if result.score[i] < 0 else int(result.score[i]),
            "partial_score": int(result.partial_score[i]),
            "band": None if result.band[i] < 0 else BANDS[int(result.band[i])],
        }
        for i, t in enumerate(at)
    ]
