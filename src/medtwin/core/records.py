"""Core records: what was measured, what was done, and who it was done to.

Times are microseconds since the Unix epoch, UTC (see :mod:`medtwin.core.clock`);
values are in the canonical UCUM unit of their code once validated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from medtwin.core.clock import from_us, to_iso

LOINC = "http://loinc.org"


class QualityFlag(enum.IntFlag):
    """Quality flags that travel with a value into the store and the twins.

    No flag set means a raw, accepted value.
    """

    UNMAPPED = 1  # code not in the registry: stored and shown, never scored
    OUT_OF_RANGE = 2  # beyond the code's soft limits: plausible but unusual
    CALIBRATED = 4
    SMOOTHED = 8
    IMPUTED = 16
    ARTIFACT_SUSPECTED = 32

    @classmethod
    def names_of(cls, bits: int) -> list[str]:
        """Flag names (lower case, hyphenated) set in ``bits``."""
        return [
            str(flag.name).lower().replace("_", "-")
            for flag in cls
            if bits & flag.value and flag.name is not None
        ]


class ObservationStatus(enum.StrEnum):
    FINAL = "final"
    AMENDED = "amended"
    CORRECTED = "corrected"
    ENTERED_IN_ERROR = "entered-in-error"


class Observation(NamedTuple):
    """One measured value of one patient.

    A tuple on purpose: batches of hundreds of thousands are built, compared and
    handed to the database driver without per-field copies.
    """

    source: str  # the sending device or system
    source_id: str  # the sender's id of this item (idempotency key with source)
    patient: str
    system: str  # code system URI, LOINC for registered codes
    code: str
    value_num: float | None  # numeric value in ``unit``
    value_text: str | None  # coded or text value
    unit: str  # UCUM
    effective_us: int  # when it was measured, µs since epoch UTC
    status: str = ObservationStatus.FINAL.value
    version: int = 1
    flags: int = 0  # QualityFlag bits

    @property
    def effective(self) -> datetime:
        return from_us(self.effective_us)

    def same_content(self, other: Observation) -> bool:
        """Whether ``other`` carries the same measurement (for duplicate detection)."""
        return (
            self.patient == other.patient
            and self.system == other.system
            and self.code == other.code
            and self.value_num == other.value_num
            and self.value_text == other.value_text
            and self.unit == other.unit
            and self.effective_us == other.effective_us
            and self.status == other.status
        )


class InterventionKind(enum.StrEnum):
    INSULIN_BOLUS = "insulin-bolus"
    INSULIN_BASAL = "insulin-basal"
    MEAL = "meal"
    DRUG_DOSE = "drug-dose"
    FLUIDS = "fluids"
    OXYGEN = "oxygen"


@dataclass(frozen=True, slots=True)
class Intervention:
    """Something done to the patient.

    ``amount`` is in ``unit``: insulin bolus [IU], basal rate [IU]/h, meal g of
    carbohydrate, drug dose mg, fluids mL, oxygen L/min. ``duration_s`` is the
    infusion duration in seconds (0 for a bolus).
    """

    source: str
    source_id: str
    patient: str
    kind: InterventionKind
    amount: float
    unit: str
    start_us: int
    duration_s: float = 0.0
    drug: str | None = None
    route: str | None = None

    def describe(self) -> str:
        """The intervention as a provenance attribute: what, how much, when, from where."""
        drug = f" {self.drug}" if self.drug else ""
        text = (
            f"{self.kind.value}{drug} {self.amount:g} {self.unit} at {to_iso(self.start_us)}"
            f" ({self.source}|{self.source_id})"
        )
        if self.duration_s:
            text += f" for {self.duration_s:g} s"
        return text


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient known to medtwin.

    ``spo2_scale`` is the NEWS2 SpO2 scale (2 for hypercapnic respiratory failure).
    Personal fields are encrypted at rest by the store.
    """

    id: str
    pseudonym: str
    spo2_scale: int = 1
    created_us: int = 0
