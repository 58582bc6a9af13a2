"""The code registry: which observation codes medtwin understands.

Each registered code has a canonical UCUM unit, the other units it accepts
(converted affinely: ``canonical = value * scale + offset``), hard limits beyond
which a value is impossible (rejected) and soft limits beyond which it is only
flagged. Codes outside the registry are stored and shown, flagged
``unmapped``, never rejected for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from medtwin.core.records import LOINC

# Glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol).
_GLUCOSE_MG_DL_PER_MMOL_L = 18.016
# 1 kPa = 7.500616827 mm[Hg].
_MMHG_PER_KPA = 7.500616827


@dataclass(frozen=True)
class CodeSpec:
    """What medtwin knows about one code.

    ``units`` maps each accepted UCUM unit to ``(scale, offset)`` into ``unit``.
    ``values`` lists the allowed answers of a coded (non-numeric) code.
    """

    code: str
    display: str
    unit: str
    units: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    hard: tuple[float, float] = (-math.inf, math.inf)
    soft: tuple[float, float] = (-math.inf, math.inf)
    values: tuple[str, ...] = ()
    system: str = LOINC

    @property
    def numeric(self) -> bool:
        return not self.values

    def to_canonical(self, value: float, unit: str) -> float | None:
        """``value`` in the canonical unit, or None when ``unit`` is not accepted."""
        conversion = self.units.get(unit)
        if conversion is None:
            return None
        scale, offset = conversion
        return value * scale + offset


def _same(*units: str) -> dict[str, tuple[float, float]]:
    return {u: (1.0, 0.0) for u in units}


_CODED_UNITS = _same("", "1", "{score}")

VITAL_SIGNS: tuple[CodeSpec, ...] = (
    CodeSpec(
        "9279-1",
        "Respiratory rate",
        "/min",
        _same("/min", "{breaths}/min"),
        hard=(0, 100),
        soft=(4, 60),
    ),
    CodeSpec(
        "59408-5",
        "Oxygen saturation in arterial blood by pulse oximetry",
        "%",
        _same("%"),
        hard=(0, 100),
        soft=(70, 100),
    ),
    CodeSpec(
        "8480-6",
        "Systolic blood pressure",
        "mm[Hg]",
        {**_same("mm[Hg]"), "kPa": (_MMHG_PER_KPA, 0.0)},
        hard=(0, 350),
        soft=(50, 250),
    ),
    CodeSpec(
        "8462-4",
        "Diastolic blood pressure",
        "mm[Hg]",
        {**_same("mm[Hg]"), "kPa": (_MMHG_PER_KPA, 0.0)},
        hard=(0, 300),
        soft=(20, 150),
    ),
    CodeSpec(
        "8867-4",
        "Heart rate",
        "/min",
        _same("/min", "{beats}/min"),
        hard=(0, 350),
        soft=(25, 220),
    ),
    CodeSpec(
        "8310-5",
        "Body temperature",
        "Cel",
        {"Cel": (1.0, 0.0), "[degF]": (5 / 9, -160 / 9), "K": (1.0, -273.15)},
        hard=(10, 47),
        soft=(30, 42),
    ),
    CodeSpec(
        "80288-4",
        "Level of consciousness (ACVPU)",
        "",
        _CODED_UNITS,
        values=("A", "C", "V", "P", "U"),
    ),
    CodeSpec(
        "3150-0",
        "Inhaled oxygen concentration",
        "%",
        _same("%"),
        hard=(0, 100),
        soft=(21, 100),
    ),
    CodeSpec(
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        "mg/dL",
        {**_same("mg/dL"), "mmol/L": (_GLUCOSE_MG_DL_PER_MMOL_L, 0.0)},
        hard=(0, 3000),
        soft=(40, 400),
    ),
)


class CodeRegistry:
    """Lookup of :class:`CodeSpec` by code (LOINC unless a spec says otherwise)."""

    def __init__(self, specs: tuple[CodeSpec, ...] = VITAL_SIGNS) -> None:
        self._by_code: Mapping[str, CodeSpec] = MappingProxyType({s.code: s for s in specs})

    def get(self, code: str, system: str = LOINC) -> CodeSpec | None:
        spec = self._by_code.get(code)
        return spec if spec is not None and spec.system == system else None

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[CodeSpec]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)


DEFAULT_REGISTRY = CodeRegistry()
