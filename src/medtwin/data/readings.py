"""The usable readings of one code over a window, per patient, for the models that read them.

"Usable": the newest version of each (source, id), not entered in error, not
flagged unmapped (a value stored before its code was registered is in the sender's
unit, not the registry's canonical one), and without the quality flags the caller
excludes (suspected artifacts for scores; imputed values too for a filter that must
see measurements only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from medtwin.core.records import ObservationStatus, QualityFlag
from medtwin.data.provenance import ObservationKey
from medtwin.data.store import SqlStore, schema

__all__ = ["Reading", "usable_readings"]

Reading = tuple[ObservationKey, int, float]
"""(source, id, version), effective time (µs), value in the code's canonical unit (NaN
when the observation is not numeric)."""

_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value
_UNMAPPED = int(QualityFlag.UNMAPPED)
_CHUNK = 500


def usable_readings(
    store: SqlStore,
    patients: Sequence[str],
    code: str,
    start_us: int,
    end_us: int,
    *,
    exclude_flags: int,
) -> list[list[Reading]]:
    """Per patient of ``patients`` (in order), the usable readings of ``code`` in
    (start, end], oldest first."""
    table = schema.observations
    index = {p: i for i, p in enumerate(patients)}
    newest: dict[tuple[str, str], tuple[int, int, float, str, int, int]] = {}
    wanted = list(patients)
    with store.reading() as conn:
        for start in range(0, len(wanted), _CHUNK):
            query = sa.select(
                table.c.patient_id,
                table.c.source,
                table.c.source_id,
                table.c.version,
                table.c.value_num,
                table.c.effective_us,
                table.c.status,
                table.c.flags,
            ).where(
                table.c.patient_id.in_(wanted[start : start + _CHUNK]),
                table.c.code == code,
                table.c.effective_us > start_us,
                table.c.effective_us <= end_us,
            )
            for r in conn.execute(query):
                held = newest.get((r.source, r.source_id))
                if held is None or r.version > held[0]:
                    value = np.nan if r.value_num is None else float(r.value_num)
                    newest[(r.source, r.source_id)] = (
                        r.version,
                        r.effective_us,
                        value,
                        r.status,
                        r.flags,
                        index[r.patient_id],
                    )
    out: list[list[Reading]] = [[] for _ in wanted]
    exclude_flags |= _UNMAPPED
    for (source, source_id), (version, at, value, status, flags, i) in newest.items():
        if status != _ENTERED_IN_ERROR and not flags & exclude_flags:
            out[i].append(((source, source_id, version), at, value))
    for readings in out:
        readings.sort(key=lambda reading: (reading[1], reading[0]))
    return out
