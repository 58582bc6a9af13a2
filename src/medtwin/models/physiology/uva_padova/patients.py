"""The 30 virtual patients shipped with simglucose, and cohorts built from them.

Data: ``data/vpatients.csv`` and ``data/therapy.csv``, copied from
simglucose 0.2.11 (MIT); see ``data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from medtwin.core.errors import InputError
from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY, PMOL_PER_U, STATES

__all__ = ["VirtualPatient", "cohort", "virtual_patient", "virtual_patients"]


@dataclass(frozen=True, slots=True)
class VirtualPatient:
    """One virtual subject: model parameters, initial state and therapy settings."""

    name: str
    physiology: tuple[float, ...]
    x0: tuple[float, ...]
    cr_g_per_u: float
    cf_mg_dl_per_u: float
    tdi_u: float
    age_years: float

    def parameter(self, name: str) -> float:
        return self.physiology[[q.name for q in PHYSIOLOGY].index(name)]

    @property
    def basal_u_per_min(self) -> float:
        """Steady-state basal insulin, u2ss * BW / 6000 (U/min)."""
        return self.parameter("u2ss") * self.parameter("BW") / PMOL_PER_U

    @property
    def basal_glucose_mg_dl(self) -> float:
        return self.parameter("Gb")


@cache
def virtual_patients() -> dict[str, VirtualPatient]:
    """All 30 patients by name (adolescent#001-010, adult#001-010, child#001-010)."""
    data = resources.files("medtwin.models.physiology.uva_padova") / "data"
    with (data / "therapy.csv").open(encoding="utf-8") as fh:
        therapy = {row["Name"]: row for row in csv.DictReader(fh)}
    patients: dict[str, VirtualPatient] = {}
    with (data / "vpatients.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]
            t = therapy[name]
            patients[name] = VirtualPatient(
                name=name,
                physiology=tuple(float(row[q.name]) for q in PHYSIOLOGY),
                x0=tuple(float(row[f"x0_{j + 1:2d}"]) for j in range(len(STATES))),
                cr_g_per_u=float(t["CR"]),
                cf_mg_dl_per_u=float(t["CF"]),
                tdi_u=float(t["TDI"]),
                age_years=float(t["Age"]),
            )
    return patients


def virtual_patient(name: str) -> VirtualPatient:
    """One patient by name; an unknown name is an ``InputError`` listing the known ones."""
    patients = virtual_patients()
    if name not in patients:
        groups = "adolescent#001-010, adult#001-010, child#001-010"
        raise InputError(f"unknown virtual patient {name!r} (known: {groups})", "patients")
    return patients[name]


def cohort(
    names: list[str] | tuple[str, ...],
    *,
    jitter_cv: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Initial states ``(N, 13)`` and physiology ``(N, 33)`` for the named patients.

    ``jitter_cv`` > 0 multiplies each rate and volume by an independent
    log-normal factor with that coefficient of variation (body weight, basal
    glucose and insulin and the steady state are kept, so every jittered
    patient still starts at rest: the production constant ``kp1`` and the
    steady-state insulin are re-solved; see ``steady_state``).
    """
    from medtwin.models.physiology.uva_padova.steady_state import rebalance

    x0 = np.array([virtual_patient(n).x0 for n in names], dtype=np.float64)
    p = np.array([virtual_patient(n).physiology for n in names], dtype=np.float64)
    if jitter_cv > 0:
        if rng is None:
            raise InputError("jitter needs a seeded random generator", "rng")
        x0, p = rebalance(x0, p, jitter_cv=jitter_cv, rng=rng)
    return x0, p
