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
# 1 international avoirdupois pound = 0.45359237 kg.
_KG_PER_LB = 0.45359237


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


# Local codes, for what LOINC has no observation code for (SOFA's respiratory
# support and vasopressor rates): a device or an eMAR feed sends them as such.
LOCAL = "urn:medtwin:code"

LABORATORY_AND_SCORES: tuple[CodeSpec, ...] = (
    CodeSpec(
        "2703-7",
        "Oxygen [Partial pressure] in Arterial blood",
        "mm[Hg]",
        {**_same("mm[Hg]"), "kPa": (_MMHG_PER_KPA, 0.0)},
        hard=(0, 800),
        soft=(30, 600),
    ),
    CodeSpec(
        "777-3",
        "Platelets [#/volume] in Blood by Automated count",
        "10*3/uL",
        _same("10*3/uL", "10*9/L", "10*3/mm3"),
        hard=(0, 5000),
        soft=(5, 1500),
    ),
    CodeSpec(
        "1975-2",
        "Bilirubin.total [Mass/volume] in Serum or Plasma",
        "mg/dL",
        # 1 mg/dL = 17.1 umol/L (molar mass 584.66 g/mol).
        {**_same("mg/dL"), "umol/L": (1 / 17.1, 0.0)},
        hard=(0, 100),
        soft=(0, 30),
    ),
    CodeSpec(
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        # 1 mg/dL = 88.4 umol/L (molar mass 113.12 g/mol).
        {**_same("mg/dL"), "umol/L": (1 / 88.4, 0.0)},
        hard=(0, 40),
        soft=(0.1, 15),
    ),
    CodeSpec(
        "2524-7",
        "Lactate [Moles/volume] in Serum or Plasma",
        "mmol/L",
        # Lactic acid 90.08 g/mol: 1 mmol/L = 9.008 mg/dL (the PhysioNet 2019 unit).
        {**_same("mmol/L"), "mg/dL": (1 / 9.008, 0.0)},
        hard=(0, 50),
        soft=(0.3, 20),
    ),
    CodeSpec(
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        _same("10*3/uL", "10*9/L", "10*3/mm3"),
        hard=(0, 1000),
        soft=(0.5, 100),
    ),
    CodeSpec(
        "29463-7",
        "Body weight",
        "kg",
        {**_same("kg"), "g": (0.001, 0.0), "[lb_av]": (_KG_PER_LB, 0.0)},
        hard=(0, 700),
        soft=(0.3, 350),
    ),
    # Vancomycin levels (therapeutic drug monitoring): 1 ug/mL = 1 mg/L.
    *(
        CodeSpec(
            code,
            f"Vancomycin [Mass/volume] in Serum or Plasma{suffix}",
            "mg/L",
            _same("mg/L", "ug/mL"),
            hard=(0, 500),
            soft=(0, 80),
        )
        for code, suffix in (("20578-1", ""), ("4092-3", " --trough"), ("4090-7", " --peak"))
    ),
    CodeSpec(
        "8478-0",
        "Mean blood pressure",
        "mm[Hg]",
        {**_same("mm[Hg]"), "kPa": (_MMHG_PER_KPA, 0.0)},
        hard=(0, 300),
        soft=(30, 200),
    ),
    CodeSpec(
        "9269-2",
        "Glasgow coma score total",
        "{score}",
        _same("{score}", "1", ""),
        hard=(3, 15),
        soft=(3, 15),
    ),
    CodeSpec(
        "9192-6",
        "Urine output 24 hour",
        "mL/(24.h)",
        {**_same("mL/(24.h)", "mL/d"), "L/(24.h)": (1000.0, 0.0), "L/d": (1000.0, 0.0)},
        hard=(0, 20000),
        soft=(0, 8000),
    ),
    CodeSpec(
        "medtwin-respiratory-support",
        "Respiratory support (1 = ventilation, CPAP or BiPAP; 0 = none)",
        "1",
        _same("1", ""),
        hard=(0, 1),
        soft=(0, 1),
        system=LOCAL,
    ),
    *(
        CodeSpec(
            f"medtwin-{drug}-rate",
            f"{drug.capitalize()} infusion rate",
            "ug/kg/min",
            _same("ug/kg/min"),
            hard=(0, top),
            soft=(0, top / 5),
            system=LOCAL,
        )
        for drug, top in (
            ("dopamine", 100.0),
            ("dobutamine", 100.0),
            ("epinephrine", 10.0),
            ("norepinephrine", 10.0),
        )
    ),
)


class CodeRegistry:
    """Lookup of :class:`CodeSpec` by code (LOINC unless a spec says otherwise)."""

    def __init__(
        self, specs: tuple[CodeSpec, ...] = (*VITAL_SIGNS, *LABORATORY_AND_SCORES)
    ) -> None:
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
