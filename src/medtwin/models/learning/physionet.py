"""Reader of the PhysioNet/Computing in Cardiology Challenge 2019 patient files (``.psv``).

Each file holds one ICU stay: a header line naming 41 pipe-separated columns
(:data:`HEADER`), then one row per hour, ``NaN`` where nothing was measured
(https://physionet.org/content/challenge-2019/1.0.0/).  Units as the challenge
states them: HR /min, O2Sat %, Temp Cel, SBP/MAP/DBP mm[Hg], Resp /min, EtCO2
mm[Hg], FiO2 (documented as %, written in the files as a fraction 0..1), labs in mg/dL except
BaseExcess, HCO3, Chloride, Potassium (mmol/L), Magnesium (mmol/dL), AST and
Alkalinephos (IU/L), TroponinI (ng/mL), Hct (%), Hgb (g/dL), PTT (s), WBC and
Platelets (10*3/uL), Lactate (mg/dL; 1 mmol/L = 9.01 mg/dL); Age in years (100
for 90 or older), Gender 0 female / 1 male, Unit1/Unit2 MICU/SICU flags,
HospAdmTime h from hospital to ICU admission, ICULOS h since ICU admission,
SepsisLabel 0/1 (1 from 6 h before the onset on).

A record becomes a :class:`PatientSeries`: ``values`` (hours x 40 features,
float64, NaN missing) and ``labels`` (hours, int8).  The simulated cohort of
:mod:`medtwin.models.learning.cohort` produces the same type, so training code
reads both.  Malformed input raises :class:`~medtwin.core.errors.InputError`
whose location names the file and line (``p000001.psv:17``), never another
error.

:func:`parse_psv` is pure (text in); :func:`read_psv` and :func:`read_directory`
read files for the tools that train offline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from medtwin.core.errors import InputError

__all__ = [
    "FEATURES",
    "HEADER",
    "LABEL",
    "PatientSeries",
    "parse_psv",
    "read_directory",
    "read_psv",
    "stack",
]

HEADER: tuple[str, ...] = (
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "EtCO2",
    "BaseExcess",
    "HCO3",
    "FiO2",
    "pH",
    "PaCO2",
    "SaO2",
    "AST",
    "BUN",
    "Alkalinephos",
    "Calcium",
    "Chloride",
    "Creatinine",
    "Bilirubin_direct",
    "Glucose",
    "Lactate",
    "Magnesium",
    "Phosphate",
    "Potassium",
    "Bilirubin_total",
    "TroponinI",
    "Hct",
    "Hgb",
    "PTT",
    "WBC",
    "Fibrinogen",
    "Platelets",
    "Age",
    "Gender",
    "Unit1",
    "Unit2",
    "HospAdmTime",
    "ICULOS",
    "SepsisLabel",
)
"""The columns of a challenge file, in order."""

LABEL = "SepsisLabel"
FEATURES: tuple[str, ...] = HEADER[:-1]
"""The 40 feature columns; column order of ``PatientSeries.values``."""

_ICULOS = FEATURES.index("ICULOS")
# A decimal number as the challenge files write them (no "1_000", "inf" or hex).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NAN = "nan"


@dataclass(frozen=True, eq=False)
class PatientSeries:
    """One patient's hourly record.

    ``values``: (hours, 40) float64 in :data:`FEATURES` order, NaN where not measured.
    ``labels``: (hours,) int8 ``SepsisLabel`` (1 from 6 h before sepsis onset on).
    ``extra``: further hourly series a source has and the challenge columns lack
    (the simulated cohort's Glasgow Coma Scale), each of shape (hours,).
    """

    patient_id: str
    values: NDArray[np.float64]
    labels: NDArray[np.int8]
    extra: Mapping[str, NDArray[np.float64]] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of hours."""
        return int(self.labels.shape[0])

    def column(self, name: str) -> NDArray[np.float64]:
        """The hourly series of feature ``name`` (or of an ``extra`` series)."""
        if name in self.extra:
            return self.extra[name]
        try:
            return self.values[:, FEATURES.index(name)]
        except ValueError:
            raise KeyError(f"no feature named {name!r}") from None


def _field(text: str, where: str, column: str) -> float:
    token = text.strip()
    if token.lower() == _NAN:
        return math.nan
    if not _NUMBER.fullmatch(token):
        shown = token if len(token) <= 20 else token[:20] + "..."
        raise InputError(f"column {column}: {shown!r} is not a number or NaN", where)
    value = float(token)
    if not math.isfinite(value):
        raise InputError(f"column {column}: {token[:20]!r} overflows a float", where)
    return value


def parse_psv(text: str, source: str = "<psv>") -> PatientSeries:
    """Parse the text of one challenge file; ``source`` names it in errors and is the id.

    The patient id is ``source``'s file name without its suffix.  Raises
    :class:`InputError` (location ``source:line``) for a wrong header, a row with
    the wrong number of fields, a field that is not a number or ``NaN``, a
    label other than 0/1, an ICULOS that is missing or does not increase, or a
    file with no rows.
    """
    # Split on "\n" only (a stray "\r" or form feed is a bad field, not a line break),
    # so that line numbers match what an editor shows.
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline (or several) is not a row
    if not lines:
        raise InputError("empty file: expected the challenge header", f"{source}:1")
    header = tuple(name.strip() for name in lines[0].split("|"))
    if header != HEADER:
        if len(header) != len(HEADER):
            reason = f"header has {len(header)} columns, expected {len(HEADER)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(header, HEADER, strict=True)) if a != b)
            reason = f"header column {i + 1} is {header[i]!r}, expected {HEADER[i]!r}"
        raise InputError(reason + " (" + "|".join(HEADER[:3]) + "|...)", f"{source}:1")
    if len(lines) == 1:
        raise InputError("no data rows after the header", f"{source}:2")
    rows = np.empty((len(lines) - 1, len(HEADER)))
    for number, line in enumerate(lines[1:], start=2):
        where = f"{source}:{number}"
        fields = line.split("|")
        if len(fields) != len(HEADER):
            raise InputError(f"row has {len(fields)} fields, expected {len(HEADER)}", where)
        rows[number - 2] = [_field(f, where, c) for f, c in zip(fields, HEADER, strict=True)]
        label = rows[number - 2, -1]
        if label not in (0.0, 1.0):
            raise InputError(f"column {LABEL}: {label!r} is not 0 or 1", where)
        iculos = rows[number - 2, _ICULOS]
        if not math.isfinite(iculos):
            raise InputError("column ICULOS: the hour since ICU admission is missing", where)
        if number > 2 and not iculos > rows[number - 3, _ICULOS]:
            raise InputError(f"column ICULOS: {iculos!r} does not follow the row before", where)
    values = np.ascontiguousarray(rows[:, :-1])
    labels = rows[:, -1].astype(np.int8)
    values.setflags(write=False)
    labels.setflags(write=False)
    return PatientSeries(Path(source).stem, values, labels)


def read_psv(path: str | Path) -> PatientSeries:
    """Read one challenge file (UTF-8 text); :class:`InputError` when it is unreadable or bad."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", str(p)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text", f"{p}:{line}") from exc
    return parse_psv(text, str(p))


def read_directory(path: str | Path) -> list[PatientSeries]:
    """Read every ``*.psv`` file of a directory, sorted by name (as the challenge does)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError("not a directory", str(root))
    return [read_psv(p) for p in sorted(root.glob("*.psv")) if not p.name.startswith(".")]


def stack(
    patients: Iterable[PatientSeries],
) -> tuple[NDArray[np.float64], NDArray[np.int8], NDArray[np.intp]]:
    """All hours of all patients as one table: (values (N, 40), labels (N,), patient index (N,))."""
    items: Sequence[PatientSeries] = list(patients)
    if not items:
        return np.empty((0, len(FEATURES))), np.empty(0, np.int8), np.empty(0, np.intp)
    values = np.concatenate([p.values for p in items])
    labels = np.concatenate([p.labels for p in items])
    index = np.repeat(np.arange(len(items), dtype=np.intp), [len(p) for p in items])
    return values, labels, index
